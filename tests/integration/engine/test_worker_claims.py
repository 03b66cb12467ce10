"""A worker claims only when there can be work: after a claim that took less than a full batch it
waits for the next notice instead of claiming nothing (each empty claim is a transaction), and a
notice given while it works is not lost."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from engine_pair import Pair
from sqlalchemy import select, text

from meldingstjener.engine import worker as worker_module
from meldingstjener.engine.context import EngineContext, Handoff, HeldReplies, Wakeup
from meldingstjener.engine.worker import Worker
from meldingstjener.store.tables import JobRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import ClaimedJob, JobRepository, Store, UnitOfWork

KIND = "test-job"
TIMEOUT = 30.0


class Watched(Wakeup):
    """A wake-up that tells the test when the worker starts to wait (and how often it did)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self._entered = 0
        self._counted = threading.Condition()

    def wait(self, timeout: float) -> bool:
        with self._counted:
            self._entered += 1
            self._counted.notify_all()
        self.waiting.set()
        return super().wait(timeout)

    def waited(self, times: int) -> bool:
        """Block until the worker has started to wait ``times`` times in all."""
        with self._counted:
            return self._counted.wait_for(lambda: self._entered >= times, TIMEOUT)


def _count_claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many jobs each claim took, in order."""
    claims: list[int] = []
    original_claim = JobRepository.claim_due

    def counting_claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[ClaimedJob]:
        jobs = original_claim(self, *args, **kwargs)
        claims.append(len(jobs))
        return jobs

    monkeypatch.setattr(JobRepository, "claim_due", counting_claim)
    return claims


def _schedule(store: Store, wakeup: Wakeup) -> None:
    with store.unit_of_work() as uow:
        uow.jobs.schedule(KIND, utcnow() - timedelta(seconds=1))
        uow.commit()
    wakeup.notify()


def test_no_empty_claim_after_a_short_batch_and_no_lost_notice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = _count_claims(monkeypatch)

    handled: list[int] = []
    handled_once = threading.Event()
    handled_twice = threading.Event()

    def handler(ctx: EngineContext, job: ClaimedJob) -> None:
        with ctx.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()
        handled.append(job.id)
        (handled_twice if handled_once.is_set() else handled_once).set()

    monkeypatch.setitem(worker_module.HANDLERS, KIND, handler)
    wakeup = Watched()
    ctx = cast(
        EngineContext,
        SimpleNamespace(
            store=store, clock=utcnow, wakeup=wakeup, register_sync=None, held_replies=HeldReplies()
        ),
    )
    worker = Worker(ctx, "test-worker", batch=4, poll_interval=TIMEOUT)
    stop = threading.Event()
    _schedule(store, wakeup)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert handled_once.wait(TIMEOUT) and wakeup.waiting.wait(TIMEOUT)
        assert claims == [1]  # it took the one job and went to wait, without a second claim
        _schedule(store, wakeup)
        assert handled_twice.wait(TIMEOUT)  # the notice woke it long before the poll interval
        assert claims == [1, 1]
    finally:
        stop.set()
        wakeup.wake_all()
        thread.join(TIMEOUT)
    assert len(handled) == 2


def _claimed_by(store: Store, job_id: int) -> str | None:
    with store.unit_of_work() as uow:
        found = uow.session.execute(
            text("SELECT claimed_by FROM jobs WHERE id = :id"), {"id": job_id}
        )
        return found.scalar_one_or_none()


@contextmanager
def _serving(
    ctx: EngineContext, capacity: int, monotonic: Callable[[], float] | None = None
) -> Iterator[Worker]:
    """A worker of ``ctx`` serving in a thread, with a watched wake-up and a handoff of
    ``capacity`` jobs, as ``serve`` runs it (its poll times by ``monotonic``, if given);
    stopped on leaving."""
    ctx.clock = utcnow
    ctx.wakeup = Watched()
    ctx.handoff = Handoff("test-host:1/handoff", timedelta(minutes=2), capacity=capacity)
    worker = Worker(ctx, "test-host:1/0", batch=4, poll_interval=TIMEOUT)
    if monotonic is not None:
        worker.monotonic = monotonic
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        ctx.wakeup.wake_all()
        thread.join(TIMEOUT)


def _schedule_now(ctx: EngineContext) -> UnitOfWork:
    """A job due now, stored as a new message's send is (handed over when there is room)."""
    with ctx.store.unit_of_work() as uow:
        ctx.schedule_now(uow, KIND)
        uow.commit()
    ctx.notify_workers(uow)
    return uow


def test_a_job_handed_over_runs_without_a_claim_and_one_beyond_capacity_is_claimed(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = pair.gp
    claims = _count_claims(monkeypatch)

    seen: list[tuple[int, str | None]] = []
    done = threading.Semaphore(0)
    started = threading.Semaphore(0)
    hold, release = threading.Event(), threading.Event()

    def handler(context: EngineContext, job: ClaimedJob) -> None:
        seen.append((job.id, _claimed_by(context.store, job.id)))
        started.release()
        if hold.is_set():
            assert release.wait(TIMEOUT)
        with context.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()
        done.release()

    monkeypatch.setitem(worker_module.HANDLERS, KIND, handler)
    with _serving(ctx, capacity=1):
        assert ctx.wakeup.waiting.wait(TIMEOUT)
        assert claims == [0]  # the first look into the store, before anything was stored
        assert not _schedule_now(ctx).jobs.stored_unclaimed
        assert done.acquire(timeout=TIMEOUT) and started.acquire(timeout=TIMEOUT)
        assert seen[0][1] == "test-host:1/handoff"  # stored claimed, run as it was handed
        assert ctx.wakeup.waited(2)
        assert claims == [0]  # no claim for the handed job, none after it
        # while the worker is busy, one job waits in memory (the capacity) and the next is
        # stored for claiming, with a notice
        hold.set()
        units = []
        for _ in range(3):
            units.append(_schedule_now(ctx))
            if len(units) == 1:  # the worker has taken the first and is held in it
                assert started.acquire(timeout=TIMEOUT)
        assert [u.jobs.stored_unclaimed for u in units] == [False, False, True]
        release.set()
        for _ in range(3):
            assert done.acquire(timeout=TIMEOUT)
        assert [claimed_by for _, claimed_by in seen[1:]] == [
            "test-host:1/handoff",
            "test-host:1/handoff",
            "test-host:1/0",  # claimed from the store on the notice
        ]
        assert claims == [0, 1]
    with ctx.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0


def test_handed_jobs_do_not_put_off_the_look_into_the_store(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that falls due with no notice (an ack-timeout, a retry, another process's) is
    claimed at the poll time even while handed jobs keep waking the worker: steady traffic
    of about one message per poll interval once kept it from ever looking."""
    ctx = pair.gp
    claims = _count_claims(monkeypatch)
    ran: list[str | None] = []
    done = threading.Semaphore(0)

    def handler(context: EngineContext, job: ClaimedJob) -> None:
        ran.append(_claimed_by(context.store, job.id))
        with context.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()
        done.release()

    monkeypatch.setitem(worker_module.HANDLERS, KIND, handler)
    now = [1000.0]
    with _serving(ctx, capacity=4, monotonic=lambda: now[0]):
        assert ctx.wakeup.waited(1)
        assert claims == [0]
        with ctx.store.unit_of_work() as uow:  # due now, and nobody says so
            uow.jobs.schedule(KIND, utcnow() - timedelta(seconds=1))
            uow.commit()
        # a handed job within the poll interval: run, and no look into the store
        now[0] += 1
        _schedule_now(ctx)
        assert done.acquire(timeout=TIMEOUT) and ctx.wakeup.waited(2)
        assert claims == [0] and ran == ["test-host:1/handoff"]
        # another after the poll time: the look is due, handed jobs or not
        now[0] += TIMEOUT
        _schedule_now(ctx)
        assert done.acquire(timeout=TIMEOUT) and done.acquire(timeout=TIMEOUT)
        assert ctx.wakeup.waited(3)
        assert claims == [0, 1]
        assert ran == ["test-host:1/handoff", "test-host:1/handoff", "test-host:1/0"]


def test_the_capacity_counts_the_jobs_of_the_same_transaction(pair: Pair) -> None:
    ctx = pair.gp
    ctx.handoff = Handoff("test-host:1/handoff", timedelta(minutes=2), capacity=1)
    with ctx.store.unit_of_work() as uow:
        ctx.schedule_now(uow, KIND)
        ctx.schedule_now(uow, KIND)
        uow.commit()
    assert uow.jobs.stored_claimed == 1 and uow.jobs.stored_unclaimed
    assert len(ctx.wakeup.take_handed(10)) == 1


def _handing_over(pair: Pair) -> EngineContext:
    """The GP's engine on the wall clock, handing its new jobs to its workers (as serve)."""
    ctx = pair.gp
    ctx.clock = utcnow
    ctx.handoff = Handoff("test-host:1/handoff", timedelta(minutes=2), capacity=4)
    return ctx


def test_a_handed_job_whose_process_died_is_claimed_after_the_restart(pair: Pair) -> None:
    ctx = _handing_over(pair)
    with ctx.store.unit_of_work() as uow:
        ctx.schedule_now(uow, KIND)
        uow.commit()  # handed to a worker of a process that dies before running it
    ctx.wakeup = Wakeup()  # the restarted process: nothing in memory
    with ctx.store.unit_of_work() as uow:
        kept = uow.jobs.claim_due("other:2/0", now=utcnow(), limit=4, lease=timedelta(minutes=2))
        uow.commit()
    assert kept == []  # still leased to the instance that died
    with ctx.store.unit_of_work() as uow:
        assert uow.jobs.release_claims("test-host:1/") == 1
        uow.commit()
    with ctx.store.unit_of_work() as uow:
        [job] = uow.jobs.claim_due(
            "test-host:1/0", now=utcnow(), limit=4, lease=timedelta(minutes=2)
        )
        uow.commit()
    assert job.kind == KIND and job.attempts == 2


def _job_rows(store: Store) -> list[tuple[str | None, int]]:
    """Each job's claim holder and attempts, by id."""
    with store.unit_of_work() as uow:
        rows = uow.session.scalars(select(JobRow).order_by(JobRow.id))
        return [(row.claimed_by, row.attempts) for row in rows]


def test_a_stopping_worker_gives_back_the_rest_of_its_batch(store: Store) -> None:
    # The jobs of a batch not started when the server stops are due again at once, for any
    # worker, and the stop does not count as one of their tries. A job whose claim another
    # worker holds meanwhile is not touched.
    ctx = cast(
        EngineContext,
        SimpleNamespace(
            store=store,
            clock=utcnow,
            wakeup=Wakeup(),
            register_sync=None,
            held_replies=HeldReplies(),
        ),
    )
    for _ in range(3):
        _schedule(store, ctx.wakeup)
    lease = timedelta(minutes=2)
    with store.unit_of_work() as uow:
        batch = uow.jobs.claim_due("test-host:1/0", now=utcnow(), limit=3, lease=lease)
        uow.commit()
    with store.unit_of_work() as uow:  # the third job's claim is now another worker's
        uow.session.execute(
            text("UPDATE jobs SET claimed_by = 'other:2/0' WHERE id = :id"), {"id": batch[2].id}
        )
        uow.commit()
    worker = Worker(ctx, "test-host:1/0", batch=3, lease=lease)
    worker.stopping = threading.Event()
    worker.stopping.set()
    worker._run_jobs(batch)
    assert _job_rows(store) == [(None, 0), (None, 0), ("other:2/0", 1)]
    with store.unit_of_work() as uow:
        again = uow.jobs.claim_due("other:3/0", now=utcnow(), limit=3, lease=lease)
        uow.commit()
    assert [(job.id, job.attempts) for job in again] == [(batch[0].id, 1), (batch[1].id, 1)]


def test_a_stop_gives_back_the_jobs_handed_over_and_not_taken(pair: Pair) -> None:
    from meldingstjener.cli.engine_cmds import _stop_serving

    ctx = _handing_over(pair)
    with ctx.store.unit_of_work() as uow:
        ctx.schedule_now(uow, KIND)
        ctx.schedule_now(uow, KIND)
        uow.commit()
    assert ctx.wakeup.handed_count() == 2
    assert _job_rows(ctx.store) == [("test-host:1/handoff", 1)] * 2
    _stop_serving(ctx, "test-host:1", threading.Event(), None, [])
    assert ctx.wakeup.handed_count() == 0
    assert _job_rows(ctx.store) == [(None, 0)] * 2  # due for any worker, no try counted


def test_a_handed_over_send_carries_what_it_would_read_and_reads_nothing(pair: Pair) -> None:
    from sqlalchemy import event

    from meldingstjener.devsites import dialog_note
    from meldingstjener.engine.outbound import submit
    from meldingstjener.engine.transmit import transmit_job

    ctx = pair.gp
    ctx.handoff = Handoff("test-host:1/handoff", timedelta(minutes=2), capacity=4)
    message_id = submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "Hei"), actor="test")
    [job] = ctx.wakeup.take_handed(10)
    with ctx.store.unit_of_work() as uow:
        assert job.sending is not None
        assert job.sending == uow.messages.sending_view(message_id)  # what the store says
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    engine = ctx.store.database.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert transmit_job(ctx, job) is not None
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert pair.network.sent  # sent to the hospital
    # one transaction (SQLite: BEGIN IMMEDIATE), after the send: its one read is the lock
    assert statements.count("BEGIN") == 1 and statements.count("SELECT") == 1
    assert statements[:2] == ["BEGIN", "SELECT"]
    assert pair.message(ctx, message_id).status == "sent"


def test_a_second_serve_on_a_taken_port_leaves_the_running_ones_claims(pair: Pair) -> None:
    # A serve takes back the claims of its own host:port at start, as those of a process that
    # died. When the port is taken, that process is alive: the new one must stop untouched.
    import socket
    import subprocess
    import sys

    site = pair.gp_site
    instance = f"{socket.gethostname()}:{site.port}/0"
    with pair.gp.store.unit_of_work() as uow:
        uow.jobs.schedule(KIND, utcnow())
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        [held] = uow.jobs.claim_due(instance, now=utcnow(), limit=1, lease=timedelta(minutes=2))
        uow.commit()
    with socket.create_server(("127.0.0.1", site.port)):  # the running instance's listener
        started = subprocess.run(
            [sys.executable, "-m", "meldingstjener", "--config", str(site.config_path), "serve"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert started.returncode == 2
    assert "cannot listen on" in started.stderr
    with pair.gp.store.unit_of_work() as uow:
        taken = uow.jobs.claim_due("other:2/0", now=utcnow(), limit=1, lease=timedelta(minutes=2))
    assert taken == [] and held.kind == KIND  # still leased to the running instance


def _claimed_until(store: Store, job_id: int) -> Any:
    with store.unit_of_work() as uow:
        [job] = [j for j in uow.session.scalars(select(JobRow).where(JobRow.id == job_id))]
        return job.claimed_until


def test_a_job_that_outlasts_its_lease_keeps_its_claim(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A send that takes longer than the lease (a large upload over a slow link) must not be
    # claimed and sent again by another worker while it runs.
    lease = timedelta(seconds=3)
    t0 = utcnow()
    moment = [t0]
    running, release, extended = threading.Event(), threading.Event(), threading.Event()

    def slow(ctx: EngineContext, job: ClaimedJob) -> None:
        moment[0] = t0 + timedelta(seconds=2)  # two thirds of the lease gone, still sending
        running.set()
        assert release.wait(TIMEOUT)
        with ctx.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()

    original_extend = worker_module.LeaseKeeper._extend

    def watched_extend(keeper: worker_module.LeaseKeeper, job: ClaimedJob, name: str) -> bool:
        done = original_extend(keeper, job, name)
        extended.set()  # after its commit
        return done

    monkeypatch.setitem(worker_module.HANDLERS, KIND, slow)
    monkeypatch.setattr(worker_module.LeaseKeeper, "_extend", watched_extend)
    with store.unit_of_work() as uow:
        uow.jobs.schedule(KIND, t0 - timedelta(seconds=1))
        uow.commit()
    with store.unit_of_work() as uow:
        [job_id] = uow.session.scalars(select(JobRow.id).where(JobRow.kind == KIND))
    wakeup = Watched()
    ctx = cast(
        EngineContext,
        SimpleNamespace(
            store=store,
            clock=lambda: moment[0],
            wakeup=wakeup,
            register_sync=None,
            held_replies=HeldReplies(),
        ),
    )
    worker = Worker(ctx, "slow-worker", lease=lease, poll_interval=TIMEOUT)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert running.wait(TIMEOUT)
        assert extended.wait(TIMEOUT)
        assert _claimed_until(store, job_id) == t0 + timedelta(seconds=2) + lease
        # another worker looking after the first lease ran out finds nothing to take
        with store.unit_of_work() as uow:
            taken = uow.jobs.claim_due("other", now=t0 + timedelta(seconds=4), limit=5, lease=lease)
            uow.commit()
        assert taken == []
    finally:
        release.set()
        assert wakeup.waited(1)  # done with the job, waiting for more
        stop.set()
        wakeup.wake_all()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and worker.keeper is None
    with store.unit_of_work() as uow:
        assert list(uow.session.scalars(select(JobRow.id).where(JobRow.id == job_id))) == []


def test_an_extension_that_failed_is_tried_again_at_the_next_look() -> None:
    # A database hiccup must not cost the running job a quarter of a lease: by the next try
    # its claim could have run out, and another worker would send the message again.
    store = cast(Store, None)  # the extension is replaced below: no store is asked
    keeper = worker_module.LeaseKeeper(store, utcnow, timedelta(seconds=8))  # looks every second
    job = ClaimedJob(1, KIND, None, None, 1, utcnow(), utcnow(), claimed_by="w")
    outcomes = [False, True, True]  # the first extension fails, the others reach the store
    calls: list[str] = []

    def extend(job: ClaimedJob, worker: str) -> bool:
        calls.append(worker)
        return outcomes.pop(0)

    keeper._extend = extend  # type: ignore[method-assign]
    keeper._running = (job, 0.0)
    keeper._look(1.0)  # an eighth of the lease: too early
    keeper._look(2.0)  # a quarter: extends, and fails
    keeper._look(3.0)  # tried again at once
    keeper._look(4.0)  # extended a second ago: nothing to do
    assert len(calls) == 2
    keeper._look(5.0)  # a quarter of a lease after the extension: again
    assert calls == ["w", "w", "w"]


def test_a_claim_is_extended_only_for_the_same_worker_and_job(store: Store) -> None:
    import dataclasses

    from meldingstjener.store.tables import MessageRow

    now = utcnow()
    with store.unit_of_work() as uow:
        row = uow.messages.add(
            MessageRow(direction="out", ebxml_message_id="e@x", from_her_id="1", to_her_id="2"),
            actor="t",
        )
        uow.jobs.schedule(KIND, now, message_id=row.id)
        uow.commit()
    with store.unit_of_work() as uow:
        [job] = uow.jobs.claim_due("w", now=now, limit=5, lease=timedelta(seconds=60))
        uow.commit()
    later = now + timedelta(minutes=5)
    with store.unit_of_work() as uow:
        assert job.claimed_by == "w" and job.message_id == row.id
        assert not uow.jobs.extend_claim(job, worker="another", until=later)
        # the same id, but another job (SQLite gives a deleted top id to the next row)
        assert not uow.jobs.extend_claim(
            dataclasses.replace(job, kind="x"), worker="w", until=later
        )
        assert not uow.jobs.extend_claim(
            dataclasses.replace(job, message_id=None), worker="w", until=later
        )
        assert uow.jobs.extend_claim(job, worker="w", until=later)
        uow.commit()
    assert _claimed_until(store, job.id) == later


def test_a_job_that_keeps_failing_waits_ever_longer_and_raises_an_alert(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job whose handler raises (a fault in the server or its data) is tried again 30 s
    # later, then 60, 120, ...; after five failures in a row a job-failing alert names it, and
    # the next heartbeat after the job went through resolves the alert.
    from meldingstjener.devsites import dialog_note
    from meldingstjener.engine.instances import beat
    from meldingstjener.engine.outbound import submit

    ctx = pair.gp
    message_id = submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    failures: list[int] = []

    def broken(context: EngineContext, job: ClaimedJob) -> None:
        if len(failures) < 6:
            failures.append(job.id)
            raise OSError("the wire file cannot be read")
        with context.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()

    monkeypatch.setitem(worker_module.HANDLERS, "transmit", broken)
    worker = Worker(ctx, "gp:1/0")
    pauses = []
    for _ in range(6):
        start = ctx.clock()
        assert worker.run_once() == 1
        with ctx.store.unit_of_work() as uow:
            [row] = uow.session.scalars(select(JobRow).where(JobRow.message_id == message_id))
            pauses.append(int((row.due_at - start).total_seconds()))
            assert row.claimed_by is None and row.crashes == len(failures)
        alerts = _open_alerts(ctx, "job-failing")
        assert len(alerts) == (1 if len(failures) >= 5 else 0)
        assert worker.run_once() == 0  # not due again before its pause
        pair.clock.advance(seconds=pauses[-1])
    assert pauses == [30, 60, 120, 240, 480, 960]
    [alert] = _open_alerts(ctx, "job-failing")
    assert f"transmit job for message {message_id} failed 5 times in a row" in str(alert.summary)
    # the sixth failure counted, not told again (the text the same: each raise a webhook call)
    assert alert.count == 2 and alert.changed_at == alert.first_seen
    assert "OSError" in str(alert.summary) and "wire file" not in str(alert.summary)
    assert alert.message_id == message_id
    beat(ctx, "gp:1")
    assert len(_open_alerts(ctx, "job-failing")) == 1  # still failing
    assert worker.run_once() == 1  # goes through now
    beat(ctx, "gp:1")
    assert _open_alerts(ctx, "job-failing") == []


def test_failures_are_counted_in_a_row_and_an_unknown_kind_is_not_one(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handler's own rescheduling (the partner unreachable, say) means the job did its work:
    # the next unexpected error counts from one again. A job of a kind this server does not
    # know (a newer server's) is left for 30 s, never counted.
    from datetime import timedelta as delta

    ctx = pair.gp
    outcome: list[str] = []

    def flaky(context: EngineContext, job: ClaimedJob) -> None:
        if outcome.pop(0) == "crash":
            raise RuntimeError("boom")
        with context.store.unit_of_work() as uow:
            uow.jobs.reschedule(job.id, context.clock() + delta(seconds=10))
            uow.commit()

    monkeypatch.setitem(worker_module.HANDLERS, KIND, flaky)
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule(KIND, ctx.clock())
        uow.jobs.schedule("kind-of-a-newer-server", ctx.clock())
        uow.commit()
    worker = Worker(ctx, "gp:1/0")

    def crashes_and_pause() -> dict[str, tuple[int, int]]:
        with ctx.store.unit_of_work() as uow:
            return {
                row.kind: (row.crashes, int((row.due_at - ctx.clock()).total_seconds()))
                for row in uow.session.scalars(select(JobRow))
            }

    outcome += ["crash"]
    assert worker.run_once() == 2
    assert crashes_and_pause() == {KIND: (1, 30), "kind-of-a-newer-server": (0, 30)}
    for step in (["crash"], ["ok"], ["crash"]):
        pair.clock.advance(seconds=3600)
        outcome += step
        worker.run_once()
    assert crashes_and_pause()[KIND] == (1, 30)  # counted afresh after the normal outcome
    assert crashes_and_pause()["kind-of-a-newer-server"][0] == 0


def _open_alerts(ctx: EngineContext, kind: str) -> list[Any]:
    with ctx.store.unit_of_work() as uow:
        return [a for a in uow.alerts.list(open_only=True) if a.kind == kind]


def test_a_failing_jobs_alert_ends_when_its_failures_are_no_longer_in_a_row(pair: Pair) -> None:
    from sqlalchemy import update

    from meldingstjener.engine import failing_jobs

    ctx = pair.gp
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule(KIND, ctx.clock())
        uow.commit()
    for _ in range(failing_jobs.ALERT_AFTER):
        pair.clock.advance(hours=2)
        [job] = _claim_all(ctx)
        failing_jobs.after_crash(ctx, job, RuntimeError("boom"))
    assert len(_open_alerts(ctx, "job-failing")) == 1
    with ctx.store.unit_of_work() as uow:  # went through once, then failed once more
        uow.session.execute(update(JobRow).values(crashes=1))
        failing_jobs.tidy(uow, ctx.clock())
        uow.commit()
    assert _open_alerts(ctx, "job-failing") == []


def _claim_all(ctx: EngineContext) -> list[ClaimedJob]:
    with ctx.store.unit_of_work() as uow:
        jobs = uow.jobs.claim_due("gp:1/0", now=ctx.clock(), limit=10, lease=timedelta(minutes=2))
        uow.commit()
    return jobs
