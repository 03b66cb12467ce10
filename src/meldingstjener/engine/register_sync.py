"""The address register kept current by ``serve`` (``register-sync`` job).

Partners change their certificates, addresses and services in the address register; a server
that does not follow sends to old addresses, encrypts to replaced certificates and refuses
signatures made with new ones. With ``[address_register] url`` set, ``serve`` schedules this
job: it applies the register's events since the last sync (the whole export the first time,
resumable) with the ``[helseid]`` client, then comes back after ``sync_minutes``. One job exists
however many servers share the store, so one of them syncs at a time.

A party whose register record cannot be used (see :mod:`meldingstjener.registry.sync`) does not
fail the sync: it keeps its stored copy, and one ``register-parties-refused`` alert names every
such party, resolved when a later sync has read them all (:func:`note_refused_parties`, after
each sync by the job or by ``ar sync``).

A run gets at most half a minute of its worker (a quarter of its lease): the first sync, the
whole register, goes on run after run, resuming where it stopped. A sync that fails, for
whatever reason, is tried again at the next turn; after ``alert_after_failures`` failures in a
row a ``register-sync-failed`` alert says since when the copy is stale and why (told once while
it lasts, counted at every failed sync; told again when the reason changes), and the next sync
that works resolves it. A server without ``[address_register] url`` does not claim the
job: it is left to one that has it, whose heartbeat puts it back should it be gone.
``meldingstjener ar sync`` run by hand takes the job's turn (:func:`sync_turn`): it holds the
job's claim while it runs, so no server syncs meanwhile, and it is told so when one is syncing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import DEFAULT_MAX_ANSWER_BYTES, TokenProvider
from meldingstjener.registry.errors import RegistryError
from meldingstjener.registry.sync import (
    SyncInterrupted,
    SyncReport,
    refused_parties,
    sync_register,
)
from meldingstjener.store.tables import JobRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import ClaimedJob, EventKind, Store, UnitOfWork

log = logging.getLogger(__name__)

REGISTER_SYNC = "register-sync"
FIRST_AFTER = timedelta(minutes=1)  # after a start, when the start's own work is done
# A run's parties per transaction: few, so that the time a run may take is seldom overrun by much.
CHUNK_SIZE = 10
_ALERT_KEY = f"{AlertKind.REGISTER_SYNC_FAILED}:global"
_REFUSED_ALERT_KEY = f"{AlertKind.REGISTER_PARTIES_REFUSED}:global"
_REFUSED_NAMED = 10  # parties the alert names with their reasons; the rest are counted
# A sync by hand holds the job's turn with this lease, extended while it runs: a command that
# is killed gives the turn back to the servers within it.
HAND_LEASE = timedelta(minutes=2)


class SyncBusy(RegistryError):
    """A server (or another command) is syncing the register now."""

    code = "ar-sync-busy"


@dataclass(frozen=True)
class RegisterSync:
    """How this server reaches the register: its API, the token provider (kept, so tokens are
    reused between syncs), how often, and how many failures before an alert."""

    url: str
    tokens: TokenProvider
    every: timedelta
    alert_after_failures: int
    # One run's share of a worker: the first sync (the whole register, hours) goes on run after
    # run. A quarter of the workers' lease at most, so that the jobs claimed with it still have
    # more than half their lease when it ends and are run, not left to a later claim.
    run_seconds: float = 30.0
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES  # of one answer of the register


def schedule_register_sync(ctx: EngineContext, uow: UnitOfWork) -> None:
    """Make sure a sync is scheduled when the register is configured (one that is keeps its
    time and its count of failures)."""
    if ctx.register_sync is not None:
        uow.jobs.schedule_if_absent(
            REGISTER_SYNC, ctx.clock() + FIRST_AFTER, dedup_key=REGISTER_SYNC
        )


def left_to_others(ctx: EngineContext) -> str:
    """The job kind this server's workers leave for others to claim: the register's sync when
    this server has no register configured (the job is shared by every server on the store),
    else none ("")."""
    return REGISTER_SYNC if ctx.register_sync is None else ""


def register_sync_job(ctx: EngineContext, job: ClaimedJob) -> None:
    config = ctx.register_sync
    if config is None:  # see left_to_others: a worker without the register never claims it
        raise LookupError("register-sync claimed by a server without [address_register] url")
    data = job.data or {}
    failures = int(data.get("failures", 0))
    failing_since = data.get("failing_since")
    client = ArClient(config.url, config.tokens, max_answer_bytes=config.max_answer_bytes)
    try:
        report = sync_register(
            ctx.store, client, chunk_size=CHUNK_SIZE, budget_seconds=config.run_seconds
        )
    except Exception as exc:  # any failure counts: a sync that never works must be seen
        failures += 1
        failing_since = failing_since or ctx.clock().isoformat()
        problem = _problem(exc)
        log.warning(
            "address register sync failed (%d in a row): %s",
            failures,
            problem,
            exc_info=not isinstance(exc, RegistryError),  # a bug: its traceback is wanted
        )
        # what the chunks committed before the failure refused is told all the same
        stopped = exc.report if isinstance(exc, SyncInterrupted) else None
        _after(ctx, config, failures, failing_since, problem=problem, report=stopped)
        return
    finally:
        client.close()
    log.info(
        "address register %s: %d parties written, %d events applied%s",
        "synced" if report.complete else "sync goes on",
        report.parties_written,
        report.events_applied,
        f", {len(report.refused)} records refused" if report.refused else "",
    )
    _after(
        ctx,
        config,
        0,
        None,
        problem=None,
        written=report.parties_written,
        done=report.complete,
        report=report,
    )


def job_state(uow: UnitOfWork) -> dict[str, object] | None:
    """The register-sync job as ``ar status`` shows it: when it is next due, its failures in a
    row and since when, and who holds it now; None when no server has scheduled it."""
    row = uow.session.scalars(select(JobRow).where(JobRow.dedup_key == REGISTER_SYNC)).first()
    if row is None:
        return None
    data = row.data or {}
    return {
        "next_due_at": row.due_at,
        "failures": int(data.get("failures", 0)),
        "failing_since": data.get("failing_since"),
        "held_by": row.claimed_by,
    }


def note_refused_parties(uow: UnitOfWork, report: SyncReport, *, at: datetime) -> None:
    """After a sync: the ``register-parties-refused`` alert raised when the sync refused a
    party's record (naming every party refused and not read since), its text brought up to date
    when some of them were read, and resolved when none is left."""
    if not report.refused and not report.no_longer_refused:
        return  # the list is as it was
    standing = refused_parties(uow)
    if not standing:
        uow.alerts.resolve(_REFUSED_ALERT_KEY, at=at)
        return
    summary = _refused_summary(standing)
    if any(her_id in standing for her_id in report.refused):
        raise_alert(uow, AlertKind.REGISTER_PARTIES_REFUSED, summary, at=at)
        return
    alert = uow.alerts.by_key(_REFUSED_ALERT_KEY)
    if alert is not None and alert.resolved_at is None:
        alert.summary = summary  # fewer now: not a new occurrence


def _refused_summary(standing: dict[str, str]) -> str:
    named = sorted(standing.items(), key=lambda item: int(item[0]))[:_REFUSED_NAMED]
    listed = "; ".join(f"{her_id} ({reason})" for her_id, reason in named)
    more = len(standing) - len(named)
    return (
        f"The address register's records of {len(standing)} "
        f"part{'y' if len(standing) == 1 else 'ies'} could not be used, so their stored copies "
        f"(addresses, certificates) are kept as they were: {listed}"
        + (f"; and {more} more" if more else "")
        + ". The rest of the register is synced. If it lasts, ask NHN or the party about the "
        "record. Resolved when a sync has read them (after the register changes them, or "
        "meldingstjener ar sync --full)."
    )


@contextlib.contextmanager
def sync_turn(
    store: Store,
    holder: str,
    *,
    every: timedelta | None = None,
    lease: timedelta = HAND_LEASE,
    clock: Callable[[], datetime] = utcnow,
) -> Iterator[None]:
    """Hold the register-sync job's turn for a sync run by hand, as ``holder``: no server's
    worker claims the job meanwhile. Raises :class:`SyncBusy` when another holds it. Without
    the job (no server with the register uses this store) there is no turn to take.

    A block that ends without an error was a sync that worked: the job is next due ``every``
    later (when given), its count of failures cleared and a register-sync-failed alert
    resolved. A block that raised gives the turn back as it was."""
    for _ in range(3):  # a turn given back between the two looks: look again
        with store.unit_of_work() as uow:
            job = uow.jobs.claim_key(REGISTER_SYNC, holder, now=clock(), lease=lease)
            held = None if job is not None else uow.jobs.claim_holder(REGISTER_SYNC)
            uow.commit()
        if job is not None or held is None or held[0] is not None:
            break
    if job is None:
        if held is not None and held[0] is not None:
            raise SyncBusy(
                f"the address register is being synced by {held[0]} now; try again when it is done"
            )
        yield
        return
    from meldingstjener.engine.worker import LeaseKeeper  # (the worker imports this module)

    keeper = LeaseKeeper(store, clock, lease).start()
    synced = False
    try:
        with keeper.running(job):
            yield
        synced = True
    finally:
        keeper.stop()
        try:
            with store.unit_of_work() as uow:
                now = clock()
                if synced and every is not None:
                    uow.jobs.give_back(job, done_until=now + every)
                    uow.alerts.resolve(_ALERT_KEY, at=now)
                else:  # as it was: the claim's attempt undone
                    uow.jobs.release_unstarted([job])
                uow.commit()
        except Exception as exc:  # the lease gives it back
            log.warning("could not give back the register sync's turn: %s", type(exc).__name__)


def _problem(exc: Exception) -> str:
    """What went wrong, for the alert: the register's or HelseID's code and words (a stopped
    sync carries the error that stopped it), or only the type of an unexpected error."""
    cause = exc.__cause__ if isinstance(exc, SyncInterrupted) and exc.__cause__ else exc
    if isinstance(cause, RegistryError):
        return f"{cause.code}: {cause}"
    return f"unexpected {type(cause).__name__}"


def _after(
    ctx: EngineContext,
    config: RegisterSync,
    failures: int,
    failing_since: str | None,
    *,
    problem: str | None,
    written: int = 0,
    done: bool = True,
    report: SyncReport | None = None,
) -> None:
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:
        if report is not None:
            note_refused_parties(uow, report, at=now)
        if problem is None:
            uow.alerts.resolve(_ALERT_KEY, at=now)
            if written:
                uow.events.record(
                    None,
                    EventKind.NOTE,
                    actor="msh:register-sync",
                    code="register-synced",
                    detail=f"{written} parties written from the address register",
                    at=now,
                )
        elif failures >= config.alert_after_failures:
            since = datetime.fromisoformat(failing_since) if failing_since else now
            # told once while it lasts (keep_alert): the text holds no count of failures
            keep_alert(
                uow,
                AlertKind.REGISTER_SYNC_FAILED,
                f"The address register could not be synced since {since:%Y-%m-%d %H:%M} UTC: "
                f"{config.alert_after_failures} syncs in a row failed, and every one since "
                f"({problem}). Partners' certificates and addresses "
                "are not kept current while this lasts: check the network to the register, "
                "the HelseID client and its key. The server tries again by itself.",
                at=now,
            )
        data = {"failures": failures, "failing_since": failing_since} if failures else None
        # A sync that ran out of its time goes on at once (after the jobs due meanwhile).
        due = now if not done else now + config.every
        uow.jobs.schedule(REGISTER_SYNC, due, dedup_key=REGISTER_SYNC, data=data)
        uow.commit()
