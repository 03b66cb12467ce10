"""Change generations: lets a cache in this process know that a table it read has changed.

The engine reads partner and agreement rows for every message, and the API the calling client's
row for every request; reading them from the database each time costs round trips per message.
The directory and the API's key check therefore cache them, and must never serve a row this
process has changed. Every committed INSERT, UPDATE or DELETE on a
watched table, by any :class:`~meldingstjener.store.database.Database` of the same URL in this
process, moves the table's generation on; a cache compares generations before it trusts an entry.
Changes made by other processes (an operator's CLI) are seen when the cache's time runs out.

The same listener notes whether a transaction wrote anything at all (``wrote_in_transaction``),
which decides how a unit of work that was not committed ends.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

PARTNER_TABLES = ("communication_parties", "partner_agreements")
CLIENT_TABLES = ("api_clients", "api_client_old_keys")
WATCHED = PARTNER_TABLES + CLIENT_TABLES
_WRITES = ("insert", "update", "delete")
_INFO_KEY = "meldingstjener.touched"
_WROTE = "meldingstjener.wrote"

_lock = threading.Lock()
_generations: dict[tuple[str, str], int] = {}
_pending = threading.local()


def wrote_in_transaction(connection: Any) -> bool:
    """Whether a statement other than a SELECT ran on ``connection`` in the open transaction.

    A unit of work that only read ends with COMMIT instead of ROLLBACK (see ``UnitOfWork``):
    psycopg drops its prepared statements on every rollback, so reads ended by rollbacks kept the
    hot path's statements from ever being prepared."""
    return bool(connection.info.get(_WROTE))


def generation(url: str, tables: tuple[str, ...] = PARTNER_TABLES) -> int:
    """The sum of the tables' generations: any committed change to any of them moves it."""
    with _lock:
        return sum(_generations.get((url, table), 0) for table in tables)


def _bump(url: str, tables: set[str]) -> None:
    with _lock:
        for table in tables:
            _generations[(url, table)] = _generations.get((url, table), 0) + 1


def watch(engine: Engine, sessions: sessionmaker[Session], url: str) -> None:
    """Count committed writes to the watched tables made through ``engine``.

    The generation moves when the COMMIT is sent and again once it has completed (the session's
    ``after_commit``, same thread): a reader that began between the two cannot keep what it read
    under the final generation.
    """

    def after_execute(
        connection: Any,
        _cursor: Any,
        statement: str,
        _parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        head = statement.lstrip()[:6].lower()
        if head == "select":
            return
        # Anything but a SELECT counts as written for the unit of work's ending (see
        # ``wrote_in_transaction``); only INSERT/UPDATE/DELETE can touch a watched table.
        connection.info[_WROTE] = True
        if head not in _WRITES:
            return
        touched = {table for table in WATCHED if table in statement}
        if touched:
            connection.info.setdefault(_INFO_KEY, set()).update(touched)

    def on_commit(connection: Any) -> None:
        connection.info.pop(_WROTE, None)
        touched = connection.info.pop(_INFO_KEY, None)
        if touched:
            _bump(url, touched)
            _pending.tables = getattr(_pending, "tables", set()) | touched

    def after_session_commit(_session: Session) -> None:
        touched = getattr(_pending, "tables", None)
        if touched:
            _pending.tables = set()
            _bump(url, touched)

    def after_rollback(connection: Any) -> None:
        if connection.invalidated:
            # The database dropped the connection (a restart, a failover): the DBAPI connection
            # is discarded, and the info kept on it with it. Asking for that info would raise
            # PendingRollbackError in place of the database's own error, which callers tell
            # apart (``/ebms`` answers the database's with 503, a fault with 500).
            return
        connection.info.pop(_WROTE, None)
        connection.info.pop(_INFO_KEY, None)

    event.listen(engine, "after_cursor_execute", after_execute)
    event.listen(engine, "commit", on_commit)
    event.listen(engine, "rollback", after_rollback)
    event.listen(sessions, "after_commit", after_session_commit)
