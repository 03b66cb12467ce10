"""Ten worker processes claim due work from PostgreSQL at once and never take the same job."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

from meldingstjener.store.database import Database
from meldingstjener.store.uow import UnitOfWork

JOBS = 400
WORKERS = 10


def _worker(
    url: str, name: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[name-defined]
    database = Database(url, pool_size=1)
    database.engine.connect().close()  # connected before the start, like the others
    start.wait(timeout=120)
    claimed: list[int] = []
    now = datetime.now(UTC) + timedelta(seconds=1)
    while True:
        with UnitOfWork(database) as uow:
            jobs = uow.jobs.claim_due(name, now=now, limit=3, lease=timedelta(minutes=5))
            uow.commit()
        if not jobs:
            break
        claimed.extend(job.id for job in jobs)
    out.put((name, claimed))
    database.dispose()


def test_ten_workers_never_claim_the_same_row(postgres_url: str) -> None:
    from sqlalchemy import text

    from meldingstjener.store.migrate import upgrade

    database = Database(postgres_url)
    upgrade(database)
    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM jobs"))
    due = datetime.now(UTC) - timedelta(minutes=1)
    with UnitOfWork(database) as uow:
        for n in range(JOBS):
            uow.jobs.schedule("transmit", due, data={"n": n})
        uow.commit()

    context = multiprocessing.get_context("spawn")
    # Every worker is started, imported and connected before any claims: with an event set at
    # once, the first child could claim all 400 jobs while the others were still importing.
    start = context.Barrier(WORKERS + 1)
    out = context.Queue()
    processes = [
        context.Process(target=_worker, args=(postgres_url, f"w{i}", start, out))
        for i in range(WORKERS)
    ]
    for process in processes:
        process.start()
    start.wait(timeout=120)
    results = [out.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    every_claim = [job_id for _, claimed in results for job_id in claimed]
    assert len(every_claim) == JOBS, "some jobs were not claimed"
    assert len(set(every_claim)) == JOBS, "a job was claimed twice"
    busy = [name for name, claimed in results if claimed]
    assert len(busy) >= 2, "the claims did not actually run concurrently"
    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM jobs"))
    database.dispose()
