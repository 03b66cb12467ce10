"""Database connection: engine creation with the right settings for SQLite and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk before we acknowledge a
message (the durability the ebXML Acknowledgment promises), and readers never block the writer.
PostgreSQL URLs (``postgresql://...``) are routed to the psycopg 3 driver.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from meldingstjener.model.privacy import passed_through
from meldingstjener.store import changes

# Why the database failed a unit of work, when a repeat later may work: it cannot be reached
# (UNREACHABLE: the server is away or restarting, refuses connections or has none left, a
# connection it dropped is used, or no connection of the pool comes free in time), it is busy
# (BUSY: a lock not granted in time, a deadlock or serialization failure, a statement
# cancelled), or it cannot store just now (RESOURCES: its disk or memory is full). Anything
# else, an OperationalError too (SQLite's "no such table", a syntax error), is a fault of ours:
# a missing migration or a bug. The one classification: the heartbeat counts only UNREACHABLE
# as the store unreachable; the API and ``POST /ebms`` answer 503 for each of the three.
UNREACHABLE = "unreachable"
BUSY = "busy"
RESOURCES = "resources"

# PostgreSQL's SQLSTATEs (psycopg's ``sqlstate``); a class of two characters covers its codes.
_PG_UNREACHABLE = ("08", "57P01", "57P02", "57P03", "53300")  # connection, shutdown, too many
_PG_BUSY = ("40P01", "40001", "55P03", "57014")  # deadlock, serialization, lock, cancelled
_PG_RESOURCES = ("53",)  # insufficient resources: disk full, out of memory
_PG_DISK_FULL = "53100"
# SQLite's primary result codes (the low byte of ``sqlite_errorcode``, which may be extended)
_SQLITE_TROUBLE = {
    sqlite3.SQLITE_CANTOPEN: UNREACHABLE,  # the file cannot be opened (its directory gone)
    sqlite3.SQLITE_BUSY: BUSY,
    sqlite3.SQLITE_LOCKED: BUSY,
    sqlite3.SQLITE_FULL: RESOURCES,
    sqlite3.SQLITE_IOERR: RESOURCES,  # the disk failed a read or write
    sqlite3.SQLITE_NOMEM: RESOURCES,
}


def trouble(exc: BaseException) -> str | None:
    """``UNREACHABLE``, ``BUSY`` or ``RESOURCES`` when ``exc`` says the database failed for a
    while rather than for a fault of ours; else None. Told by the driver's own error (its
    SQLSTATE or SQLite result code), not by SQLAlchemy's class: an OperationalError is also
    what a missing table or a syntax error raises."""
    if isinstance(exc, PoolTimeout):
        return UNREACHABLE
    if not isinstance(exc, DBAPIError):
        return None
    if exc.connection_invalidated:  # SQLAlchemy took the error for a connection lost
        return UNREACHABLE
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return None if code is None else _SQLITE_TROUBLE.get(code & 0xFF)
    psycopg = sys.modules.get("psycopg")  # not loaded: the error is none of its
    if psycopg is None or not isinstance(orig, psycopg.Error):
        return None
    if isinstance(orig, psycopg.InterfaceError):
        return UNREACHABLE  # a connection that is closed, or broken
    state: str | None = orig.sqlstate
    if state is None:
        # no answer from the server: refused, or a connection lost mid-statement
        return UNREACHABLE if isinstance(orig, psycopg.OperationalError) else None
    for kind, states in (
        (UNREACHABLE, _PG_UNREACHABLE),
        (BUSY, _PG_BUSY),
        (RESOURCES, _PG_RESOURCES),
    ):
        if state in states or state[:2] in states:
            return kind
    return None


def database_full(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's disk full (SQLite's FULL, PostgreSQL's ``disk_full``,
    53100): of ``RESOURCES`` the one cause that lasts until an operator frees space and then
    ends. Out of memory, an I/O error or a configured limit may as well come back at every
    repeat of the same work, which a job must not wait for without end."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return getattr(orig, "sqlstate", None) == _PG_DISK_FULL


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached: lost, refused, or no connection of the pool in time."""
    return trouble(exc) == UNREACHABLE


def transient(exc: BaseException) -> bool:
    """The database failed for a while (unreachable, busy, or full): a repeat later may work."""
    return trouble(exc) is not None


class RoundFailures:
    """What a loop that works on the database (a worker's claims, the webhook rounds) says when
    a round fails, without a traceback a round: while the database cannot be reached, one
    warning when it goes and one line when it answers again (:meth:`worked`), with a pause
    between rounds that doubles from ``first_pause`` up to ``longest_pause``; any other error
    (a fault: a missing table, a bug) with its traceback, then at most once per
    ``quiet_seconds``, counting the ones not shown."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        first_pause: float = 0.5,
        longest_pause: float = 10.0,
        quiet_seconds: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.first_pause = first_pause
        self.longest_pause = longest_pause
        self.quiet_seconds = quiet_seconds
        self.monotonic = monotonic
        self.away_since: float | None = None  # since when the database could not be reached
        self.pause = 0.0  # before the next round, while it cannot
        self._told_fault_at: float | None = None
        self._faults_untold = 0
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> float:
        """Tell (or not) a failed round; the pause before the next one (0: the usual)."""
        now = self.monotonic()
        with self._lock:
            if unreachable(exc):
                if self.away_since is None:
                    self.logger.warning(
                        "%s: the database cannot be reached (%s); trying again every %g s "
                        "at most, quietly, until it answers",
                        self.what,
                        type(exc).__name__,
                        self.longest_pause,
                    )
                    self.away_since = now
                self.pause = min(self.longest_pause, max(self.first_pause, self.pause * 2))
                return self.pause
            if self._told_fault_at is None or now - self._told_fault_at >= self.quiet_seconds:
                untold, self._faults_untold = self._faults_untold, 0
                self._told_fault_at = now
                self.logger.error(
                    "%s failed: %s%s\n%s",
                    self.what,
                    type(exc).__name__,
                    f" ({untold} more since the last one told)" if untold else "",
                    passed_through(exc),
                )
            else:
                self._faults_untold += 1
            return 0.0

    def worked(self) -> None:
        """A round worked: the database is back, if it was away."""
        with self._lock:
            if self.away_since is None:
                return
            self.logger.warning(
                "%s: the database answers again after %.0f s",
                self.what,
                self.monotonic() - self.away_since,
            )
            self.away_since, self.pause = None, 0.0


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


class TransactionWatch(Protocol):
    """What is asked of every transaction on a :class:`Database` (``Database.watch``): the
    API's given-up calls (api/app.py) refuse theirs. It is asked before anything else runs:
    as the transaction begins, before SQLite's ``BEGIN IMMEDIATE`` waits for the write lock
    (up to the 30 s busy timeout) and before a unit of work waits for this process's; and
    just before its commit, before the change generations move (store/changes.py). Either
    may raise to refuse the transaction: it is rolled back."""

    def begins(self) -> None:
        """A transaction begins (and before a unit of work waits for the write lock)."""

    def commits(self) -> None:
        """A transaction is about to commit."""

    def committed(self) -> None:
        """A session's commit completed."""

    def rolled_back(self) -> None:
        """A transaction is rolled back."""


class Database:
    """An engine plus a session factory for one database URL."""

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 10, instance: str | None = None
    ) -> None:
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
            # Up to pool_size connections kept and as many more while busy: with the instance
            # name's lock (store/instance_lock.py), 2 x pool_size + 1 per serve process.
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600)
            # pg_stat_activity then tells which instance holds a connection
            kwargs["connect_args"] = {"application_name": application_name(instance)}
        self.engine: Engine = create_engine(self.url, **kwargs)
        self._watches: list[TransactionWatch] = []
        # The watches first: a listener runs in the order it was added (``insert=True`` on an
        # engine's events does not put one before those added already)
        event.listen(self.engine, "begin", self._begins)
        event.listen(self.engine, "commit", self._commits)
        event.listen(self.engine, "rollback", self._rolled_back)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessions, "after_commit", self._committed)
        changes.watch(self.engine, self.sessions, self.url)
        # SQLite has one writer at a time. Threads of one process queue on this lock instead of
        # on SQLite's busy handler, which sleeps up to 100 ms per retry and wrecks latency.
        self.write_lock: threading.Lock | None = (
            threading.Lock() if self.dialect == "sqlite" else None
        )

    def watch(self, watch: TransactionWatch) -> None:
        """Have ``watch`` asked by every transaction from now on (once, however often it is
        given): see :class:`TransactionWatch`."""
        if watch not in self._watches:
            self._watches.append(watch)

    def transaction_begins(self) -> None:
        """Ask the watches whether a transaction may begin (a unit of work asks before it
        waits for the write lock; the transaction itself asks again as it begins)."""
        for watch in self._watches:
            watch.begins()

    def _begins(self, _connection: Any) -> None:
        self.transaction_begins()

    def _commits(self, _connection: Any) -> None:
        for watch in self._watches:
            watch.commits()

    def _committed(self, _session: Session) -> None:
        for watch in self._watches:
            watch.committed()

    def _rolled_back(self, _connection: Any) -> None:
        for watch in self._watches:
            watch.rolled_back()

    def generation(self) -> int:
        """Moves whenever this process commits a change to the party or agreement tables."""
        return changes.generation(self.url)

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @cached_property
    def orders_text_by_code(self) -> bool:
        """Whether text sorts character by character in code order, so that the strings
        starting with a prefix lie in one range after it: SQLite's BINARY does; PostgreSQL's
        database collation only if it is libc's C or POSIX (C.UTF-8 too). A language's
        collation may not: Norwegian and Danish (libc's nb_NO, ICU's nb) read "aa" as "å",
        after "z", so "deadbeea-aa00" lies outside the range from "deadbeea-a" to "deadbeea-ag"."""
        if not self.is_postgresql:
            return True
        with self.reading() as connection:
            found = (
                connection.execute(
                    text("SELECT * FROM pg_database WHERE datname = current_database()")
                )
                .mappings()
                .one()
            )
        provider = found.get("datlocprovider", "c")  # before PostgreSQL 15: libc only
        if provider == "b":  # PostgreSQL 17's built-in provider: C and C.UTF-8, both by code
            return True
        collation = str(found["datcollate"])
        return provider == "c" and (collation in ("C", "POSIX") or collation.startswith("C."))

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
        IMMEDIATE: one that writes through this connection could fail with SQLITE_BUSY.

        On PostgreSQL it runs without a transaction (autocommit: each statement reads what has
        committed when it starts), so a read costs one round trip, not a BEGIN and a ROLLBACK
        around it; the ROLLBACK also made psycopg forget the connection's prepared statements.
        (Not on SQLite: its DEFERRED begin is what keeps the write lock free.)"""
        with self.engine.connect() as connection:
            if self.is_postgresql:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection.execution_options(**{_READ_ONLY: True})

    def dispose(self) -> None:
        self.engine.dispose()


def connect(url: str, *, echo: bool = False, pool_size: int = 10) -> Database:
    return Database(url, echo=echo, pool_size=pool_size)


def application_name(instance: str | None) -> str:
    """What PostgreSQL shows as a connection's ``application_name``: ``meldingstjener/<the
    instance name>`` (a command run with a server's configuration shows its name too), cut to
    the 63 bytes PostgreSQL keeps (instance names are ASCII)."""
    return (f"meldingstjener/{instance}" if instance else "meldingstjener")[:63]
