"""The help desk's searches on a large PostgreSQL store: ``log --her-id`` and ``show`` of an id
no message has, and what the messages' indexes cost an insert.

A fresh database of the benchmark's own is migrated with this checkout's migrations (run it at
two commits to compare them) and filled with ``--messages`` messages (three events each) by
``INSERT ... SELECT generate_series``, their HER-ids spread as a busy server's are: a few
thousand organisations and services, persons on half the messages. Then it prints:

- the fill's time (rows a second: every index of ``messages`` is kept up by each row);
- the newest migration taken down and up again on the filled table: how long the upgrade
  holds the table (an index built on PostgreSQL blocks writes to its table meanwhile);
- the median and worst time of each search, the statements the code itself issues;
- what the newest migration costs an insert, measured by turns with and without it (the
  machine's other load then weighs on both alike): 20,000 messages more in one statement
  (rolled back), and single messages stored one by one through ``MessageRepository.add``
  (one unit of work each, as the engine stores one), a second.

Run: ``python benchmarks/search_her_id.py [--url URL] [--messages N] [--rounds R]``. The
database is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from scratch_database import scratch_postgres
from sqlalchemy import text

from meldingstjener.cli.store_cmds import find_messages, refused_unstored
from meldingstjener.store.database import Database
from meldingstjener.store.migrate import current_revision, downgrade, upgrade
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import LogFilter, Store

_FILL_MESSAGES = (
    "INSERT INTO messages (id, direction, status, ebxml_message_id, ebxml_conversation_id,"
    " msg_id, msg_type, from_her_id, to_her_id, sender_org_her_id, sender_service_her_id,"
    " sender_person_her_id, receiver_org_her_id, receiver_service_her_id,"
    " receiver_person_her_id, attempts, created_at, updated_at, status_changed_at)"
    " SELECT md5(g::text)::uuid::text, CASE WHEN g % 2 = 0 THEN 'out' ELSE 'in' END,"
    " 'delivered', 'eb-' || g || '@x', 'conv-' || g, 'msg-' || g, 'DIALOG_NOTAT',"
    " (9100000 + g % 5000)::text, (9200000 + g % 4999)::text,"
    " (8100000 + g % 2000)::text, (9100000 + g % 5000)::text,"
    " CASE WHEN g % 2 = 0 THEN (7100000 + g % 20000)::text END,"
    " (8200000 + g % 1999)::text, (9200000 + g % 4999)::text,"
    " CASE WHEN g % 2 = 1 THEN (7200000 + g % 19999)::text END,"
    " 1, now() - (g || ' seconds')::interval, now(), now()"
    " FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) g"
)
_FILL_EVENTS = (
    "INSERT INTO message_events (message_id, at, kind, actor, ebxml_message_id)"
    " SELECT md5(g::text)::uuid::text, now() - (g || ' seconds')::interval + e * interval '1 s',"
    " 'status', 'http:' || (9100000 + g % 5000), 'eb-' || g || '@x'"
    " FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) g,"
    " generate_series(1, 3) e"
)


def _timed(rounds: int, run: Callable[[], object]) -> tuple[float, float]:
    """The median and the worst of ``rounds`` runs, in milliseconds (after one to warm up)."""
    run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


def _single_adds(store: Store, count: int) -> float:
    """Messages stored a second, one unit of work (and commit) each."""
    start = time.perf_counter()
    for _ in range(count):
        with store.unit_of_work() as uow:
            uow.messages.add(
                MessageRow(
                    direction="out",
                    ebxml_message_id=f"single-{uuid.uuid4()}@x",
                    msg_type="DIALOG_NOTAT",
                    from_her_id="9100001",
                    to_her_id="9200002",
                    sender_org_her_id="8100001",
                    sender_service_her_id="9100001",
                    sender_person_her_id="7100001",
                    receiver_org_her_id="8200002",
                    receiver_service_her_id="9200002",
                    receiver_person_her_id="7200002",
                ),
                actor="api:epj",
            )
            uow.commit()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1/postgres")
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--adds", type=int, default=500)
    args = parser.parse_args()
    with scratch_postgres(args.url) as url:
        database = Database(url)
        try:
            upgrade(database)
            revision = current_revision(database)
            print(f"schema at revision {revision}, {args.messages:,} messages, 3 events each")
            start = time.perf_counter()
            with database.engine.begin() as connection:
                for first in range(1, args.messages + 1, 100_000):
                    bounds = {"first": first, "last": min(first + 99_999, args.messages)}
                    connection.execute(text(_FILL_MESSAGES), bounds)
            seconds = time.perf_counter() - start
            print(f"fill of messages: {seconds:.1f} s, {args.messages / seconds:,.0f} rows/s")
            with database.engine.begin() as connection:
                for first in range(1, args.messages + 1, 100_000):
                    bounds = {"first": first, "last": min(first + 99_999, args.messages)}
                    connection.execute(text(_FILL_EVENTS), bounds)
            autocommit = database.engine.execution_options(isolation_level="AUTOCOMMIT")
            with autocommit.connect() as connection:  # (VACUUM runs outside a transaction)
                connection.execute(text("VACUUM ANALYZE messages, message_events"))

            downgrade(database, "-1")
            start = time.perf_counter()
            upgrade(database)
            took = time.perf_counter() - start
            print(f"upgrade to {revision} on the filled tables: {took:.2f} s")
            with autocommit.connect() as connection:
                connection.execute(text("ANALYZE messages"))

            with tempfile.TemporaryDirectory() as payloads:
                store = Store(database, PayloadStore(Path(payloads)))
                searches: dict[str, Callable[[], object]] = {
                    # a service with 80 messages, a person with 10, a HER-id no message has
                    "log --her-id (a service)": lambda: _log(store, "9100007"),
                    "log --her-id (a person)": lambda: _log(store, "7200007"),
                    "log --her-id (unknown)": lambda: _log(store, "5555555"),
                    "show of an unknown whole id": lambda: _show(store, str(uuid.UUID(int=7))),
                    "show of an unknown id's start": lambda: _show(store, "00000000abc"),
                }
                for label, search in searches.items():
                    median, worst = _timed(args.rounds, search)
                    print(f"{label:32} median {median:7.2f} ms, worst {worst:7.2f} ms")
                _insert_costs(store, args.messages, args.adds, str(revision))
        finally:
            database.dispose()


def _bulk_rate(store: Store, first: int) -> float:
    """Messages a second by one INSERT ... SELECT of 20,000, rolled back."""
    bounds = {"first": first, "last": first + 19_999}
    with store.database.engine.connect() as connection:
        start = time.perf_counter()
        connection.execute(text(_FILL_MESSAGES), bounds)
        seconds = time.perf_counter() - start
        connection.rollback()
    return 20_000 / seconds


def _insert_costs(store: Store, messages: int, adds: int, revision: str, turns: int = 3) -> None:
    """Insert rates with the newest migration's schema and without, by turns."""
    rates: dict[str, tuple[list[float], list[float]]] = {}
    for _ in range(turns):
        for schema in (revision, "-1"):
            if schema == "-1":
                downgrade(store.database, "-1")
            bulk, single = rates.setdefault(schema, ([], []))
            bulk.append(_bulk_rate(store, messages + 1))
            single.append(_single_adds(store, adds))
            if schema == "-1":
                upgrade(store.database)
    for schema, (bulk, single) in rates.items():
        name = revision if schema == revision else "the one before"
        print(
            f"inserts at {name}: {statistics.median(bulk):,.0f} messages/s in bulk, "
            f"{statistics.median(single):,.0f}/s stored singly (median of {turns} turns)"
        )


def _log(store: Store, her_id: str) -> object:
    with store.unit_of_work() as uow:
        return uow.messages.log(LogFilter(her_id=her_id), newest=True)


def _show(store: Store, identifier: str) -> object:
    """What ``show`` reads of an identifier no message has, before it says so."""
    with store.unit_of_work() as uow:
        return find_messages(uow, identifier) or refused_unstored(uow, identifier)


if __name__ == "__main__":
    main()
