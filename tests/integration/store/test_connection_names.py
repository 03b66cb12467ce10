"""PostgreSQL shows which instance holds a connection: the pool's and the instance name's lock
are named ``meldingstjener/<instance name>`` in pg_stat_activity."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from meldingstjener.store.database import Database
from meldingstjener.store.instance_lock import lock_instance


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_each_connection_of_an_instance_is_named_after_it(database_url: str) -> None:
    database = Database(database_url, instance="msh1:8080")
    lock = lock_instance(database, "msh1:8080")
    try:
        with database.engine.connect() as connection:
            names = connection.execute(
                text(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name LIKE 'meldingstjener/%'"
                )
            ).scalars()
            assert sorted(names) == ["meldingstjener/msh1:8080", "meldingstjener/msh1:8080"]
    finally:
        lock.release()
        database.dispose()
