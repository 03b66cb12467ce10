"""The jobs ``GET /metrics`` counts: each kind's jobs waiting, counted among its
:data:`~meldingstjener.store.figures.COUNTED_JOBS` due longest, so that a scrape of a store with
a backlog of hundreds of thousands reads a bounded part of it (along ``ix_jobs_kind_due``), on
SQLite and PostgreSQL. A figure at the bound is read as "at least". Those a worker holds are
counted apart, all of them (through ``ix_jobs_held``): handed to a worker at submit, they are
due now, behind the backlog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, inspect, text
from statement_plans import planned

from meldingstjener.store.figures import COUNTED_JOBS, LATE_AFTER, DueJobs, read_figures
from meldingstjener.store.migrate import downgrade, upgrade
from meldingstjener.store.tables import JobRow
from meldingstjener.store.uow import Store

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
BACKLOG = COUNTED_JOBS + 500
HELD = 8


def _job(
    key: str, kind: str, due_at: datetime, *, held: bool = False, ran_out: bool = False
) -> dict[str, object]:
    """A job, held by a worker (its lease running) or claimed by one whose lease ran out."""
    lease = NOW + timedelta(minutes=5) if held else NOW - timedelta(minutes=1) if ran_out else None
    return {
        "kind": kind,
        "dedup_key": key,
        "due_at": due_at,
        "attempts": 0,
        "crashes": 0,
        "claimed_by": "worker-1" if lease else None,
        "claimed_until": lease,
        "created_at": due_at,
    }


def _fill(store: Store, backlog_of: int = BACKLOG) -> None:
    """A backlog of ``backlog_of`` sends due over the last hour, waiting (the first one claimed
    by a worker whose lease ran out: waiting again); :data:`HELD` sends held by a worker, handed
    to it at submit: due now, behind the backlog (the last one a second after this clock, by
    the submitting process's); two retention runs due behind all of them, and ack-timeouts not
    due yet."""
    backlog = [
        _job(
            f"transmit:{n}",
            "transmit",
            NOW - timedelta(hours=1) + timedelta(hours=1) * n / backlog_of,
            ran_out=n == 0,
        )
        for n in range(backlog_of)
    ]
    handed = [
        _job(
            f"transmit:new:{n}",
            "transmit",
            NOW + timedelta(seconds=1 if n == HELD - 1 else 0),
            held=True,
        )
        for n in range(HELD)
    ]
    behind = [
        _job(f"retention:{n}", "retention", NOW - timedelta(seconds=n * 90)) for n in range(2)
    ]
    later = [_job(f"ack:{n}", "ack-timeout", NOW + timedelta(minutes=n + 1)) for n in range(50)]
    with store.database.engine.begin() as connection:
        connection.execute(insert(JobRow.__table__), backlog + handed + behind + later)
        connection.execute(text("ANALYZE jobs" if store.database.is_postgresql else "ANALYZE"))


def test_each_kinds_jobs_due_are_counted_up_to_the_bound(store: Store) -> None:
    _fill(store)
    with store.database.reading() as connection:
        figures = read_figures(connection, NOW)
    assert sorted(figures.jobs, key=lambda jobs: jobs.kind) == [
        # both counted, the one a minute late among them; the backlog passed no bound for them
        DueJobs("retention", waiting=2, late=1, running=0, oldest_due=NOW - timedelta(seconds=90)),
        # the bound reached: at least COUNTED_JOBS waiting; those held all counted, though
        # due behind the backlog
        DueJobs(
            "transmit",
            waiting=COUNTED_JOBS,
            late=COUNTED_JOBS,
            running=HELD,
            oldest_due=NOW - timedelta(hours=1),
        ),
    ]  # the ack-timeouts are not due: no figures of theirs
    assert timedelta(minutes=1) == LATE_AFTER  # what "late" above was judged by


def test_the_jobs_are_counted_along_their_kinds_index(store: Store) -> None:
    """PostgreSQL reads a table as small as the other test's whole: here a backlog 20 times
    the bound."""
    _fill(store, 20 * COUNTED_JOBS)

    def figures() -> None:
        with store.database.reading() as connection:
            read_figures(connection, NOW)

    _, plans = planned(store, figures)
    kinds, waiting, held = (plan for plan in plans if "jobs" in plan)
    for plan, index in ((kinds, "ix_jobs_kind_due"), (waiting, "ix_jobs_kind_due")):
        assert index in plan, plan
    assert "ix_jobs_held" in held, held
    for plan in (kinds, waiting, held):
        assert "Seq Scan" not in plan and "SCAN jobs\n" not in f"{plan}\n", plan


def test_migration_0029_indexes_the_jobs_a_store_holds_by_kind(own_database: Store) -> None:
    """Up from 0028 with a backlog in the table: the index is built over it, and the counts
    read along it."""
    database = own_database.database
    downgrade(database, "0028")
    assert "ix_jobs_kind_due" not in _job_indexes(own_database)
    _fill(own_database)
    upgrade(database)
    assert "ix_jobs_kind_due" in _job_indexes(own_database)
    with database.reading() as connection:
        [_, transmit] = sorted(read_figures(connection, NOW).jobs, key=lambda jobs: jobs.kind)
    assert (transmit.waiting, transmit.running) == (COUNTED_JOBS, HELD)


def test_migration_0031_indexes_the_jobs_claimed(own_database: Store) -> None:
    """Up from 0030 with jobs held in the table: the index is built over them, and those held
    are counted through it."""
    database = own_database.database
    downgrade(database, "0030")
    assert "ix_jobs_held" not in _job_indexes(own_database)
    _fill(own_database)
    upgrade(database)
    assert "ix_jobs_held" in _job_indexes(own_database)
    with database.reading() as connection:
        [_, transmit] = sorted(read_figures(connection, NOW).jobs, key=lambda jobs: jobs.kind)
    assert transmit.running == HELD


def _job_indexes(store: Store) -> set[str | None]:
    return {index["name"] for index in inspect(store.database.engine).get_indexes("jobs")}
