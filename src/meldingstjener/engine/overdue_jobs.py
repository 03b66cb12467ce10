"""Jobs nobody runs: a ``jobs-overdue`` alert, raised by the heartbeat.

``job-failing`` is raised by a worker that runs a job. When no worker runs one (each hangs on a
connection a database failover left open, or its thread died of a BaseException), nothing
would say so: outbound messages stay ``accepted``, Acknowledgments are not sent, and the
time-based checks (retries, deadlines, the inbox and certificate checks) stop too, as they are
jobs themselves. The heartbeat runs in a thread of its own in every ``serve``, so each beat
looks at the jobs.

Not at how long they have waited: thousands of messages submitted at once take a while to
send, and the last of them waits its turn far longer than any job runs, while every worker
works. So each beat looks for progress, and each process remembers what its own beats saw:

- the job due longest of those free for a claim (never claimed, or its lease ran out; one
  indexed statement). Workers claim the oldest first, so while any of them claims, that job
  changes from beat to beat, however long the queue. The same job for ``STALLED_FOR`` and due
  more than ``WAITING_TOO_LONG`` ago, while no worker holds a claim: none runs (a worker that
  holds a long send keeps the queue waiting while it works; that is the next rule's);
- the job due longest of those claimed: a worker that hangs inside a job keeps its claim alive
  (its lease keeper is a thread of its own). The same claim (job, worker, attempt) for
  ``HELD_TOO_LONG`` is far beyond any job that works. The store does not record when a claim
  began, so it is counted from the first beat of this process that saw it the claim held
  longest (a beat late for a claim that is so when it begins; later for one that had older
  claims before it), never from the job's due time, which a job in a queue is far past.

The alert is one for the store (every ``serve`` sees the same jobs), naming no job, so a repeat
is not news: told once while it is open (each raise is a webhook call), counted at every beat
that finds it so, and told again only when its text changes (no worker runs, or one named
hangs; see :func:`~meldingstjener.engine.alerts.keep_alert`). It is resolved
by a beat that sees progress on both counts: the job free longest is not the one seen before
(or there is none), nor is the claim held longest. A beat that cannot tell yet (a process's
first, or the same job for less than the times above) leaves it as it is, so that processes
that began to look at different times do not raise and resolve it in turn. The register's sync
is left out: a server without ``[address_register] url`` does not claim it, ``ar sync`` by
hand holds its claim as long as it runs, and ``register-sync-failed`` speaks for it.

Time after a start is not counted: a store left alone for a night has every job overdue, and
the workers have not had their turn. So nothing is raised or resolved before the longest-
running ``serve`` on the store has served ``WAITING_TOO_LONG``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from enum import Enum

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.store.uow import OverdueJob, UnitOfWork

WAITING_TOO_LONG = timedelta(minutes=10)
# no claim for this long while jobs are that late: a worker claims within seconds, and a
# send that takes long holds its worker, not all of them
STALLED_FOR = timedelta(minutes=5)
HELD_TOO_LONG = timedelta(hours=1)
ALERT_KEY = f"{AlertKind.JOBS_OVERDUE}:global"


class _Seen(Enum):
    MOVING = "moving"  # progress since the last beat, or nothing to look at
    UNSURE = "unsure"  # not yet long enough to tell
    STALLED = "stalled"


class OverdueWatch:
    """What this process's beats saw of the jobs (see the module): the job free longest and
    since when, the claim held longest and since when. In memory: each process judges by its
    own beats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: tuple[tuple[datetime, int], datetime] | None = None
        self._held: tuple[tuple[int, str | None, int], datetime] | None = None

    def check(self, uow: UnitOfWork, now: datetime, serving_for: timedelta, skip_kind: str) -> None:
        """Raise, or resolve, the ``jobs-overdue`` alert. ``now``: the host's clock, which due
        times and leases are judged by; ``serving_for``: how long a ``serve`` has been running
        on the store (the longest, in the store's time); ``skip_kind``: the register's sync."""
        with self._lock:
            free = uow.jobs.oldest_free(now=now, skip_kind=skip_kind)
            waiting = self._judge_free(free, now)
            held = uow.jobs.oldest_held(now=now, skip_kind=skip_kind)
            holding = self._judge_held(held, now)
        if serving_for < WAITING_TOO_LONG:
            return  # the workers have not had their turn: nothing said, nothing resolved
        if waiting is _Seen.STALLED and held is None:
            # free jobs wait and no worker holds any: none runs. (Workers that all hold a
            # long send, a 35 MB upload on a slow line, keep the queue waiting while they
            # work: that is for the rule of the claim held too long, not a restart.)
            _raise(uow, _NOT_TAKEN, now)
        elif holding is _Seen.STALLED and held is not None:
            _raise(uow, _held_summary(held), now)
        elif waiting is _Seen.MOVING and holding is _Seen.MOVING:
            uow.alerts.resolve(ALERT_KEY, at=now)

    def _judge_free(self, job: OverdueJob | None, now: datetime) -> _Seen:
        before = self._free
        if job is None:
            self._free = None
            return _Seen.MOVING
        seen = (job.due_at, job.id)
        if before is None or before[0] != seen:
            self._free = (seen, now)
            # claimed from the front: the next in line is due later (a job given back, or
            # whose lease ran out, comes in before it: that is no progress)
            return _Seen.MOVING if before is not None and seen > before[0] else _Seen.UNSURE
        if now - job.due_at >= WAITING_TOO_LONG and now - before[1] >= STALLED_FOR:
            return _Seen.STALLED
        return _Seen.UNSURE

    def _judge_held(self, job: OverdueJob | None, now: datetime) -> _Seen:
        before = self._held
        if job is None:
            self._held = None
            return _Seen.MOVING
        claim = (job.id, job.claimed_by, job.attempts)
        if before is None or before[0] != claim:
            self._held = (claim, now)
            # the claim held longest before has ended (its job done, or given back)
            return _Seen.UNSURE if before is None else _Seen.MOVING
        return _Seen.STALLED if now - before[1] >= HELD_TOO_LONG else _Seen.UNSURE


def _raise(uow: UnitOfWork, summary: str, now: datetime) -> None:
    keep_alert(uow, AlertKind.JOBS_OVERDUE, summary, at=now, key="global")


_NOT_TAKEN = (
    f"Jobs have been due for more than {WAITING_TOO_LONG.seconds // 60} minutes and no worker "
    f"has taken one for {STALLED_FOR.seconds // 60} minutes: no serve process is running jobs "
    "(its workers may hang on a database connection, or have died). Messages are not sent, "
    "Acknowledgments and AppRecs not sent, and the timed checks (retries, deadlines, the inbox "
    "and certificate checks) do not run. Look at the serve processes' logs, and restart them."
)


def _held_summary(job: OverdueJob) -> str:
    return (
        f"Worker {job.claimed_by} has held a job for more than an hour: far longer than any "
        "job runs. That worker hangs, and the work of that job waits for it. Restart the serve "
        "process the worker belongs to (its name begins with the instance's); the server log "
        "says where it stopped."
    )
