"""The store's figures an operator's monitoring reads (``GET /metrics``): the messages under way
by direction and status and when the oldest of each was made, the jobs due, the open alerts.

Read from the store at each call, so that every ``serve`` on one database tells the same truth.
Each is one statement through an index, and costs what is under way, not the settled history
(though received messages the EPJ never answers stay under way, ``delivered``, and add up): the
messages through the partial index ``ix_messages_unsettled`` (only those not settled:
:data:`~meldingstjener.store.tables.UNSETTLED`, written as that index states it, so that the
planner may use it), the jobs waiting along ``ix_jobs_kind_due`` up to a bound and those a
worker holds through ``ix_jobs_held`` (only those claimed), the alerts through
``ix_alerts_open``. Counts and times only: no identifier, no HER-id, no text of a
message or an alert.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Integer, String, bindparam, column, text
from sqlalchemy.sql.selectable import TextualSelect

from meldingstjener.store.tables import JOB_HELD, JOB_WAITING, UNSETTLED
from meldingstjener.store.types import UtcDateTime

# a job due longer than this ago and not taken by a worker is late (the workers claim within
# seconds while they keep up)
LATE_AFTER = timedelta(minutes=1)

_MESSAGES = text(
    "SELECT direction, status, count(*) AS messages, min(created_at) AS oldest FROM messages "
    f"WHERE {UNSETTLED} GROUP BY direction, status"
).columns(
    column("direction", String()),
    column("status", String()),
    column("messages", Integer()),
    column("oldest", UtcDateTime()),
)

# Each kind's jobs waiting are counted among its COUNTED_JOBS waiting longest, no further: a
# backlog of hundreds of thousands (the workers stopped, a partner down for days) made every
# scrape count all of it. The figures of a kind are then lower bounds: its waiting at
# COUNTED_JOBS is read as "at least". Those a worker holds are counted apart, all of them: they
# are few (each process claims at most its workers' batches), and they are not among the due
# longest (a job handed to a worker at submit is due now, behind any backlog), so counted among
# those a busy server showed none running.
COUNTED_JOBS = 1_000


# The kinds in the jobs table, one index probe each: a loose scan of ix_jobs_kind_due (neither
# database skips along an index by itself).
_KINDS = text(
    "WITH RECURSIVE kinds(kind) AS (SELECT min(kind) FROM jobs UNION ALL "
    "SELECT (SELECT min(kind) FROM jobs WHERE jobs.kind > kinds.kind) FROM kinds "
    "WHERE kinds.kind IS NOT NULL) "
    "SELECT kind FROM kinds WHERE kind IS NOT NULL"
).columns(column("kind", String()))


def _due_of_kind(number: int) -> str:
    """The figures of the kind bound as ``kind_<number>``, of its :data:`COUNTED_JOBS` jobs due
    and waiting for a worker longest (along ``ix_jobs_kind_due``: what it reads is bounded, in
    one pass, passing those held, which are few): how many, of those the late, and when the
    one due longest was due. Waiting as a worker claims (tables.py's JOB_WAITING). No row when
    none waits."""
    return (
        "SELECT kind, count(*) AS waiting, "
        "sum(CASE WHEN due_at < :late THEN 1 ELSE 0 END) AS late, min(due_at) AS oldest "
        f"FROM (SELECT kind, due_at FROM jobs WHERE kind = :kind_{number} AND due_at <= :now "
        f"AND {JOB_WAITING} ORDER BY due_at LIMIT :counted) due_{number} GROUP BY kind"
    )


@functools.lru_cache(maxsize=8)
def _jobs_of(kinds: int) -> TextualSelect:
    """The figures of each of ``kinds`` kinds (bound ``kind_0``...), in one statement.

    The kinds are bound, not read by a subquery of it: PostgreSQL guesses a hundred rows of a
    recursive one, and a plan that dear it compiled (JIT) first, which took 30 ms."""
    return (
        text(" UNION ALL ".join(_due_of_kind(number) for number in range(kinds)))
        .bindparams(
            bindparam("now", type_=UtcDateTime()),
            bindparam("late", type_=UtcDateTime()),
            bindparam("counted", value=COUNTED_JOBS, type_=Integer()),
        )
        .columns(
            column("kind", String()),
            column("waiting", Integer()),
            column("late", Integer()),
            column("oldest", UtcDateTime()),
        )
    )


# The jobs a worker holds, by kind, and when the one due longest was due: all of them, through
# the partial index ix_jobs_held (only claimed jobs: what it reads is the claims, not the
# backlog). Whether due or not: a job handed to a worker at submit may be due a moment after
# this clock reads, by another process's.
_HELD = (
    text(
        "SELECT kind, count(*) AS running, min(due_at) AS oldest FROM jobs "
        f"WHERE {JOB_HELD} GROUP BY kind"
    )
    .bindparams(bindparam("now", type_=UtcDateTime()))
    .columns(
        column("kind", String()), column("running", Integer()), column("oldest", UtcDateTime())
    )
)


_ALERTS = text(
    "SELECT kind, severity, count(*) AS open,"
    " sum(CASE WHEN acknowledged_at IS NULL THEN 1 ELSE 0 END) AS unacknowledged "
    "FROM alerts WHERE resolved_at IS NULL GROUP BY kind, severity"
).columns(
    column("kind", String()),
    column("severity", String()),
    column("open", Integer()),
    column("unacknowledged", Integer()),
)


@dataclass(frozen=True)
class UnderWay:
    """The messages of one direction and status not settled, and when the oldest was made."""

    direction: str
    status: str
    count: int
    oldest: datetime


@dataclass(frozen=True)
class DueJobs:
    """The jobs of one kind due now and held by no worker (``waiting``, up to
    :data:`COUNTED_JOBS`; ``late``: of those, due longer than :data:`LATE_AFTER` ago), those
    held by a worker (``running``, all), and the time the one due longest (waiting or running)
    was due."""

    kind: str
    waiting: int
    late: int
    running: int
    oldest_due: datetime


@dataclass(frozen=True)
class OpenAlerts:
    kind: str
    severity: str
    open: int
    unacknowledged: int


@dataclass(frozen=True)
class Figures:
    messages: list[UnderWay]
    jobs: list[DueJobs]
    alerts: list[OpenAlerts]


def read_figures(connection: Connection, now: datetime) -> Figures:
    """The figures as the store has them at ``now`` (the engine's clock: due times and leases
    are judged by it), in five statements."""
    messages = [
        UnderWay(direction, status, int(count), oldest)
        for direction, status, count, oldest in connection.execute(_MESSAGES)
    ]
    jobs = _due_jobs(connection, now)
    alerts = [
        OpenAlerts(kind, severity, int(count), int(unacknowledged or 0))
        for kind, severity, count, unacknowledged in connection.execute(_ALERTS)
    ]
    return Figures(messages, jobs, alerts)


def _due_jobs(connection: Connection, now: datetime) -> list[DueJobs]:
    """The jobs at ``now`` of each kind that has any waiting (counted up to
    :data:`COUNTED_JOBS`) or held, in three statements: the kinds, their jobs waiting, the
    jobs held."""
    kinds = list(connection.scalars(_KINDS))
    if not kinds:
        return []
    bound: dict[str, object] = {f"kind_{number}": kind for number, kind in enumerate(kinds)}
    waiting = {
        kind: (int(count), int(late or 0), oldest)
        for kind, count, late, oldest in connection.execute(
            _jobs_of(len(kinds)), {**bound, "now": now, "late": now - LATE_AFTER}
        )
    }
    held = {
        kind: (int(count), oldest)
        for kind, count, oldest in connection.execute(_HELD, {"now": now})
    }
    figures = []
    for kind in dict.fromkeys([*waiting, *held]):
        count, late, oldest_waiting = waiting.get(kind, (0, 0, None))
        running, oldest_held = held.get(kind, (0, None))
        oldest = min(time for time in (oldest_waiting, oldest_held) if time is not None)
        figures.append(DueJobs(kind, count, late, running, oldest))
    return figures
