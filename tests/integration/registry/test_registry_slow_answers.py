"""A register that answers a byte at a time: the client's time-out is for each read, so such an
answer was read for as long as it lasted (58 s seen in review, a run's budget being 30 s), and
nothing failed. Every register and CPPA call now ends by its own time (``call_seconds``) and by
the deadline of the sync's run; one cut there is the service being unavailable, which the sync
job counts as a failure and alerts on."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from meldingstjener.registry import sync
from meldingstjener.registry.ar_client import ArClient, ArUnavailable
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.cppa_client import CppaClient, CppaUnavailable
from meldingstjener.registry.sync import SyncInterrupted, last_synced_sequence, sync_register
from meldingstjener.store.uow import Store

BODY = b'{"lastSequenceNumber": 1, "communicationParties": [100001]}' + b" " * 400
PACE = 0.05  # seconds between two bytes: the whole body takes 23 s


@pytest.fixture
def trickling() -> Iterator[str]:
    """A local HTTP server that answers every request 200 with its headers at once and then
    its body a byte at a time, until the test ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def answer(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(BODY)
            )
            for byte in BODY:
                if stop.wait(PACE):  # the pace of the peer under test, not a synchronisation
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:  # the client gave up
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_a_register_call_ends_by_its_own_time(trickling: str) -> None:
    client = ArClient(trickling, StaticToken("t"), call_seconds=0.3)
    try:
        with pytest.raises(ArUnavailable) as slow:
            client.export()
    finally:
        client.close()
    assert slow.value.code == "ar-unavailable"
    assert "did not answer /api/v1/communicationparty/export" in str(slow.value)
    assert "whole within 0.3 s (it sends too slowly)" in str(slow.value)


def test_a_cppa_call_ends_by_its_own_time(trickling: str) -> None:
    client = CppaClient(trickling, StaticToken("t"), call_seconds=0.3)
    try:
        with pytest.raises(CppaUnavailable, match="sends too slowly"):
            client.profile("8142987")
    finally:
        client.close()


def test_a_sync_run_ends_by_its_budget(
    store: Store, trickling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's own time is long (a minute, as by default); the run's budget and the time
    a chunk under way may go on past it (10 s; 0.2 s here) cut it."""
    monkeypatch.setattr(sync, "MIN_OVERRUN_SECONDS", 0.2)
    client = ArClient(trickling, StaticToken("t"))
    try:
        with pytest.raises(SyncInterrupted) as stopped:
            sync_register(store, client, budget_seconds=0.2)
    finally:
        client.close()
    assert isinstance(stopped.value.__cause__, ArUnavailable)
    assert "sends too slowly" in str(stopped.value)
    with store.unit_of_work() as uow:
        assert last_synced_sequence(uow) is None
