"""Workers: claim due jobs from the store and run them.

Each worker claims a batch with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), keeps the
claim of a job that runs long (:class:`LeaseKeeper`), runs each job in its own unit of work, and
never dies of one bad job: an unexpected error is logged (without patient data) and the job is
tried again ever later, with a ``job-failing`` alert after five failures in a row. A job the
store refuses for a while (its payload share away, its disk full) is no bad job: it waits for
the store, not counted (``failing_jobs.wait_for_store``), and so does a synchronous reply
(:class:`ReplyWaits`), held by the process, which any of its workers stores. A worker
sleeps until the next poll, or until the engine's wake-up says new work was stored in this
process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from meldingstjener.engine import (
    certificates,
    failing_jobs,
    housekeeping,
    inbound,
    inbox_watch,
    receipts,
    register_sync,
    retention,
    signals,
    transmit,
)
from meldingstjener.engine.context import EngineContext, SyncReply
from meldingstjener.model.privacy import passed_through
from meldingstjener.store.database import RoundFailures
from meldingstjener.store.uow import ClaimedJob, Store

log = logging.getLogger(__name__)


class ReplyWaits(Exception):
    """The store refused a synchronous reply (``failing_jobs.refused_by_store``): the process
    holds it (``EngineContext.held_replies``) and its workers offer it again once the store may
    take it, the message's ack-timeout first of all (:func:`_ack_timeout`), whichever worker
    of the process claims it.

    The send is recorded by then, and its job is the ack-timeout, a RetryInterval later.
    Taken before that, the signal has its full effect: the message transport-acknowledged, no
    resend, no ack-missing alert, and no give-up of a send that had no resend left although
    the partner took it. A reply lost meanwhile (the server stopped, or more held than
    ``context.HELD_REPLIES``), or an ack-timeout another process claims, resends the wire
    stored with the message: the same MessageId, which the partner remembers for
    PersistDuration and answers with the same signal (that resend counts as an attempt, as
    after any signal lost), or gives the message up when it has no resend left."""

    def __init__(self, reply: SyncReply) -> None:
        super().__init__(f"synchronous reply for job {reply.job_id} waits for the store")
        self.reply = reply


def _transmit(ctx: EngineContext, job: ClaimedJob) -> None:
    result = transmit.transmit_job(ctx, job)
    if result is not None and result.reply_body and result.reply_content_type:
        # SyncReply: the partner's signal came back in the HTTP response.
        reply = SyncReply(job.id, str(job.message_id), result.reply_content_type, result.reply_body)
        if not _take_reply(ctx, reply):
            raise ReplyWaits(reply)


def _take_reply(ctx: EngineContext, reply: SyncReply) -> bool:
    """Store a synchronous reply's signal; False when the store refused it (it may be offered
    again), True when it is done with, taken or not."""
    try:
        inbound.receive(ctx, reply.content_type, reply.body, channel="http")
    except inbound.InboundRefused as refused:
        log.warning("unreadable synchronous reply for job %s: %s", reply.job_id, refused.code)
    except inbound.InboundDeferred:  # the ack-timeout resends; the partner answers again
        log.warning(
            "synchronous reply for job %s not taken now: its signer's certificate cannot "
            "be checked (revocation unknown)",
            reply.job_id,
        )
    except Exception as exc:
        if failing_jobs.refused_by_store(ctx, exc, "a synchronous reply"):
            return False  # told by the store-failing period, not by a traceback
        # The send is recorded and its job is the ack-timeout now: rescheduling it as a
        # failed job would resend at once. Without the signal the ack-timeout resends, and
        # the partner's duplicate elimination answers with the same signal again.
        log.error(
            "synchronous reply for job %s failed: %s\n%s",
            reply.job_id,
            type(exc).__name__,
            passed_through(exc),
        )
    return True


def hold_reply(ctx: EngineContext, reply: SyncReply) -> None:
    """Hold a reply the store refused, offered again ``STORE_PAUSE`` later (see
    :class:`ReplyWaits`)."""
    if not ctx.held_replies.hold(reply, ctx.clock() + failing_jobs.STORE_PAUSE):
        log.info("synchronous reply for job %s let go: its ack-timeout resends", reply.job_id)


def offer_held_replies(ctx: EngineContext, *, every_one: bool = False) -> None:
    """Offer the process's held replies that are due (``every_one``: all of them) to the
    store, oldest first; the first it refuses puts them all off ``STORE_PAUSE``."""
    now = ctx.clock()
    ctx.held_replies.offer(
        functools.partial(_take_reply, ctx),
        now,
        now + failing_jobs.STORE_PAUSE,
        every_one=every_one,
    )


def _ack_timeout(ctx: EngineContext, job: ClaimedJob) -> None:
    """A message's ack-timeout, after the synchronous reply this process holds for it (see
    :class:`ReplyWaits`): stored, it settles the message, which the ack-timeout then finds
    acknowledged (or refused by a MessageError) and leaves alone. Refused by the store still,
    the ack-timeout waits for the store as the reply does: neither a resend nor a give-up
    while the partner's answer is held here."""
    if not ctx.held_replies.take_for(str(job.message_id), functools.partial(_take_reply, ctx)):
        failing_jobs.put_back(ctx, job)
        return
    transmit.ack_timeout_job(ctx, job)


HANDLERS: dict[str, Callable[[EngineContext, ClaimedJob], None]] = {
    transmit.TRANSMIT: _transmit,
    transmit.ACK_TIMEOUT: _ack_timeout,
    signals.SEND_SIGNAL: signals.send_signal_job,
    receipts.APPREC_DEADLINE: receipts.apprec_deadline_job,
    receipts.AUTO_APPREC: receipts.auto_apprec_job,
    receipts.SERVER_VERDICT: receipts.server_verdict_job,
    certificates.CERTIFICATE_CHECK: certificates.certificate_check_job,
    housekeeping.PAYLOAD_SWEEP: housekeeping.payload_sweep_job,
    housekeeping.PAYLOAD_DELETE: housekeeping.payload_delete_job,
    housekeeping.RETENTION: retention.retention_job,
    inbox_watch.INBOX_CHECK: inbox_watch.inbox_check_job,
    register_sync.REGISTER_SYNC: register_sync.register_sync_job,
}


def release_unstarted(ctx: EngineContext, jobs: list[ClaimedJob]) -> None:
    """Give back claimed jobs this process will not start, so that they need not wait for
    their leases to run out. If that fails (the database may be what stops us), the leases
    still do it: nothing is lost, only later."""
    if not jobs:
        return
    try:
        with ctx.store.unit_of_work() as uow:
            released = uow.jobs.release_unstarted(jobs)
            uow.commit()
    except Exception as exc:
        log.warning(
            "could not give back %d claimed job(s), left to their leases: %s",
            len(jobs),
            type(exc).__name__,
        )
        return
    log.info("gave back %d of %d claimed job(s) not started", released, len(jobs))


class LeaseKeeper:
    """Keeps the claim of the job a worker runs for as long as it runs.

    A send may outlast its lease (a 35 MB upload over a slow link): without renewal another
    worker would claim the job and send it again. One thread per serving worker looks every
    eighth of the lease, and extends the claim of a job that has run a quarter of a lease since
    it started (or since its claim was last extended) by a whole lease. So the first extension
    comes at most three eighths of a lease after the start, and a job is only started with more
    than half its lease left (see :meth:`Worker._run_jobs`): an eighth of the lease to spare.
    Jobs that take milliseconds, nearly all of them, cost two attribute writes and no statement.
    A sync of the register by hand keeps the turn it took the same way.
    """

    def __init__(self, store: Store, clock: Callable[[], datetime], lease: timedelta) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self._running: tuple[ClaimedJob, float] | None = None  # the job, and since when
        self._extended: tuple[ClaimedJob, float] | None = None  # the job last extended, when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def running(self, job: ClaimedJob) -> Iterator[None]:
        self._running = (job, time.monotonic())
        try:
            yield
        finally:
            self._running = None

    def _loop(self) -> None:
        while not self._stop.wait(self.lease.total_seconds() / 8):
            self._look(time.monotonic())

    def _look(self, now: float) -> None:
        """One look at the running job (``now`` on the monotonic clock)."""
        running = self._running
        if running is None:
            return
        job, since = running
        if job.claimed_by is None:
            return
        if self._extended is not None and self._extended[0] is job:
            since = self._extended[1]
        if now - since >= self.lease.total_seconds() / 4 and self._extend(job, job.claimed_by):
            # only an extension that reached the store counts: one that failed is tried again
            # at the next look, an eighth of a lease later, not a quarter
            self._extended = (job, now)

    def _extend(self, job: ClaimedJob, worker: str) -> bool:
        """Extend the claim; whether the store answered (False: try again)."""
        try:
            with self.store.unit_of_work() as uow:
                kept = uow.jobs.extend_claim(job, worker=worker, until=self.clock() + self.lease)
                uow.commit()
        except Exception as exc:  # the next look tries again; the job itself goes on
            log.warning("could not extend the claim of job %s: %s", job.id, type(exc).__name__)
            return False
        if kept:
            log.info("job %s (%s) still running: its claim is extended", job.id, job.kind)
        return True


class Worker:
    def __init__(
        self,
        ctx: EngineContext,
        name: str,
        *,
        batch: int = 20,
        lease: timedelta = timedelta(seconds=120),
        poll_interval: float = 1.0,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.batch = batch
        self.lease = lease
        self.poll_interval = poll_interval
        self.keeper: LeaseKeeper | None = None  # set while run() serves
        self.stopping: threading.Event | None = None  # set while run() serves
        self.skip_kind = register_sync.left_to_others(ctx)  # work this server is not set up for
        self.monotonic: Callable[[], float] = time.monotonic  # when the poll time has come
        # a database outage told once (and its end), not as a traceback at every poll
        self.failures = RoundFailures(log, f"worker {name}")

    def run_once(self) -> int:
        """Claim and run the jobs due now, after the synchronous replies the process holds for
        the store (:class:`ReplyWaits`): all of them as soon as a claim was written (the store
        writes again), so that each is taken before the ack-timeout the store's return lets
        run; return how many jobs were run."""
        with self.ctx.store.unit_of_work() as uow:
            jobs = uow.jobs.claim_due(
                self.name,
                now=self.ctx.clock(),
                limit=self.batch,
                lease=self.lease,
                skip_kind=self.skip_kind,
            )
            uow.commit()
        offer_held_replies(self.ctx, every_one=bool(jobs))  # a claim written: the store writes
        self._run_jobs(jobs)
        return len(jobs)

    def run_handed(self) -> int:
        """Run jobs handed over by this process (stored claimed for us); return how many.

        One whose lease is half gone is left alone: it may be claimed from the store by then."""
        handed = self.ctx.wakeup.take_handed(self.batch)
        self._run_jobs(handed)
        return len(handed)

    def _run_jobs(self, jobs: list[ClaimedJob]) -> None:
        left: list[ClaimedJob] = []
        for job in jobs:
            if self.stopping is not None and self.stopping.is_set():
                # The server stops: the rest of the batch is given back, for another server
                # or this one's restart.
                log.info("job %s (%s) left for after the stop", job.id, job.kind)
                left.append(job)
                continue
            # A job is started only while at least half its lease is left: the jobs before it
            # in the batch may have taken long (a send waits up to a minute per step), and once
            # the lease runs out another worker may claim the job and run it too.
            if job.claimed_until is not None and job.claimed_until - self.ctx.clock() <= (
                self.lease / 2
            ):
                log.warning(
                    "job %s (%s) left for a later claim: its lease ran low", job.id, job.kind
                )
                left.append(job)
                continue
            handler = HANDLERS.get(job.kind)
            if handler is None:
                log.warning("job %s of a kind this server does not know: %s", job.id, job.kind)
                failing_jobs.unknown_kind(self.ctx, job)
                continue
            try:
                with self.keeper.running(job) if self.keeper else contextlib.nullcontext():
                    handler(self.ctx, job)
            except ReplyWaits as waits:
                hold_reply(self.ctx, waits.reply)
            except Exception as exc:  # one bad job must not stop the worker
                if failing_jobs.wait_for_store(self.ctx, job, exc):
                    continue  # the store away: the job waits, the outage told once
                log.error(
                    "job %s (%s) failed: %s\n%s",
                    job.id,
                    job.kind,
                    type(exc).__name__,
                    passed_through(exc),
                )
                failing_jobs.after_crash(self.ctx, job, exc)
        release_unstarted(self.ctx, left)

    def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Run until nothing is due (tests and the demo use this with an injected clock)."""
        total = 0
        for _ in range(max_rounds):
            ran = self.run_once()
            total += ran
            if ran == 0:
                break
        return total

    def run(self, stop: threading.Event) -> None:
        # the clock looked up each time: tests and the demo set the engine's clock later
        self.keeper = LeaseKeeper(self.ctx.store, lambda: self.ctx.clock(), self.lease).start()
        self.stopping = stop
        try:
            self._serve(stop)
        finally:
            self.keeper.stop()
            self.keeper = None
            self.stopping = None

    def claim_turn(self) -> tuple[int, float]:
        """One claim of the serving loop: how many jobs ran, and the pause before the next
        claim. That is the poll interval; while the database cannot be reached it grows (see
        :class:`RoundFailures`: from half a second, doubled up to ten), and the outage is
        logged once when it begins and once when it ends, not with a traceback at every poll
        (some 120 lines per worker per second at a poll of 0.2 s). A claim the store refuses
        (its disk full) is tried again ``STORE_PAUSE`` later, as the jobs are, told by the
        store-failing period."""
        try:
            ran = self.run_once()
        except Exception as exc:
            if failing_jobs.refused_by_store(self.ctx, exc, "its worker's claim"):
                return 0, max(self.poll_interval, failing_jobs.STORE_PAUSE.total_seconds())
            return 0, max(self.poll_interval, self.failures.failed(exc))
        self.failures.worked()
        return ran, self.poll_interval

    def _serve(self, stop: threading.Event) -> None:
        # The store is claimed from on a notice, and at the latest a poll interval after the
        # last claim, however often handed jobs woke us meanwhile: jobs that fall due with no
        # notice (an ack-timeout, a retry, another process's) are found by that look, and a
        # steady stream of handed jobs must not put it off for ever.
        notice = True
        next_claim = self.monotonic()
        while not stop.is_set():
            try:
                if self.run_handed() and not notice and self.monotonic() < next_claim:
                    continue  # handed jobs first: they are due and need no claim
            except Exception as exc:
                self.failures.failed(exc)
            if notice or self.monotonic() >= next_claim:
                self.ctx.wakeup.claiming()
                started = self.monotonic()
                ran, pause = self.claim_turn()
                next_claim = started + pause
                if ran >= self.batch:
                    notice = True  # there may be more
                    continue
            # took all that was due: claim again on a notice or at the poll time, not when only
            # a handed job woke us
            notice = self.ctx.wakeup.wait(max(0.0, next_claim - self.monotonic()))
