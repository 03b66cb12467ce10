"""The HTTP transport and a partner's answer it cannot trust: the body of a 2xx answer (a
synchronous signal) is read up to ``MAX_REPLY_BYTES`` and within the delivery's time-out, and
the body of any other answer is not read at all. A real HTTP server on loopback plays the
partner."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from meldingstjener.transport.base import Delivery, TransportFailure
from meldingstjener.transport.http import MAX_REPLY_BYTES, HttpTransport

# how long the trickling partner would go on: far longer than the delivery's time-out
TRICKLE_BYTES = 1000
TRICKLE_PAUSE = 0.01
TIMEOUT = 0.5
# how long a partner waits for the test to say the sender has gone before it gives up: only
# reached when the sender does wait for the body (the fault these tests are about)
GIVE_UP = 10.0


class _Partner(http.server.BaseHTTPRequestHandler):
    """Answers each POST as the path says: ``/reply/N`` N bytes at once, ``/trickle`` a byte
    at a time, ``/flood`` 1 MiB pieces up to 16 MiB, ``/held/503`` a 503 whose body comes
    only when the test releases it."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()
    gave_up = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind, _, arg = self.path.removeprefix("/").partition("/")
        try:
            if kind == "reply":
                body = b"<ack/>" + b"x" * (int(arg) - 6)
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(body)))
                # said, not only done: a client must not send its next request on this one
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
            elif kind == "trickle":
                self._chunked(200)
                for _ in range(TRICKLE_BYTES):
                    self._chunk(b"a")
                    time.sleep(TRICKLE_PAUSE)  # the partner's pace (not a synchronisation)
                self._chunk(b"")
            elif kind == "flood":
                self._chunked(200)
                for _ in range(16):
                    self._chunk(b"a" * 1024 * 1024)
                self._chunk(b"")
            elif kind == "held":
                self._chunked(int(arg))
                if not self.release.wait(GIVE_UP):
                    self.gave_up.set()
                self._chunk(b"not now")
                self._chunk(b"")
        except OSError:
            pass  # the sender went away: what these tests want of it
        self.close_connection = True

    def _chunked(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def partner() -> Iterator[str]:
    _Partner.release.clear()
    _Partner.gave_up.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Partner)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Partner.release.set()
    server.shutdown()
    server.server_close()


def _send(endpoint: str) -> TransportFailure:
    transport = HttpTransport()
    try:
        with pytest.raises(TransportFailure) as failure:
            transport.send(Delivery(endpoint, "multipart/related", b"x", timeout_seconds=TIMEOUT))
    finally:
        transport.close()
    return failure.value


def test_an_answer_of_a_signal_is_read_whole(partner: str) -> None:
    transport = HttpTransport()
    try:
        for size in (100_000, MAX_REPLY_BYTES):
            result = transport.send(Delivery(f"{partner}/reply/{size}", "multipart/related", b"x"))
            assert result.status_code == 200
            assert result.reply_content_type == "text/xml"
            assert result.reply_body is not None and len(result.reply_body) == size
    finally:
        transport.close()


def test_an_answer_larger_than_any_signal_is_a_retryable_failure(partner: str) -> None:
    # it used to be read whole: a partner sending without end took the process to 1.2 GB
    failure = _send(f"{partner}/flood")
    assert failure.code == "reply-too-large" and failure.retryable
    assert failure.maybe_delivered  # it answered 2xx: it took the message


def test_an_answer_that_trickles_ends_at_the_time_out(partner: str) -> None:
    # a byte every 10 ms never trips the time-out of each read; the answer as a whole has
    # TIMEOUT, where it would take TRICKLE_BYTES * TRICKLE_PAUSE
    assert TRICKLE_BYTES * TRICKLE_PAUSE > 10 * TIMEOUT
    failure = _send(f"{partner}/trickle")
    assert failure.code == "timeout" and failure.retryable
    assert "did not finish its answer" in failure.detail
    assert failure.maybe_delivered  # it answered 2xx: it took the message


def test_the_body_of_a_refusal_is_not_waited_for(partner: str) -> None:
    failure = _send(f"{partner}/held/503")
    _Partner.release.set()  # the sender is done: the partner may finish its body
    assert failure.code == "http-503" and failure.retryable
    assert not failure.maybe_delivered  # it said it did not take it
    assert not _Partner.gave_up.is_set()
