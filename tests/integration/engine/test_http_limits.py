"""What a `serve` process bounds by itself on its HTTP port, before any check of ours can run:
the size of a request head, the pace of an ebXML body, and the connections served at once.
A real server process, and raw sockets for the clients that misbehave."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from meldingstjener.api.app import create_app
from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, Site, prepare_sites

WAIT = 30.0  # a socket read waits this long for the server's answer at most
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("http-limits")
    _, hospital = prepare_sites(root)
    config = hospital.config_path.read_text()
    server = f"[server]\nport = {hospital.port}\n"
    assert server in config
    hospital.config_path.write_text(
        config.replace(
            server,
            server
            + "body_grace_seconds = 1.0\nmin_body_bytes_per_second = 1000000\n"
            + f"max_connections = {MAX_CONNECTIONS}\n",
        )
    )
    running = RunningServer(hospital, root / "hospital.log").start()
    yield hospital
    running.stop()


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


def test_an_ebxml_body_that_stops_coming_is_answered_408(site: Site) -> None:
    with _connect(site) as connection:
        connection.sendall(
            b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"x" * 10
        )
        assert _status(connection) == 408


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
