"""A `serve` process stopped (SIGTERM) while requests are under way: a message whose receive
began is stored and answered as it ended, also when that takes longer than the graceful
period (uvicorn cancels the requests still running then), up to RECEIVE_AFTER_STOP_SECONDS
more; one that takes longer still is answered 503 and not stored; a body still coming is
answered 503 and its connection closed. Before, the sender of the first was answered 500
while the server stored its message and logged that the Acknowledgment was returned in the
response. A real server process; the database is held by another connection's write lock, as a long
transaction of another process would hold it.

A call of the EPJ API cut short by the stop is answered 503 in the API's problem shape, with
Retry-After, and nothing of it is stored (uvicorn answered a plain 500 while the call's thread
went on and stored the message); and the stop ends within Docker's ten seconds while the
database stays locked (its own record waited for the lock, 30 s, and the interpreter for the
call's thread)."""

from __future__ import annotations

import base64
import functools
import json
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from meldingstjener.api.clients import add_client
from meldingstjener.bootstrap import build_engine, open_store
from meldingstjener.config import load_settings
from meldingstjener.devsites import GP_HER, RunningServer, Site, dialog_note, prepare_sites
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


def _epj_key(site: Site) -> str:
    store = open_store(load_settings(site.config_path))
    _, key = add_client(store, "epj", ["send", "receive"], [site.organisation_her_id])
    store.database.dispose()
    return key


def _post_message_head(port: int, key: str, length: int, idempotency_key: str) -> bytes:
    return (
        b"POST /Messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n\r\n"
        % (key.encode(), idempotency_key.encode(), length)
    )


def _note_request(gp: Site, hospital: Site) -> bytes:
    document = dialog_note(gp, hospital, "x")
    return json.dumps(
        {
            "businessDocument": base64.b64encode(document).decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        }
    ).encode()


def _stopping_problem(answer: bytes) -> dict[str, object]:
    """The problem body of a 503 of the stop, its head checked."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer[:300]
    lines = head.lower().split(b"\r\n")
    assert b"retry-after: 10" in lines
    assert b"connection: close" in lines
    assert b"content-type: application/problem+json" in lines
    problem: dict[str, object] = json.loads(body)
    return problem


def _outgoing(database: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT id, idempotency_key FROM messages WHERE direction = 'out'"
        )
        return [(row[0], row[1]) for row in rows]


@pytest.mark.parametrize("locked_to_the_end", [False, True], ids=["lock-ends", "lock-stays"])
def test_an_epj_call_held_past_the_stop_is_answered_503_and_not_stored(
    tmp_path: Path, locked_to_the_end: bool
) -> None:
    # The database is locked, as another process's long transaction would hold it: the call
    # waits for it in its thread when the graceful period ends. The lock ends once the call is
    # answered (the call's thread then comes to its commit, which is refused), or stays through
    # the whole stop (which ends without the thread).
    gp, hospital = prepare_sites(tmp_path)
    key = _epj_key(gp)
    database = load_settings(gp.config_path).data_dir / "meldingstjener.db"
    log = tmp_path / "gp.log"
    running = RunningServer(gp, log).start()
    assert running.process is not None
    listed = httpx.get(  # its key known to the server before the database is locked
        f"http://127.0.0.1:{gp.port}/Messages",
        params={"ReceiverHerIds": GP_HER},
        headers={"Authorization": f"Bearer {key}"},
        timeout=WAIT,
    )
    assert listed.status_code == 200, listed.text
    body = _note_request(gp, hospital)
    lock = sqlite3.connect(database, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        posting = socket.create_connection(("127.0.0.1", gp.port), timeout=WAIT)
        posting.sendall(_post_message_head(gp.port, key, len(body), "note-1") + body)
        _until(functools.partial(_read_by_server, gp.port, posting), "its request read")
        stopping_at = time.monotonic()
        running.process.terminate()  # SIGTERM
        posted = _answer(posting)
        if not locked_to_the_end:
            lock.execute("ROLLBACK")
        running.process.wait(WAIT)
        stopped_after = time.monotonic() - stopping_at
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    posting.close()
    problem = _stopping_problem(posted)
    assert problem["code"] == "unavailable" and problem["errorCode"] == 5030
    assert stopped_after < DOCKER_GRACE, f"stopped {stopped_after:.1f} s after SIGTERM"
    text = log.read_text()
    assert "POST /Messages under way at the stop was answered 503" in text
    assert "CancelledError" not in text and "Exception in ASGI application" not in text
    assert _outgoing(database) == []  # rolled back, not half-stored
    # the EPJ repeats the call with the same key: stored once
    restarted = RunningServer(gp, log).start()
    try:
        for _ in range(2):
            repeated = httpx.post(
                f"http://127.0.0.1:{gp.port}/Messages",
                content=body,
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": "note-1",
                },
                timeout=WAIT,
            )
            assert repeated.status_code == 201, repeated.text
    finally:
        restarted.stop()
    [(message_id, _)] = _outgoing(database)
    assert repeated.json() == message_id
    print(f"stopped {stopped_after:.1f} s after SIGTERM")  # a figure for the report


def test_an_epj_upload_still_coming_at_the_stop_is_answered_503(tmp_path: Path) -> None:
    gp, hospital = prepare_sites(tmp_path)
    key = _epj_key(gp)
    log = tmp_path / "gp.log"
    running = RunningServer(gp, log).start()
    assert running.process is not None
    body = _note_request(gp, hospital)
    trickling = socket.create_connection(("127.0.0.1", gp.port), timeout=WAIT)
    trickling.sendall(_post_message_head(gp.port, key, len(body), "note-1") + body[:10])
    _until(functools.partial(_read_by_server, gp.port, trickling), "its head read")
    running.process.terminate()  # SIGTERM; the rest of the body never comes
    trickled = _answer(trickling)
    trickling.close()
    running.process.wait(WAIT)
    assert _stopping_problem(trickled)["code"] == "unavailable"
    assert "Exception in ASGI application" not in log.read_text()
    assert _outgoing(load_settings(gp.config_path).data_dir / "meldingstjener.db") == []


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
