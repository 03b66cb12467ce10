"""A database that is away for a while (a restart, a failover): what the server says about it
while it lasts and after."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_pair import Clock
from outage import database_away
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import prepare_sites
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.instances import UNREACHABLE_TOLD_AFTER, Heartbeat, stopped
from meldingstjener.store.tables import AlertRow
from meldingstjener.store.uow import Store

# PostgreSQL only: SQLite is a file on the server's own host, with no connection to drop and
# never away while the server runs
ON_POSTGRESQL = pytest.mark.parametrize("own_database", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_a_unit_of_work_whose_connection_was_dropped_raises_the_databases_error(
    own_database: Store,
) -> None:
    # Callers tell an unreachable database (OperationalError: /ebms answers 503, the sender
    # resends) from a fault (500). The connection's rollback must not hide it behind
    # PendingRollbackError, which it did for the first unit of work on a dropped connection.
    with own_database.unit_of_work() as uow:  # a connection in the pool, as a server has
        uow.session.execute(text("SELECT 1"))
    with database_away(own_database.database.url):
        for _ in range(2):  # the pooled connection the database ended, then a new one
            with pytest.raises(OperationalError), own_database.unit_of_work() as uow:
                uow.session.execute(text("SELECT 1"))
    with own_database.unit_of_work() as uow:
        assert uow.session.execute(text("SELECT 1")).scalar_one() == 1


def _unreachable(ctx: EngineContext, name: str) -> AlertRow | None:
    with ctx.store.unit_of_work() as uow:
        return uow.alerts.by_key(f"store-unreachable:{name}")


@ON_POSTGRESQL
def test_the_first_beat_after_a_long_outage_says_from_when_to_when(
    own_database: Store, tmp_path: Path
) -> None:
    # Nothing can be written while the database is away; afterwards the server must say that
    # it could not work, and for how long. A restart of the database (seconds) is no news.
    database = own_database.database
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=database.url)
    clock = Clock()
    ctx = build_engine(load_settings(gp.config_path), clock=clock)
    heart = Heartbeat(ctx, "a:8080")
    try:
        heart.beat(started=True)
        with database_away(database.url):  # four minutes away
            for _ in range(4):
                clock.advance(minutes=1)
                heart.beat()
        clock.advance(minutes=1)
        heart.beat()
        assert _unreachable(ctx, "a:8080") is None
        with database_away(database.url):  # five minutes away
            clock.advance(minutes=1)
            since = clock()
            for _ in range(5):
                heart.beat()
                clock.advance(minutes=1)
        until = clock()
        heart.beat()
        alert = _unreachable(ctx, "a:8080")
        assert alert is not None and alert.severity == "error" and alert.resolved_at is None
        assert (
            f"Instance a:8080 could not reach the database from {since:%Y-%m-%d %H:%M} to "
            f"{until:%Y-%m-%d %H:%M} UTC (about 5 minutes" in alert.summary
        )
        clock.advance(minutes=1)
        heart.beat()  # told once; resolved by hand only, not by a beat nor by the stop
        stopped(ctx, "a:8080")
        alert = _unreachable(ctx, "a:8080")
        assert alert is not None and alert.count == 1 and alert.resolved_at is None
    finally:
        ctx.store.database.dispose()


@ON_POSTGRESQL
def test_beats_that_wait_in_vain_for_a_lock_are_no_outage(
    own_database: Store, tmp_path: Path
) -> None:
    # The database is there but busy: another session holds the instance's row for six
    # minutes, and each beat's lock times out (55P03, an OperationalError as an outage's
    # errors are). That is no store unreachable: nothing to tell when the beats work again.
    database = own_database.database
    name = make_url(database.url).database
    with database.engine.connect() as connection:
        connection.execute(text(f"ALTER DATABASE \"{name}\" SET lock_timeout = '200ms'"))
        connection.commit()
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=database.url)
    clock = Clock()
    ctx = build_engine(load_settings(gp.config_path), clock=clock)
    heart = Heartbeat(ctx, "a:8080")
    try:
        heart.beat(started=True)
        with database.engine.connect() as holder:
            holder.execute(
                text("SELECT name FROM serving_instances WHERE name = 'a:8080' FOR UPDATE")
            )
            for _ in range(6):
                clock.advance(minutes=1)
                heart.beat()  # fails: its lock times out
                assert heart.unreachable_since is None
            assert heart.last_beat_at is not None
            assert clock() - heart.last_beat_at >= UNREACHABLE_TOLD_AFTER
            holder.rollback()
        clock.advance(minutes=1)
        heart.beat()
        assert heart.last_beat_at == clock()
        assert _unreachable(ctx, "a:8080") is None
    finally:
        ctx.store.database.dispose()
