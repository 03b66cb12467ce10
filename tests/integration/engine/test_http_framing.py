"""Requests a `serve` process answers and then closes the connection on, rather than keep it for
what the client sends after them: a body too slow (408) or too large (413), a request head over
16 KB that arrived in one piece (431), a body framed both by Content-Length and by
Transfer-Encoding (400). A real server process, and raw sockets for the clients."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from meldingstjener.devsites import RunningServer, Site, prepare_sites

WAIT = 30.0  # a socket read waits this long at most: a connection kept open fails the test
MAX_REQUEST_BYTES = 100_000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("http-framing")
    _, hospital = prepare_sites(root)
    config = hospital.config_path.read_text()
    server = f"[server]\nport = {hospital.port}\n"
    assert server in config
    hospital.config_path.write_text(
        config.replace(
            server,
            server
            + "body_grace_seconds = 1.0\nmin_body_bytes_per_second = 1000000\n"
            + f"max_request_bytes = {MAX_REQUEST_BYTES}\n",
        )
    )
    running = RunningServer(hospital, root / "hospital.log").start()
    yield hospital
    running.stop()


def _connect(site: Site) -> socket.socket:
    return socket.create_connection(("127.0.0.1", site.port), timeout=WAIT)


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


def test_a_request_head_over_16_kb_in_one_piece_is_refused_431(site: Site) -> None:
    # h11 refuses only a head still incomplete past 16 KB: one that arrives whole was served
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60_000 + b"\r\n\r\n"
    with _connect(site) as connection:
        connection.sendall(head)
        answers = _answers(connection)
    assert _statuses(answers) == [431]
    with _connect(site) as connection:  # one a little under the limit is served
        connection.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
            + b"a" * 15_000
            + b"\r\n\r\n"
        )
        assert _statuses(_answers(connection)) == [200]


def test_a_body_framed_by_both_length_and_chunks_is_refused_and_nothing_after_it_served(
    site: Site,
) -> None:
    # A proxy framing by Content-Length passes the whole as one request; h11 read the chunked
    # body and served what follows it as a second request (request smuggling).
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    with _connect(site) as connection:
        connection.sendall(
            b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
            b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + body
        )
        answers = _answers(connection)
    assert _statuses(answers) == [400]
    assert b"connection: close" in answers.lower()
