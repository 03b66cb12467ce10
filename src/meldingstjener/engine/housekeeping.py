"""The daily sweep of payload files nothing refers to (``payload-sweep`` job), the delete
of a purged message's files that a crash may have left (``payload-delete`` job), and the
scheduling of the daily ``retention`` job (:mod:`meldingstjener.engine.retention`).

A crash between writing a payload file and committing its row leaves a file that may hold a
decrypted business message; see :mod:`meldingstjener.store.orphans`. ``serve`` schedules the
sweep when none is scheduled; it then runs daily, each run looking only at the files written
since the last one. What it removes is logged and put in the message log (counts, never names of
patients or content).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from meldingstjener.engine.context import EngineContext
from meldingstjener.store.orphans import SweepReport, sweep
from meldingstjener.store.uow import ClaimedJob, EventKind, Store, UnitOfWork

log = logging.getLogger(__name__)

PAYLOAD_SWEEP = "payload-sweep"
PAYLOAD_DELETE = "payload-delete"
RETENTION = "retention"  # the [retention] rules' daily run (meldingstjener.engine.retention)
# a purge deletes its file once it has committed; the job, committed with it, makes sure
DELETE_CHECK_AFTER = timedelta(minutes=10)
EVERY = timedelta(days=1)
FIRST_AFTER = timedelta(minutes=10)  # after a start, when the start's own work is done


def schedule_sweep(ctx: EngineContext, uow: UnitOfWork) -> None:
    """Make sure a sweep and a retention run are scheduled (one that is keeps its time and
    what it swept)."""
    uow.jobs.schedule_if_absent(PAYLOAD_SWEEP, ctx.clock() + FIRST_AFTER, dedup_key=PAYLOAD_SWEEP)
    uow.jobs.schedule_if_absent(RETENTION, ctx.clock() + FIRST_AFTER, dedup_key=RETENTION)


def record_sweep(
    uow: UnitOfWork,
    report: SweepReport,
    *,
    actor: str,
    dry_run: bool,
    at: datetime | None = None,
    moved_to: Path | None = None,
) -> None:
    """Put a sweep that found orphans in the message log (a sweep that found none is quiet);
    ``moved_to``: where it moved them (``sweep --move-to``) instead of removing them."""
    if not report.orphans:
        return
    done = "would remove" if dry_run else "removed" if moved_to is None else "moved"
    why = "left by a crash or a killed process"
    if moved_to is not None and not dry_run:
        why = f"moved into {moved_to}; left by a crash, or of messages a restored database lost"
    uow.events.record(
        None,
        EventKind.NOTE,
        actor=actor,
        code="orphan-files",
        detail=f"{done} {len(report.orphans)} payload file(s), {report.orphan_bytes} bytes, that "
        f"no message or receipt refers to ({report.temporaries} unfinished spool(s)); {why}",
        at=at,
    )


def payload_sweep_job(ctx: EngineContext, job: ClaimedJob) -> None:
    since = (job.data or {}).get("swept_until")
    report = sweep(ctx.store, since=float(since) if since is not None else None)
    if report.orphans:
        log.warning(
            "removed %d payload file(s) (%d bytes) nothing referred to",
            len(report.orphans),
            report.orphan_bytes,
        )
    with ctx.store.unit_of_work() as uow:
        record_sweep(uow, report, actor="msh:sweep", dry_run=False, at=ctx.clock())
        uow.jobs.schedule(
            PAYLOAD_SWEEP,
            ctx.clock() + EVERY,
            dedup_key=PAYLOAD_SWEEP,
            data={"swept_until": report.swept_until},
        )
        uow.commit()


def delete_after_commit(
    store: Store,
    uow: UnitOfWork,
    keys: list[str],
    *,
    now: datetime,
    removed: Callable[[int], None] | None = None,
) -> None:
    """Delete the payload files ``keys``, which rows of ``uow`` no longer refer to, once it has
    committed. (Deleting first, a crash or a failed commit left a row pointing at nothing.)
    A crash between the commit and the delete leaves the files: a ``payload-delete`` job, in
    the same transaction, removes them then. The one rule for every purge: a misaddressed
    message's, and retention's. ``removed`` is told, after the deletes, how many files were
    there to remove: a file gone already (removed by hand, or by a payload-delete job of an
    earlier purge) is no error, and is not counted."""
    if not keys:
        return
    schedule_payload_delete(uow, *keys, now=now)

    def delete() -> None:
        count = sum(1 for key in keys if store.payloads.delete(key))
        if removed is not None:
            removed(count)

    uow.after_commit(delete)


def schedule_payload_delete(uow: UnitOfWork, *keys: str, now: datetime) -> None:
    """Make sure the purged files ``keys`` (a message's decrypted payload, its wire form) go,
    in the purge's own transaction. The purge deletes them once it has committed; a crash (or
    a failed delete) just then left a decrypted message on disk for good, since the daily
    sweep looks only at files written since its last run, and a purge comes hours or days
    after the file was written."""
    uow.jobs.schedule(PAYLOAD_DELETE, now + DELETE_CHECK_AFTER, data={"keys": list(keys)})


def payload_delete_job(ctx: EngineContext, job: ClaimedJob) -> None:
    data = job.data or {}
    keys = data.get("keys", [data.get("key")])  # "key": one scheduled by an earlier version
    for key in keys if isinstance(keys, list) else []:
        if isinstance(key, str) and ctx.store.payloads.delete(key):
            log.warning("removed a purged payload file that was left behind")
    with ctx.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)
        uow.commit()
