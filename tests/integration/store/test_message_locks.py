"""The lock order on a message and its jobs (PostgreSQL, the backend with row locks): an AppRec or
an Acknowledgment locks the message and then cancels its jobs; a job's handler holds its job's
row and then refers to the message (an alert, an event). Neither may deadlock the other, and
the AppRec-deadline job must see the status an AppRec is committing, not the one before it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from meldingstjener.engine.context import Policy
from meldingstjener.engine.receipts import APPREC_DEADLINE, apprec_deadline_job
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.uow import ClaimedJob, Store, UnitOfWork

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

M = "lock-order-message"
WAIT = 30.0  # seconds: a bound for the test, never a pause


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def _awaiting_apprec(database: Database) -> int:
    """A sent message with its transport receipt and its AppRec-deadline job; the job's id."""
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, attempts, created_at, updated_at, "
                "status_changed_at, msg_type, to_her_id) VALUES (:m, 'out', "
                "'transport-acknowledged', 1, now(), now(), now(), 'DIALOG_NOTAT', '8200001')"
            ),
            {"m": M},
        )
        return int(
            connection.execute(
                text(
                    "INSERT INTO jobs (kind, dedup_key, message_id, due_at, attempts, created_at)"
                    " VALUES (:kind, :key, :m, now(), 1, now()) RETURNING id"
                ),
                {"kind": APPREC_DEADLINE, "key": f"{APPREC_DEADLINE}:{M}", "m": M},
            ).scalar_one()
        )


def _in_threads(*actions: Callable[[], None]) -> list[BaseException | None]:
    """Run ``actions`` each in a thread of its own; what each raised (None: nothing)."""
    raised: list[BaseException | None] = [None] * len(actions)

    def run(index: int) -> None:
        try:
            actions[index]()
        except BaseException as exc:  # reported by the test
            raised[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    return raised


def _apprec_locks(uow: UnitOfWork, how: str) -> Callable[[], None]:
    """Lock the message as an incoming AppRec does (the ORM's row or the raw state statement);
    the step that sets its new status."""
    if how == "orm":
        row = uow.messages.get(M, for_update=True)
        assert row is not None

        def set_row() -> None:
            uow.messages.set_status(row, "apprec-ok", actor="apprec:test")

        return set_row
    state = uow.messages.lock_state(M)
    assert state is not None

    def set_state() -> None:
        uow.messages.change_state(state, status="apprec-ok", actor="apprec:test")

    return set_state


@pytest.mark.parametrize("how", ["orm", "raw"])
def test_a_job_that_alerts_on_its_message_and_an_apprec_that_cancels_its_jobs_both_commit(
    database: Database, how: str
) -> None:
    # The job's row first, then an alert that refers to the message (FOR KEY SHARE on it);
    # the AppRec holds the message, then deletes its jobs. With the message locked FOR UPDATE,
    # which blocks FOR KEY SHARE, PostgreSQL broke the deadlock by failing one of them.
    job = _awaiting_apprec(database)
    job_held, message_held = threading.Event(), threading.Event()

    def job_handler() -> None:
        with UnitOfWork(database) as uow:
            uow.jobs.finish(job)
            job_held.set()
            assert message_held.wait(WAIT)
            uow.alerts.raise_alert(
                "job-failing", severity="error", dedup_key=f"job-failing:{job}", summary="x",
                message_id=M,
            )  # fmt: skip
            uow.commit()

    def apprec() -> None:
        assert job_held.wait(WAIT)
        with UnitOfWork(database) as uow:
            set_status = _apprec_locks(uow, how)
            message_held.set()
            set_status()
            uow.jobs.cancel_for_message(M)
            uow.commit()

    assert _in_threads(job_handler, apprec) == [None, None]
    with UnitOfWork(database) as uow:
        row = uow.messages.get(M)
        assert row is not None and row.status == "apprec-ok"
        assert uow.alerts.by_key(f"job-failing:{job}") is not None


def _waiting_on_a_lock(database: Database) -> bool:
    with database.engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_the_apprec_deadline_job_waits_for_an_apprec_being_stored(
    database: Database, tmp_path: Path
) -> None:
    # The AppRec has locked the message and set its status when the deadline job runs: read
    # without the lock, the message still looked unanswered, and the job raised a false
    # apprec-missing alert (and its event) just as the AppRec committed.
    job = _awaiting_apprec(database)
    now = datetime.now(UTC)
    ctx: Any = SimpleNamespace(
        clock=lambda: now, policy=Policy(), store=Store(database, PayloadStore(tmp_path / "p"))
    )
    claimed = ClaimedJob(job, APPREC_DEADLINE, M, None, 1, now)
    apprec_stored, job_ran_or_waits, job_ran = (threading.Event() for _ in range(3))

    def apprec() -> None:
        with UnitOfWork(database) as uow:
            _apprec_locks(uow, "orm")()
            uow.session.flush()
            apprec_stored.set()
            assert job_ran_or_waits.wait(WAIT)
            uow.jobs.cancel_for_message(M)
            uow.commit()

    def deadline() -> None:
        assert apprec_stored.wait(WAIT)
        try:
            apprec_deadline_job(ctx, claimed)
        finally:
            job_ran.set()

    def watch() -> None:  # lets the AppRec commit once the job has run or waits for a lock
        assert apprec_stored.wait(WAIT)
        end = time.monotonic() + WAIT
        while not (job_ran.is_set() or _waiting_on_a_lock(database)):
            assert time.monotonic() < end
            job_ran.wait(0.01)  # polls the condition
        job_ran_or_waits.set()

    assert _in_threads(apprec, deadline, watch) == [None, None, None]
    with UnitOfWork(database) as uow:
        row = uow.messages.get(M)
        assert row is not None and row.status == "apprec-ok"
        assert uow.alerts.by_key(f"apprec-missing:{M}") is None
        assert not [e for e in uow.events.for_message(M) if e.code == "apprec-missing"]
        assert uow.session.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
