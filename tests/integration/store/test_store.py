"""The store on SQLite and PostgreSQL: messages, event log, atomicity, alerts, jobs, state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from meldingstjener.model import Direction, IllegalTransition
from meldingstjener.store.tables import MessageRow, ReceiptRow
from meldingstjener.store.uow import EventKind, LogFilter, Store

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def outbound(**fields: object) -> MessageRow:
    defaults: dict[str, object] = {
        "direction": "out",
        "channel": "http",
        "ebxml_message_id": "m-1@example",
        "msg_id": "a1b2",
        "msg_type": "DIALOG_NOTAT",
        "msg_type_version": "v1.0 2006-10-11",
        "from_her_id": "8142987",
        "to_her_id": "8142520",
        "sender_org_her_id": "8142987",
        "receiver_org_her_id": "8142519",
        "receiver_service_her_id": "8142520",
    }
    defaults.update(fields)
    return MessageRow(**defaults)


def test_message_lifecycle_writes_one_event_per_change(store: Store) -> None:
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="api:epj")
        uow.messages.set_status(row, "sent", actor="worker-1")
        uow.messages.set_status(row, "transport-acknowledged", actor="worker-1")
        uow.commit()
        message_id = row.id
    with store.unit_of_work() as uow:
        stored = uow.messages.get(message_id)
        assert stored is not None and stored.status == "transport-acknowledged"
        events = uow.events.for_message(message_id)
    assert [(e.from_status, e.to_status) for e in events] == [
        (None, "accepted"),
        ("accepted", "sent"),
        ("sent", "transport-acknowledged"),
    ]
    assert [e.actor for e in events] == ["api:epj", "worker-1", "worker-1"]
    assert all(e.at.tzinfo is not None for e in events)


def test_many_events_of_one_transaction_are_all_written_in_order(store: Store) -> None:
    """Events go to the database as multi-row INSERTs of at most 50 rows; 120 take three."""
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="api:epj", at=T0)
        for number in range(119):
            uow.events.record(
                row.id,
                EventKind.NOTE,
                actor=f"note-{number}",
                detail=None if number % 2 else f"detail {number}",
                code="c" if number == 60 else None,
                at=T0 + timedelta(seconds=number + 1),
            )
        uow.commit()
        message_id = row.id
    with store.unit_of_work() as uow:
        events = uow.events.for_message(message_id)
    assert len(events) == 120
    assert [e.actor for e in events[1:]] == [f"note-{n}" for n in range(119)]
    assert [e.at for e in events] == [T0 + timedelta(seconds=n) for n in range(120)]
    assert events[1].detail == "detail 0" and events[2].detail is None
    assert [e.code for e in events].count("c") == 1 and events[61].code == "c"
    assert all(e.message_id == message_id and e.kind == EventKind.NOTE for e in events[1:])


def test_illegal_transition_raises_and_leaves_nothing(store: Store) -> None:
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="test")
        uow.commit()
        message_id = row.id
    with store.unit_of_work() as uow:
        loaded = uow.messages.get(message_id)
        assert loaded is not None
        with pytest.raises(IllegalTransition):
            uow.messages.set_status(loaded, "delivered", actor="test")
    with store.unit_of_work() as uow:
        stored = uow.messages.get(message_id)
        assert stored is not None and stored.status == "accepted"
        assert len(uow.events.for_message(message_id)) == 1


def test_uncommitted_work_is_rolled_back(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="test")
        message_id = row.id
        raise RuntimeError("crash before commit")
    with store.unit_of_work() as uow:
        assert uow.messages.get(message_id) is None
        assert uow.events.for_message(message_id) == []


def test_duplicate_ebxml_message_id_is_refused_per_direction(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.messages.add(outbound(direction="in", ebxml_message_id="dup@x"), actor="t")
        uow.messages.add(outbound(direction="out", ebxml_message_id="dup@x"), actor="t")
        uow.commit()
    with store.unit_of_work() as uow, pytest.raises(IntegrityError):
        uow.messages.add(outbound(direction="in", ebxml_message_id="dup@x"), actor="t")
        uow.commit()
    with store.unit_of_work() as uow:
        found = uow.messages.by_ebxml_id(Direction.INBOUND, "dup@x")
        assert found is not None and found.direction == "in"


def test_event_detail_never_keeps_a_national_identity_number(store: Store) -> None:
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="t", detail="patient 01017012345 in text")
        uow.commit()
        events = uow.events.for_message(row.id)
    assert events[0].detail is not None
    assert "01017012345" not in events[0].detail


def test_log_filters(store: Store) -> None:
    with store.unit_of_work() as uow:
        a = uow.messages.add(outbound(ebxml_message_id="a@x"), actor="t")
        b = uow.messages.add(
            outbound(
                ebxml_message_id="b@x",
                msg_type="APPREC",
                to_her_id="90001",
                receiver_org_her_id="90001",
                receiver_service_her_id=None,
            ),
            actor="t",
        )
        uow.messages.set_status(b, "sent", actor="t")
        uow.commit()
    with store.unit_of_work() as uow:
        assert {m.id for _, m in uow.messages.log(LogFilter(her_id="90001")) if m} == {b.id}
        assert {m.id for _, m in uow.messages.log(LogFilter(msg_type="DIALOG_NOTAT")) if m} == {
            a.id
        }
        assert len(uow.messages.log(LogFilter(status="sent"))) == 2  # both of b's events
        future = datetime.now(UTC) + timedelta(days=1)
        assert uow.messages.log(LogFilter(since=future)) == []
        assert len(uow.messages.log(LogFilter())) == 3


def test_receipts_belong_to_their_message(store: Store) -> None:
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="t")
        uow.receipts.add(
            ReceiptRow(
                message_id=row.id,
                kind="apprec",
                direction="in",
                apprec_status="2",
                error_codes=[{"code": "E21", "text": "Mottaker finnes ikke"}],
            )
        )
        uow.commit()
    with store.unit_of_work() as uow:
        receipts = uow.receipts.for_message(row.id)
    assert receipts[0].error_codes == [{"code": "E21", "text": "Mottaker finnes ikke"}]


def test_alerts_are_deduplicated_and_reopen(store: Store) -> None:
    with store.unit_of_work() as uow:
        for minute in range(3):
            uow.alerts.raise_alert(
                "partner-unreachable",
                severity="warning",
                dedup_key="unreachable:8142520",
                summary="partner 8142520 does not answer",
                partner_her_id="8142520",
                at=T0 + timedelta(minutes=minute),
            )
        uow.commit()
    with store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
        assert (alert.count, alert.first_seen, alert.last_seen) == (
            3,
            T0,
            T0 + timedelta(minutes=2),
        )
        uow.alerts.acknowledge(alert.id, by="operator")
        uow.alerts.resolve("unreachable:8142520")
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.alerts.list(open_only=True) == []
        uow.alerts.raise_alert(
            "partner-unreachable",
            severity="warning",
            dedup_key="unreachable:8142520",
            summary="again",
        )
        uow.commit()
    with store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
        # a new incident: counted from 1, first seen now (not at the outage before)
        assert (alert.count, alert.acknowledged_at) == (1, None)
        assert alert.first_seen == alert.last_seen > T0 + timedelta(minutes=2)


def test_several_alerts_are_resolved_in_one_statement(store: Store) -> None:
    # An incoming Acknowledgment resolves two kinds of alert on the path of every message.
    from sqlalchemy import event

    with store.unit_of_work() as uow:
        for key in ("ack-missing:8142520", "signal-untrusted:8142520", "other:8142520"):
            uow.alerts.raise_alert("k", severity="warning", dedup_key=key, summary="s", at=T0)
        uow.commit()
    updates: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    event.listen(store.database.engine, "before_cursor_execute", seen)
    try:
        with store.unit_of_work() as uow:
            uow.alerts.resolve("ack-missing:8142520", "signal-untrusted:8142520", "none:1", at=T0)
            uow.commit()
    finally:
        event.remove(store.database.engine, "before_cursor_execute", seen)
    assert len(updates) == 1
    with store.unit_of_work() as uow:
        assert [a.dedup_key for a in uow.alerts.list(open_only=True)] == ["other:8142520"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_transactions_raising_the_same_new_alert_both_commit(store: Store) -> None:
    # Two workers meet the same new problem at once (a partner stops answering). The second
    # waits for the first's uncommitted alert and then counts it, instead of failing on the
    # unique key and losing the rest of its transaction. PostgreSQL only: on SQLite the second
    # transaction cannot begin before the first has committed.
    import threading
    import time

    from sqlalchemy import text

    def raise_it(uow: object) -> None:
        uow.alerts.raise_alert(  # type: ignore[attr-defined]
            "partner-unreachable",
            severity="warning",
            dedup_key="partner-unreachable:8142520",
            summary="partner 8142520 does not answer",
            partner_her_id="8142520",
            at=T0,
        )

    failures: list[BaseException] = []

    def second() -> None:
        try:
            with store.unit_of_work() as uow:
                raise_it(uow)
                uow.commit()
        except BaseException as exc:  # reported to the test below
            failures.append(exc)

    with store.unit_of_work() as first:
        raise_it(first)
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        with store.database.engine.connect() as watcher:
            # until the second transaction waits for this one's row
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            while not watcher.execute(waiting).scalar():
                assert time.monotonic() < deadline, "the second transaction never waited"
                watcher.rollback()
                time.sleep(0.01)
        first.commit()
    thread.join(timeout=30)
    assert not thread.is_alive() and failures == []
    with store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
        assert alert.count == 2


def test_jobs_are_claimed_when_due_and_taken_over_after_the_lease(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.jobs.schedule("transmit", T0, data={"n": 1})
        uow.jobs.schedule("transmit", T0 + timedelta(hours=1), data={"n": 2})
        uow.commit()
    lease = timedelta(minutes=2)
    with store.unit_of_work() as uow:
        claimed = uow.jobs.claim_due("w1", now=T0, limit=10, lease=lease)
        uow.commit()
    assert [job.data for job in claimed] == [{"n": 1}]
    with store.unit_of_work() as uow:  # still leased to w1
        assert uow.jobs.claim_due("w2", now=T0 + timedelta(minutes=1), limit=10, lease=lease) == []
        uow.commit()
    with store.unit_of_work() as uow:  # w1 died; its lease ran out
        again = uow.jobs.claim_due("w2", now=T0 + timedelta(minutes=3), limit=10, lease=lease)
        assert [(job.data, job.attempts) for job in again] == [({"n": 1}, 2)]
        uow.jobs.finish(again[0].id)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.jobs.count() == 1
        assert uow.jobs.next_due() == T0 + timedelta(hours=1)


def test_job_dedup_key_moves_instead_of_doubling(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.jobs.schedule("apprec-deadline", T0, dedup_key="deadline:1")
        uow.commit()
    with store.unit_of_work() as uow:
        uow.jobs.schedule("apprec-deadline", T0 + timedelta(hours=5), dedup_key="deadline:1")
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.jobs.count() == 1 and uow.jobs.next_due() == T0 + timedelta(hours=5)


def test_state_values_survive(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.state.set("ar.last_event", "41")
        uow.commit()
    with store.unit_of_work() as uow:
        uow.state.set("ar.last_event", "42")
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.state.get("ar.last_event") == "42"
        assert uow.state.get("nothing") is None


def test_a_restarted_instance_takes_back_its_own_claims(store: Store) -> None:
    with store.unit_of_work() as uow:
        for n in range(3):
            uow.jobs.schedule("transmit", T0, data={"n": n})
        uow.commit()
    lease = timedelta(minutes=2)
    with store.unit_of_work() as uow:
        uow.jobs.claim_due("host-a:8080/0", now=T0, limit=2, lease=lease)
        uow.jobs.claim_due("host-b:8080/0", now=T0, limit=1, lease=lease)
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.jobs.release_claims("host-a:8080/") == 2
        uow.commit()
    with store.unit_of_work() as uow:  # host-b's claim stands; host-a's are free at once
        again = uow.jobs.claim_due("host-a:8080/0", now=T0, limit=10, lease=lease)
        assert sorted(job.data["n"] for job in again if job.data) == [0, 1]


def test_a_state_change_without_the_orm_is_checked_and_logged_like_set_status(
    store: Store,
) -> None:
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="api:epj", at=T0)
        uow.commit()
    later = T0 + timedelta(minutes=1)
    with store.unit_of_work() as uow:
        state = uow.messages.lock_state(row.id)
        assert state is not None and (state.status, state.attempts) == ("accepted", 0)
        state = uow.messages.change_state(
            state, status="sent", attempts=1, actor="worker", detail="sent", at=later
        )
        uow.commit()
    with store.unit_of_work() as uow:  # the attempt count alone leaves the status time
        found = uow.messages.lock_state_by_ebxml_id(Direction.OUTBOUND, "m-1@example")
        assert found == state
        uow.messages.change_state(found, attempts=2, actor="worker", at=later + timedelta(hours=1))
        with pytest.raises(IllegalTransition):
            uow.messages.change_state(found, status="accepted", actor="worker")
        uow.commit()
    with store.unit_of_work() as uow:
        stored = uow.messages.get(row.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.status_changed_at) == ("sent", 2, later)
        assert stored.updated_at == later + timedelta(hours=1)
        events = uow.events.for_message(row.id)
        assert uow.messages.lock_state("no-such-message") is None
        assert uow.messages.lock_state_by_ebxml_id(Direction.INBOUND, "m-1@example") is None
    assert [(e.from_status, e.to_status, e.detail) for e in events] == [
        (None, "accepted", None),
        ("accepted", "sent", "sent"),
    ]


def test_a_finished_job_becomes_the_next_job_of_its_message(store: Store) -> None:
    with store.unit_of_work() as uow:
        first = uow.messages.add(outbound(), actor="t")
        second = uow.messages.add(outbound(ebxml_message_id="m-2@example"), actor="t")
        for row in (first, second):
            uow.jobs.schedule("transmit", T0, message_id=row.id, dedup_key=f"transmit:{row.id}")
        # the second message has its next job already: that one is moved, not doubled
        uow.jobs.schedule(
            "ack-timeout",
            T0 + timedelta(hours=1),
            message_id=second.id,
            dedup_key=f"ack:{second.id}",
        )
        uow.commit()
    lease = timedelta(minutes=2)
    with store.unit_of_work() as uow:
        claimed = uow.jobs.claim_due("w1", now=T0, limit=10, lease=lease)
        uow.commit()
    transmits = {job.message_id: job for job in claimed if job.kind == "transmit"}
    due = T0 + timedelta(minutes=30)
    with store.unit_of_work() as uow:
        for row in (first, second):
            uow.jobs.finish_and_schedule(
                transmits[row.id].id,
                "ack-timeout",
                due,
                message_id=row.id,
                dedup_key=f"ack:{row.id}",
            )
        uow.commit()
    with store.unit_of_work() as uow:
        assert uow.jobs.count() == 2 and uow.jobs.next_due() == due
        assert uow.jobs.claim_due("w2", now=due - timedelta(seconds=1), limit=10, lease=lease) == []
        again = uow.jobs.claim_due("w2", now=due, limit=10, lease=lease)
        uow.commit()
    assert sorted((job.kind, job.message_id, job.attempts) for job in again) == sorted(
        [("ack-timeout", first.id, 1), ("ack-timeout", second.id, 1)]
    )


def test_a_transport_receipt_is_written_at_once_with_its_id(store: Store) -> None:
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="t")  # not flushed yet: the receipt waits for it
        receipt_id = uow.receipts.add(
            ReceiptRow(
                message_id=row.id,
                kind="message-error",
                direction="out",
                at=T0,
                ebxml_message_id="error-1@example",
                ref_to_message_id="m-1@example",
                error_codes=[{"code": "SecurityFailure"}],
                description="for 01017012345: the signature did not verify",
                wire_ref="wire-1",
                wire_content_type="multipart/related",
            )
        ).id
        uow.commit()
    with store.unit_of_work() as uow:
        [receipt] = uow.receipts.for_message(row.id)
    assert (receipt.id, receipt.kind, receipt.at, receipt.wire_ref, receipt.error_codes) == (
        receipt_id,
        "message-error",
        T0,
        "wire-1",
        [{"code": "SecurityFailure"}],
    )
    assert receipt.description is not None and "01017012345" not in receipt.description


def test_a_new_message_written_ahead_of_the_orm_keeps_later_changes(store: Store) -> None:
    """New message rows are written by a prepared INSERT at the first flush; a change after it,
    in the same unit of work, must still reach the database (as an UPDATE)."""
    with store.unit_of_work() as uow:
        row = uow.messages.add(outbound(), actor="api:epj", at=T0)
        uow.jobs.schedule("transmit", T0, message_id=row.id)  # flushes: the row is written
        uow.messages.set_status(row, "sent", actor="worker", at=T0 + timedelta(seconds=1))
        row.attempts += 1
        uow.commit()
    with store.unit_of_work() as uow:
        stored = uow.messages.get(row.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.created_at) == ("sent", 1, T0)
        assert stored.status_changed_at == T0 + timedelta(seconds=1)
        assert stored.updated_at is not None and stored.msg_id == "a1b2"
        assert [e.to_status for e in uow.events.for_message(row.id)] == ["accepted", "sent"]


def test_a_finished_jobs_id_is_never_given_to_a_new_job(store: Store) -> None:
    # Jobs are finished and rescheduled by id: a worker finishing a job that another unit of
    # work removed first must not hit the job stored after it (SQLite reused the top id).
    from sqlalchemy import select

    from meldingstjener.store.tables import JobRow

    with store.unit_of_work() as uow:
        uow.jobs.schedule("transmit", T0)
        uow.commit()
    with store.unit_of_work() as uow:
        [first] = uow.session.scalars(select(JobRow.id))
        uow.jobs.finish(first)
        uow.jobs.schedule("apprec-deadline", T0)
        uow.commit()
    with store.unit_of_work() as uow:
        [second] = uow.session.scalars(select(JobRow.id))
        uow.jobs.finish(first)  # the late finish of the first job
        uow.commit()
    with store.unit_of_work() as uow:
        assert list(uow.session.scalars(select(JobRow.id))) == [second] and second != first


def test_a_locked_read_sees_what_another_transaction_committed(
    postgres_url: str, tmp_path: Path
) -> None:
    # A row read before its lock (the AppRec's lookup, then its lock) must be read afresh when
    # locked: the ORM keeps what it holds, and the status judged would be the old one.
    # PostgreSQL only: on SQLite a unit of work holds the write lock from its start, so no
    # other transaction can commit in between.
    from sqlalchemy import update

    from meldingstjener.store.database import Database
    from meldingstjener.store.migrate import upgrade
    from meldingstjener.store.payloads import PayloadStore

    database = Database(postgres_url)
    upgrade(database)
    store = Store(database, PayloadStore(tmp_path / "payloads"))
    try:
        with store.unit_of_work() as uow:
            message_id = uow.messages.add(outbound(ebxml_message_id="lock@x"), actor="t").id
            uow.commit()
        with store.unit_of_work() as uow:
            before = uow.messages.get(message_id)
            assert before is not None and before.status == "accepted"
            with database.engine.begin() as other:
                other.execute(
                    update(MessageRow)
                    .where(MessageRow.id == message_id)
                    .values(status="transport-acknowledged")
                )
            locked = uow.messages.get(message_id, for_update=True)
            assert locked is not None and locked.status == "transport-acknowledged"
            by_id = uow.messages.by_ebxml_id(Direction.OUTBOUND, "lock@x", for_update=True)
            assert by_id is locked
    finally:
        with database.engine.begin() as connection:
            connection.exec_driver_sql("TRUNCATE messages, message_events CASCADE")
        database.dispose()


def test_a_database_error_does_not_carry_the_statements_values(store: Store) -> None:
    # Such errors are logged with their tracebacks; a value may be a partner's free text.
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with store.unit_of_work() as uow, pytest.raises(DBAPIError) as failed:
        uow.session.execute(
            text("INSERT INTO no_such_table (text) VALUES (:text)"), {"text": "Kari Nordmann"}
        )
    assert "no_such_table" in str(failed.value)
    assert "Kari" not in str(failed.value)
