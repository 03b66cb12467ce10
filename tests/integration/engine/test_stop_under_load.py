"""A `serve` process stopped (SIGTERM) while requests are under way: a message whose receive
began is stored and answered as it ended, also when that takes longer than the graceful
period (uvicorn cancels the requests still running then), up to RECEIVE_AFTER_STOP_SECONDS
more; one that takes longer still is answered 503 and not stored; a body still coming is
answered 503 and its connection closed. Before, the sender of the first was answered 500
while the server stored its message and logged that the Acknowledgment was returned in the
response. A real server process; the database is held by another connection's write lock, as a long
transaction of another process would hold it.

The stop ends within Docker's ten seconds while the database stays locked (its own record
waited for the lock, 30 s, twice)."""

from __future__ import annotations

import functools
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, Site, dialog_note, prepare_sites
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.transport.base import Delivery, TransportResult

WAIT = 60.0  # the most any step here waits: a server that hangs fails the test
DOCKER_GRACE = 10.0  # a service manager's time from SIGTERM to SIGKILL (Docker's)


class _Kept:
    """A transport that keeps what the GP sends instead of sending it."""

    channel = "http"

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, delivery: Delivery) -> TransportResult:
        body = delivery.body
        self.sent.append(
            (delivery.content_type, body if isinstance(body, bytes) else Path(body).read_bytes())
        )
        return TransportResult(status_code=200)

    def close(self) -> None:
        pass


def _wire(gp: Site, hospital: Site) -> tuple[str, bytes]:
    """A message from the GP to the hospital, asking for its Acknowledgment in the response."""
    ctx = build_engine(load_settings(gp.config_path))
    kept = _Kept()
    ctx.transports = {**ctx.transports, "http": kept}  # type: ignore[dict-item]
    try:
        submit(ctx, dialog_note(gp, hospital, "x"), actor="t")
        worker = Worker(ctx, "t/0", poll_interval=0.1)
        while worker.run_once():
            pass
    finally:
        ctx.store.database.dispose()
    [sent] = kept.sent
    return sent


def _until(done: Callable[[], bool], what: str) -> None:
    """Wait for ``done()``: a state the server shows (its log, its sockets), polled."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        time.sleep(0.02)


def _read_by_server(server_port: int, client: socket.socket) -> bool:
    """Whether the server's end of ``client``'s connection has nothing left unread: the server
    took the request (a connection whose request is not taken yet is closed at a stop)."""
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            return int(queues.split(":")[1], 16) == 0
    return False


def _post_whole(port: int, content_type: str, body: bytes) -> socket.socket:
    """A connection on which a whole ``POST /ebms`` of ``body`` has been sent."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    connection.sendall(
        b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (content_type.encode(), len(body))
        + body
    )
    return connection


def _answer(connection: socket.socket) -> bytes:
    """All the server sends on ``connection`` until it closes it."""
    received = b""
    while piece := connection.recv(65536):
        received += piece
    return received


def test_a_stop_answers_the_receives_it_cut_short_truthfully(tmp_path: Path) -> None:
    gp, hospital = prepare_sites(tmp_path, sync_reply=True)
    content_type, body = _wire(gp, hospital)
    settings = load_settings(hospital.config_path)
    log = tmp_path / "hospital.log"
    running = RunningServer(hospital, log).start()
    lock = sqlite3.connect(settings.data_dir / "meldingstjener.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the receive waits for it (busy timeout 30 s)
    try:
        # a message whose receive begins (and waits for the lock), and a body still coming
        posting = _post_whole(hospital.port, content_type, body)
        trickling = socket.create_connection(("127.0.0.1", hospital.port), timeout=WAIT)
        trickling.sendall(
            b"POST /ebms HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"x" * 10
        )
        for connection in (posting, trickling):
            taken = functools.partial(_read_by_server, hospital.port, connection)
            _until(taken, "its request read")
        assert running.process is not None
        stopping_at = time.monotonic()
        running.process.terminate()  # SIGTERM
        _until(lambda: b"timeout graceful shutdown exceeded" in log.read_bytes(), "the cancel")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    posted, trickled = _answer(posting), _answer(trickling)
    posting.close()
    trickling.close()
    running.process.wait(WAIT)
    stopped_after = time.monotonic() - stopping_at
    assert posted.startswith(b"HTTP/1.1 200 "), posted[:200]
    assert b"Acknowledgment" in posted
    assert trickled.startswith(b"HTTP/1.1 503 "), trickled
    assert b"connection: close" in trickled.lower()
    text = log.read_text()
    assert "CancelledError" not in text and "Exception in ASGI application" not in text
    with sqlite3.connect(settings.data_dir / "meldingstjener.db") as database:
        [(status,)] = database.execute("SELECT status FROM messages WHERE direction = 'in'")
        details = [d for (d,) in database.execute("SELECT detail FROM message_events")]
    assert status == "acknowledged"
    assert any("Acknowledgment offered in the response" in (d or "") for d in details)
    print(f"stopped {stopped_after:.1f} s after SIGTERM")  # a figure for the report


def test_a_receive_held_past_the_stop_is_answered_503_and_not_stored(tmp_path: Path) -> None:
    # The database stays locked through the whole stop: the receive is answered 503 while it
    # still waits (it was waited for without end, and the stop with it: 16 s for a lock held
    # 15 s, past Docker's SIGKILL), and rolled back when it gets the lock.
    gp, hospital = prepare_sites(tmp_path, sync_reply=True)
    content_type, body = _wire(gp, hospital)
    settings = load_settings(hospital.config_path)
    log = tmp_path / "hospital.log"
    running = RunningServer(hospital, log).start()
    assert running.process is not None
    lock = sqlite3.connect(settings.data_dir / "meldingstjener.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        posting = _post_whole(hospital.port, content_type, body)
        _until(functools.partial(_read_by_server, hospital.port, posting), "its request read")
        running.process.terminate()  # SIGTERM
        posted = _answer(posting)  # the lock still held
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    posting.close()
    running.process.wait(WAIT)
    assert posted.startswith(b"HTTP/1.1 503 "), posted[:200]
    assert b"connection: close" in posted.lower()
    assert "answered 503" in log.read_text()
    with sqlite3.connect(settings.data_dir / "meldingstjener.db") as database:
        stored = database.execute("SELECT id FROM messages WHERE direction = 'in'").fetchall()
        details = [d for (d,) in database.execute("SELECT detail FROM message_events")]
    assert stored == []
    assert not any("offered in the response" in (d or "") for d in details)


def test_a_stop_while_the_database_is_locked_ends_within_its_budget(tmp_path: Path) -> None:
    # Nothing under way; the stop's own record waits for the lock another connection holds
    # (as another process's long transaction would), and is given up in time.
    gp, _ = prepare_sites(tmp_path)
    database = load_settings(gp.config_path).data_dir / "meldingstjener.db"
    log = tmp_path / "gp.log"
    running = RunningServer(gp, log).start()
    assert running.process is not None
    lock = sqlite3.connect(database, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        stopping_at = time.monotonic()
        running.process.terminate()  # SIGTERM
        running.process.wait(WAIT)
        stopped_after = time.monotonic() - stopping_at
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert running.process.returncode == 0
    assert stopped_after < DOCKER_GRACE, f"stopped {stopped_after:.1f} s after SIGTERM"
    assert "could not record this stop within the stop's 3 s" in log.read_text()
    with sqlite3.connect(database) as connection:
        [(stopped_at,)] = connection.execute("SELECT stopped_at FROM serving_instances")
    assert stopped_at is None  # left for the others' beats to judge
    print(f"stopped {stopped_after:.1f} s after SIGTERM")  # a figure for the report
