"""How a unit of work ends without commit: whatever it wrote is rolled back, and one that only
read ends so that PostgreSQL keeps the statements psycopg prepared (a rollback drops them all)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from meldingstjener.model import Direction
from meldingstjener.store.database import Database
from meldingstjener.store.migrate import upgrade
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

# psycopg prepares a statement on its fifth use on one connection
USES_BEFORE_PREPARED = 5


def _prepared_here(store: Store) -> int:
    with store.unit_of_work() as uow:
        found = uow.session.execute(text("SELECT count(*) FROM pg_prepared_statements"))
        return int(found.scalar_one())


def test_reads_without_commit_keep_prepared_statements(postgres_url: str, tmp_path: Path) -> None:
    database = Database(postgres_url, pool_size=1)
    upgrade(database)
    # the migration may have opened a second connection; from here on the reads must all run
    # on one (the pool hands connections out in turn), as prepared statements are per connection
    database.engine.dispose()
    store = Store(database, PayloadStore(tmp_path / "payloads"))
    for _ in range(USES_BEFORE_PREPARED + 1):
        with store.unit_of_work() as uow:  # left without commit, as every read is
            assert uow.messages.by_ebxml_id(Direction.INBOUND, "never-seen@example") is None
    assert _prepared_here(store) >= 1
    database.dispose()


def test_a_core_write_without_commit_is_rolled_back(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.jobs.schedule("transmit", utcnow() + timedelta(minutes=1))
    with store.unit_of_work() as uow:
        assert uow.jobs.count() == 0


def test_an_orm_object_added_without_commit_is_not_stored(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.messages.add(
            MessageRow(direction=Direction.INBOUND.value, ebxml_message_id="left@example"),
            actor="test",
        )
    with store.unit_of_work() as uow:
        assert uow.messages.by_ebxml_id(Direction.INBOUND, "left@example") is None
        assert uow.events.for_message("left@example") == []


def test_an_exception_rolls_back_a_flushed_write(store: Store) -> None:
    with pytest.raises(RuntimeError), store.unit_of_work() as uow:
        row = uow.messages.add(
            MessageRow(direction=Direction.INBOUND.value, ebxml_message_id="thrown@example"),
            actor="test",
        )
        uow.session.flush()
        assert row.id
        raise RuntimeError("half-way")
    with store.unit_of_work() as uow:
        assert uow.messages.by_ebxml_id(Direction.INBOUND, "thrown@example") is None


def test_after_commit_actions_run_only_after_a_commit(store: Store) -> None:
    ran: list[str] = []
    with store.unit_of_work() as uow:
        uow.jobs.schedule("transmit", utcnow())
        uow.after_commit(lambda: ran.append("rolled back"))
    with store.unit_of_work() as uow:
        uow.jobs.schedule("transmit", utcnow())
        uow.after_commit(lambda: ran.append(f"committed, {uow.jobs.count()} job"))
        uow.commit()
    assert ran == ["committed, 1 job"]
