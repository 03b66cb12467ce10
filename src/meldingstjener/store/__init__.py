"""Persistence: tables, migrations, the payload store and the unit of work.

SQLite (WAL) by default, PostgreSQL by URL. The engine talks to :class:`UnitOfWork` only.
"""

from meldingstjener.store.database import Database, connect
from meldingstjener.store.payloads import PayloadRef, PayloadStore
from meldingstjener.store.uow import LogFilter, Store, UnitOfWork

__all__ = ["Database", "LogFilter", "PayloadRef", "PayloadStore", "Store", "UnitOfWork", "connect"]
