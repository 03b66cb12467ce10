"""The HTTP transport: its own refusals, decided before any connection is made, and what it
makes of each answer a partner's server gives (a real HTTP server on loopback)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meldingstjener.transport.base import Delivery, TransportFailure
from meldingstjener.transport.http import HttpTransport


def test_a_stored_message_that_cannot_be_read_is_retried(tmp_path: Path) -> None:
    # A wire file that cannot be read now (a network share away for a while shows an empty
    # folder): retried within the agreement's Retries, as on SMTP, not given up at once.
    transport = HttpTransport()
    gone = Delivery("http://127.0.0.1:9/ebms", "multipart/related", tmp_path / "missing.mime")
    with pytest.raises(TransportFailure) as failure:
        transport.send(gone)
    transport.close()
    assert failure.value.code == "body-missing" and failure.value.retryable


class _Answering(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the status code named by the path (``/ebms/301``)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = int(self.path.rsplit("/", 1)[1])
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "https://moved.example/ebms")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ebms"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (301, True),
        (307, True),
        (408, True),
        (425, True),
        (429, True),
        (503, True),
        (400, False),
        (404, False),
        (413, False),
    ],
)
def test_what_a_partner_answers_decides_whether_to_try_again(
    answering: str, status: int, retryable: bool
) -> None:
    # A redirect is not delivery: the message would be marked sent and never acknowledged.
    transport = HttpTransport()
    try:
        with pytest.raises(TransportFailure) as failure:
            transport.send(Delivery(f"{answering}/{status}", "multipart/related", b"x"))
    finally:
        transport.close()
    assert failure.value.code == f"http-{status}"
    assert failure.value.retryable is retryable
    if status in (301, 307):
        assert "https://moved.example/ebms" in str(failure.value)


def test_a_2xx_answer_is_delivery(answering: str) -> None:
    transport = HttpTransport()
    try:
        for status in (200, 202, 204):
            result = transport.send(Delivery(f"{answering}/{status}", "multipart/related", b"x"))
            assert result.status_code == status and result.reply_body is None
    finally:
        transport.close()
