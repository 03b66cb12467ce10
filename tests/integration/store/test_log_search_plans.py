"""The help desk's searches of the message log go through indexes on PostgreSQL, not through the
whole log: by eb:MessageId (``log --ebxml-id``, ``show``/``status`` of a message refused
unstored), by HER-id (``log --her-id``) and ``show``'s look-up of an identifier. Each read every
row of message_events (or the whole of an index of it) when the events of stored messages and
those of no message were one OR across the outer-joined tables: 3.9 s at 2 million events. A
search by HER-id read the whole messages table while five of its eight HER-id columns had no
index (migration 0026), and ``show`` of an id no message has walked the whole primary key for
the ids that start with it, and read every message whose id's start was the one asked for in
another case (before migration 0033).

The plans are the planner's own choice (no ``enable_seqscan = off``): the tables hold enough
rows, ANALYZEd, for it to prefer an index wherever one serves. Each statement must do without a
Seq Scan of either table and touch a few pages, where the tables and their indexes hold hundreds.

And on both backends: the two searches merged give the events and order the one statement did.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from meldingstjener.cli.store_cmds import find_messages, refused_unstored
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import EventKind, LogFilter, Store

MESSAGES = 20_000  # five events each
PAGES_TOUCHED = 60  # at most, by one statement (shared buffers hit or read)
# what the searches read whole before: each is larger than that
_WHOLE = (
    "messages",
    "pk_messages",
    "message_events",
    "uq_messages_direction_ebxml_id",
    "ix_message_events_message_at",
    "ix_message_events_at",
)


def _fill(store: Store) -> None:
    """MESSAGES messages of 50 partners, their events, and 100 refusals of no message (as
    engine/inbound.py writes one refused before its signature verified), ANALYZEd."""
    with store.database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, ebxml_message_id,"
                " ebxml_conversation_id, msg_id, msg_type, from_her_id, to_her_id,"
                " sender_org_her_id, sender_service_her_id, sender_person_her_id,"
                " receiver_org_her_id, receiver_service_her_id, receiver_person_her_id, attempts,"
                " created_at, updated_at, status_changed_at)"
                " SELECT md5(g::text)::uuid::text, CASE WHEN g % 2 = 0 THEN 'out' ELSE 'in' END,"
                " 'sent', 'eb-' || g || '@x', 'conv-' || g, 'msg-' || g, 'DIALOG_NOTAT',"
                " (8100000 + g % 50)::text, (8200000 + g % 50)::text, (8300000 + g % 20)::text,"
                " (8100000 + g % 50)::text,"
                " CASE WHEN g % 2 = 0 THEN (7100000 + g % 4000)::text END,"
                " (8400000 + g % 20)::text, (8200000 + g % 50)::text,"
                " CASE WHEN g % 2 = 1 THEN (7200000 + g % 4000)::text END, 1,"
                " now() - (g || ' seconds')::interval, now(), now()"
                " FROM generate_series(1, :count) g"
            ),
            {"count": MESSAGES},
        )
        connection.execute(
            text(
                "INSERT INTO message_events (message_id, at, kind, actor, ebxml_message_id)"
                " SELECT md5((g / 5 + 1)::text)::uuid::text, now() - (g || ' seconds')::interval,"
                " 'status', 'http:' || (8100000 + g % 50), 'eb-' || (g / 5 + 1) || '@x'"
                " FROM generate_series(1, :count) g WHERE g / 5 + 1 <= :messages"
            ),
            {"count": 5 * MESSAGES, "messages": MESSAGES},
        )
        connection.execute(
            text(
                "INSERT INTO message_events (message_id, at, kind, actor, code, ebxml_message_id)"
                " SELECT NULL, now() - (g || ' minutes')::interval, 'error',"
                " 'http:' || (8100000 + g % 50), 'SecurityFailure', 'refused-' || g || '@x'"
                " FROM generate_series(1, 100) g"
            )
        )
        connection.execute(text("ANALYZE messages, message_events"))


def _plans(store: Store, search: Callable[[], object]) -> list[tuple[str, dict[str, Any]]]:
    """Each SELECT ``search`` runs, with its plan as run (EXPLAIN ANALYZE, BUFFERS)."""
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(store.database.engine, "before_cursor_execute", seen)
    try:
        search()
    finally:
        event.remove(store.database.engine, "before_cursor_execute", seen)
    assert statements
    plans = []
    with store.database.engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for statement, parameters in statements:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
            [[document]] = cursor.fetchall()
            if isinstance(document, str):
                document = json.loads(document)
            plans.append((statement, document[0]["Plan"]))
    return plans


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _seq_scans(plan: dict[str, Any]) -> set[str]:
    return {node["Relation Name"] for node in _nodes(plan) if node["Node Type"] == "Seq Scan"}


def _pages(plan: dict[str, Any]) -> int:
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


@pytest.mark.parametrize("own_database", ["postgresql"], indirect=True)
def test_the_help_desk_searches_use_indexes_on_postgresql(own_database: Store) -> None:
    store = own_database
    _fill(store)
    with store.database.engine.connect() as connection:  # what a whole read would touch
        for relation in _WHOLE:
            pages = connection.execute(
                text("SELECT pg_relation_size(:r) / current_setting('block_size')::int"),
                {"r": relation},
            ).scalar_one()
            assert pages > 2 * PAGES_TOUCHED, relation

    middle = MESSAGES // 2 + 7
    # the collation is read once per process (a read of the catalog, not of messages): read
    # before, so that the plans are the searches' own; it must allow the range of an id's start
    assert store.database.orders_text_by_code
    with store.unit_of_work() as uow:
        searches: dict[str, Callable[[], object]] = {
            "log --ebxml-id": lambda: uow.messages.log(
                LogFilter(ebxml_message_id=f"eb-{middle}@x"), newest=True
            ),
            "log --ebxml-id of a refusal": lambda: uow.messages.log(
                LogFilter(ebxml_message_id="refused-7@x"), newest=True
            ),
            "show of a MsgId": lambda: find_messages(uow, f"msg-{middle}"),
            "show of an eb:MessageId": lambda: find_messages(uow, f"eb-{middle}@x"),
            "refused_unstored": lambda: refused_unstored(uow, "refused-7@x"),
            "API /log by eb:MessageId": lambda: uow.messages.search(
                LogFilter(ebxml_message_id=f"eb-{middle}@x"), newest_first=True
            ),
            # a person's HER-id is on five messages, in one of the eight columns
            "log --her-id": lambda: uow.messages.log(LogFilter(her_id="7200009"), newest=True),
            "log --her-id of no message": lambda: uow.messages.log(
                LogFilter(her_id="8199999", limit=50), newest=True
            ),
            "API /log by HER-id": lambda: uow.messages.search(
                LogFilter(her_id="7200009"), newest_first=True
            ),
            "show of an id no message has": lambda: find_messages(uow, str(uuid.UUID(int=7))),
            "show of a start no message's id has": lambda: find_messages(uow, "00000000abc"),
            # tried in another case after the exact miss: along the index of lower(...)
            "show of a MsgId in capitals": lambda: find_messages(uow, f"MSG-{middle}"),
            "show of a long id in another case no message has": lambda: find_messages(
                uow, "<EB-1-ABCDEF0123456789@X>"
            ),
            # every MsgId starts "msg-": each spelling of that start was a range read whole
            "show of an id in another case whose start every message has": lambda: find_messages(
                uow, "MSG-NO-SUCH-ID"
            ),
            "refused_unstored in capitals": lambda: refused_unstored(uow, "REFUSED-7@X"),
        }
        for name, search in searches.items():
            for statement, plan in _plans(store, search):
                assert _seq_scans(plan) == set(), (name, statement)
                assert _pages(plan) <= PAGES_TOUCHED, (name, statement, _pages(plan))

        # by HER-id the events of no message are found by their exact actor
        her_id = LogFilter(her_id="8199999", limit=50)
        plans = _plans(store, lambda: uow.messages.log(her_id, newest=True))
        assert len(plans) == 2
        [(_, rowless)] = [(s, p) for s, p in plans if "message_id IS NULL" in s]
        assert "ix_message_events_unstored_actor" in {
            node.get("Index Name") for node in _nodes(rowless)
        }


T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_the_events_of_messages_and_of_none_come_merged_in_order(store: Store) -> None:
    """The two searches of ``log`` give the events and the order one statement gave: by time
    and id, the first or last ``limit`` of both together; a refusal by either channel is found
    by its sender's HER-id, and one that ends alike is not."""
    with store.unit_of_work() as uow:
        message = uow.messages.add(
            MessageRow(
                direction="in",
                ebxml_message_id="stored@x",
                msg_type="DIALOG_NOTAT",
                from_her_id="8100001",
                to_her_id="8200002",
            ),
            actor="http:8100001",
            at=T0,
        )
        for minute, actor in ((1, "http:8100001"), (3, "smtp:8100001"), (4, "http:18100001")):
            uow.events.record(
                None,
                EventKind.ERROR,
                actor=actor,
                code="SecurityFailure",
                ebxml_message_id=f"refused-{minute}@x",
                at=T0 + timedelta(minutes=minute),
            )
        uow.events.record(message.id, EventKind.NOTE, actor="msh", at=T0 + timedelta(minutes=2))
        uow.commit()

    def logged(f: LogFilter, *, newest: bool = False) -> list[str]:
        with store.unit_of_work() as uow:
            return [
                f"{event.at - T0}:{'stored' if found else event.ebxml_message_id}"
                for event, found in uow.messages.log(f, newest=newest)
            ]

    her_id = "8100001"
    everything = ["0:00:00:stored", "0:01:00:refused-1@x", "0:02:00:stored", "0:03:00:refused-3@x"]
    assert logged(LogFilter(her_id=her_id)) == everything
    assert logged(LogFilter(her_id=her_id, limit=3)) == everything[:3]
    assert logged(LogFilter(her_id=her_id, limit=3), newest=True) == everything[1:]
    assert logged(LogFilter(her_id=her_id, since=T0 + timedelta(minutes=1), limit=2)) == [
        "0:01:00:refused-1@x",
        "0:02:00:stored",
    ]
    assert logged(LogFilter(her_id=her_id, until=T0 + timedelta(minutes=2))) == everything[:3]
    assert logged(LogFilter(her_id=her_id, msg_type="DIALOG_NOTAT")) == [
        "0:00:00:stored",
        "0:02:00:stored",
    ]
    assert logged(LogFilter(ebxml_message_id="refused-3@x")) == ["0:03:00:refused-3@x"]
    assert logged(LogFilter(ebxml_message_id="stored@x")) == ["0:00:00:stored", "0:02:00:stored"]
    assert logged(LogFilter(ebxml_message_id="refused-3@x", her_id="8100009")) == []
    assert len(logged(LogFilter())) == 5
    assert logged(LogFilter(limit=2), newest=True) == ["0:03:00:refused-3@x", "0:04:00:refused-4@x"]
