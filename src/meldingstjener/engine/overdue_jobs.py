"""Jobs nobody runs: a ``jobs-overdue`` alert, raised by the heartbeat.

``job-failing`` is raised by a worker that runs a job. When no worker runs one (each hangs on a
connection a database failover left open, or its thread died of a BaseException), nothing
would say so: outbound messages stay ``accepted``, Acknowledgments are not sent, and the
time-based checks (retries, deadlines, the inbox and certificate checks) stop too, as they are
jobs themselves. The heartbeat runs in a thread of its own in every ``serve``, so each beat
looks at the job due longest of those nobody runs (one indexed statement):

- free for a claim (never claimed, or its lease ran out) for more than ``WAITING_TOO_LONG``:
  every worker takes what is due within seconds, and the recurring inbox check is due every five
  minutes, so no worker has run anything for that long;
- or claimed still, due more than ``HELD_TOO_LONG`` ago: a worker that hangs inside a job keeps
  its claim alive (its lease keeper is a thread of its own), far beyond any job that works.

The alert is one for the store (every ``serve`` sees the same jobs), raised again only when the
job it names changes, and resolved by the first beat that finds none. The register's sync is
left out: a server without ``[address_register] url`` does not claim it, ``ar sync`` by hand
holds its claim as long as it runs, and ``register-sync-failed`` speaks for it.

Time after a start is not counted: a store left alone for a night has every job overdue, and
the workers have not had their turn. So a job counts as waiting only from the start of the
longest-running ``serve`` on the store (and as held only when that is an hour ago).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.register_sync import REGISTER_SYNC
from meldingstjener.store.uow import OverdueJob, UnitOfWork

WAITING_TOO_LONG = timedelta(minutes=10)
HELD_TOO_LONG = timedelta(hours=1)
ALERT_KEY = f"{AlertKind.JOBS_OVERDUE}:global"
# a due time no job has: the held half of the check is off
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def check_overdue(uow: UnitOfWork, now: datetime, serving_for: timedelta) -> None:
    """Raise, or resolve, the ``jobs-overdue`` alert. ``now``: the host's clock, which due
    times and leases are judged by; ``serving_for``: how long a ``serve`` has been running
    on the store (the longest, in the store's time)."""
    if serving_for < WAITING_TOO_LONG:
        return  # the workers have not had their turn: nothing said, nothing resolved
    found = uow.jobs.oldest_overdue(
        waiting_before=now - WAITING_TOO_LONG,
        held_before=now - HELD_TOO_LONG if serving_for >= HELD_TOO_LONG else _NEVER,
        skip_kind=REGISTER_SYNC,
    )
    if found is None:
        uow.alerts.resolve(ALERT_KEY, at=now)
        return
    summary = _summary(found, now)
    current = uow.alerts.by_key(ALERT_KEY)
    # raised again only when it says something new: each raise is a webhook delivery
    if current is None or current.resolved_at is not None or current.summary != summary:
        raise_alert(uow, AlertKind.JOBS_OVERDUE, summary, at=now, key="global")


def _summary(job: OverdueJob, now: datetime) -> str:
    what = f"Job {job.id} ({job.kind}" + (f", message {job.message_id})" if job.message_id else ")")
    if job.claimed_until is not None and job.claimed_until > now - WAITING_TOO_LONG:
        return (
            f"{what}, due since {job.due_at:%Y-%m-%d %H:%M} UTC, is still claimed by worker "
            f"{job.claimed_by}: far longer than any job runs. That worker hangs, and the work "
            "of this job waits for it. Restart the serve process the worker belongs to (its "
            "name begins with the instance's); the server log says where it stopped."
        )
    since = max(job.due_at, job.claimed_until or job.due_at)
    return (
        f"{what} has been due since {since:%Y-%m-%d %H:%M} UTC and no worker has taken it: no "
        "serve process is running jobs (its workers may hang on a database connection, or have "
        "died). Messages are not sent, Acknowledgments and AppRecs not sent, and the timed "
        "checks (retries, deadlines, the inbox and certificate checks) do not run. Look at the "
        "serve processes' logs, and restart them."
    )
