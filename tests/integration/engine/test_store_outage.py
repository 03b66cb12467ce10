"""A database that is away for a while (a restart, a failover): what the server says about it
while it lasts and after."""

from __future__ import annotations

import pytest
from outage import database_away
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from meldingstjener.store.uow import Store


def test_a_unit_of_work_whose_connection_was_dropped_raises_the_databases_error(
    own_database: Store,
) -> None:
    # Callers tell an unreachable database (OperationalError: /ebms answers 503, the sender
    # resends) from a fault (500). The connection's rollback must not hide it behind
    # PendingRollbackError, which it did for the first unit of work on a dropped connection.
    if not own_database.database.is_postgresql:
        pytest.skip("SQLite is a file on this host: there is no connection to drop")
    with own_database.unit_of_work() as uow:  # a connection in the pool, as a server has
        uow.session.execute(text("SELECT 1"))
    with database_away(own_database.database.url):
        for _ in range(2):  # the pooled connection the database ended, then a new one
            with pytest.raises(OperationalError), own_database.unit_of_work() as uow:
                uow.session.execute(text("SELECT 1"))
    with own_database.unit_of_work() as uow:
        assert uow.session.execute(text("SELECT 1")).scalar_one() == 1
