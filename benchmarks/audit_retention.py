"""Benchmark of retention's pass over the API's audit log (``[retention] audit_days``).

Run: ``python benchmarks/audit_retention.py [--rows N] [--url POSTGRES_URL] [--sqlite]
[--analyze] [--without-index]``. Fills a fresh PostgreSQL database (made on the server of
``--url``, dropped afterwards; with ``--sqlite`` a SQLite store in a temporary folder too) with N
audit rows (1,000,000) spread evenly over the two years before now, then times
:func:`meldingstjener.engine.retention.run` with ``audit_days`` = 365 (``payload_days`` = 0, so
the audit pass is all it does), which deletes the older half, checking that it deleted exactly
those; then a run that finds nothing more (the daily run once the log is within its days).
``--without-index`` drops ``ix_audit_log_at`` first, to see what the pass costs without it.
Without ``--analyze`` the table has no statistics, as an upgraded store's log that autovacuum
has not analysed yet: autovacuum is off for the table on PostgreSQL, so that it neither
analyses the table nor clears its dead rows during the run. ``--analyze`` runs ANALYZE after
the fill.
"""

from __future__ import annotations

import argparse
import tempfile
import time
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
from meldingstjener.store.tables import AuditRow
from meldingstjener.store.uow import Store

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RULES = RetentionSettings(payload_days=0, audit_days=365)
CUTOFF = NOW - timedelta(days=RULES.audit_days)
SPAN = timedelta(days=2 * RULES.audit_days)
CHUNK = 10_000


def _rows(count: int) -> Iterator[dict[str, Any]]:
    for number in range(count):
        yield {
            "at": NOW - SPAN + SPAN / count * number,
            "client": f"epj-{number % 7}",
            "person": f"hpr-{number % 1000}",
            "action": "get-message",
            "message_id": f"{number:036d}",
            "her_id": "8200002",
            "outcome": "ok",
            "detail": None,
        }


def fill(database: Database, count: int, *, analyze: bool) -> int:
    """``count`` rows; how many of them are older than the cutoff."""
    table = AuditRow.__table__
    assert isinstance(table, Table)
    with database.engine.begin() as connection:
        if database.is_postgresql:  # the worst case: no statistics, dead rows left in place
            connection.execute(text("ALTER TABLE audit_log SET (autovacuum_enabled = false)"))
        chunk: list[dict[str, Any]] = []
        for row in _rows(count):
            chunk.append(row)
            if len(chunk) == CHUNK:
                connection.execute(insert(table), chunk)
                chunk = []
        if chunk:
            connection.execute(insert(table), chunk)
        if analyze:
            connection.execute(text("ANALYZE"))
        older = connection.execute(select(func.count()).where(AuditRow.at < CUTOFF)).scalar()
    return int(older or 0)


def measure(
    name: str, database: Database, payloads: Path, count: int, *, index: bool, analyze: bool
) -> None:
    upgrade(database)
    older = fill(database, count, analyze=analyze)
    if not index:
        with database.engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_audit_log_at"))
    store = Store(database, PayloadStore(payloads))
    started = time.perf_counter()
    report = retention.run(store, RULES, now=NOW)
    spent = time.perf_counter() - started
    batches = -(-report.audit_rows // retention.BATCH)
    with store.unit_of_work() as uow:
        left = uow.session.scalar(select(func.count()).select_from(AuditRow)) or 0
    assert report.audit_rows == older == count - left, (report, older, left)
    started = time.perf_counter()
    assert retention.run(store, RULES, now=NOW).audit_rows == 0
    idle = time.perf_counter() - started
    print(
        f"{name}{'' if index else ' (without ix_audit_log_at)'}"
        f"{', analysed' if analyze else ', never analysed'}: {report.audit_rows} of {count}"
        f" audit rows deleted in {spent:.2f} s, {report.audit_rows / spent:,.0f} rows/s,"
        f" {spent / batches * 1000:.1f} ms a batch of {retention.BATCH}; a run with nothing"
        f" to delete among the {left} left: {idle * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sqlite", action="store_true", help="also a SQLite store")
    parser.add_argument("--without-index", action="store_true", help="drop ix_audit_log_at")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE after the fill")
    args = parser.parse_args()
    index = not args.without_index
    analyze = args.analyze
    with tempfile.TemporaryDirectory() as folder:
        with scratch_postgres(args.url) as url:
            database = Database(url)
            try:
                measure(
                    "PostgreSQL",
                    database,
                    Path(folder) / "pg",
                    args.rows,
                    index=index,
                    analyze=analyze,
                )
            finally:
                database.dispose()
        if args.sqlite:
            sqlite = Database(f"sqlite:///{Path(folder) / 'bench.db'}")
            try:
                measure(
                    "SQLite",
                    sqlite,
                    Path(folder) / "payloads",
                    args.rows,
                    index=index,
                    analyze=analyze,
                )
            finally:
                sqlite.dispose()


if __name__ == "__main__":
    main()
