"""Schema migrations with Alembic, run from code (``meldingstjener db upgrade``) or at start.

Every command opens the store and judges its schema's revision, so that judgement is kept
cheap: the revisions this version knows are read from the migration files' names (``NNNN_*.py``,
revision ``NNNN``, each revising the one before: tests/unit/test_migration_names.py holds the
names to Alembic's own reading of the scripts), and Alembic itself, its environment and every
script, is loaded only when there is something to migrate.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

from meldingstjener.store.database import Database

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x6D656C64  # any constant; "meld"
_VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps


def alembic_config(database: Database) -> Config:
    from alembic.config import Config

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
    if revision == "head" and current_revision(database) == head_revision():
        return  # the common case at every start: no lock, no Alembic
    from alembic import command
    from alembic.runtime.migration import MigrationContext

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
    from alembic import command

    config = alembic_config(database)
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def current_revision(database: Database) -> str | None:
    """The revision the schema is at, ``None`` when nothing was migrated yet: read from
    Alembic's own table, without importing Alembic (a tenth of a second of every command)."""
    with database.engine.connect() as connection:
        if not inspect(connection).has_table(_VERSION_TABLE):
            return None
        found = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars()
        revisions = found.all()
    if len(revisions) > 1:  # a branched history: this project's never branches
        raise RuntimeError(f"{_VERSION_TABLE} names several revisions: {sorted(revisions)}")
    return revisions[0] if revisions else None


_SCRIPT_NAME = re.compile(r"(\d{4})_\w+\.py")


@cache
def _revisions_in_order() -> tuple[str, ...]:
    names = (_SCRIPT_NAME.fullmatch(path.name) for path in (MIGRATIONS / "versions").iterdir())
    return tuple(sorted(name.group(1) for name in names if name is not None))


def head_revision() -> str | None:
    revisions = _revisions_in_order()
    return revisions[-1] if revisions else None


def known_revisions() -> frozenset[str]:
    """Every revision this version's migration scripts know. A database at another one was
    migrated by a newer version (a rolling upgrade, a package rolled back)."""
    return frozenset(_revisions_in_order())


def is_current(database: Database) -> bool:
    return current_revision(database) == head_revision()
