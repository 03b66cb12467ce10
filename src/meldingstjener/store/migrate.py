"""Schema migrations with Alembic, run from code (``meldingstjener db upgrade``) or at start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from meldingstjener.store.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x6D656C64  # any constant; "meld"


def alembic_config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return config


class SchemaNewer(Exception):
    """The database is at a revision this version's migrations do not know: a newer version
    migrated it (``revision``)."""

    def __init__(self, revision: str) -> None:
        super().__init__(revision)
        self.revision = revision


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision``; safe to run on every start (no-op when current).
    Raises :class:`SchemaNewer` when the database is at a revision of a newer version."""
    config = alembic_config(database)
    with database.engine.begin() as connection:
        if database.is_postgresql:
            # Several workers may start at once; one migrates, the others wait and find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        # read under the lock: a newer version may have migrated while this one waited for it
        found = MigrationContext.configure(connection).get_current_revision()
        if found is not None and found not in known_revisions():
            raise SchemaNewer(found)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(database: Database, revision: str) -> None:
    """Take the schema back to ``revision`` (an id, or ``-1`` for one step): the migrations'
    own tests start from an older schema this way."""
    config = alembic_config(database)
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def known_revisions() -> frozenset[str]:
    """Every revision this version's migration scripts know. A database at another one was
    migrated by a newer version (a rolling upgrade, a package rolled back)."""
    return frozenset(
        script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()
    )


def is_current(database: Database) -> bool:
    return current_revision(database) == head_revision()
