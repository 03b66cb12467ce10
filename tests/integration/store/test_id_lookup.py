"""``show``, ``status`` and ``resend`` find a message by an id as a help desk pastes it: with
blanks around it, in angle brackets (a MIME Content-ID's or a mail header's ebXML MessageId),
or an EPJ's MsgId GUID in capitals where the store has it in small letters (and the other way
round). Each was "no message with id ..." (exit 1).

The case is tried last, through the indexes of ``lower(msg_id)`` and ``lower(ebxml_message_id)``
(migration 0033): before them each spelling of the id's start up to its fourth letter was a range
read whole, every message for an ``URN:UUID:...`` (1.7 s at 100,000 messages), and under a
Norwegian collation (no range there, a LIKE) a read of the whole table for any id."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from statement_plans import planned
from test_id_prefix_collation import norwegian  # noqa: F401 (a fixture)

from meldingstjener.cli.store_cmds import find_messages, refused_unstored, several_share
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import EventKind, Store, UnitOfWork

GUID = "987dc614-1f2b-4c3d-8e9f-0a1b2c3d4e5f"
EBXML = "b9a5c0de-77aa-4bcd-9e0f-112233445566@msh-gp.example.no"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def _stored(store: Store, *rows: MessageRow) -> None:
    with store.database.session() as session:
        session.add_all(rows)
        session.commit()


def _row(number: int, **columns: str) -> MessageRow:
    return MessageRow(
        id=f"00000000-0000-4000-8000-{number:012d}",
        direction="out",
        status="sent",
        created_at=T0 + timedelta(minutes=number),
        **columns,
    )


def _found(store: Store, identifier: str) -> list[str]:
    with store.unit_of_work() as uow:
        return [message.id for message in find_messages(uow, identifier)]


def test_an_id_is_found_without_blanks_brackets_and_in_either_case(store: Store) -> None:
    _stored(
        store,
        _row(1, msg_id=GUID, ebxml_message_id=EBXML),
        # another copy of the document (sent again), its MsgId in capitals as an EPJ wrote it
        _row(2, msg_id=GUID.upper(), ebxml_message_id="second@msh-gp"),
        # the same but for one digit: never found for the other
        _row(3, msg_id=GUID[:-1] + "0", ebxml_message_id="Ab@X"),
        _row(4, msg_id="MsgId-Ab", ebxml_message_id="third@msh-gp"),
    )
    first, second, third, fourth = (_row(n).id for n in (1, 2, 3, 4))

    # exact first: a MsgId found as written does not gather the other spellings
    assert _found(store, GUID) == [first]
    assert _found(store, f"  {GUID}\t") == [first]
    # in a case no message has it in: every message that has it in some case, oldest first
    assert _found(store, GUID.replace("dc", "DC")) == [first, second]
    assert _found(store, f"<{EBXML}>") == [first]
    assert _found(store, f" < {EBXML.upper()} > ") == [first]
    assert _found(store, "second@MSH-GP") == [second]
    # ids of few letters: each spelling looked up
    assert _found(store, "ab@x") == [third]
    assert _found(store, "MSGID-AB") == [fourth]
    # our own id in capitals (the start of it, as log prints it, was found so already)
    assert _found(store, first.upper()) == [first]
    assert _found(store, GUID[:-1] + "1") == []
    assert _found(store, "<>") == [] and _found(store, "   ") == []
    with store.unit_of_work() as uow:
        mixed = GUID.replace("dc", "DC")
        messages = find_messages(uow, f" {mixed}")
        assert several_share(f" {mixed}", messages) == (
            f"2 messages have the MsgId {mixed} (each below):"
        )


def test_an_id_with_any_character_is_looked_up_in_another_case(store: Store) -> None:
    """The last character of the code (U+10FFFF) was "the start's next" + 1: a ValueError."""
    last = "\U0010ffff"
    _stored(store, _row(1, msg_id=f"abc{last}def"), _row(2, msg_id="a%b_cdEFgh-1"))
    assert _found(store, f"ABC{last}DEF") == [_row(1).id]
    assert _found(store, f"abc{last}DEG") == []
    # LIKE's wildcards are the characters they are
    assert _found(store, "A%B_CDEFGH-1") == [_row(2).id]
    assert _found(store, "AXB_CDEFGH-1") == []


def test_a_refusal_unstored_is_found_by_its_ebxml_id_in_another_case(store: Store) -> None:
    """``show`` of a message refused before its signature verified: by its eb:MessageId in any
    case, as the help says of every id (it was found exactly only)."""
    with store.unit_of_work() as uow:
        for ebxml_id in ("Refused-1@msh-x", "refused-2@MSH-X"):
            uow.events.record(
                None,
                EventKind.ERROR,
                actor="http:8100001",
                code="SecurityFailure",
                ebxml_message_id=ebxml_id,
                at=T0,
            )
        uow.commit()
    with store.unit_of_work() as uow:
        assert [e.ebxml_message_id for e in refused_unstored(uow, "Refused-1@msh-x")] == [
            "Refused-1@msh-x"
        ]
        assert [e.ebxml_message_id for e in refused_unstored(uow, "REFUSED-1@MSH-X")] == [
            "Refused-1@msh-x"
        ]
        assert [e.ebxml_message_id for e in refused_unstored(uow, "refused-2@msh-x")] == [
            "refused-2@MSH-X"
        ]
        assert refused_unstored(uow, "REFUSED-3@MSH-X") == []


MANY = 3000


def _many(database: Database) -> None:
    """MANY messages as an MSH names them (``urn:uuid:`` and a GUID), and as many refusals of no
    message, ANALYZEd."""
    rows = [
        {"id": str(uuid.uuid4()), "eb": f"urn:uuid:{uuid.uuid4()}", "m": str(uuid.uuid4())}
        for _ in range(MANY)
    ]
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, ebxml_message_id, msg_id, attempts,"
                " created_at, updated_at, status_changed_at) VALUES (:id, 'out', 'sent', :eb,"
                " :m, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            rows,
        )
        connection.execute(
            text(
                "INSERT INTO message_events (message_id, at, kind, actor, ebxml_message_id)"
                " VALUES (NULL, CURRENT_TIMESTAMP, 'error', 'http:8100001', :eb)"
            ),
            [{"eb": f"urn:uuid:{uuid.uuid4()}"} for _ in range(MANY)],
        )
        connection.execute(text("ANALYZE"))


def _case_plans(store: Store) -> dict[str, list[str]]:
    """The plans of the statements of each search that finds nothing in any case, by the index
    its look-up in another case must read."""
    searches: dict[str, Callable[[UnitOfWork], list[Any]]] = {
        "ix_messages_ebxml_id_lower": lambda uow: find_messages(uow, f"URN:UUID:{uuid.uuid4()}"),
        "ix_messages_msg_id_lower": lambda uow: find_messages(uow, str(uuid.uuid4()).upper()),
        "ix_message_events_unstored_ebxml_lower": lambda uow: refused_unstored(
            uow, f"URN:UUID:{uuid.uuid4()}"
        ),
    }

    def searched(search: Callable[[UnitOfWork], list[Any]]) -> list[Any]:
        with store.unit_of_work() as uow:
            return search(uow)

    assert store.database.orders_text_by_code in (True, False)  # read once, before: not planned
    plans = {}
    for index, search in searches.items():
        found, plans[index] = planned(store, lambda: searched(search))  # noqa: B023
        assert found == []
    return plans


def _check_plans(plans: dict[str, list[str]]) -> None:
    """The look-up in another case reads its index of lower(...), and nothing whole."""
    for index, of_search in plans.items():
        named = [plan for plan in of_search if index in plan]
        assert len(named) == 1, (index, of_search)
        [plan] = named
        assert "Seq Scan" not in plan, plan
        assert "SCAN messages" not in plan and "SCAN message_events" not in plan, plan


def test_an_id_in_another_case_is_one_descent_of_an_index(store: Store) -> None:
    _many(store.database)
    _check_plans(_case_plans(store))


def test_an_id_in_another_case_is_one_descent_under_a_norwegian_collation(
    norwegian: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Where text does not sort by code (no range of the index: a LIKE, which read the whole
    table for any id, a plain GUID too), the index of lower(...) serves all the same."""
    _many(norwegian)
    _check_plans(_case_plans(Store(norwegian, PayloadStore(tmp_path / "payloads"))))
