"""A call of the API given up at a stop (api/app.py ``CallsAtStop``) against a real database:
its transactions are refused before they wait for a lock and before anything of their commit
is seen, and what it was doing when it was answered is told as it was."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from meldingstjener.api import app
from meldingstjener.store.uow import Store

WAIT = 10.0  # far below SQLite's 30 s busy timeout: a wait for the lock fails the test


@pytest.fixture
def watched(store: Store) -> Iterator[Store]:
    app.watch_calls(store.database)
    yield store


def _as_call(call: app._Awaited, work: object) -> BaseException | None:
    """Run ``work()`` as a thread of ``call`` would (its context holds the call), in a thread
    of its own, waited for at most ``WAIT``; what it raised (None: nothing)."""
    raised: list[BaseException | None] = []

    def run() -> None:
        token = app._CALL.set(call)
        try:
            work()  # type: ignore[operator]
            raised.append(None)
        except BaseException as exc:
            raised.append(exc)
        finally:
            app._CALL.reset(token)

    thread = threading.Thread(target=run, name="test-call", daemon=True)
    thread.start()
    thread.join(WAIT)
    assert raised, "the given-up call's transaction waited for a lock"
    return raised[0]


def _given_up() -> app._Awaited:
    call = app._Awaited()
    assert call.give_up() == app.WORKING
    return call


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_given_up_call_is_refused_before_sqlite_s_write_lock(watched: Store) -> None:
    # Another process holds the write lock: BEGIN IMMEDIATE would wait up to 30 s for it.
    other = sqlite3.connect(watched.database.engine.url.database or "", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:

        def in_a_session() -> None:  # a transaction outside a unit of work asks too
            with watched.database.session() as session:
                session.execute(text("SELECT 1"))

        def in_a_unit_of_work() -> None:
            with watched.unit_of_work() as uow:
                uow.session.execute(text("SELECT 1"))

        assert isinstance(_as_call(_given_up(), in_a_session), app._GivenUp)
        assert isinstance(_as_call(_given_up(), in_a_unit_of_work), app._GivenUp)
    finally:
        other.rollback()
        other.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_given_up_call_is_refused_before_the_process_s_write_lock(watched: Store) -> None:
    # Another thread's unit of work holds this process's write lock (SQLite's writers queue
    # on it): a given-up call does not queue behind it.
    lock = watched.database.write_lock
    assert lock is not None
    with lock:
        raised = _as_call(_given_up(), lambda: watched.unit_of_work().__enter__())
    assert isinstance(raised, app._GivenUp)


def test_a_given_up_call_s_commit_moves_no_change_generation(watched: Store) -> None:
    # The commit is refused before the caches of parties and agreements are told of a change.
    before = watched.database.generation()
    call = app._Awaited()

    def write_then_commit() -> None:
        with watched.unit_of_work() as uow:
            uow.session.execute(text("DELETE FROM communication_parties WHERE her_id = '0'"))
            assert call.give_up() == app.WORKING  # the stop's answer, as it wrote
            uow.commit()

    assert isinstance(_as_call(call, write_then_commit), app._GivenUp)
    assert watched.database.generation() == before


def test_a_call_answered_after_its_commit_completed_is_told_so(
    watched: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Its last commit completed, and it was past it (building its answer): not "as it
    # committed", and its repeat finds what it stored; nothing of it begins after the answer.
    call = app._Awaited()

    def commit() -> None:
        with watched.unit_of_work() as uow:
            uow.session.execute(text("DELETE FROM communication_parties WHERE her_id = '0'"))
            uow.commit()

    assert _as_call(call, commit) is None
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/Messages"}
    asyncio.run(app._answer_cut_short(call, False, scope, receive, send))  # type: ignore[arg-type]
    assert "POST /Messages under way at the stop was answered 503 after its last commit" in (
        caplog.text
    )
    assert sent[0]["status"] == 503
    assert isinstance(_as_call(call, commit), app._GivenUp)
