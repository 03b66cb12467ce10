"""The store's figures an operator's monitoring reads (``GET /metrics``): the messages under way
by direction and status and when the oldest of each was made, the jobs due, the open alerts.

Read from the store at each call, so that every ``serve`` on one database tells the same truth.
Each is one statement through an index, and costs what is under way, not the settled history
(though received messages the EPJ never answers stay under way, ``delivered``, and add up): the
messages through the partial index ``ix_messages_unsettled`` (only those not settled:
:data:`~meldingstjener.store.tables.UNSETTLED`, written as that index states it, so that the
planner may use it), the jobs through ``ix_jobs_due`` up to the time asked for, the alerts
through ``ix_alerts_open``. Counts and times only: no identifier, no HER-id, no text of a
message or an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Integer, String, bindparam, column, text

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

# Along ix_jobs_due up to now: the jobs due, those waiting for a worker (and of those, the
# late) and those a worker holds, as a worker claims (tables.py's JOB_WAITING, JOB_HELD).
_JOBS = (
    text(
        "SELECT kind, "
        f"sum(CASE WHEN {JOB_WAITING} THEN 1 ELSE 0 END) AS waiting,"
        f" sum(CASE WHEN {JOB_WAITING} AND due_at < :late THEN 1 ELSE 0 END) AS late,"
        f" sum(CASE WHEN {JOB_HELD} THEN 1 ELSE 0 END) AS running,"
        " min(due_at) AS oldest "
        "FROM jobs WHERE due_at <= :now GROUP BY kind"
    )
    .bindparams(bindparam("now", type_=UtcDateTime()), bindparam("late", type_=UtcDateTime()))
    .columns(
        column("kind", String()),
        column("waiting", Integer()),
        column("late", Integer()),
        column("running", Integer()),
        column("oldest", UtcDateTime()),
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
    """The jobs of one kind due now: waiting, held by no worker (``late``: of those, due longer
    than :data:`LATE_AFTER` ago), held by a worker (``running``), and the time the one due
    longest (waiting or running) was due."""

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
    are judged by it), in three statements."""
    messages = [
        UnderWay(direction, status, int(count), oldest)
        for direction, status, count, oldest in connection.execute(_MESSAGES)
    ]
    jobs = [
        DueJobs(kind, int(waiting or 0), int(late or 0), int(running or 0), oldest)
        for kind, waiting, late, running, oldest in connection.execute(
            _JOBS, {"now": now, "late": now - LATE_AFTER}
        )
    ]
    alerts = [
        OpenAlerts(kind, severity, int(count), int(unacknowledged or 0))
        for kind, severity, count, unacknowledged in connection.execute(_ALERTS)
    ]
    return Figures(messages, jobs, alerts)
