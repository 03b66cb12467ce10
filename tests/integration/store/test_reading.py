"""``Database.reading``: reads outside a unit of work cost one round trip each on PostgreSQL.

It had wrapped every read in a transaction (BEGIN, the SELECT, and a ROLLBACK when the
connection went back to the pool, which also made psycopg forget its prepared statements);
``/health``, ``/metrics`` and the content-key check before a received payload is opened use it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from meldingstjener.store.database import Database


@pytest.mark.postgres
def test_on_postgresql_a_read_runs_outside_a_transaction(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        with database.reading() as connection:
            connection.execute(text("SELECT 1"))
            # In a transaction its timestamp is its first statement's start, before this one's.
            own = connection.execute(
                text("SELECT transaction_timestamp() = statement_timestamp()")
            ).scalar_one()
            assert own is True
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_connection_read_from_goes_back_to_transactions(postgres_url: str) -> None:
    database = Database(postgres_url, pool_size=1)
    try:
        with database.reading() as connection:
            connection.execute(text("SELECT 1"))
        with database.engine.connect() as connection:  # the pool's one connection, reused
            connection.execute(text("SELECT 1"))
            again = connection.execute(
                text("SELECT transaction_timestamp() = statement_timestamp()")
            ).scalar_one()
            assert again is False
            connection.rollback()
    finally:
        database.dispose()
