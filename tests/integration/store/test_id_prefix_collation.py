"""``show`` and ``status`` find a message by the start of its id, and by a MsgId in another case,
under any database collation.

The start is looked up as a range of the primary key where text sorts by code (SQLite,
PostgreSQL's C and C.UTF-8). A Norwegian database's collation reads "aa" as "å", after "z":
there the range from "deadbeea-a" to "deadbeea-ag" misses "deadbeea-aa00-...", and the id's
start found nothing, or one message where two share it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import typer

from meldingstjener.cli.store_cmds import _by_id_prefix, find_messages
from meldingstjener.store.database import Database
from meldingstjener.store.migrate import upgrade
from meldingstjener.store.tables import MessageRow

A100 = "deadbeea-a100-4000-8000-000000000001"
AA00 = "deadbeea-aa00-4000-8000-000000000002"


@pytest.fixture
def norwegian(postgres_url: str) -> Iterator[Database]:
    """A database whose collation is ICU's Norwegian (skipped where PostgreSQL has no ICU)."""
    name = f"mt_test_nb_{uuid.uuid4().hex[:12]}"
    admin = postgres_url  # the session's database: a connection to it makes the other
    with psycopg.connect(admin, autocommit=True) as connection:
        try:
            connection.execute(
                f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu'
                " ICU_LOCALE 'nb' LOCALE 'C.UTF-8'"
            )
        except psycopg.Error as exc:
            pytest.skip(f"this PostgreSQL makes no ICU database: {exc}")
    database = Database(postgres_url.rsplit("/", 1)[0] + f"/{name}")
    upgrade(database)
    yield database
    database.dispose()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _stored(database: Database, *ids: str) -> None:
    with database.session() as session:
        session.add_all(MessageRow(id=i, direction="in", status="received") for i in ids)
        session.commit()


def test_an_ids_start_is_found_under_a_norwegian_collation(norwegian: Database) -> None:
    from meldingstjener.store.uow import UnitOfWork

    assert not norwegian.orders_text_by_code
    _stored(norwegian, AA00)
    with UnitOfWork(norwegian) as uow:
        found = _by_id_prefix(uow, "deadbeea-a")
        assert found is not None and found.id == AA00
    _stored(norwegian, A100)
    with UnitOfWork(norwegian) as uow, pytest.raises(typer.BadParameter, match="several"):
        _by_id_prefix(uow, "deadbeea-a")


def test_an_id_in_another_case_is_found_under_a_norwegian_collation(norwegian: Database) -> None:
    """A MsgId whose start is no range of the index there ("aa" is "å") is found all the same:
    along the index of lower(msg_id) (migration 0033)."""
    from meldingstjener.store.uow import UnitOfWork

    msg_id = "aa0e8400-e29b-41d4-a716-446655440000"
    with norwegian.session() as session:
        session.add(MessageRow(id=A100, direction="out", status="sent", msg_id=msg_id))
        session.commit()
    with UnitOfWork(norwegian) as uow:
        assert [m.id for m in find_messages(uow, msg_id.upper())] == [A100]
        assert find_messages(uow, "AA0E8400-E29B-41D4-A716-44665544000F") == []


def test_the_sessions_own_collation_sorts_by_code(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert database.orders_text_by_code  # SQLite, and the C.UTF-8 of the test databases
    finally:
        database.dispose()
