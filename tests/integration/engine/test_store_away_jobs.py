"""The worker's jobs while the payload store is away (its share unmounted, the marker gone): they
wait for it, not counted as tries, with no traceback and no ``job-failing`` alert, and go on
once the marker is back. The outage is told once, by the ``store-failing`` period."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from engine_pair import Pair
from sqlalchemy import select

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import failing_jobs
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.instances import Heartbeat
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.store.identity import claim_payload_directory, marker_path
from meldingstjener.store.tables import JobRow


def _job(ctx: EngineContext, message_id: str) -> tuple[str, int, int, Any, str | None]:
    """The message's one job: kind, attempts (claims), errors in a row, due time, claim."""
    with ctx.store.unit_of_work() as uow:
        [row] = uow.session.scalars(select(JobRow).where(JobRow.message_id == message_id))
        return row.kind, row.attempts, row.crashes, row.due_at, row.claimed_by


def _open_alert_kinds(ctx: EngineContext) -> list[str]:
    with ctx.store.unit_of_work() as uow:
        return sorted(alert.kind for alert in uow.alerts.list(open_only=True))


def test_a_queued_send_waits_for_a_lost_payload_share_without_spending_a_try(
    pair_with_gp_database: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    # A message is queued when the payload share drops under a running serve. Its send is
    # tried every STORE_PAUSE while the share is away, as long as PersistDuration and longer:
    # none of those counts (no crash, no claim that would make it "maybe sent", which
    # PersistDuration would then give up as not-delivered), no traceback, no job-failing.
    pair = pair_with_gp_database
    ctx = pair.gp
    known = claim_payload_directory(ctx.store)  # as serve does at its start
    message_id = submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "Hei"), actor="t")
    heart = Heartbeat(ctx, ctx.instance)
    heart.beat(started=True)
    marker = marker_path(ctx.store.payloads.root)
    marker.unlink()  # the share unmounted: its mount point, without the marker, in its place
    heart.beat()
    assert _open_alert_kinds(ctx) == ["store-failing"]
    queued = pair.message(ctx, message_id)
    kind, claims, crashes, _, _ = _job(ctx, message_id)
    assert (kind, crashes) == ("transmit", 0)

    worker = Worker(ctx, f"{ctx.instance}/0")
    pause = int(failing_jobs.STORE_PAUSE.total_seconds())
    persist = 3600  # the pair's PersistDuration
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="meldingstjener"):
        for _ in range(persist // pause + 2):  # far more than ALERT_AFTER tries
            now = ctx.clock()
            assert worker.run_once() == 1
            assert _job(ctx, message_id) == (
                "transmit",
                claims,  # the claim undone: not a try
                0,  # not an error
                now + failing_jobs.STORE_PAUSE,
                None,
            )
            assert worker.run_once() == 0  # not due again before its pause
            pair.clock.advance(seconds=pause)
    assert ctx.clock() > queued.expires_at  # type: ignore[operator]
    jobs_said = [
        record
        for record in caplog.records
        if record.name.startswith(("meldingstjener.engine.worker", "meldingstjener.engine.fail"))
    ]
    assert jobs_said == []  # no line per job: the store-failing period told it
    assert not any(record.exc_info for record in caplog.records)
    assert _open_alert_kinds(ctx) == ["store-failing"]  # no job-failing
    row = pair.message(ctx, message_id)
    assert (row.status, row.attempts) == (queued.status, 0)
    assert row.next_attempt_at == queued.next_attempt_at
    assert pair.network.sent == []

    marker.write_text(f"{known}\n", encoding="ascii")  # the share mounted again
    heart.beat()
    assert _open_alert_kinds(ctx) == []
    assert worker.run_once() == 1
    row = pair.message(ctx, message_id)
    # never sent before, so it goes although PersistDuration has passed (as after a backlog)
    assert (row.status, row.attempts) == ("sent", 1)
    assert len(pair.network.sent) == 1
    pair.run()
    assert pair.message(ctx, message_id).status == "transport-acknowledged"


def test_a_resend_the_outage_outlasts_is_given_up_saying_the_store_failed(pair: Pair) -> None:
    # A message whose first send failed waits for its resend while the share is away: its
    # tries are not spent, but the partner remembers its MessageId only for PersistDuration,
    # so once that has passed it cannot be resent. Given up as not-delivered, the alert says
    # that the store was failing meanwhile (its store-failing alert open beside it).
    ctx = pair.gp
    claim_payload_directory(ctx.store)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "Hei"), actor="t")
    worker = Worker(ctx, f"{ctx.instance}/0")
    assert worker.run_once() == 1
    first = pair.message(ctx, message_id)
    assert (first.status, first.attempts) == ("retrying", 1)
    pair.network.down.clear()
    heart = Heartbeat(ctx, ctx.instance)
    heart.beat(started=True)
    marker_path(ctx.store.payloads.root).unlink()
    heart.beat()
    while ctx.clock() < first.expires_at:  # type: ignore[operator]
        pair.clock.advance(seconds=int(failing_jobs.STORE_PAUSE.total_seconds()))
        worker.run_once()
        assert pair.message(ctx, message_id).attempts == 1  # no try spent meanwhile
    row = pair.message(ctx, message_id)
    assert (row.status, row.attempts) == ("not-delivered", 1)
    assert len(pair.network.sent) == 1
    with ctx.store.unit_of_work() as uow:
        alerts = {alert.kind: alert.summary for alert in uow.alerts.list(open_only=True)}
    # the partner's unreachable alert resolved with the give-up: nothing more waits for it
    assert sorted(alerts) == ["not-delivered", "store-failing"]
    assert "PersistDuration ran out before a resend" in alerts["not-delivered"]
    assert "store-failing alert" in alerts["not-delivered"]


def test_a_full_database_is_the_store_refusing_as_for_the_503s(tmp_path: Path) -> None:
    # The 503s counted the database's own "full" (SQLite's SQLITE_FULL, PostgreSQL's disk_full)
    # as the store failing; the jobs did not, and took it for a crash of theirs. A real full
    # database: SQLite's page count capped below what the insert needs. Another of its errors
    # (a table missing: a fault) is not waited for.
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from meldingstjener.engine.ebms_alerts import store_refused

    engine = create_engine(f"sqlite:///{tmp_path / 'full.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (b BLOB)"))
    with pytest.raises(OperationalError) as full, engine.begin() as connection:
        connection.execute(text("PRAGMA max_page_count = 3"))
        connection.execute(text("INSERT INTO t VALUES (zeroblob(100000))"))
    engine.dispose()
    assert "full" in str(full.value)
    assert store_refused(full.value)
    with pytest.raises(OperationalError) as missing, engine.begin() as connection:
        connection.execute(text("INSERT INTO no_such_table VALUES (1)"))
    assert not store_refused(missing.value)


def test_of_postgresqls_insufficient_resources_only_a_full_disk_is_waited_for() -> None:
    # Out of memory (53200) may come back at every repeat of the same job: waiting for it
    # without end, uncounted, would hide it; the 503 of a request still counts it (RESOURCES).
    import psycopg.errors
    from sqlalchemy.exc import OperationalError

    from meldingstjener.engine.ebms_alerts import _reason, store_refused
    from meldingstjener.store.database import RESOURCES, trouble

    full = OperationalError("INSERT", {}, psycopg.errors.DiskFull())
    memory = OperationalError("INSERT", {}, psycopg.errors.OutOfMemory())
    assert store_refused(full)
    assert not store_refused(memory)
    assert trouble(full) == trouble(memory) == RESOURCES
    # the operator is told which (the SQLSTATE: no text of the error, which may quote values)
    assert _reason(full) == "the database: OperationalError (53100)"
    assert _reason(memory) == "the database: OperationalError (53200)"
