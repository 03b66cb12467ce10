"""The one place that wires configuration to concrete adapters: store, payloads, keys, engine."""

from __future__ import annotations

from meldingstjener.config import Settings
from meldingstjener.store.database import Database
from meldingstjener.store.migrate import upgrade
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.uow import Store


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """Open the database and payload store; bring the schema up to date unless told not to."""
    database = Database(
        settings.database_url, echo=settings.database.echo, pool_size=settings.database.pool_size
    )
    if migrate:
        upgrade(database)
    return Store(database, PayloadStore(settings.payload_dir))
