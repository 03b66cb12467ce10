"""Benchmark of retention's pass over the folder integration's rows (``folder_files``).

Run: ``python benchmarks/folder_retention.py [--rows N] [--url POSTGRES_URL] [--sqlite]``.
Fills a fresh PostgreSQL database (made on the server of ``--url``, dropped afterwards; with
``--sqlite`` a SQLite store in a temporary folder too) with N rows (100,000) that retention
deletes, spread over the year before the cutoff (``message_days`` = 90), half of outbox files
moved to sent/ or failed/, half of inbox messages written, their messages deleted already; and
beside them what it keeps: a quarter as many rows of the last 90 days whose messages are there
(each outbox one found by its client_id), and 1,000 outbox rows a year old whose files never
left the outbox. Then times :func:`meldingstjener.engine.retention.run` (``payload_days`` = 0,
so the folder pass is nearly all it does) and prints the rows deleted per second, checking
that it deleted exactly the N rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scratch_database import scratch_postgres
from sqlalchemy import Table, func, insert, select, text

from meldingstjener.config import RetentionSettings
from meldingstjener.engine import retention
from meldingstjener.store.database import Database
from meldingstjener.store.migrate import upgrade
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.tables import FOLDER_CLIENT_PREFIX, FolderFileRow, MessageRow
from meldingstjener.store.uow import Store

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RULES = RetentionSettings(payload_days=0, message_days=90)
CUTOFF = NOW - timedelta(days=RULES.message_days)
YEAR = timedelta(days=365)
UNMOVED = 1_000
CHUNK = 5_000


def _folder_row(number: int, at: datetime, *, moved: bool, message_id: str) -> dict[str, Any]:
    outbox = number % 2 == 0
    return {
        "kind": "outbox" if outbox else "inbox",
        "key": f"{number:064x}" if outbox else message_id,
        "file_name": f"{number:064x}" if outbox else f"{message_id}.xml",
        "message_id": message_id if not outbox or number % 4 == 0 else None,  # sent, failed
        "outcome": ("sent" if number % 4 == 0 else "failed") if outbox else "written",
        "at": at,
        "content_sha256": "c" * 64 if outbox else None,
        "moved_at": at + timedelta(seconds=5) if outbox and moved else None,
        "outbox_tag": "b" * 16 if outbox else None,
    }


def _rows(deleted: int) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each folder row, with its message when that is still there."""
    number = 0
    for step in range(deleted):  # a year before the cutoff, their messages gone
        at = CUTOFF - YEAR + YEAR / deleted * step
        yield _folder_row(number, at, moved=True, message_id=str(uuid.UUID(int=number))), None
        number += 1
    recent = deleted // 4
    for step in range(recent):  # the last 90 days, their messages there
        at = CUTOFF + (NOW - CUTOFF) / recent * step
        message_id = str(uuid.UUID(int=number))
        row = _folder_row(number, at, moved=True, message_id=message_id)
        message = {
            "id": message_id,
            "direction": "out" if row["kind"] == "outbox" else "in",
            "status": "apprec-ok" if row["kind"] == "outbox" else "apprec-sent",
            "msg_type": "DIALOG_NOTAT",
            "ebxml_message_id": f"eb-{number}@bench",
            "from_her_id": "8100001",
            "to_her_id": "8200002",
            "attempts": 1,
            "client_id": f"{FOLDER_CLIENT_PREFIX}{row['key']}" if row["kind"] == "outbox" else None,
            "created_at": at,
            "updated_at": at,
            "status_changed_at": at,
        }
        yield row, message
        number += 1
    for _ in range(UNMOVED):  # a year old, never left the outbox
        number += number % 2  # an even number: an outbox row
        at = CUTOFF - YEAR
        yield _folder_row(number, at, moved=False, message_id=str(uuid.UUID(int=number))), None
        number += 1


def fill(database: Database, deleted: int) -> None:
    folder_files, messages = FolderFileRow.__table__, MessageRow.__table__
    assert isinstance(folder_files, Table) and isinstance(messages, Table)
    with database.engine.begin() as connection:
        rows: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        for row, message in _rows(deleted):
            rows.append(row)
            if message is not None:
                kept.append(message)
            if len(rows) == CHUNK:
                connection.execute(insert(folder_files), rows)
                rows = []
            if len(kept) == CHUNK:
                connection.execute(insert(messages), kept)
                kept = []
        for table, left in ((folder_files, rows), (messages, kept)):
            if left:
                connection.execute(insert(table), left)
        connection.execute(text("ANALYZE"))


def measure(name: str, database: Database, payloads: Path, deleted: int) -> None:
    upgrade(database)
    fill(database, deleted)
    store = Store(database, PayloadStore(payloads))
    with store.unit_of_work() as uow:
        before = uow.session.scalar(select(func.count()).select_from(FolderFileRow)) or 0
    started = time.perf_counter()
    report = retention.run(store, RULES, now=NOW)
    spent = time.perf_counter() - started
    with store.unit_of_work() as uow:
        after = uow.session.scalar(select(func.count()).select_from(FolderFileRow)) or 0
    assert report.folder_files == deleted == before - after, (report, before, after)
    print(
        f"{name}: {report.folder_files} of {before} folder_files rows deleted in {spent:.2f} s, "
        f"{report.folder_files / spent:,.0f} rows/s ({after} kept)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sqlite", action="store_true", help="also a SQLite store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        with scratch_postgres(args.url) as url:
            database = Database(url)
            try:
                measure("PostgreSQL", database, Path(folder) / "pg-payloads", args.rows)
            finally:
                database.dispose()
        if args.sqlite:
            sqlite = Database(f"sqlite:///{Path(folder) / 'bench.db'}")
            try:
                measure("SQLite", sqlite, Path(folder) / "payloads", args.rows)
            finally:
                sqlite.dispose()


if __name__ == "__main__":
    main()
