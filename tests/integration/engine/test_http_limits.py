"""What a `serve` process bounds by itself on its HTTP port, before any check of ours can run,
and the requests it answers and then closes the connection on, rather than keep it for what the
client sends after them: a request head too large (431, or h11's 400), a body framed both by
Content-Length and by Transfer-Encoding (400), an ebXML body too slow (408) or too large (413),
and the connections served at once. One real server process for all, and raw sockets for the
clients that misbehave."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from meldingstjener.api.app import create_app
from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, Site, prepare_sites

WAIT = 30.0  # a socket read waits this long at most: a connection kept open fails the test
MAX_CONNECTIONS = 4
MAX_REQUEST_BYTES = 100_000


@dataclass(frozen=True)
class Served:
    site: Site
    log: Path

    def log_lines(self, *words: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if all(w in line for w in words)]

    def alerts(self, kind: str) -> list[tuple[str, str]]:
        """(dedup key, summary) of the alerts of ``kind`` in the server's database."""
        database = load_settings(self.site.config_path).data_dir / "meldingstjener.db"
        with sqlite3.connect(database) as connection:
            return connection.execute(
                "SELECT dedup_key, summary FROM alerts WHERE kind = ?", (kind,)
            ).fetchall()


def serve(root: Path, server_lines: str) -> Iterator[Served]:
    """A hospital's `serve` process with ``server_lines`` added to its [server] section."""
    _, hospital = prepare_sites(root)
    config = hospital.config_path.read_text()
    server = f"[server]\nport = {hospital.port}\n"
    assert server in config
    hospital.config_path.write_text(config.replace(server, server + server_lines))
    log = root / "hospital.log"
    running = RunningServer(hospital, log).start()
    yield Served(hospital, log)
    running.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(
        tmp_path_factory.mktemp("http-limits"),
        "body_grace_seconds = 1.0\nmin_body_bytes_per_second = 1000000\n"
        f"max_connections = {MAX_CONNECTIONS}\nmax_request_bytes = {MAX_REQUEST_BYTES}\n",
    )


@pytest.fixture(scope="module")
def site(served: Served) -> Site:
    return served.site


def _connect(site: Site) -> socket.socket:
    return socket.create_connection(("127.0.0.1", site.port), timeout=WAIT)


def _status(connection: socket.socket) -> int:
    """The status of the answer on ``connection`` (waits for it)."""
    head = b""
    while b"\r\n" not in head:
        piece = connection.recv(4096)
        if not piece:
            break
        head += piece
    return int(head.split(b" ", 2)[1])


def _answers(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset ends it too)."""
    received = b""
    while True:
        try:
            piece = connection.recv(65536)
        except ConnectionResetError:
            return received
        if not piece:
            return received
        received += piece


def _statuses(answers: bytes) -> list[int]:
    return [int(line.split(b" ", 2)[1]) for line in answers.split(b"\r\n") if line[:5] == b"HTTP/"]


def test_a_long_request_head_is_refused(site: Site) -> None:
    # h11 refuses a head still incomplete past 16 KB; one that arrives whole in one read (up
    # to 256 KB) may pass, so memory stays bounded per connection. The server may close before
    # all is sent (then the answer can be lost to the reset): refused either way, not served.
    answer: int | None
    with _connect(site) as connection:
        try:
            connection.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2_000_000 + b"\r\n\r\n"
            )
            answer = _status(connection)
        except (BrokenPipeError, ConnectionResetError):
            answer = None
    assert answer in (400, None)
    with _connect(site) as connection:  # and an ordinary one is served
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _status(connection) == 200


def test_connections_beyond_the_limit_are_answered_503(site: Site) -> None:
    # connections that never finish their request head hold their places
    held = [_connect(site) for _ in range(MAX_CONNECTIONS)]
    try:
        for connection in held:
            connection.sendall(b"GET /health HTTP/1.1\r\n")
        with _connect(site) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _status(connection) == 503
    finally:
        for connection in held:
            connection.close()


def test_a_body_too_slow_is_answered_408_and_its_connection_closed(site: Site) -> None:
    # the client would trickle the rest of its body, holding the connection (20 such made
    # /health, /api and /ebms all 503)
    with _connect(site) as connection:
        connection.sendall(
            b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
            b"Content-Length: 10000\r\n\r\n" + b"x" * 10
        )
        answers = _answers(connection)
    assert _statuses(answers) == [408]
    assert b"connection: close" in answers.lower()


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "chunked"])
def test_a_body_too_large_is_answered_413_and_its_connection_closed(
    site: Site, declared: bool
) -> None:
    # Said by its Content-Length (answered before the body is read), or found as a chunked
    # body arrives: the rest is read and dropped within the pace's grace (the sender, writing
    # its body, reads no answer before), and the connection then closed.
    head = b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
    with _connect(site) as connection:
        if declared:
            connection.sendall(head + b"Content-Length: 10000000\r\n\r\n" + b"x" * 1000)
        else:
            chunk = b"x" * (MAX_REQUEST_BYTES + 1)
            connection.sendall(
                head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(chunk) + chunk + b"\r\n"
            )
        answers = _answers(connection)
    assert _statuses(answers) == [413]
    assert b"connection: close" in answers.lower()


def test_a_request_head_over_16_kb_in_one_piece_is_refused_431(served: Served) -> None:
    # h11 refuses only a head still incomplete past 16 KB: one that arrives whole was served
    site = served.site
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60_000 + b"\r\n\r\n"
    for _ in range(2):
        with _connect(site) as connection:
            connection.sendall(head)
            answers = _answers(connection)
        assert _statuses(answers) == [431]
    # the operator sees it (no access log): one line for the peer, not one per request
    assert len(served.log_lines("GET /health from 127.0.0.1 answered 431")) == 1
    with _connect(site) as connection:  # one a little under the limit is served
        connection.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
            + b"a" * 15_000
            + b"\r\n\r\n"
        )
        assert _statuses(_answers(connection)) == [200]


def test_a_body_framed_by_both_length_and_chunks_is_refused_and_nothing_after_it_served(
    served: Served,
) -> None:
    # A proxy framing by Content-Length passes the whole as one request; h11 read the chunked
    # body and served what follows it as a second request (request smuggling).
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    for _ in range(3):  # a partner whose MSH or proxy sends both headers, each time
        with _connect(served.site) as connection:
            connection.sendall(
                b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
                b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + body
            )
            answers = _answers(connection)
        assert _statuses(answers) == [400]
        assert b"connection: close" in answers.lower()
        # in /ebms's own form, not the EPJ API's problem JSON (review: interop 8)
        assert answers.split(b"\r\n\r\n", 1)[1].startswith(b"ambiguous-length: the request has")
    # Seen by the operator, not only by the partner: one warning for the peer, and its
    # ebms-refused alert (refused three times in a row) names the refusal.
    assert len(served.log_lines("POST /ebms from 127.0.0.1 answered 400", "Transfer")) == 1
    [(_, summary)] = served.alerts("ebms-refused")
    assert "HTTP 400, ambiguous-length, from address 127.0.0.1" in summary


def test_a_request_head_over_16_kb_to_ebms_is_refused_in_its_own_form(served: Served) -> None:
    # review (interop 8): answered the EPJ API's problem JSON ("invalid-input", errorCode
    # 1000), where README names the code head-too-large
    head = b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Pad: " + b"a" * 20_000
    with _connect(served.site) as connection:
        connection.sendall(head + b"\r\n\r\n")
        answers = _answers(connection)
    assert _statuses(answers) == [431]
    assert b"content-type: text/plain" in answers.lower()
    assert answers.split(b"\r\n\r\n", 1)[1].startswith(
        b"head-too-large: the request's headers hold"
    )


def test_a_body_too_large_is_refused_without_inviting_it(site: Site) -> None:
    # A client that asks Expect: 100-continue (.NET Framework's default, curl's for a large
    # body) sends its body only when invited: reading it to drain, the server sent 100
    # Continue, and the client uploaded what it would refuse before it saw the 413.
    with _connect(site) as connection:
        connection.sendall(
            b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
            b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
        )
        answers = _answers(connection)
    assert _statuses(answers) == [413]
    assert b"connection: close" in answers.lower()


def test_a_peer_gone_mid_body_is_no_error(tmp_path: Path) -> None:
    gp, _ = prepare_sites(tmp_path)
    ctx = build_engine(load_settings(gp.config_path))
    app = create_app(ctx)
    messages = iter(
        [
            {"type": "http.request", "body": b"--b\r\n", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/ebms",
        "raw_path": b"/ebms",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"multipart/related; boundary=b")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    try:
        # raised ClientDisconnect, which the server logs as an error with its traceback
        anyio.run(app, scope, receive, send)
    finally:
        ctx.store.database.dispose()
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 400
