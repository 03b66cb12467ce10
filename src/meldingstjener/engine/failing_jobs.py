"""Jobs that keep failing with an unexpected error: ever longer pauses, and an alert.

An error a handler does not expect (a fault in the server or in its data: a wire file that
cannot be read, a row that breaks a rule) comes back at once when the job is tried again. So
each failure in a row doubles the pause (30 s, 60 s, ... an hour at most), and after
``ALERT_AFTER`` failures in a row a ``job-failing`` alert names the job and its message, for
someone to look at the server log (told once, counted at each failure after). The count lives
in the job's row (``jobs.crashes``): a handler that finishes or reschedules the job the normal
way resets it, and the heartbeat of every ``serve`` resolves the alert of a job that has gone
through, been cancelled or gone.

An error that is the store refusing for a while (``ebms_alerts.store_refused``: the payload
share away, its marker gone, or the disk full) is no fault of the job: every job that reads or
writes a message's content meets it until the store is mended. Such a job is put back to wait
(:func:`wait_for_store`): due again ``STORE_PAUSE`` later, the claim's attempt undone and its
errors in a row left as they were, so that the outage spends none of its tries (a send whose
job was claimed twice counts as maybe sent, which PersistDuration then ends), raises no
``job-failing`` and logs no traceback; the outage itself is told once, by the ``store-failing``
period and its alert (``ebms_alerts.StoreFailing``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.ebms_alerts import store_refused
from meldingstjener.store.uow import ClaimedJob, UnitOfWork

log = logging.getLogger(__name__)

FIRST_PAUSE = timedelta(seconds=30)
LONGEST_PAUSE = timedelta(hours=1)
ALERT_AFTER = 5
# how often a job waiting for its store is tried again: once the store is back, the work
# waits no longer than this (each try of a job while it is away is one small read, refused)
STORE_PAUSE = timedelta(seconds=30)


def pause_after(failures: int) -> timedelta:
    """The pause after ``failures`` unexpected errors in a row."""
    return min(FIRST_PAUSE * 2 ** min(max(failures, 1) - 1, 16), LONGEST_PAUSE)


def after_crash(ctx: EngineContext, job: ClaimedJob, exc: Exception) -> None:
    """Reschedule a job whose handler raised ``exc``; alert after ``ALERT_AFTER`` in a row."""
    with _left_to_its_lease_on_error(job):
        _count_crash(ctx, job, exc)


def _count_crash(ctx: EngineContext, job: ClaimedJob, exc: Exception) -> None:
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:
        before = uow.jobs.crashes_of_own(job)
        if before is None:  # the claim was no longer ours: the job is another's now
            uow.commit()
            return
        failures = before + 1
        pause = pause_after(failures)
        kept = uow.jobs.reschedule_crashed(job, now + pause, crashes=failures)
        if kept and failures >= ALERT_AFTER:
            # told once while it fails (keep_alert), again if it fails with another error:
            # the text holds no count of failures nor the pause, which grow at each one
            keep_alert(
                uow,
                AlertKind.JOB_FAILING,
                f"The server's {job.kind} job"
                + (f" for message {job.message_id}" if job.message_id else "")
                + f" failed {ALERT_AFTER} times in a row, and every time since "
                f"({type(exc).__name__}; the server log has the details). It is tried again "
                f"ever later ({int(LONGEST_PAUSE.total_seconds() // 60)} minutes apart at "
                "most). This is a fault in the server or its data: report it.",
                at=now,
                message_id=job.message_id,
                key=str(job.id),
            )
        uow.commit()


def refused_by_store(ctx: EngineContext, exc: BaseException, work: str) -> bool:
    """Whether ``exc`` is the store refusing for a while (``store_refused``, see the module's
    words); then the outage is told once by this process's ``store-failing`` period, which
    ``work`` (what met it, "its transmit job", "the webhook deliveries") starts if none runs.
    The one rule for work outside a request: its caller lets it wait (``STORE_PAUSE``), counts
    nothing and logs no traceback."""
    if not store_refused(exc):
        return False
    ctx.store_failing.work_refused(exc, work)
    return True


def wait_for_store(ctx: EngineContext, job: ClaimedJob, exc: Exception) -> bool:
    """Whether ``exc`` is the store refusing for a while (:func:`refused_by_store`); then the
    job is put back to wait ``STORE_PAUSE``, not counted as a try nor as an error."""
    if not refused_by_store(ctx, exc, f"its {job.kind} job"):
        return False
    put_back(ctx, job)
    return True


def put_back(ctx: EngineContext, job: ClaimedJob) -> None:
    """Put ``job`` back to wait ``STORE_PAUSE`` for its store: not counted as a try nor as an
    error (a job whose work waits for what the store refused, a synchronous reply held)."""
    with _left_to_its_lease_on_error(job), ctx.store.unit_of_work() as uow:
        uow.jobs.put_back(job, ctx.clock() + STORE_PAUSE)
        uow.commit()


def unknown_kind(ctx: EngineContext, job: ClaimedJob) -> None:
    """A job of a kind this server does not know (a newer server's, during an upgrade): left
    for another server a little later, not counted as a failure."""
    with _left_to_its_lease_on_error(job), ctx.store.unit_of_work() as uow:
        crashes = uow.jobs.crashes_of_own(job)
        if crashes is not None:
            uow.jobs.reschedule_crashed(job, ctx.clock() + FIRST_PAUSE, crashes=crashes)
        uow.commit()


@contextlib.contextmanager
def _left_to_its_lease_on_error(job: ClaimedJob) -> Iterator[None]:
    """The store may be what failed the job: then its lease gives it back, and the worker
    goes on with the rest of its batch."""
    try:
        yield
    except Exception as exc:
        log.warning("job %s (%s) left to its lease: %s", job.id, job.kind, type(exc).__name__)


def tidy(uow: UnitOfWork, now: datetime) -> None:
    """Resolve the job-failing alerts of jobs that went through, were cancelled or are gone, or
    whose failures are no longer ``ALERT_AFTER`` in a row (the count started again)."""
    prefix = f"{AlertKind.JOB_FAILING}:"
    open_alerts = uow.alerts.list(open_only=True, kind=AlertKind.JOB_FAILING.value, limit=None)
    job_ids = {
        alert.dedup_key: int(alert.dedup_key[len(prefix) :])
        for alert in open_alerts
        if alert.dedup_key.startswith(prefix) and alert.dedup_key[len(prefix) :].isdigit()
    }
    failing = uow.jobs.crashes(list(job_ids.values()))
    for dedup_key, job_id in sorted(job_ids.items()):  # one order: no deadlock between beats
        if failing.get(job_id, 0) < ALERT_AFTER:
            uow.alerts.resolve(dedup_key, at=now)
