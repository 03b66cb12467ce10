"""PostgreSQL shows which instance holds a connection: the pool's and the instance name's lock
are named ``meldingstjener/<instance name>`` in pg_stat_activity."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from meldingstjener.store.database import Database
from meldingstjener.store.instance_lock import lock_instance
from meldingstjener.store.uow import Store


@pytest.mark.parametrize("own_database", ["postgresql"], indirect=True)
def test_each_connection_of_an_instance_is_named_after_it(own_database: Store) -> None:
    # a database of its own: the session's shared one may hold other tests' connections
    database = Database(own_database.database.url, instance="msh1:8080")
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
