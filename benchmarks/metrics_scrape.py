"""Benchmark of a ``GET /metrics`` scrape on a store with a year of messages.

Run: ``python benchmarks/metrics_scrape.py [--messages N] [--backlog N] [--scrapes N]
[--url POSTGRES_URL]``. Fills a fresh SQLite store (in a temporary folder) and a fresh PostgreSQL
database (made on the server of ``--url``, dropped afterwards; ``--no-postgres`` to leave it out)
with N messages (200,000) spread over a year, nearly all settled (acknowledged and answered,
received AppRecs kept as ``delivered``), 400 under way, 5,000 resolved alerts and 20 open, a job
per message under way, and a backlog of ``--backlog`` jobs due (0; the workers far behind: sends
due over the last day, 20 of them held by a worker, and a few of the timed checks) with as many
ack-timeouts not due yet; then times what a scrape does: the store's figures
(:func:`meldingstjener.store.figures.read_figures`) and their rendering in the Prometheus text
format. For contrast it times the count a plain ``GROUP BY direction, status`` over all messages
would cost, and the scrape once more without migration 0025's index.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from scratch_database import scratch_postgres
from sqlalchemy import Connection, Table, insert, text

from meldingstjener.api.metrics import families, render
from meldingstjener.store.database import Database
from meldingstjener.store.figures import read_figures
from meldingstjener.store.migrate import upgrade
from meldingstjener.store.tables import AlertRow, JobRow, MessageRow

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
# settled: (direction, status, msg_type), in turn
SETTLED = (
    ("out", "apprec-ok", "DIALOG_NOTAT"),
    ("out", "transport-acknowledged", "HENVISNING"),
    ("in", "delivered", "APPREC"),
    ("in", "apprec-sent", "DIALOG_FORESPORSEL"),
)
UNDER_WAY = (
    ("out", "accepted", "DIALOG_NOTAT", 30),
    ("out", "sent", "DIALOG_NOTAT", 150),
    ("out", "retrying", "HENVISNING", 20),
    ("in", "received", "DIALOG_NOTAT", 50),
    ("in", "delivered", "DIALOG_NOTAT", 150),
)
BATCH = 5_000
# the kinds of the backlog's jobs due, in turn (nearly all sends; see _backlog)
BACKLOG_KINDS = ("transmit",) * 97 + ("ack-timeout", "send-signal", "apprec-deadline")
HELD = 20


def _message(
    number: int, direction: str, status: str, msg_type: str, at: datetime
) -> dict[str, Any]:
    return {
        "id": str(uuid.UUID(int=number)),
        "direction": direction,
        "status": status,
        "msg_type": msg_type,
        "ebxml_message_id": f"eb-{number}@bench",
        "from_her_id": str(8_100_000 + number % 300),
        "to_her_id": str(8_200_000 + number % 300),
        "attempts": 1,
        "created_at": at,
        "updated_at": at,
        "status_changed_at": at,
    }


def _rows(messages: int) -> Iterator[dict[str, Any]]:
    step = YEAR / messages
    for number in range(messages):
        direction, status, msg_type = SETTLED[number % len(SETTLED)]
        yield _message(number, direction, status, msg_type, NOW - YEAR + step * number)


def _backlog(jobs: int) -> Iterator[dict[str, Any]]:
    """``jobs`` jobs due over the last day (the first :data:`HELD` held by a worker), and as many
    ack-timeouts due over the next day: no message of theirs, as none is needed to count them."""
    step = timedelta(days=1) / max(jobs, 1)
    for number in range(jobs):
        held = number < HELD
        yield {
            "kind": BACKLOG_KINDS[number % len(BACKLOG_KINDS)],
            "dedup_key": f"backlog:{number}",
            "due_at": NOW - timedelta(days=1) + step * number,
            "attempts": 1 if held else 0,
            "crashes": 0,
            "claimed_by": "bench-worker" if held else None,
            "claimed_until": NOW + timedelta(minutes=5) if held else None,
            "created_at": NOW - timedelta(days=1),
        }
        yield {
            "kind": "ack-timeout",
            "dedup_key": f"later:{number}",
            "due_at": NOW + step * (number + 1),
            "attempts": 0,
            "crashes": 0,
            "claimed_by": None,
            "claimed_until": None,
            "created_at": NOW - timedelta(days=1),
        }


def _insert_batched(connection: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> None:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            connection.execute(insert(table), batch)
            batch = []
    if batch:
        connection.execute(insert(table), batch)


def fill(database: Database, messages: int, backlog: int) -> None:
    table = MessageRow.__table__
    assert isinstance(table, Table)
    with database.engine.begin() as connection:
        _insert_batched(connection, table, _rows(messages))
        _insert_batched(connection, cast(Table, JobRow.__table__), _backlog(backlog))
        number = messages
        jobs = []
        for direction, status, msg_type, count in UNDER_WAY:
            rows = []
            for age in range(count):
                at = NOW - timedelta(minutes=age)
                rows.append(_message(number, direction, status, msg_type, at))
                if direction == "out":
                    jobs.append(
                        {
                            "kind": "transmit",
                            "dedup_key": f"transmit:{number}",
                            "message_id": str(uuid.UUID(int=number)),
                            "due_at": at,
                            "attempts": 0,
                            "crashes": 0,
                            "created_at": at,
                        }
                    )
                number += 1
            connection.execute(insert(table), rows)
        connection.execute(insert(JobRow.__table__), jobs)
        alerts = [
            {
                "kind": "apprec-missing",
                "severity": "warning",
                "dedup_key": f"apprec-missing:{n}",
                "summary": "no AppRec",
                "first_seen": NOW - YEAR + timedelta(hours=n),
                "last_seen": NOW - YEAR + timedelta(hours=n),
                "count": 1,
                "resolved_at": None if n >= 5_000 else NOW - YEAR + timedelta(hours=n + 1),
            }
            for n in range(5_020)
        ]
        connection.execute(insert(AlertRow.__table__), alerts)
        connection.execute(text("ANALYZE"))


def _timed(call: Callable[[], object], times: int) -> list[float]:
    call()  # the first: connections opened, statements prepared
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        spent.append((time.perf_counter() - started) * 1000)
    return spent


def measure(name: str, database: Database, messages: int, backlog: int, scrapes: int) -> None:
    started = time.perf_counter()
    fill(database, messages, backlog)
    filled = time.perf_counter() - started

    def scrape() -> bytes:
        with database.reading() as connection:
            figures = read_figures(connection, NOW)
        return render(families(figures, {}))

    def count_all() -> object:
        with database.reading() as connection:
            return connection.execute(
                text("SELECT direction, status, count(*) FROM messages GROUP BY direction, status")
            ).all()

    body = scrape()
    assert b'meldingstjener_messages_under_way{direction="out",status="sent"} 150.0' in body, body
    spent = _timed(scrape, scrapes)
    whole = _timed(count_all, max(3, scrapes // 10))
    p95 = sorted(spent)[int(len(spent) * 0.95) - 1]
    # the same scrape without migration 0025's index (through ix_messages_status, or none)
    with database.engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_messages_unsettled"))
        connection.execute(text("ANALYZE"))
    unindexed = _timed(scrape, max(3, scrapes // 10))
    waiting = re.search(rb'meldingstjener_jobs_waiting\{kind="transmit"\} ([0-9.e+]+)', body)
    assert waiting is not None, body
    print(
        f"{name:10} {messages:,} messages, {backlog:,} jobs due (filled in {filled:.0f} s; "
        f"transmit waiting as scraped: {float(waiting.group(1)):,.0f}): scrape median "
        f"{statistics.median(spent):.2f} ms, p95 {p95:.2f} ms, {len(body):,} bytes; "
        f"without ix_messages_unsettled {statistics.median(unindexed):.1f} ms; "
        f"a GROUP BY over all messages {statistics.median(whole):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--backlog", type=int, default=0)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1/postgres")
    parser.add_argument("--no-postgres", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        database = Database(f"sqlite:///{Path(folder) / 'store.db'}")
        upgrade(database)
        measure("SQLite", database, options.messages, options.backlog, options.scrapes)
        database.dispose()
    if not options.no_postgres:
        with scratch_postgres(options.url) as url:
            database = Database(url)
            upgrade(database)
            measure("PostgreSQL", database, options.messages, options.backlog, options.scrapes)
            database.dispose()


if __name__ == "__main__":
    main()
