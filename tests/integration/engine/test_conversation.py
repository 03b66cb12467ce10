"""An answer continues the ebXML conversation of the message it answers."""

from __future__ import annotations

from engine_pair import Pair
from sqlalchemy import update

from meldingstjener.devsites import dialog_note, dialog_question
from meldingstjener.engine import receipts
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import AppRecStatus, build_apprec, read_msghead
from meldingstjener.formats.dialog import build_dialog_svar
from meldingstjener.store.tables import MessageRow


def _question_received(pair: Pair) -> MessageRow:
    submit(pair.gp, dialog_question(pair.gp_site, pair.hospital_site, "Spørsmål"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    receipts.deliver(pair.hospital, row.id, actor="epj:test")
    return row


def _peer_conversation(pair: Pair, row: MessageRow, conversation_id: str) -> None:
    """As if the peer's MSH named the conversation otherwise than by the MsgHead's MsgId."""
    with pair.hospital.store.unit_of_work() as uow:
        uow.session.execute(
            update(MessageRow)
            .where(MessageRow.id == row.id)
            .values(ebxml_conversation_id=conversation_id)
        )
        uow.commit()


def test_an_apprec_goes_in_the_conversation_of_the_message_it_answers(pair: Pair) -> None:
    received = _question_received(pair)
    answer = receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    apprec = pair.message(pair.hospital, answer)
    assert apprec.ebxml_conversation_id == received.ebxml_conversation_id
    assert apprec.ebxml_conversation_id != apprec.msg_id
    pair.run()
    [arrived] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "APPREC"]
    assert arrived.ebxml_conversation_id == received.ebxml_conversation_id


def test_an_apprec_keeps_a_conversation_id_the_peer_chose(pair: Pair) -> None:
    received = _question_received(pair)
    _peer_conversation(pair, received, "peer-conversation-1")
    answer = receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    assert pair.message(pair.hospital, answer).ebxml_conversation_id == "peer-conversation-1"


def test_a_reply_goes_in_the_ebxml_conversation_of_its_parent(pair: Pair) -> None:
    received = _question_received(pair)
    _peer_conversation(pair, received, "peer-conversation-2")
    question = read_msghead(pair.hospital.store.payloads.read_bytes(str(received.payload_ref)))
    reply = submit(pair.hospital, build_dialog_svar(question, answer_text="Svar"), actor="t")
    sent = pair.message(pair.hospital, reply)
    assert sent.conversation_ref_to_parent == received.msg_id
    assert sent.ebxml_conversation_id == "peer-conversation-2"


def test_a_reply_to_a_message_not_held_goes_by_its_conversation_ref(pair: Pair) -> None:
    received = _question_received(pair)
    question = read_msghead(pair.hospital.store.payloads.read_bytes(str(received.payload_ref)))
    with pair.hospital.store.unit_of_work() as uow:
        uow.session.execute(
            update(MessageRow).where(MessageRow.id == received.id).values(msg_id="another")
        )
        uow.commit()
    reply = submit(pair.hospital, build_dialog_svar(question, answer_text="Svar"), actor="t")
    assert pair.message(pair.hospital, reply).ebxml_conversation_id == question.msg_id


def _two_copies(pair: Pair) -> tuple[MessageRow, MessageRow]:
    """The GP's EPJ sent one note twice (one MsgId, two ebXML messages), each received in an
    ebXML conversation of its own (the peer's MSH named them so)."""
    note = dialog_note(pair.gp_site, pair.hospital_site, "Notat")
    submit(pair.gp, note, actor="epj")
    pair.run()
    pair.clock.advance(minutes=5)
    submit(pair.gp, note, actor="epj")
    pair.run()
    older, newer = sorted(pair.inbound_messages(pair.hospital), key=lambda m: m.created_at)
    assert older.msg_id == newer.msg_id and older.from_her_id == newer.from_her_id
    _peer_conversation(pair, older, "conversation-of-the-older")
    _peer_conversation(pair, newer, "conversation-of-the-newer")
    return older, newer


def _apprec_document(pair: Pair, copy: MessageRow) -> bytes:
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(copy.payload_ref)))
    return build_apprec(original, status=AppRecStatus.OK, version="1.0")


def _answered_by(pair: Pair, answer_id: str) -> tuple[str | None, list[str]]:
    """The AppRec's conversation, and the conversations of the copies marked answered."""
    marked = [
        str(m.ebxml_conversation_id)
        for m in pair.inbound_messages(pair.hospital)
        if m.status == "apprec-sent"
    ]
    return pair.message(pair.hospital, answer_id).ebxml_conversation_id, marked


def test_an_apprec_document_goes_in_the_conversation_of_the_copy_it_marks(pair: Pair) -> None:
    # Outbound took the oldest copy's conversation, the marking the newest copy: the AppRec
    # travelled in one copy's conversation and marked the other.
    older, _ = _two_copies(pair)
    answer = submit(pair.hospital, _apprec_document(pair, older), actor="folder")
    older_only = ("conversation-of-the-older", ["conversation-of-the-older"])
    assert _answered_by(pair, answer) == older_only
    # the second AppRec document answers the other copy, in its conversation
    second = submit(pair.hospital, _apprec_document(pair, older), actor="folder")
    conversation, marked = _answered_by(pair, second)
    assert conversation == "conversation-of-the-newer"
    assert sorted(marked) == ["conversation-of-the-newer", "conversation-of-the-older"]


def test_an_apprec_to_the_newer_copy_goes_in_its_conversation(pair: Pair) -> None:
    # send_apprec names the copy; outbound took the oldest copy's conversation all the same
    _, newer = _two_copies(pair)
    answer = receipts.send_apprec(pair.hospital, newer.id, status=1, errors=[], actor="epj")
    newer_only = ("conversation-of-the-newer", ["conversation-of-the-newer"])
    assert _answered_by(pair, answer) == newer_only
