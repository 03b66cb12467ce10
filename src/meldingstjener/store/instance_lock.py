"""The lock that makes a ``serve`` instance's name its own for as long as the process lives.

A ``serve`` that starts takes back the job claims its name still holds in the store: they are
a dead predecessor's, and their work should not wait out the lease. That is right only when no
live process has the same name. Two processes with one host name and port (containers given a
fixed ``hostname:``, or two listen addresses on one host) would each take the other's claims
back, and jobs would run twice. So the name is locked where every process sharing the store
sees it, and a second process with the name does not start:

- PostgreSQL: a session-level advisory lock, on a connection of its own. The database drops it
  when the session ends: the process died (its socket closed), or the database restarted.
  ``still_held`` (asked at every heartbeat) takes it again after a restart of the database. A
  host that dies without closing its sockets (power lost, a VM stopped) leaves the session to
  TCP keepalive, which the session sets to end it within about half a minute (the default is
  two hours, during which a restarted instance of the name would be refused).
- SQLite: ``flock`` on a file beside the database (SQLite is served from one host). The kernel
  drops it when the process dies.

Holding the lock proves that no other live process has the name, so its claims may be taken
back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from meldingstjener.store.database import Database, application_name

log = logging.getLogger(__name__)

# The first of the advisory lock's two keys: the space of this application's instance names,
# so that the second key (from the name) does not meet another application's locks.
ADVISORY_KEY_SPACE = 0x6D74_6E6D  # "mtnm"


class InstanceTaken(Exception):
    """Another live process holds the instance name."""


class InstanceLock(Protocol):
    name: str

    def still_held(self) -> bool:
        """Whether the lock is (again) this process's. False: another process took the name."""
        ...

    def release(self) -> None: ...


def name_key(name: str) -> int:
    """The advisory lock's second key: a signed 32-bit number from the name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)


def lock_instance(database: Database, name: str) -> InstanceLock:
    """Take ``name`` for this process, or raise ``InstanceTaken``."""
    lock: InstanceLock
    if database.is_postgresql:
        advisory = _AdvisoryLock(database.url, name)
        taken = advisory.take()
        lock = advisory
    else:
        path = make_url(database.url).database
        if not path or path == ":memory:":
            return _ProcessOnly(name)  # a database of this process alone
        file_lock = _FileLock(Path(f"{path}.instance-{_digest(name)}.lock"), name)
        taken = file_lock.take()
        lock = file_lock
    if not taken:
        raise InstanceTaken(
            f"another meldingstjener serve is running as instance {name!r} on this database "
            "(the same host name and port); give each process its own port, host name or "
            "[server] instance_name"
        )
    return lock


def names_locked(session: Session, names: list[str]) -> dict[str, bool] | None:
    """Which of ``names`` are locked by a live process now; None where that cannot be seen
    from here (SQLite: a file lock can only be tested by taking it, which could turn away a
    process that starts at that moment)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    held = set(
        session.execute(
            text(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND classid = :space AND objsubid = 2"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"space": ADVISORY_KEY_SPACE},
        ).scalars()
    )
    return {name: name_key(name) & 0xFFFFFFFF in held for name in names}


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


# libpq's keepalive: this side notices a database host that went away
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
# the database's: it notices a client host that went away, 10 + 3 x 5 s after its last word
_SESSION_SETTINGS = (
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("idle_session_timeout", "0"),  # PostgreSQL 14 and later (13 has no such timeout)
)


class _AdvisoryLock:
    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self._key = name_key(name)
        # A connection outside the pool, in autocommit: it holds the lock and is never idle in
        # a transaction (which a server may cut off).
        self._engine = create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,  # as the store's engine: no statement values in error texts
            # connecting must not hang on a database that went away (a check that hangs later,
            # on a connection whose far end stopped answering, runs in a thread of its own)
            connect_args={
                "connect_timeout": 10,
                "application_name": application_name(name),
                **_KEEPALIVE,
            },
        )
        self._connection: Connection | None = None

    def take(self) -> bool:
        connection = self._engine.connect()
        try:
            # The database's side of the session: a host that died must not hold the name for
            # the two hours of the default keepalive, and a server-wide idle_session_timeout
            # must not end a session that is idle by design.
            version = connection.dialect.server_version_info or (0,)
            for setting, value in _SESSION_SETTINGS:
                if setting == "idle_session_timeout" and version < (14,):
                    continue
                connection.execute(
                    text("SELECT set_config(:setting, :value, false)"),
                    {"setting": setting, "value": value},
                )
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:space, :key)"),
                {"space": ADVISORY_KEY_SPACE, "key": self._key},
            ).scalar_one()
        except BaseException:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def still_held(self) -> bool:
        if self._connection is not None:
            try:
                held = self._connection.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND pid = pg_backend_pid() AND classid = :space AND objid = :objid"
                        " AND objsubid = 2"
                    ),
                    {"space": ADVISORY_KEY_SPACE, "objid": self._key & 0xFFFFFFFF},
                ).scalar_one()
                if held:
                    return True
            except SQLAlchemyError as exc:
                log.warning("the connection holding instance %s's lock failed: %s", self.name, exc)
            self._close()
        return self.take()

    def release(self) -> None:
        self._close()  # the session's end drops its locks
        self._engine.dispose()

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()
            self._connection = None


class _FileLock:
    def __init__(self, path: Path, name: str) -> None:
        self.name = name
        self.path = path
        self._fd: int | None = None

    def take(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # for an operator who finds the file: whose it is
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.name} pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd is not None  # a lock on an open file is the process's until it ends

    def release(self) -> None:
        # The file stays: removing it would let a process that opened it just before lock a
        # file nobody else can find any more.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _ProcessOnly:
    def __init__(self, name: str) -> None:
        self.name = name

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        return None
