"""A real outage of a PostgreSQL database for tests: its sessions ended and new ones refused,
as a database server that is down or failing over looks to the processes using it. And a
database whose disk is full: its commits refused with its driver's own error."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from meldingstjener.store.uow import UnitOfWork


@contextlib.contextmanager
def database_away(url: str) -> Iterator[None]:
    """The database of ``url`` takes no connections within the block (the ones open are
    ended); it does again after it."""
    parsed = make_url(url)
    name = parsed.database
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        # waiting (up to 10 s) until each has ended, and with it the locks it held
        connection.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def database_full_error(dialect: str) -> OperationalError:
    """What a commit raises when the database's disk is full: SQLite's SQLITE_FULL, PostgreSQL's
    disk_full (53100), as their drivers raise them."""
    if dialect == "postgresql":
        return OperationalError("COMMIT", {}, psycopg.errors.DiskFull())
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # as the driver raises it
    return OperationalError("COMMIT", {}, full)


def fill_database_when(full: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    """While ``full`` is set (by the test, or by a part it drives: a receiver as it answers),
    every commit is refused as a full disk refuses it; reads work. The disk fills at a moment
    the test chooses, not at whichever write a real one would stop."""
    real_commit = UnitOfWork.commit

    def commit(uow: UnitOfWork) -> None:
        if full.is_set():
            raise database_full_error(uow.database.dialect)
        real_commit(uow)

    monkeypatch.setattr(UnitOfWork, "commit", commit)
