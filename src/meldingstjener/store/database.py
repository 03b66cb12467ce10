"""Database connection: engine creation with the right settings for SQLite and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk before we acknowledge a
message (the durability the ebXML Acknowledgment promises), and readers never block the writer.
PostgreSQL URLs (``postgresql://...``) are routed to the psycopg 3 driver.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from meldingstjener.store import changes

# What a unit of work fails with when the database cannot be reached, rather than for a fault
# of ours: the server is away or restarting (OperationalError), a connection it dropped is used
# (InterfaceError), or no connection of the pool comes free in time (the pool's TimeoutError:
# every one hangs on a database that stopped answering). The one list of them: the heartbeat
# counts them as the store unreachable, ``POST /ebms`` answers 503 for them.
UNREACHABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)


def normalise_url(url: str) -> str:
    """Route plain ``postgresql://`` to psycopg 3 (the driver we install)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The pysqlite driver opens transactions lazily; we take control so that BEGIN happens
    # when SQLAlchemy asks for it (see _sqlite_begin) and the pragmas run outside a transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# the execution option of a connection that only reads (Database.reading)
_READ_ONLY = "meldingstjener_read_only"


def _sqlite_begin(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so two processes that both read-then-write
    # cannot deadlock into SQLITE_BUSY half-way; they queue on busy_timeout instead. A connection
    # that only reads begins DEFERRED: in WAL mode it reads while another holds the write lock.
    if connection.get_execution_options().get(_READ_ONLY):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine plus a session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        # hide_parameters: a database error's text (logged with its traceback) would end with
        # every value of the failing statement, and those may be a partner's free text
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
        if self.dialect == "sqlite":
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            # No pre-ping: it costs three round trips per unit of work. A connection that died
            # with a database restart fails its one unit of work (retried: a job later, an
            # HTTP 503 the sender resends on), and SQLAlchemy then replaces the whole pool.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        changes.watch(self.engine, self.sessions, self.url)
        # SQLite has one writer at a time. Threads of one process queue on this lock instead of
        # on SQLite's busy handler, which sleeps up to 100 ms per retry and wrecks latency.
        self.write_lock: threading.Lock | None = (
            threading.Lock() if self.dialect == "sqlite" else None
        )

    def generation(self) -> int:
        """Moves whenever this process commits a change to the party or agreement tables."""
        return changes.generation(self.url)

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only, outside every unit of work (``/health``). On SQLite its
        transaction begins DEFERRED and takes no write lock: it neither waits behind a unit of
        work holding it (up to the 30 s busy timeout, the database then reported unreachable)
        nor keeps one waiting. Every other transaction, a unit of work's or not, begins
        IMMEDIATE: one that writes through this connection could fail with SQLITE_BUSY."""
        with self.engine.connect() as connection:
            yield connection.execution_options(**{_READ_ONLY: True})

    def dispose(self) -> None:
        self.engine.dispose()


def connect(url: str, *, echo: bool = False, pool_size: int = 10) -> Database:
    return Database(url, echo=echo, pool_size=pool_size)
