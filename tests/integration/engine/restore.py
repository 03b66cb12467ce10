"""A backup of the hospital's SQLite store taken while it runs, and its restore: what an operator
does by ``sqlite3 meldingstjener.db ".backup FILE"`` and by putting FILE back with the server
stopped (docs/OPERATIONS.md). The payload directory is left as it is: what became of the files
written after the backup is the tests' question."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from engine_pair import Pair

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.engine.context import EngineContext


def database_file(ctx: EngineContext) -> Path:
    """The SQLite file of a store."""
    assert ctx.store.database.dialect == "sqlite"
    return Path(str(ctx.store.database.engine.url.database))


def sqlite_backup(ctx: EngineContext, target: Path) -> None:
    """A consistent copy of a running store (SQLite's online backup, as ``.backup`` makes)."""
    with (
        contextlib.closing(sqlite3.connect(database_file(ctx))) as source,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)


def restore_hospital(pair: Pair, backup: Path) -> EngineContext:
    """The hospital's server stopped, its database replaced by ``backup`` (its write-ahead log
    with it), and started again; the pair and its network then use the restored one."""
    database = database_file(pair.hospital)
    pair.hospital.store.database.dispose()
    for stale in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(backup, database)
    restored = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    restored.transports = dict(pair.hospital.transports)
    pair.network.engines[pair.hospital_site.endpoint] = restored
    pair.hospital = restored
    return restored
