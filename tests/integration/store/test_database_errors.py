"""Which database errors say the database failed for a while (unreachable, busy, full) and
which are faults of ours: told from real errors of SQLite and PostgreSQL, provoked for real.
SQLAlchemy's OperationalError is both: a lost connection, a lock not granted, and SQLite's
"no such table" alike."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from meldingstjener.store.database import (
    BUSY,
    RESOURCES,
    UNREACHABLE,
    Database,
    normalise_url,
    transient,
    trouble,
    unreachable,
)


def _raised(action: Callable[[], object]) -> Exception:
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def _told(exc: BaseException, kind: str | None) -> None:
    assert trouble(exc) == kind, repr(exc)
    assert unreachable(exc) == (kind == UNREACHABLE)
    assert transient(exc) == (kind is not None)


# --- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)"))
    yield database
    database.dispose()


def test_sqlite_no_such_table_is_a_fault_of_ours(sqlite_database: Database) -> None:
    # an OperationalError all the same: a missing migration, not a database away
    with sqlite_database.engine.connect() as connection:
        missing = _raised(lambda: connection.execute(text("SELECT * FROM no_such_table")))
        assert isinstance(missing, OperationalError)
        _told(missing, None)
        syntax = _raised(lambda: connection.execute(text("SELEC 1")))
        assert isinstance(syntax, OperationalError)
        _told(syntax, None)


def test_sqlite_locked_by_another_writer_is_busy(sqlite_database: Database) -> None:
    holder = sqlite3.connect(str(sqlite_database.engine.url.database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process's unit of work
    # a second engine that does not wait (the store's waits up to 30 seconds)
    impatient = create_engine(sqlite_database.url, connect_args={"timeout": 0})
    try:
        with impatient.connect() as connection:
            locked = _raised(lambda: connection.exec_driver_sql("BEGIN IMMEDIATE"))
        assert isinstance(locked, OperationalError)
        assert isinstance(locked.orig, sqlite3.Error)
        assert locked.orig.sqlite_errorname == "SQLITE_BUSY"
        _told(locked, BUSY)
    finally:
        impatient.dispose()
        holder.rollback()
        holder.close()


def test_sqlite_full_cannot_store(sqlite_database: Database) -> None:
    with sqlite_database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA max_page_count = 8")  # the disk, as good as full

        def fill() -> None:
            for _ in range(100):
                connection.execute(text("INSERT INTO things (name) VALUES (:n)"), {"n": "x" * 4000})

        full = _raised(fill)
        connection.rollback()
    assert isinstance(full, DBAPIError)
    assert isinstance(full.orig, sqlite3.Error)
    assert full.orig.sqlite_errorname == "SQLITE_FULL"
    _told(full, RESOURCES)


def test_sqlite_file_that_cannot_be_opened_is_unreachable(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'gone' / 'store.db'}")  # no such directory
    try:
        _told(_raised(engine.connect), UNREACHABLE)
    finally:
        engine.dispose()


def test_no_connection_of_the_pool_in_time_is_unreachable(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'pool.db'}", pool_size=1, max_overflow=0, pool_timeout=0.05
    )
    try:
        with engine.connect():  # the pool's one connection, as a hung statement holds it
            waited = _raised(engine.connect)
    finally:
        engine.dispose()
    assert isinstance(waited, PoolTimeout)
    _told(waited, UNREACHABLE)


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(normalise_url(postgres_url))
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS error_rows"))
        connection.execute(text("CREATE TABLE error_rows (id INTEGER PRIMARY KEY, n INTEGER)"))
        connection.execute(text("INSERT INTO error_rows VALUES (1, 0), (2, 0)"))
    yield engine
    engine.dispose()
    with create_engine(normalise_url(postgres_url)).begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS error_rows"))


def _sqlstate(exc: Exception) -> str | None:
    assert isinstance(exc, DBAPIError)
    assert isinstance(exc.orig, psycopg.Error)
    return exc.orig.sqlstate


def _lock_row(connection: Connection, row: int) -> None:
    connection.execute(text("SELECT n FROM error_rows WHERE id = :id FOR UPDATE"), {"id": row})


@pytest.mark.postgres
def test_postgresql_refusing_connections_is_unreachable(postgres_url: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
    try:
        refused = _raised(engine.connect)
    finally:
        engine.dispose()
    assert isinstance(refused, OperationalError)
    assert _sqlstate(refused) is None  # no server answered
    _told(refused, UNREACHABLE)


@pytest.mark.postgres
def test_postgresql_terminated_connection_is_unreachable(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        connection.commit()
        with pg_engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
        ended = _raised(lambda: connection.execute(text("SELECT 1")))
    state = _sqlstate(ended)
    assert state is None or state == "57P01" or state.startswith("08"), state
    _told(ended, UNREACHABLE)


@pytest.mark.postgres
def test_postgresql_lock_not_available_is_busy_not_unreachable(pg_engine: Engine) -> None:
    with pg_engine.connect() as holder, pg_engine.connect() as waiter:
        _lock_row(holder, 1)
        nowait = _raised(
            lambda: waiter.execute(text("SELECT n FROM error_rows WHERE id = 1 FOR UPDATE NOWAIT"))
        )
        waiter.rollback()
        assert _sqlstate(nowait) == "55P03"
        _told(nowait, BUSY)
        waiter.execute(text("SET lock_timeout = '1ms'"))
        timed_out = _raised(lambda: _lock_row(waiter, 1))
        waiter.rollback()
        assert _sqlstate(timed_out) == "55P03"
        _told(timed_out, BUSY)


@pytest.mark.postgres
def test_postgresql_deadlock_is_busy_not_unreachable(pg_engine: Engine) -> None:
    with pg_engine.connect() as first, pg_engine.connect() as second:
        second.execute(text("SET deadlock_timeout = '50ms'"))  # as superuser; default 1 s
        _lock_row(first, 1)
        _lock_row(second, 2)
        failed: list[Exception] = []

        def first_waits() -> None:
            try:
                _lock_row(first, 2)  # waits for second, which then waits for first
            except Exception as exc:
                failed.append(exc)

        waiting = threading.Thread(target=first_waits)
        waiting.start()
        try:
            _lock_row(second, 1)
        except Exception as exc:
            failed.append(exc)
            second.rollback()  # first gets its lock
        waiting.join(10)
        first.rollback()
    [deadlock] = failed  # one of the two is chosen, the other goes on
    assert _sqlstate(deadlock) == "40P01"
    _told(deadlock, BUSY)


@pytest.mark.postgres
def test_postgresql_serialization_failure_and_cancel_are_busy(pg_engine: Engine) -> None:
    with pg_engine.connect() as reader, pg_engine.connect() as writer:
        reader.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        reader.execute(text("SELECT n FROM error_rows WHERE id = 1"))  # its snapshot
        writer.execute(text("UPDATE error_rows SET n = 1 WHERE id = 1"))
        writer.commit()
        conflict = _raised(lambda: reader.execute(text("UPDATE error_rows SET n = 2 WHERE id = 1")))
        reader.rollback()
        assert _sqlstate(conflict) == "40001"
        _told(conflict, BUSY)
        reader.execute(text("SET statement_timeout = '10ms'"))
        cancelled = _raised(lambda: reader.execute(text("SELECT pg_sleep(2)")))
        reader.rollback()
        assert _sqlstate(cancelled) == "57014"
        _told(cancelled, BUSY)


@pytest.mark.postgres
def test_postgresql_missing_table_is_a_fault_of_ours(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        missing = _raised(lambda: connection.execute(text("SELECT * FROM no_such_table")))
    assert _sqlstate(missing) == "42P01"
    _told(missing, None)


def test_errors_not_of_the_database_are_no_trouble_of_it() -> None:
    _told(ValueError("no"), None)
    _told(OSError("disk"), None)
