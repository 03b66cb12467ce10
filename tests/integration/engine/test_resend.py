"""Sending a not-delivered message again (``engine.resend``) over two real engines, on SQLite and
PostgreSQL: the new copy goes through the outbound pipeline and is delivered, both logs name the
other, the alert is resolved; one copy when two operators send it again at once; every other
status refused with a code."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
from engine_pair import Pair, at_once
from sqlalchemy import delete, select, text, update
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note, dialog_question
from meldingstjener.engine import receipts
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.resend import Operator, ResendRefused, Resent, resend
from meldingstjener.formats import read_msghead
from meldingstjener.formats.dialog import build_dialog_svar
from meldingstjener.store import audit
from meldingstjener.store.audit import AuditQuery, query
from meldingstjener.store.tables import AlertRow, MessageRow

KARI = Operator("cli", "kari")


def _given_up(pair: Pair, text_: str = "Kommer ikke fram") -> str:
    """A note to the hospital while it is down, sent until given up (not-delivered); the
    hospital is back up afterwards."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, text_), actor="epj")
    for _ in range(6):
        pair.run()
        pair.clock.advance(seconds=700)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "not-delivered"
    pair.network.down.clear()
    return message_id


def _events(pair: Pair, message_id: str, code: str) -> list[str]:
    with pair.gp.store.unit_of_work() as uow:
        return [str(e.detail) for e in uow.events.for_message(message_id) if e.code == code]


def _not_delivered_alert(pair: Pair, message_id: str) -> AlertRow:
    with pair.gp.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.for_message(message_id) if a.kind == "not-delivered"]
        return alert


def _copies(pair: Pair, msg_id: str) -> list[MessageRow]:
    with pair.gp.store.unit_of_work() as uow:
        query_ = select(MessageRow).where(
            MessageRow.msg_id == msg_id, MessageRow.direction == "out"
        )
        return list(uow.session.scalars(query_.order_by(MessageRow.created_at)))


def test_a_message_sent_again_is_a_new_copy_delivered_and_linked(
    pair_with_gp_database: Pair,
) -> None:
    pair = pair_with_gp_database
    original_id = _given_up(pair)
    original = pair.message(pair.gp, original_id)
    # the alert names the command that sends it again
    assert f"meldingstjener resend {original_id}" in _not_delivered_alert(pair, original_id).summary

    done = resend(pair.gp, original_id, operator=KARI)
    pair.run()

    copy = pair.message(pair.gp, done.copy_id)
    assert copy.status == "transport-acknowledged"
    # a new ebXML message in the same conversation, of the same business document
    assert copy.ebxml_message_id != original.ebxml_message_id
    assert copy.ebxml_conversation_id == original.ebxml_conversation_id
    assert copy.msg_id == original.msg_id and copy.payload_sha256 == original.payload_sha256
    assert copy.payload_ref != original.payload_ref  # its own file: retention removes each
    [received] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    assert received.ebxml_message_id == copy.ebxml_message_id
    assert received.msg_id == original.msg_id

    assert _events(pair, original_id, "sent-again") == [
        f"sent again as {copy.id} (eb:MessageId {copy.ebxml_message_id}) by cli/kari"
    ]
    [copy_of] = _events(pair, copy.id, "copy-of")
    assert copy_of.startswith(f"a new copy of {original_id} ")
    alert = _not_delivered_alert(pair, original_id)
    assert alert.resolved_at is not None and alert.acknowledged_by == "cli/kari"
    audited = query(pair.gp.store, AuditQuery(message_id=original_id))
    assert [(r["action"], r["person"], r["detail"]) for r in audited] == [
        ("alert-resolve", "kari", f"alert {alert.id} not-delivered"),
        ("resend", "kari", f"sent again as {copy.id}"),
    ]
    assert pair.message(pair.gp, original_id).status == "not-delivered"  # its story as it was


def test_show_names_both_copies(pair: Pair) -> None:
    original_id = _given_up(pair)
    copy_id = resend(pair.gp, original_id, operator=KARI).copy_id

    def show(*args: str) -> str:
        config = str(pair.gp_site.config_path)
        result = CliRunner().invoke(app, ["--config", config, "show", *args])
        assert result.exit_code == 0, result.output
        return result.output

    shown = json.loads(show(original_id, "--json"))
    assert (shown["sent_again_as"], shown["copy_of"]) == (copy_id, None)
    shown = json.loads(show(copy_id, "--json"))
    assert (shown["sent_again_as"], shown["copy_of"]) == (None, original_id)
    assert f"sent again as  {copy_id}" in show(original_id)
    assert f"a new copy of  {original_id}" in show(copy_id)


def test_a_message_sent_again_already_is_refused_naming_its_copy(pair: Pair) -> None:
    original_id = _given_up(pair)
    copy_id = resend(pair.gp, original_id, operator=KARI).copy_id
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, original_id, operator=Operator("cli", "ola"))
    assert refused.value.code == "already-sent-again" and refused.value.copy_id == copy_id
    assert copy_id in refused.value.message
    msg_id = str(pair.message(pair.gp, original_id).msg_id)
    assert [m.id for m in _copies(pair, msg_id)] == [original_id, copy_id]


def test_two_operators_at_once_make_one_copy(pair_with_gp_database: Pair) -> None:
    pair = pair_with_gp_database
    original_id = _given_up(pair)

    outcomes = at_once(2, lambda: _outcome(pair, original_id))

    [made] = [o for o in outcomes if isinstance(o, Resent)]
    [refused] = [o for o in outcomes if isinstance(o, ResendRefused)]
    assert refused.code == "already-sent-again" and refused.copy_id == made.copy_id
    msg_id = str(pair.message(pair.gp, original_id).msg_id)
    assert [m.id for m in _copies(pair, msg_id)] == [original_id, made.copy_id]
    assert len(_events(pair, original_id, "sent-again")) == 1


def _outcome(pair: Pair, original_id: str) -> Resent | ResendRefused:
    try:
        return resend(pair.gp, original_id, operator=KARI)
    except ResendRefused as refused:
        return refused


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_resends_that_both_pass_the_first_check_store_one_copy(
    pair_with_gp_database: Pair, database_url: str
) -> None:
    """Both resends past the check before the copy is built, held at the commit by the
    original's row lock (taken here): the first to commit stores its copy, the second none."""
    pair = pair_with_gp_database
    original_id = _given_up(pair)
    outcomes: list[Resent | ResendRefused] = []
    with psycopg.connect(database_url.replace("+psycopg", "")) as holder:
        holder.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (original_id,))
        threads = [
            threading.Thread(target=lambda: outcomes.append(_outcome(pair, original_id)))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        _wait_for_waiting(holder, 2, threads)
        holder.rollback()
    for thread in threads:
        thread.join(60)
    [made] = [o for o in outcomes if isinstance(o, Resent)]
    [refused] = [o for o in outcomes if isinstance(o, ResendRefused)]
    assert refused.code == "already-sent-again" and refused.copy_id == made.copy_id
    msg_id = str(pair.message(pair.gp, original_id).msg_id)
    assert [m.id for m in _copies(pair, msg_id)] == [original_id, made.copy_id]


def _wait_for_waiting(
    holder: psycopg.Connection, count: int, threads: list[threading.Thread]
) -> None:
    """Until ``count`` other sessions of this database wait on a lock (the row lock held by
    ``holder``, or the unique key of a copy being stored), or a thread ended without waiting."""
    with psycopg.connect(str(holder.info.dsn), autocommit=True) as watcher:
        while any(thread.is_alive() for thread in threads):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0] >= count:
                return
            threading.Event().wait(0.01)  # a poll of another process's state, not a delay
    raise AssertionError("a resend ended before it reached the lock")


def test_statuses_other_than_not_delivered_are_refused(pair: Pair) -> None:
    note = dialog_note(pair.gp_site, pair.hospital_site, "Levert")
    delivered = submit(pair.gp, note, actor="epj")
    pair.run()
    assert pair.message(pair.gp, delivered).status == "transport-acknowledged"
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, delivered, operator=KARI)
    assert refused.value.code == "not-resendable"
    assert "transport-acknowledged: the receiver acknowledged it" in refused.value.message

    [received] = pair.inbound_messages(pair.hospital)
    with pytest.raises(ResendRefused) as refused:
        resend(pair.hospital, received.id, operator=KARI)
    assert refused.value.code == "not-outbound"
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, "no-such-message", operator=KARI)
    assert refused.value.code == "not-found"
    msg_id = str(read_msghead(note).msg_info.msg_id)
    assert [m.id for m in _copies(pair, msg_id)] == [delivered]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_late_acknowledgment_before_the_commit_stores_no_copy(
    pair_with_gp_database: Pair, database_url: str
) -> None:
    """The status is checked again under the original's lock, in the commit of the copy: an
    Acknowledgment that moved it on while the copy was built leaves no copy."""
    pair = pair_with_gp_database
    original_id = _given_up(pair)
    outcomes: list[Resent | ResendRefused] = []
    with psycopg.connect(database_url.replace("+psycopg", "")) as holder:
        holder.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (original_id,))
        thread = threading.Thread(target=lambda: outcomes.append(_outcome(pair, original_id)))
        thread.start()
        _wait_for_waiting(holder, 1, [thread])
        holder.execute(
            "UPDATE messages SET status = 'transport-acknowledged' WHERE id = %s", (original_id,)
        )
        holder.commit()
    thread.join(60)
    [refused] = outcomes
    assert isinstance(refused, ResendRefused) and refused.code == "not-resendable"
    msg_id = str(pair.message(pair.gp, original_id).msg_id)
    assert [m.id for m in _copies(pair, msg_id)] == [original_id]


def test_a_message_whose_content_was_removed_is_refused(pair: Pair) -> None:
    original_id = _given_up(pair)
    pair.gp.store.payloads.delete(str(pair.message(pair.gp, original_id).payload_ref))
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, original_id, operator=KARI)
    assert refused.value.code == "content-removed"
    with pair.gp.store.unit_of_work() as uow:
        assert uow.session.scalar(text("SELECT count(*) FROM messages")) == 1


def test_a_reply_sent_again_stays_in_its_conversation_when_its_parent_is_gone(
    pair: Pair,
) -> None:
    """The copy goes in the conversation the given-up message went in, even when the message it
    replied to is no longer held (retention's message_days) and the MsgHead alone would name
    another one."""
    submit(pair.gp, dialog_question(pair.gp_site, pair.hospital_site, "Spørsmål"), actor="t")
    pair.run()
    [question] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        # as if the GP's MSH named the conversation otherwise than by the MsgHead's MsgId
        uow.session.execute(
            update(MessageRow)
            .where(MessageRow.id == question.id)
            .values(ebxml_conversation_id="peer-conversation")
        )
        uow.commit()
    head = read_msghead(pair.hospital.store.payloads.read_bytes(str(question.payload_ref)))
    pair.network.down.add(pair.gp_site.endpoint)
    reply_id = submit(pair.hospital, build_dialog_svar(head, answer_text="Svar"), actor="epj")
    for _ in range(6):
        pair.run()
        pair.clock.advance(seconds=700)
    pair.run()
    assert pair.message(pair.hospital, reply_id).status == "not-delivered"
    assert pair.message(pair.hospital, reply_id).ebxml_conversation_id == "peer-conversation"
    with pair.hospital.store.unit_of_work() as uow:
        uow.session.execute(delete(MessageRow).where(MessageRow.id == question.id))
        uow.commit()
    pair.network.down.clear()

    copy_id = resend(pair.hospital, reply_id, operator=KARI).copy_id
    pair.run()

    copy = pair.message(pair.hospital, copy_id)
    assert copy.status == "transport-acknowledged"
    assert copy.ebxml_conversation_id == "peer-conversation"


def test_an_apprec_not_delivered_sent_again_answers_the_message(pair: Pair) -> None:
    """Our AppRec given up while the sender was down: its copy reaches the sender and moves
    its message on, as the first would have."""
    note_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Notat"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    receipts.deliver(pair.hospital, received.id, actor="epj")
    pair.network.down.add(pair.gp_site.endpoint)
    apprec_id = receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    for _ in range(6):
        pair.run()
        pair.clock.advance(seconds=700)
    pair.run()
    assert pair.message(pair.hospital, apprec_id).status == "not-delivered"
    pair.network.down.clear()

    copy_id = resend(pair.hospital, apprec_id, operator=KARI).copy_id
    pair.run()

    assert pair.message(pair.hospital, copy_id).status == "transport-acknowledged"
    assert pair.message(pair.gp, note_id).status == "apprec-ok"
    assert pair.message(pair.hospital, received.id).status == "apprec-sent"
    # the received message's status names both answers, the one given up and its copy
    config = str(pair.hospital_site.config_path)
    result = CliRunner().invoke(app, ["--config", config, "status", received.id])
    assert result.exit_code == 0, result.output
    assert f"sent as {apprec_id}, not-delivered" in result.output
    assert f"sent as {copy_id}, transport-acknowledged" in result.output


def _acknowledgments_lost(pair: Pair) -> str:
    """A note the hospital took on every attempt, given up because none of its Acknowledgments
    reached the GP office (its endpoint down for the hospital's signals); both up afterwards."""
    pair.network.down.add(pair.gp_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="epj")
    pair.until_given_up(message_id)
    pair.network.down.clear()
    return message_id


def test_a_message_the_receivers_server_took_is_sent_again_only_on_the_receivers_word(
    pair: Pair,
) -> None:
    """The hospital has it (its Acknowledgments were lost): a copy would be a duplicate in its
    EPJ, so a resend asks first (maybe-received), and goes with the receiver's word, kept,
    masked, as the resolved alert's note."""
    original_id = _acknowledgments_lost(pair)
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, original_id, operator=KARI)
    assert refused.value.code == "maybe-received"
    assert "the receiver's server took it" in refused.value.message
    assert "--checked" in refused.value.message
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, original_id, operator=KARI, checked="   ")  # blank is no word
    assert refused.value.code == "maybe-received"
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, original_id, operator=KARI, checked="x" * 5000)
    assert refused.value.code == "invalid-checked"
    assert _copies(pair, str(pair.message(pair.gp, original_id).msg_id))[-1].id == original_id

    said = "Ola at the hospital found nothing for 01017012345"
    done = resend(pair.gp, original_id, operator=KARI, checked=said)
    assert done.checked_kept is True
    alert = _not_delivered_alert(pair, original_id)
    assert alert.resolved_at is not None
    assert alert.resolution_note == "Ola at the hospital found nothing for [redacted-id]"
    assert done.copy_id != original_id
    with pair.gp.store.unit_of_work() as uow:  # the words are the alert's, in no event
        details = [str(e.detail) for e in uow.events.for_message(original_id)]
    assert not any("Ola" in detail for detail in details)


def test_resend_on_the_command_line_takes_the_receivers_word(pair: Pair) -> None:
    original_id = _acknowledgments_lost(pair)
    config = str(pair.gp_site.config_path)
    refused = CliRunner().invoke(app, ["--config", config, "resend", original_id])
    assert refused.exit_code == 1
    assert "refused (maybe-received)" in refused.output
    done = CliRunner().invoke(
        app, ["--config", config, "resend", original_id, "--checked", "not arrived, said Ola"]
    )
    assert done.exit_code == 0, done.output
    assert _not_delivered_alert(pair, original_id).resolution_note == "not arrived, said Ola"


def test_the_receivers_word_for_an_alert_resolved_already_is_said_not_kept(pair: Pair) -> None:
    """Ask, resolve the alert, then send again: the word has no open alert to be kept with, and
    the caller is told (it was dropped without a word, found by a review)."""
    original_id = _acknowledgments_lost(pair)
    alert = _not_delivered_alert(pair, original_id)
    with pair.gp.store.unit_of_work() as uow:
        audit.follow_up_alert(uow, alert.id, resolve=True, client="cli", person=None, by="cli")
        uow.commit()
    config = str(pair.gp_site.config_path)
    done = CliRunner().invoke(
        app, ["--config", config, "resend", original_id, "--checked", "not arrived, said Ola"]
    )
    assert done.exit_code == 0, done.output
    assert "--checked) was not kept: the not-delivered alert was resolved already" in done.stderr
    assert _not_delivered_alert(pair, original_id).resolution_note is None
