"""Retention of the API's audit log (``[retention] audit_days``, migration 0028) on SQLite and
PostgreSQL: rows older than the cutoff go, in batches, through a permit that the database
itself requires; newer rows stay; 0 (the default) keeps every row; a DELETE, UPDATE or (on
PostgreSQL) TRUNCATE of anyone else is still refused, before and after a run, and so is a permit
of a cutoff within 30 days, and (SQLite) a REPLACE of a row; two runs at once take their
batches in turn; the migration goes up on a filled store and down again; ``meldingstjener
audit`` says from when the log is whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Row, delete, func, insert, select, text, update
from sqlalchemy.exc import DatabaseError
from sqlalchemy.sql import Executable

from meldingstjener.config import AUDIT_DAYS_FLOOR, RetentionSettings
from meldingstjener.engine import retention
from meldingstjener.store import audit
from meldingstjener.store.migrate import downgrade, upgrade
from meldingstjener.store.tables import AuditRetentionPermitRow, AuditRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

# Now, not a fixed day: the rows written by audit.add itself carry the clock's time.
NOW = utcnow()
RULES = RetentionSettings(audit_days=365)
CUTOFF = NOW - timedelta(days=365)
SECOND = timedelta(seconds=1)
REFUSED = "append-only"


def _rows_at(store: Store, *times: datetime, client: str = "epj") -> None:
    """One audit row at each of ``times`` (as audit.add writes one, but at a time of our own)."""
    with store.unit_of_work() as uow:
        for number, at in enumerate(times):
            uow.session.add(
                AuditRow(
                    at=at,
                    client=client,
                    person=None,
                    action="get-message",
                    message_id=f"m-{number}",
                    outcome=audit.Outcome.OK,
                )
            )
        uow.commit()


def _times(store: Store) -> list[datetime]:
    with store.unit_of_work() as uow:
        return list(uow.session.scalars(select(AuditRow.at).order_by(AuditRow.at, AuditRow.id)))


def _permits(store: Store) -> int:
    with store.unit_of_work() as uow:
        return uow.session.scalar(select(func.count()).select_from(AuditRetentionPermitRow)) or 0


def _refused(store: Store, statement: Executable, refusal: str = REFUSED) -> None:
    """``statement`` is refused by the database (its transaction rolls back)."""
    with store.unit_of_work() as uow, pytest.raises(DatabaseError, match=refusal):
        uow.session.execute(statement)
        uow.commit()


def test_rows_older_than_audit_days_go_in_batches_and_newer_ones_stay(
    own_database: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = own_database
    monkeypatch.setattr(retention, "BATCH", 2)
    old = [NOW - timedelta(days=1000), NOW - timedelta(days=400), CUTOFF - SECOND]
    # two rows of one time: a batch's end falls between them, the next batch takes the other
    tied = CUTOFF - timedelta(days=2)
    kept = [CUTOFF + SECOND, NOW - timedelta(days=1)]
    _rows_at(store, *old, tied, tied, *kept)
    assert audit.kept_from(store) is None

    counted = retention.run(store, RULES, now=NOW, dry_run=True)
    assert (counted.audit_rows, len(_times(store))) == (5, 7)

    first = retention.run(store, RULES, now=NOW, batches=1)
    assert (first.audit_rows, first.more) == (2, True)
    assert _times(store) == [tied, tied, CUTOFF - SECOND, *kept]
    rest = retention.run(store, RULES, now=NOW)
    assert (rest.audit_rows, rest.more) == (3, False)
    assert _times(store) == kept
    assert "deleted 3 audit log row(s)" in rest.line()
    assert _permits(store) == 0  # none is ever left behind
    assert audit.kept_from(store) == CUTOFF
    assert retention.run(store, RULES, now=NOW).audit_rows == 0  # done once

    # audit_days made longer deletes nothing and brings nothing back: the log is still whole
    # only from the cutoff of the run that deleted
    longer = RetentionSettings(audit_days=3000)
    assert retention.run(store, longer, now=NOW + timedelta(days=1)).audit_rows == 0
    assert audit.kept_from(store) == CUTOFF


@pytest.mark.parametrize("days", [1, AUDIT_DAYS_FLOOR - 1])
def test_audit_days_within_the_last_month_are_refused(days: int) -> None:
    # the database refuses a permit's cutoff within 30 days: the settings say so at the start,
    # not a run failing each day
    with pytest.raises(
        ValidationError, match=f"audit_days = {days} .* set at least {AUDIT_DAYS_FLOOR}, or 0"
    ):
        RetentionSettings(audit_days=days)
    assert RetentionSettings(audit_days=AUDIT_DAYS_FLOOR).audit_days == AUDIT_DAYS_FLOOR


def test_audit_days_zero_the_default_deletes_no_row(own_database: Store) -> None:
    store = own_database
    assert RetentionSettings().audit_days == 0
    _rows_at(store, NOW - timedelta(days=10_000), NOW - timedelta(days=400))
    for rules in (RetentionSettings(), RetentionSettings(payload_days=0, message_days=30)):
        assert retention.run(store, rules, now=NOW, dry_run=True).audit_rows == 0
        report = retention.run(store, rules, now=NOW)
        assert report.audit_rows == 0 and "audit" not in report.line()
    assert len(_times(store)) == 2
    assert audit.kept_from(store) is None


def test_a_delete_or_update_of_anyone_else_is_refused_before_and_after_a_run(
    store: Store,
) -> None:
    # the shared session database on PostgreSQL: this test's rows are known by their client
    client = "refused-epj"
    _rows_at(store, NOW - timedelta(days=5000), NOW - timedelta(days=1), client=client)
    mine = AuditRow.client == client
    old_enough = mine & (AuditRow.at < CUTOFF)  # for retention; not for anyone else
    for statement in (
        delete(AuditRow).where(mine),
        delete(AuditRow).where(old_enough),
        update(AuditRow).where(old_enough).values(outcome=audit.Outcome.REFUSED),
    ):
        _refused(store, statement)
    assert _count(store, mine) == 2

    retention.run(store, RULES, now=NOW)

    assert _count(store, mine) == 1  # the old one went
    _rows_at(store, NOW - timedelta(days=5000), client=client)
    for statement in (
        delete(AuditRow).where(old_enough),  # no permit outlived the run
        update(AuditRow).where(mine).values(outcome=audit.Outcome.REFUSED),
    ):
        _refused(store, statement)
    assert _count(store, mine) == 2


def _count(store: Store, rows: ColumnElement[bool]) -> int:
    with store.unit_of_work() as uow:
        return uow.session.scalar(select(func.count()).where(rows)) or 0


def test_a_permit_lets_no_delete_through_after_its_own_statement(store: Store) -> None:
    # The permit's trigger deletes its batch and the permit in the INSERT that writes it: a
    # DELETE later in the same transaction, of any row, is refused as ever. A permit of a
    # cutoff later than its batch takes no row newer than its batch either.
    client = "permit-epj"
    _rows_at(store, NOW - timedelta(days=900), NOW - timedelta(days=800), client=client)
    mine = AuditRow.client == client
    with store.unit_of_work() as uow:
        first = uow.session.execute(
            select(AuditRow.at, AuditRow.id).where(mine).order_by(AuditRow.at)
        ).first()
    assert first is not None
    with store.unit_of_work() as uow, pytest.raises(DatabaseError, match=REFUSED):
        uow.session.execute(
            insert(AuditRetentionPermitRow).values(
                cutoff=NOW - timedelta(days=31), through_at=first.at, through_id=first.id
            )
        )
        assert uow.session.scalar(select(func.count()).where(mine)) == 1  # its batch went
        uow.session.execute(delete(AuditRow).where(mine))
    assert _count(store, mine) == 2  # that transaction rolled back: both rows are there
    assert _permits(store) == 0


def test_a_permit_reaching_a_row_not_older_than_its_cutoff_is_refused_whole(
    store: Store,
) -> None:
    # the database holds "only rows older than the cutoff" itself, not the pass's choice
    client = "reaching-epj"
    _rows_at(store, NOW - timedelta(days=900), NOW - timedelta(days=800), client=client)
    mine = AuditRow.client == client
    with store.unit_of_work() as uow:
        last = uow.session.execute(
            select(AuditRow.at, AuditRow.id).where(mine).order_by(AuditRow.at.desc())
        ).first()
    assert last is not None
    permit = insert(AuditRetentionPermitRow).values(
        cutoff=NOW - timedelta(days=850), through_at=last.at, through_id=last.id
    )
    _refused(store, permit)
    assert _count(store, mine) == 2 and _permits(store) == 0


def test_a_permit_of_a_cutoff_within_30_days_is_refused(store: Store) -> None:
    # The database holds audit_days' floor itself, by its own clock: a permit written by hand
    # with a cutoff of tomorrow deleted today's rows
    client = "recent-epj"
    ages = [40, 29.5, 0]  # days
    _rows_at(store, *(NOW - timedelta(days=days) for days in ages), client=client)
    mine = AuditRow.client == client
    with store.unit_of_work() as uow:
        keys = list(
            uow.session.execute(
                select(AuditRow.at, AuditRow.id).where(mine).order_by(AuditRow.at, AuditRow.id)
            )
        )
    oldest, within_a_month, today = keys

    def permit(cutoff: datetime, through: Row[tuple[datetime, int]]) -> Executable:
        return insert(AuditRetentionPermitRow).values(
            cutoff=cutoff, through_at=through.at, through_id=through.id
        )

    too_new = "cutoff of an audit log retention permit must be 30 days ago or earlier"
    _refused(store, permit(NOW + timedelta(days=1), today), too_new)
    _refused(store, permit(NOW - timedelta(days=AUDIT_DAYS_FLOOR - 1), within_a_month), too_new)
    assert _count(store, mine) == 3
    with store.unit_of_work() as uow:  # 30 days ago, the least audit_days, is let through
        uow.session.execute(permit(NOW - timedelta(days=AUDIT_DAYS_FLOOR), oldest))
        uow.commit()
    assert _count(store, mine) == 2 and _permits(store) == 0


def test_a_row_is_not_rewritten_by_an_insert_of_its_id(store: Store) -> None:
    # SQLite's INSERT OR REPLACE (REPLACE INTO) deletes the row of that id to make room, and no
    # DELETE trigger fires: the row came back rewritten. PostgreSQL's upsert is an UPDATE.
    client = "replaced-epj"
    _rows_at(store, NOW - timedelta(days=2), client=client)
    with store.unit_of_work() as uow:
        row_id = uow.session.scalar(select(AuditRow.id).where(AuditRow.client == client))
    rewritten = (
        "audit_log (id, at, client, action, outcome) SELECT id, at, 'forged', action, "
        f"'refused' FROM audit_log WHERE id = {row_id}"
    )
    if store.database.is_postgresql:
        upserts = [f"INSERT INTO {rewritten} ON CONFLICT (id) DO UPDATE SET client = 'forged'"]
    else:
        upserts = [f"INSERT OR REPLACE INTO {rewritten}", f"REPLACE INTO {rewritten}"]
    for upsert in upserts:
        _refused(store, text(upsert))
    with store.unit_of_work() as uow:
        kept = uow.session.execute(
            select(AuditRow.client, AuditRow.outcome).where(AuditRow.id == row_id)
        ).one()
    assert tuple(kept) == (client, audit.Outcome.OK)


def test_two_runs_at_once_take_their_batches_in_turn(
    own_database: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daily job and a hand-run `meldingstjener retention` at once: each chose a batch
    # skipping the other's rows, a permit deletes every row up to its batch's end, and the two
    # waited for each other's rows (a deadlock; the failed run's counts lost). A batch now waits
    # for the other's to end before it chooses, and finds what that one left.
    store = own_database
    if not store.database.is_postgresql:
        pytest.skip("SQLite: a unit of work holds the database's one writer from its start")
    monkeypatch.setattr(retention, "BATCH", 2)
    _rows_at(store, *(CUTOFF - timedelta(days=days) for days in range(6, 0, -1)), NOW)
    reports: list[retention.RetentionReport] = []
    other = threading.Thread(target=lambda: reports.append(retention.run(store, RULES, now=NOW)))
    with store.unit_of_work() as first:
        batch = audit.older_than(first, CUTOFF, after=None, limit=2)
        other.start()
        assert _lock_waited_for(store) == "advisory"  # not the rows of the batch under way
        audit.delete_batch(first, CUTOFF, batch[-1])
        first.commit()
    other.join(30)
    assert [report.audit_rows for report in reports] == [4]
    assert _times(store) == [NOW]


def _lock_waited_for(store: Store) -> str:
    """What another connection to the store's database waits for (pg_stat_activity's
    wait_event), as soon as one waits for a lock."""
    deadline = time.monotonic() + 10
    with store.database.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.scalar(
                text(
                    "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
                )
            )
            connection.rollback()  # the next look a statement of its own, seeing anew
            if waiting is not None:
                return str(waiting)
            threading.Event().wait(0.01)
    raise AssertionError("no connection waited for a lock within 10 s")


def test_a_truncate_is_refused_on_postgresql(store: Store) -> None:
    if not store.database.is_postgresql:
        pytest.skip("SQLite has no TRUNCATE: a DELETE without WHERE is refused as any")
    _rows_at(store, NOW - timedelta(days=2), client="truncate-epj")
    _refused(store, text("TRUNCATE audit_log"))
    _refused(store, delete(AuditRow))


def test_the_migration_goes_up_on_a_filled_store_and_down_again(own_database: Store) -> None:
    store = own_database
    database = store.database
    downgrade(database, "0027")
    _rows_at(store, NOW - timedelta(days=800), NOW - timedelta(days=1))
    _refused(store, delete(AuditRow))  # 0002's guard, before 0028

    upgrade(database)

    assert len(_times(store)) == 2  # the rows are kept as they were
    _refused(store, delete(AuditRow))
    _refused(store, update(AuditRow).values(outcome=audit.Outcome.REFUSED))
    assert retention.run(store, RULES, now=NOW).audit_rows == 1
    assert _times(store) == [NOW - timedelta(days=1)]

    downgrade(database, "0027")

    with database.engine.connect() as connection:
        tables = {
            name
            for name in ("audit_log", "audit_log_retention_permits")
            if connection.dialect.has_table(connection, name)
        }
    assert tables == {"audit_log"}
    _rows_at(store, NOW - timedelta(days=800))
    _refused(store, delete(AuditRow))  # 0002's guard is back, whole
    _refused(store, update(AuditRow).values(outcome=audit.Outcome.REFUSED))
    assert len(_times(store)) == 2
    upgrade(database)
    assert retention.run(store, RULES, now=NOW).audit_rows == 1


def test_the_audit_command_says_from_when_the_log_is_whole(tmp_path: Path) -> None:
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings

    store = open_store(load_settings(data_dir=tmp_path))
    now = utcnow()
    _rows_at(store, now - timedelta(days=40), now - timedelta(days=1))
    store.database.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    command = [sys.executable, "-m", "meldingstjener", "--data-dir", str(tmp_path)]

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*command, *arguments], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done

    assert "reaches back" not in run("audit").stderr  # nothing deleted yet
    env["MELDINGSTJENER_RETENTION__AUDIT_DAYS"] = "30"
    assert '"audit_rows_deleted": 1' in run("retention", "--json").stdout
    told = run("audit", "--json")
    assert len(told.stdout.splitlines()) == 1  # the entries only
    assert "the audit log reaches back to " in told.stderr
    assert "older entries were deleted by retention ([retention] audit_days)" in told.stderr
    whole_from = told.stderr.split("reaches back to ")[1].split(": older")[0]
    reached = datetime.fromisoformat(whole_from)
    assert abs(reached - (now - timedelta(days=30))) < timedelta(minutes=2)


def test_a_permit_deletes_from_its_first_row_to_its_last(store: Store) -> None:
    # A batch's permit names its first row too: its DELETE is a range of ix_audit_log_at
    # bounded both ways, not everything up to its last row
    client = "ranged-epj"
    _rows_at(store, *(NOW - timedelta(days=days) for days in (900, 800, 700, 600)), client=client)
    mine = AuditRow.client == client
    with store.unit_of_work() as uow:
        keys = list(
            uow.session.execute(
                select(AuditRow.at, AuditRow.id).where(mine).order_by(AuditRow.at, AuditRow.id)
            )
        )
    with store.unit_of_work() as uow:
        audit.delete_batch(uow, CUTOFF, tuple(keys[2]), first=tuple(keys[1]))
        uow.commit()
    with store.unit_of_work() as uow:
        left = list(uow.session.scalars(select(AuditRow.id).where(mine).order_by(AuditRow.at)))
    assert left == [keys[0].id, keys[3].id] and _permits(store) == 0


def test_a_batch_is_read_along_the_index_without_statistics(own_database: Store) -> None:
    # An upgraded store's log not yet analysed: PostgreSQL took the trigger's DELETE (``at``
    # bounded above only) for a third of the table and read all of it at every batch, 1,900
    # rows a second among 1,000,000. Its plan, as the trigger runs it (a generic plan, which
    # PL/pgSQL keeps after five runs), told by auto_explain as a notice.
    store = own_database
    if not store.database.is_postgresql:
        pytest.skip("SQLite has no planner statistics to lack: it walks the index")
    with store.database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_log SET (autovacuum_enabled = false)"))
        connection.execute(
            text(
                "INSERT INTO audit_log (at, client, action, outcome) "
                "SELECT :start + n * interval '1 minute', 'epj', 'get-message', 'ok' "
                "FROM generate_series(1, 50000) AS n"
            ),
            {"start": NOW - timedelta(days=800)},
        )
    plans: list[str] = []
    with store.unit_of_work() as uow:
        raw = uow.session.connection().connection.driver_connection
        assert raw is not None
        raw.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_level = notice",
            "SET plan_cache_mode = force_generic_plan",
        ):
            uow.session.execute(text(setting))
        after = None
        for _ in range(3):
            batch = audit.older_than(uow, CUTOFF, after=after, limit=200)
            audit.delete_batch(uow, CUTOFF, batch[-1], first=batch[0])
            after = batch[-1]
        uow.commit()
    deletes = [plan for plan in plans if "DELETE FROM audit_log WHERE" in plan]
    assert len(deletes) == 3, plans
    assert all("Seq Scan" not in plan and "ix_audit_log_at" in plan for plan in deletes), deletes
