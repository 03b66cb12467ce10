"""The instance name's lock, on both databases: one live holder at a time, freed when its
process dies (killed, not asked), and on PostgreSQL taken again after the session was ended."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy.engine import make_url

from meldingstjener.store.database import Database
from meldingstjener.store.instance_lock import (
    ADVISORY_KEY_SPACE,
    InstanceTaken,
    lock_instance,
    name_key,
)

HOLD = """
import sys
from meldingstjener.store.database import Database
from meldingstjener.store.instance_lock import lock_instance
lock = lock_instance(Database(sys.argv[1]), sys.argv[2])
print("held", flush=True)
sys.stdin.read()  # until killed
"""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)  # polling another process's state: nothing to wait on


def can_take(database: Database, name: str) -> bool:
    try:
        lock = lock_instance(database, name)
    except InstanceTaken:
        return False
    lock.release()
    return True


def test_a_name_has_one_holder_at_a_time(database_url: str) -> None:
    database = Database(database_url)
    try:
        first = lock_instance(database, "msh1:8080")
        with pytest.raises(InstanceTaken, match="'msh1:8080'"):
            lock_instance(database, "msh1:8080")
        other = lock_instance(database, "msh2:8080")  # another name is another lock
        assert first.still_held() and other.still_held()
        first.release()
        again = lock_instance(database, "msh1:8080")
        again.release()
        other.release()
    finally:
        database.dispose()


def test_a_killed_holder_frees_the_name(database_url: str) -> None:
    database = Database(database_url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, database_url, "msh1:8080"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        assert not can_take(database, "msh1:8080")
        holder.kill()
        holder.wait()
        # the database notices the closed socket by itself, a moment later
        wait_until(lambda: can_take(database, "msh1:8080"), "the name is free")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        database.dispose()


def _holder(url: str, name: str) -> list[int]:
    """The backend pids holding ``name``'s lock, found as ``still_held`` looks for it."""
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        rows = connection.execute(
            # pg_locks is the whole server's: the same name is locked in other databases by
            # tests running beside this one (advisory locks are per database)
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s"
            " AND objid = %s AND objsubid = 2 AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (ADVISORY_KEY_SPACE, name_key(name) & 0xFFFFFFFF),
        ).fetchall()
    return [pid for (pid,) in rows]


def _end_holding_session(url: str, name: str) -> None:
    [pid] = _holder(url, name)  # found by the keys still_held looks for
    admin = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        ended = connection.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
    assert ended == (True,)


def test_on_postgresql_a_lost_lock_is_taken_again_or_reported(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        lock = lock_instance(database, "msh1:8080")
        holder = _holder(postgres_url, "msh1:8080")
        assert len(holder) == 1
        assert lock.still_held()
        # the same session still holds it: had the check not found its own lock, it would
        # have let it go and taken it again, leaving a twin a moment to take the name
        assert _holder(postgres_url, "msh1:8080") == holder
        _end_holding_session(postgres_url, "msh1:8080")  # as a restart of the database does
        wait_until(lambda: can_take(database, "msh1:8080"), "the session's lock is gone")
        assert lock.still_held()  # taken again
        assert not can_take(database, "msh1:8080")
        _end_holding_session(postgres_url, "msh1:8080")
        wait_until(lambda: can_take(database, "msh1:8080"), "the session's lock is gone")
        twin = lock_instance(database, "msh1:8080")  # another process took the name meanwhile
        assert not lock.still_held()
        twin.release()
        lock.release()
    finally:
        database.dispose()
