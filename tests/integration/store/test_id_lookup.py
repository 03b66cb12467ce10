"""``show``, ``status`` and ``resend`` find a message by an id as a help desk pastes it: with
blanks around it, in angle brackets (a MIME Content-ID's or a mail header's ebXML MessageId),
or an EPJ's MsgId GUID in capitals where the store has it in small letters (and the other way
round). Each was "no message with id ..." (exit 1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meldingstjener.cli.store_cmds import find_messages, several_share
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import Store

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
