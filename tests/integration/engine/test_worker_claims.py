"""A worker claims only when there can be work: after a claim that took less than a full batch it
waits for the next notice instead of claiming nothing (each empty claim is a transaction), and a
notice given while it works is not lost."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from meldingstjener.engine import worker as worker_module
from meldingstjener.engine.context import EngineContext, Wakeup
from meldingstjener.engine.worker import Worker
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import ClaimedJob, JobRepository, Store

KIND = "test-job"
TIMEOUT = 30.0


class Watched(Wakeup):
    """A wake-up that tells the test when the worker starts to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float) -> None:
        self.waiting.set()
        super().wait(timeout)


def _schedule(store: Store, wakeup: Wakeup) -> None:
    with store.unit_of_work() as uow:
        uow.jobs.schedule(KIND, utcnow() - timedelta(seconds=1))
        uow.commit()
    wakeup.notify()


def test_no_empty_claim_after_a_short_batch_and_no_lost_notice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[int] = []
    original_claim = JobRepository.claim_due

    def counting_claim(self: JobRepository, *args: Any, **kwargs: Any) -> list[ClaimedJob]:
        jobs = original_claim(self, *args, **kwargs)
        claims.append(len(jobs))
        return jobs

    handled: list[int] = []
    handled_once = threading.Event()
    handled_twice = threading.Event()

    def handler(ctx: EngineContext, job: ClaimedJob) -> None:
        with ctx.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()
        handled.append(job.id)
        (handled_twice if handled_once.is_set() else handled_once).set()

    monkeypatch.setattr(JobRepository, "claim_due", counting_claim)
    monkeypatch.setitem(worker_module.HANDLERS, KIND, handler)
    wakeup = Watched()
    ctx = cast(EngineContext, SimpleNamespace(store=store, clock=utcnow, wakeup=wakeup))
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
