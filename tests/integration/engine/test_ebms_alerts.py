"""What ``POST /ebms`` cannot take is alerted: the payload store failing, errors nobody
expected. The real application in-process (as test_large_streams does), real stores."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from engine_pair import Pair
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from meldingstjener.api import app as api_app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine import inbound, payload_io
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import Attachment, Coded, Dialogmelding, Notat, build_dialogmelding

MiB = 1024 * 1024
# how a store-failing alert names the senders of the requests it refused
SENDERS_TOLD = "Requests refused per the sender their envelopes name (From HER-id, not verified)"


def open_alerts(ctx: EngineContext) -> dict[str, tuple[str, int]]:
    with ctx.store.unit_of_work() as uow:
        return {a.dedup_key: (a.severity, a.count) for a in uow.alerts.list(open_only=True)}


def wire(pair: Pair, payload: bytes | None = None) -> tuple[bytes, str]:
    """A message from the GP to the hospital as it goes over the wire (kept from the network)."""
    pair.network.down.add(pair.hospital_site.endpoint)
    note = payload or dialog_note(pair.gp_site, pair.hospital_site, "x")
    row = pair.message(pair.gp, submit(pair.gp, note, actor="t"))
    pair.run()
    pair.network.down.clear()
    return pair.gp.store.payloads.read_bytes(str(row.wire_ref)), str(row.wire_content_type)


def large(pair: Pair) -> bytes:
    """A fagmelding whose wire form is spooled to the payload store as it arrives."""
    note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="Skannet journal")
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Attachment(data=os.urandom(2 * MiB), mime_type="application/pdf"),),
    )


@pytest.fixture
def http(pair: Pair) -> Iterator[TestClient]:
    with TestClient(api_app.create_app(pair.hospital)) as client:
        yield client


def test_a_payload_store_that_cannot_be_written_answers_503_with_a_critical_alert(
    pair: Pair, http: TestClient
) -> None:
    # The payload directory replaced by a file: every write under it fails (ENOTDIR), also
    # for root, as a full disk fails every write (ENOSPC). The database lives beside it.
    small, small_type = wire(pair)
    big, big_type = wire(pair, large(pair))
    root = pair.hospital.store.payloads.root
    shutil.rmtree(root)
    root.write_bytes(b"")
    answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
    assert answer.status_code == 503, answer.text
    answer = http.post("/ebms", content=big, headers={"Content-Type": big_type})
    assert answer.status_code == 503, answer.text  # failed while spooling the body
    failing = f"store-failing:{pair.hospital.instance}"
    assert open_alerts(pair.hospital) == {failing: ("critical", 2)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert "ENOTDIR" in alert.summary
    assert pair.inbound_messages(pair.hospital) == []
    root.unlink()
    root.mkdir()
    answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
    assert answer.status_code == 200, answer.text  # the sender's resend
    assert [m.status for m in pair.inbound_messages(pair.hospital)] == ["acknowledged"]
    assert open_alerts(pair.hospital) == {}


def test_a_disk_that_fills_up_between_two_files_leaves_neither(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decrypted business message is stored first; the disk is full when the wire form
    # follows. Nothing refers to the first file: it goes at once, not with the orphan sweep a
    # day later (one more decrypted copy on disk for every resend of the sender meanwhile).
    from meldingstjener.store.payloads import PayloadStore

    small, small_type = wire(pair)
    root = pair.hospital.store.payloads.root
    before = {path for path in root.rglob("*") if path.is_file()}
    put = PayloadStore.put
    calls: list[object] = []

    def full_after_one(store: PayloadStore, source: object) -> object:
        calls.append(source)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return put(store, source)  # type: ignore[arg-type]

    monkeypatch.setattr(PayloadStore, "put", full_after_one)
    answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
    assert answer.status_code == 503, answer.text
    assert len(calls) == 2
    assert {path for path in root.rglob("*") if path.is_file()} == before
    monkeypatch.setattr(PayloadStore, "put", put)
    answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
    assert answer.status_code == 200, answer.text  # the sender's resend
    assert [m.status for m in pair.inbound_messages(pair.hospital)] == ["acknowledged"]


def _sender_spoofed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The business message the GP seals names another sender than its envelope: refused
    (Inconsistent) after its signature verified, so its refusal and MessageError are stored."""
    seal = payload_io.seal

    def other_sender(ctx: EngineContext, payload: object, *rest: object, **kw: object) -> object:
        assert isinstance(payload, bytes)
        spoofed = payload.replace(b"<Id>8100001</Id>", b"<Id>8100009</Id>")
        return seal(ctx, spoofed, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(payload_io, "seal", other_sender)


@pytest.mark.parametrize("refused", [False, True], ids=["stored", "refused"])
def test_a_unit_of_work_that_fails_before_its_commit_leaves_none_of_its_files(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    # The files are written before the unit of work that refers to them (the decrypted
    # message, the wire form, our Acknowledgment or MessageError). The database went away, a
    # deadlock, a lock timeout inside it: /ebms answers 503 and the sender resends. Only a
    # unique key's conflict removed them; else each try left its files, a decrypted copy each,
    # until the day's orphan sweep.
    if refused:  # after its signature verified (one that does not verify is not stored)
        _sender_spoofed(monkeypatch)
    body, content_type = wire(pair)
    root = pair.hospital.store.payloads.root
    before = {path for path in root.rglob("*") if path.is_file()}

    def busy(*_args: object, **_kw: object) -> None:  # the last step before the commit
        locked = sqlite3.OperationalError("database is locked")
        locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # as the driver raises it
        raise OperationalError("UPDATE alerts", {}, locked)

    monkeypatch.setattr(pair.hospital.recovery, "went_through", busy)
    for _ in range(3):  # the first send and two resends
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 503, answer.text
    assert {path for path in root.rglob("*") if path.is_file()} == before
    assert pair.inbound_messages(pair.hospital) == []
    monkeypatch.undo()
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    [message] = pair.inbound_messages(pair.hospital)
    assert message.status == ("rejected" if refused else "acknowledged")


def test_an_unexpected_error_answers_500_with_an_alert_that_names_its_class_only(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault in the server (injected here: a real one is not there to be found), whose text
    # quotes what was received.
    def faulty(*_args: object, **_kw: object) -> object:
        raise KeyError("Kari Nordmann")

    body, content_type = wire(pair)
    monkeypatch.setattr(inbound, "receive", faulty)
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 500 and "Nordmann" not in answer.text
    assert open_alerts(pair.hospital) == {"ebms-failing:KeyError": ("error", 1)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert "Nordmann" not in alert.summary


def test_peers_that_are_not_known_parties_refused_three_times_in_a_row_share_one_alert(
    pair: Pair,
) -> None:
    # Anybody can send garbage, from many addresses: one alert for all who are not known
    # parties (not one per address, which would be one per request), resolved by hand.
    body, content_type = wire(pair)
    with TestClient(api_app.create_app(pair.hospital, max_request_bytes=100_000)) as http:
        garbage = {"Content-Type": "multipart/related; boundary=x"}
        assert http.post("/ebms", content=b"not MIME", headers=garbage).status_code == 400
        assert http.post("/ebms", content=b"x" * 200_000, headers=garbage).status_code == 413
        assert open_alerts(pair.hospital) == {}  # one or two may be strays
        assert http.post("/ebms", content=b"not MIME", headers=garbage).status_code == 400
        assert open_alerts(pair.hospital) == {"ebms-refused:unknown": ("warning", 1)}
        with pair.hospital.store.unit_of_work() as uow:
            [alert] = uow.alerts.list(open_only=True)
        assert "from address testclient" in alert.summary and alert.partner_her_id is None
        assert http.post("/ebms", content=b"not MIME", headers=garbage).status_code == 400
        assert open_alerts(pair.hospital) == {"ebms-refused:unknown": ("warning", 2)}
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text
        assert open_alerts(pair.hospital) == {"ebms-refused:unknown": ("warning", 2)}
        # the count starts again after a request that went through
        for _ in range(2):
            assert http.post("/ebms", content=b"not MIME", headers=garbage).status_code == 400
        assert open_alerts(pair.hospital) == {"ebms-refused:unknown": ("warning", 2)}
        # an envelope whose From names a party we do not know is anybody's too
        stranger = body.replace(b">8100001</eb:PartyId>", b">9100001</eb:PartyId>", 1)
        broken = stranger.replace(b"eb:CPAId>", b"eb:NoCPAId>")
        for _ in range(3):
            answer = http.post("/ebms", content=broken, headers={"Content-Type": content_type})
            assert answer.status_code == 400, answer.text
        # counted per address (its third to fifth in a row), on the one alert
        assert open_alerts(pair.hospital) == {"ebms-refused:unknown": ("warning", 5)}
        with pair.hospital.store.unit_of_work() as uow:
            [alert] = uow.alerts.list(open_only=True)
        assert "name 9100001 as their sender (not verified)" in alert.summary


def test_refusals_of_envelopes_that_name_their_sender_are_counted_per_sender(
    pair: Pair, http: TestClient
) -> None:
    body, content_type = wire(pair)
    broken = body.replace(b"eb:CPAId>", b"eb:NoCPAId>")  # the MessageHeader cannot be read
    assert broken != body
    for _ in range(3):
        answer = http.post("/ebms", content=broken, headers={"Content-Type": content_type})
        assert answer.status_code == 400, answer.text
    assert open_alerts(pair.hospital) == {"ebms-refused:from:8100001": ("warning", 1)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert alert.partner_her_id == "8100001" and "testclient" in alert.summary
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    assert open_alerts(pair.hospital) == {}


def test_a_good_request_costs_no_statement_on_the_alerts_while_none_is_open(
    pair: Pair, http: TestClient
) -> None:
    from sqlalchemy import event

    first, second = wire(pair), wire(pair)
    answer = http.post("/ebms", content=first[0], headers={"Content-Type": first[1]})
    assert answer.status_code == 200  # this process has read the open alerts once
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    engine = pair.hospital.store.database.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        answer = http.post("/ebms", content=second[0], headers={"Content-Type": second[1]})
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert answer.status_code == 200
    assert any("INSERT INTO messages" in s for s in statements)
    assert not any("alerts" in s for s in statements)


@pytest.mark.parametrize(
    "error",
    [
        InterfaceError("SELECT 1", {}, psycopg.InterfaceError("the connection is closed")),
        PoolTimeout("QueuePool limit of size 10 overflow 10 reached"),
    ],
    ids=["interface-error", "pool-timeout"],
)
def test_a_database_that_cannot_be_reached_answers_503_without_an_alert(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # A connection the database dropped, or no connection of the pool free in time: the
    # heartbeat counts both as the store unreachable. The sender is to resend, and an alert
    # could not be written either (its try would wait for the pool once more).
    def unreachable(*_args: object, **_kw: object) -> object:
        raise error

    body, content_type = wire(pair)
    monkeypatch.setattr(inbound, "receive", unreachable)
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 503, answer.text
    assert open_alerts(pair.hospital) == {}


def test_a_database_error_of_ours_answers_500_with_an_alert(pair: Pair, http: TestClient) -> None:
    # A table receiving needs is missing (a migration not run): on SQLite an OperationalError,
    # as a database locked is. No resend mends it: a fault of the server, not a store away.
    body, content_type = wire(pair)
    with pair.hospital.store.database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE receipts RENAME TO receipts_away"))
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 500, answer.text
    assert open_alerts(pair.hospital) == {"ebms-failing:OperationalError": ("error", 1)}


def test_a_stored_signal_file_that_is_missing_is_no_store_failing(
    pair: Pair, http: TestClient
) -> None:
    # A resend of a stored message gets our Acknowledgment again, read from its file; here in
    # the response, as the sender has no agreement with us any more. The file is gone (removed
    # by hand): a fault in our data that no resend mends, not a payload store that cannot be
    # written (503, critical).
    body, content_type = wire(pair)
    assert http.post("/ebms", content=body, headers={"Content-Type": content_type}).is_success
    [message] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        [ack] = uow.receipts.for_message(message.id)
        uow.session.execute(text("DELETE FROM partner_agreements"))
        uow.commit()
    pair.hospital.store.payloads.path(str(ack.wire_ref)).unlink()
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 500, answer.text
    assert open_alerts(pair.hospital) == {"ebms-failing:PayloadNotFound": ("error", 1)}


def test_a_store_failing_at_one_serve_is_its_alert_until_it_stores_again(
    pair: Pair, http: TestClient, tmp_path: Path
) -> None:
    # Two serve processes on one database, each with its payload directory (a disk of its
    # own). The first cannot write its store; the second stores what reaches it. That does not
    # say the first's store works: its alert stays until the first stores a message again (or
    # it stops), not raised and resolved in turn by the two.
    from meldingstjener.bootstrap import build_engine
    from meldingstjener.config import load_settings
    from meldingstjener.engine.instances import beat, stopped
    from meldingstjener.store.payloads import PayloadStore
    from meldingstjener.store.uow import Store

    first = pair.hospital
    second = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    second.instance = "second:8080"
    second.store = Store(second.store.database, PayloadStore(tmp_path / "second-payloads"))
    messages = [wire(pair) for _ in range(4)]
    root = first.store.payloads.root
    shutil.rmtree(root)
    root.write_bytes(b"")
    body, content_type = messages[0]
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 503, answer.text
    failing = f"store-failing:{first.instance}"
    assert open_alerts(first) == {failing: ("critical", 1)}
    try:
        with TestClient(api_app.create_app(second)) as other:
            body, content_type = messages[1]
            answer = other.post("/ebms", content=body, headers={"Content-Type": content_type})
            assert answer.status_code == 200, answer.text
            beat(second, second.instance, started=True)  # its catch-up: not its subject
        assert open_alerts(first) == {failing: ("critical", 1)}
        root.unlink()
        root.mkdir()
        body, content_type = messages[2]
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text
        assert open_alerts(first) == {}
        # raised again, and the first stops: its own alerts end with it
        shutil.rmtree(root)
        root.write_bytes(b"")
        body, content_type = messages[3]
        assert (
            http.post("/ebms", content=body, headers={"Content-Type": content_type}).status_code
            == 503
        )
        assert open_alerts(first) == {failing: ("critical", 1)}  # a new incident
        stopped(first, first.instance)
        assert open_alerts(first) == {}
    finally:
        if root.is_file():
            root.unlink()
            root.mkdir()
        second.store.database.dispose()


def test_the_heartbeat_ends_a_store_failing_on_a_server_nobody_sends_to(
    pair: Pair, http: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    # No traffic and no health checks after the outage: only the heartbeat can see the store
    # writable again. Beats driven here as the heartbeat's thread makes them, once a minute.
    from meldingstjener.engine.instances import Heartbeat

    hospital = pair.hospital
    body, content_type = wire(pair)
    root = hospital.store.payloads.root
    shutil.rmtree(root)
    root.write_bytes(b"")  # every write under it fails (ENOTDIR), also for root
    heart = Heartbeat(hospital, hospital.instance)
    try:
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 503, answer.text
        failing = f"store-failing:{hospital.instance}"
        assert open_alerts(hospital) == {failing: ("critical", 1)}
        heart.beat()  # still not writable: its probe fails and changes nothing
        assert open_alerts(hospital) == {failing: ("critical", 1)}
    finally:
        root.unlink()
        root.mkdir()
    caplog.set_level("WARNING", logger="meldingstjener")
    heart.beat()
    assert open_alerts(hospital) == {}
    assert sum("writes its store again" in r.getMessage() for r in caplog.records) == 1
    assert [path for path in root.rglob("*") if path.is_file()] == []  # the probe's removed
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text


def _summaries(ctx: EngineContext) -> dict[str, str]:
    with ctx.store.unit_of_work() as uow:
        return {a.dedup_key: a.summary for a in uow.alerts.list(open_only=True)}


@pytest.mark.parametrize("lost", ["missing", "another store's"])
def test_a_payload_share_lost_while_serving_is_a_store_failing_until_its_marker_is_back(
    pair: Pair, http: TestClient, lost: str
) -> None:
    # The share holding the payload directory drops while serve runs: its mount point is a
    # writable folder of the host's own, without the marker (or another share is mounted in
    # its place). Nothing may be written there: the other servers would never see it.
    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.store.identity import claim_payload_directory, marker_path

    hospital = pair.hospital
    body, content_type = wire(pair)
    known = claim_payload_directory(hospital.store)  # as serve does at its start
    root = hospital.store.payloads.root
    marker = marker_path(root)
    heart = Heartbeat(hospital, hospital.instance)
    heart.beat(started=True)
    assert open_alerts(hospital) == {}
    if lost == "missing":
        marker.unlink()
    else:
        marker.write_text("0" * 32 + "\n", encoding="ascii")
    underneath = sorted(root.rglob("*"))
    heart.beat()
    failing = f"store-failing:{hospital.instance}"
    summary = _summaries(hospital)[failing]
    assert str(marker) in summary
    assert ("is missing" if lost == "missing" else f"names store {'0' * 32}") in summary
    assert f"not store {known}" in summary or lost == "missing"

    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 503, answer.text
    health = http.get("/health")  # its probe is refused too
    assert (health.status_code, health.json()["status"]) == (503, "store-failing")
    heart.beat()  # still lost: not told again
    assert open_alerts(hospital) == {failing: ("critical", 2)}  # the one found, the one refused
    assert sorted(root.rglob("*")) == underneath  # nothing written into the wrong folder
    assert pair.inbound_messages(hospital) == []

    marker.write_text(f"{known}\n", encoding="ascii")  # the share mounted again
    heart.beat()
    assert open_alerts(hospital) == {}
    assert http.get("/health").json()["status"] == "ok"
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text


def test_a_signal_received_while_the_share_is_lost_does_not_end_its_store_failing(
    pair: Pair, http: TestClient
) -> None:
    # An Acknowledgment touches the database only: its receipt proves nothing of the payload
    # directory, and ended the outage (/health "ok") while every message was still refused.
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.engine import signals
    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.formats.xmlparse import parse_xml
    from meldingstjener.store.identity import claim_payload_directory, marker_path

    hospital = pair.hospital
    pair.network.down.add(pair.gp_site.endpoint)  # the GP's Acknowledgment is built here
    sent_id = submit(hospital, dialog_note(pair.hospital_site, pair.gp_site, "x"), actor="t")
    pair.run()
    sent = pair.message(hospital, sent_id)
    mime = unpackage(str(sent.wire_content_type), hospital.store.payloads.read_bytes(sent.wire_ref))
    root = parse_xml(mime.envelope_xml)
    ack = signals.build_ack(pair.gp, parse_envelope(root), root)

    known = claim_payload_directory(hospital.store)
    marker = marker_path(hospital.store.payloads.root)
    heart = Heartbeat(hospital, hospital.instance)
    marker.unlink()
    heart.beat()
    failing = f"store-failing:{hospital.instance}"
    assert open_alerts(hospital)[failing] == ("critical", 1)

    answer = http.post("/ebms", content=ack.body, headers={"Content-Type": ack.content_type})
    assert answer.status_code == 200, answer.text
    assert pair.message(hospital, sent_id).status == "transport-acknowledged"
    assert open_alerts(hospital)[failing] == ("critical", 1)
    assert http.get("/health").status_code == 503

    marker.write_text(f"{known}\n", encoding="ascii")
    heart.beat()
    assert failing not in open_alerts(hospital)


def test_a_marker_read_that_hangs_is_a_lost_share_and_the_heartbeat_goes_on(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard-mounted network share that hangs blocks a read of the marker, maybe for good: the
    # heartbeat must not hang with it (the other serves would take this one for gone).
    import threading

    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.store import identity

    hospital = pair.hospital
    identity.claim_payload_directory(hospital.store)
    heart = Heartbeat(hospital, hospital.instance)
    answers = threading.Event()
    reads: list[int] = []
    unhung = identity.read_marker

    def hangs(directory: Path) -> str | None:
        reads.append(1)
        answers.wait()
        return unhung(directory)

    monkeypatch.setattr(identity, "read_marker", hangs)
    monkeypatch.setattr(identity, "MARKER_READ_TIMEOUT", 0.2)
    payloads = hospital.store.payloads
    assert isinstance(payloads, identity.CheckedPayloadStore)
    try:
        # looks at once (the heartbeat, requests' touches): they wait for one read, not eight
        start = threading.Barrier(8)
        found: list[object] = []

        def look() -> None:
            start.wait()
            found.append(payloads.watch_marker())

        lookers = [threading.Thread(target=look) for _ in range(8)]
        for thread in lookers:
            thread.start()
        for thread in lookers:
            thread.join()
        assert len(reads) == 1
        assert all(isinstance(lost, identity.PayloadDirectoryLost) for lost in found)
        heart.beat()
        failing = f"store-failing:{hospital.instance}"
        assert "has not answered" in _summaries(hospital)[failing]
        heart.beat()  # the first read still hangs: no second one is started beside it
        assert len(reads) == 1
    finally:
        answers.set()
    hung = [t for t in threading.enumerate() if t.name == "payload-marker-read"]
    for thread in hung:
        thread.join(5)
    heart.beat()
    assert open_alerts(hospital) == {}


def test_health_looks_at_the_marker_itself_once_the_last_look_is_a_few_seconds_old(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The share dropped between two heartbeats: /health said ok, and a message was stored into
    # the folder underneath, for up to the heartbeat's minute. A load balancer polls /health
    # every second or two: it reads the marker at most once in a few seconds.
    from meldingstjener.engine import ebms_alerts
    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.store import identity

    hospital = pair.hospital
    body, content_type = wire(pair)
    known = identity.claim_payload_directory(hospital.store)
    root = hospital.store.payloads.root
    marker = identity.marker_path(root)
    Heartbeat(hospital, hospital.instance).beat(started=True)  # looks at the marker
    reads: list[Path] = []
    unread = identity.read_marker

    def counted(directory: Path) -> str | None:
        reads.append(directory)
        return unread(directory)

    monkeypatch.setattr(identity, "read_marker", counted)
    marker.unlink()
    monkeypatch.setattr(ebms_alerts, "HEALTH_MARKER_LOOK", 3600.0)
    assert http.get("/health").json()["status"] == "ok"  # the last look is recent enough
    assert reads == []

    monkeypatch.setattr(ebms_alerts, "HEALTH_MARKER_LOOK", 0.0)  # ... and now it is not
    health = http.get("/health")
    assert (health.status_code, health.json()["status"]) == (503, "store-failing")
    assert len(reads) == 1
    failing = f"store-failing:{hospital.instance}"
    assert f"its marker {marker} is missing" in _summaries(hospital)[failing]
    monkeypatch.setattr(ebms_alerts, "HEALTH_MARKER_LOOK", 3600.0)
    for _ in range(5):  # polled: no read (nor probe, which would read it) a poll
        assert http.get("/health").status_code == 503
    assert len(reads) == 1
    underneath = sorted(root.rglob("*"))
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 503, answer.text
    assert sorted(root.rglob("*")) == underneath  # nothing stored into the wrong folder

    marker.write_text(f"{known}\n", encoding="ascii")  # the share mounted again
    monkeypatch.setattr(ebms_alerts, "HEALTH_MARKER_LOOK", 0.0)
    assert http.get("/health").json()["status"] == "ok"
    assert failing not in open_alerts(hospital)


def test_health_waits_for_a_marker_read_that_hangs_no_longer_than_its_bound(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard-mounted share that hangs: /health answers store-failing within the read's bound,
    # and the polls after it wait for no read.
    import threading
    import time

    from meldingstjener.engine import ebms_alerts
    from meldingstjener.store import identity

    identity.claim_payload_directory(pair.hospital.store)
    answers = threading.Event()
    unhung = identity.read_marker

    def hangs(directory: Path) -> str | None:
        answers.wait()
        return unhung(directory)

    monkeypatch.setattr(identity, "read_marker", hangs)
    monkeypatch.setattr(identity, "MARKER_READ_TIMEOUT", 0.2)
    monkeypatch.setattr(ebms_alerts, "HEALTH_MARKER_LOOK", 3600.0)
    try:
        started = time.monotonic()
        health = http.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "store-failing")
        assert http.get("/health").status_code == 503
        assert time.monotonic() - started < 5  # the bound (0.2 s), and no second read
        assert (
            "has not answered"
            in _summaries(pair.hospital)[f"store-failing:{pair.hospital.instance}"]
        )
    finally:
        answers.set()
    for thread in [t for t in threading.enumerate() if t.name == "payload-marker-read"]:
        thread.join(5)


def test_one_failed_read_of_the_marker_is_read_again_before_it_is_believed(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.store import identity
    from meldingstjener.store.opening import payloads_failed

    hospital = pair.hospital
    identity.claim_payload_directory(hospital.store)
    heart = Heartbeat(hospital, hospital.instance)
    failures = [OSError(errno.ESTALE, "Stale file handle")]
    unfailing = identity.read_marker

    def stale_once(directory: Path) -> str | None:
        if failures:
            raise payloads_failed(directory, failures.pop())
        return unfailing(directory)

    monkeypatch.setattr(identity, "read_marker", stale_once)
    heart.beat()
    assert failures == []  # it was read, and failed once
    assert open_alerts(hospital) == {}


def test_a_request_refused_while_the_share_is_lost_keeps_the_alerts_remedy(
    pair: Pair, http: TestClient
) -> None:
    # The heartbeat found the marker naming another store and told what to do; the requests
    # refused afterwards are the same outage: counted, their generic words not put in its place.
    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.store.identity import claim_payload_directory, marker_path

    hospital = pair.hospital
    body, content_type = wire(pair)
    known = claim_payload_directory(hospital.store)
    marker = marker_path(hospital.store.payloads.root)
    heart = Heartbeat(hospital, hospital.instance)
    heart.beat(started=True)
    marker.write_text("e595" * 8 + "\n", encoding="ascii")
    heart.beat()
    failing = f"store-failing:{hospital.instance}"
    told = _summaries(hospital)[failing]
    assert "put the marker back" in told and f"names store {'e595' * 8}" in told
    for _ in range(2):
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 503, answer.text
    # the remedy kept, the senders turned away counted on it
    sender = pair.gp_site.address_her_id
    assert _summaries(hospital) == {failing: f"{told} {SENDERS_TOLD}: {sender} (2)."}
    assert open_alerts(hospital) == {failing: ("critical", 3)}
    marker.write_text(f"{known}\n", encoding="ascii")
    heart.beat()
    assert open_alerts(hospital) == {}


@pytest.mark.parametrize(
    ("code", "remedy"),
    [
        (errno.EACCES, "Give the server's user write permission on the payload directory"),
        (errno.ENOSPC, "Free disk space (or quota) on the disk of the payload directory"),
    ],
)
def test_a_store_failing_names_the_payload_directory_and_its_cause_s_remedy(
    pair: Pair, http: TestClient, monkeypatch: pytest.MonkeyPatch, code: int, remedy: str
) -> None:
    # This suite runs as root, for whom no folder is unwritable: the error as the kernel
    # gives it to anyone else, with the path it names.
    from meldingstjener.store.payloads import PayloadStore

    small, small_type = wire(pair)
    root = pair.hospital.store.payloads.root
    # each request's file has a random name of its own: the text is the same for both
    where = iter([root / "ab" / ".ab12.tmp", root / "cd" / ".cd34.tmp"])

    def refused(store: PayloadStore, source: object) -> object:
        raise OSError(code, os.strerror(code), str(next(where)))

    monkeypatch.setattr(PayloadStore, "put", refused)
    summaries = []
    for _ in range(2):
        answer = http.post("/ebms", content=small, headers={"Content-Type": small_type})
        assert answer.status_code == 503, answer.text
        [summary] = _summaries(pair.hospital).values()
        summaries.append(summary.split(" Requests refused per the sender")[0])
    assert summaries[0] == summaries[1]
    name = errno.errorcode[code]
    assert f"({name} in the payload directory {root})" in summary
    assert f"{remedy} {root}" in summary and "mend the payload directory" not in summary


def test_a_body_sent_with_a_content_encoding_is_refused_naming_it(pair: Pair) -> None:
    # review (interop 7): a gzipped body was read as MIME, "400 MimeProblem: ... the closing
    # MIME boundary is missing", which names nothing the sender could mend
    import gzip

    body, content_type = wire(pair)
    with TestClient(api_app.create_app(pair.hospital)) as http:
        for encoding in ("gzip", "identity, gzip"):
            answer = http.post(
                "/ebms",
                content=gzip.compress(body),
                headers={"Content-Type": content_type, "Content-Encoding": encoding},
            )
            assert answer.status_code == 415
            assert answer.text.startswith("content-encoding: ") and "gzip" in answer.text
            assert answer.headers["connection"] == "close"
        answer = http.post(
            "/ebms",
            content=body,
            headers={"Content-Type": content_type, "Content-Encoding": "identity"},
        )
        assert answer.status_code == 200, answer.text
    assert pair.inbound_messages(pair.hospital) != []
