"""Application receipts, misaddressed messages and the end-to-end status, between two engines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from engine_pair import Pair, note_with_the_hospital_as_copy
from sqlalchemy import delete

from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note, dialog_question
from meldingstjener.engine import receipts
from meldingstjener.engine.fagmelding import inspect
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.formats import read_msghead
from meldingstjener.formats.dialog import build_dialog_svar
from meldingstjener.registry.store import agreement_from_row, save_agreement
from meldingstjener.registry.terms import AgreedMessage, ChannelTerms
from meldingstjener.store.tables import AgreementRow, JobRow, MessageRow, PartyRow
from meldingstjener.store.uow import LogFilter


def received(pair: Pair) -> MessageRow:
    [row] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    return row


def open_alerts(ctx: object, kind: str) -> list[object]:
    with ctx.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        return [a for a in uow.alerts.list(open_only=True) if a.kind == kind]


def send_and_deliver(pair: Pair, text: str = "Notat") -> tuple[str, MessageRow]:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, text), actor="t")
    pair.run()
    row = received(pair)
    receipts.deliver(pair.hospital, row.id, actor="epj:test")
    return message_id, row


def test_an_ok_apprec_closes_the_loop(pair: Pair) -> None:
    message_id, row = send_and_deliver(pair)
    assert pair.message(pair.hospital, row.id).status == "delivered"
    assert receipts.receiver_status(pair.gp, message_id)[0].app_rec_status is None
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:test")
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    [status] = receipts.receiver_status(pair.gp, message_id)
    assert (status.receiver_her_id, status.transport_delivery_state, status.app_rec_status) == (
        "8200002",
        "Acknowledged",
        "Ok",
    )
    [info] = receipts.apprec_info(pair.gp, message_id)
    assert info.app_rec_status == "Ok" and info.errors == ()
    # the AppRec itself reached the GP as a message of its own, and got no AppRec back
    apprecs = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "APPREC"]
    assert len(apprecs) == 1
    with pytest.raises(receipts.AppRecRefused) as again:
        receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:test")
    assert again.value.code == "already-answered"


def test_a_rejected_apprec_shows_its_codes_and_raises_an_alert(pair: Pair) -> None:
    message_id, row = send_and_deliver(pair)
    receipts.send_apprec(
        pair.hospital, row.id, status=2, errors=[("E35", "Pasienten finnes ikke")], actor="epj"
    )
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "apprec-rejected" and sent.last_error_code == "E35"
    [info] = receipts.apprec_info(pair.gp, message_id)
    assert info.app_rec_status == "Rejected" and info.errors[0][0] == "E35"
    [alert] = open_alerts(pair.gp, "apprec-rejected")
    assert "E35" in alert.summary  # type: ignore[attr-defined]
    assert pair.message(pair.hospital, row.id).status == "rejected"


def test_an_apprec_code_is_told_with_its_meaning_in_the_code_list(pair: Pair) -> None:
    # "AppRec Rejected (E21)" sent the help desk to the code list, or to --texts and the
    # partner's words, which may name the patient; the list's own text is ours and names nobody
    message_id, row = send_and_deliver(pair)
    receipts.send_apprec(
        pair.hospital, row.id, status=2, errors=[("E35", "Ukjent hos oss")], actor="epj"
    )
    pair.run()
    meaning = "E35 Pasienten finnes ikke i mottakersystemet"
    [alert] = open_alerts(pair.gp, "apprec-rejected")
    summary = str(alert.summary)  # type: ignore[attr-defined]
    assert f"with AppRec 'Rejected': {meaning}. Follow up" in summary
    with pair.gp.store.unit_of_work() as uow:
        details = [str(e.detail) for e in uow.events.for_message(message_id)]
    assert f"AppRec Rejected ({meaning})" in details
    assert "Ukjent" not in summary + " ".join(details)  # the partner's words: --texts only


def _apprec_from_the_hospital(
    pair: Pair,
    original_payload: bytes,
    status: int,
    errors: list[tuple[str, str]],
    original_msg_id: str | None = None,
) -> None:
    """An AppRec from the hospital with Error codes and texts as a partner may write them
    (checked by nobody on its way out), for the message ``original_payload`` (or, with
    ``original_msg_id``, naming another MsgId as the one it answers)."""
    from meldingstjener.formats import AppRecError, build_apprec, read_msghead

    original = read_msghead(original_payload)
    apprec = build_apprec(
        original,
        status=status,
        errors=[AppRecError(code=code, text=text) for code, text in errors],
        version="1.1",
    )
    if original_msg_id is not None:
        apprec = apprec.replace(original.msg_info.msg_id.encode(), original_msg_id.encode())
    sound = build_apprec(original, status=status, errors=[AppRecError.of("E35")], version="1.1")
    submit(pair.hospital, apprec, actor="t", inspected=inspect(sound))
    pair.run()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_apprec_error_code_that_is_no_code_is_shown_as_a_question_mark(
    tmp_path: Path, database_url: str
) -> None:
    # A V of 80 characters went into the 64-character code columns: PostgreSQL refused the
    # row, at every resend of the AppRec. And a V (or DN) may quote the message: the log and
    # the alert name codes that look like codes, "?" for others; the receipt keeps them.
    from engine_pair import make_pair

    pair = make_pair(tmp_path, gp_database_url=database_url)
    try:
        message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
        pair.run()
        row = received(pair)
        payload = pair.hospital.store.payloads.read_bytes(str(row.payload_ref))
        quoting = "Kari Nordmann 01017012345 " + "x" * 60
        _apprec_from_the_hospital(pair, payload, 2, [(quoting, "Kari"), ("E35", "Finnes ikke")])
        sent = pair.message(pair.gp, message_id)
        assert sent.status == "apprec-rejected" and sent.last_error_code == "?"
        [alert] = open_alerts(pair.gp, "apprec-rejected")
        summary = str(alert.summary)  # type: ignore[attr-defined]
        assert (
            "'Rejected': ?, E35 Pasienten finnes ikke i mottakersystemet." in summary
            and "Kari" not in summary
        )
        with pair.gp.store.unit_of_work() as uow:
            details = " ".join(str(e.detail) for e in uow.events.for_message(message_id))
            [receipt] = [r for r in uow.receipts.for_message(message_id) if r.kind == "apprec"]
        assert "Kari" not in details
        assert receipt.error_codes is not None
        assert receipt.error_codes[0]["code"].startswith("Kari Nordmann [redacted-id] xxx")
        assert "01017012345" not in str(receipt.description)
    finally:
        pair.gp.store.database.dispose()
        pair.hospital.store.database.dispose()


@pytest.mark.parametrize(("status", "alerted"), [(1, False), (2, True), (3, True)])
def test_a_rejecting_apprec_for_a_message_we_did_not_send_raises_an_alert(
    pair: Pair, status: int, alerted: bool
) -> None:
    # A rejection that matched none of our messages was a note in the log only.
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    payload = pair.hospital.store.payloads.read_bytes(str(received(pair).payload_ref))
    errors = [("E35", "Finnes ikke")] if status != 1 else []
    unknown = "2b7ef7e4-0000-4000-8000-000000000000"
    _apprec_from_the_hospital(pair, payload, status, errors, original_msg_id=unknown)
    [apprec] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "APPREC"]
    with pair.gp.store.unit_of_work() as uow:
        assert "apprec-unmatched" in [e.code for e in uow.events.for_message(apprec.id)]
    found = open_alerts(pair.gp, "apprec-rejected")
    assert len(found) == int(alerted)
    if alerted:
        [alert] = found
        assert (
            alert.message_id == apprec.id
            and "(E35 Pasienten finnes ikke i mottakersystemet)" in alert.summary
        )  # type: ignore[attr-defined]
        assert alert.dedup_key == f"apprec-rejected:unmatched:{apprec.id}"  # type: ignore[attr-defined]


def test_an_epjs_resend_of_one_msgid_gets_each_apprec_on_its_own_copy(pair: Pair) -> None:
    # The GP's EPJ resent its document (the same MsgId, a new ebXML message); the hospital
    # answered both copies. Every AppRec went to the newest copy: the older stayed
    # transport-acknowledged and got a false apprec-missing a day later.
    note = dialog_note(pair.gp_site, pair.hospital_site, "Notat")
    first = submit(pair.gp, note, actor="epj")
    pair.run()
    pair.clock.advance(hours=1)
    second = submit(pair.gp, note, actor="epj")
    pair.run()
    copies = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    assert len(copies) == 2
    for copy in copies:
        receipts.deliver(pair.hospital, copy.id, actor="epj")
        receipts.send_apprec(pair.hospital, copy.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, first).status == "apprec-ok"
    assert pair.message(pair.gp, second).status == "apprec-ok"
    assert len(receipts.apprec_info(pair.gp, first)) == 1
    assert len(receipts.apprec_info(pair.gp, second)) == 1
    pair.clock.advance(hours=25)
    pair.run()
    assert open_alerts(pair.gp, "apprec-missing") == []


def test_an_apprec_after_a_give_up_and_a_resend_goes_to_the_copy_that_arrived(pair: Pair) -> None:
    # The first copy was given up (not-delivered, the hospital down); the EPJ sent the same
    # MsgId again, which arrived. The AppRec went to the oldest copy still waiting, the one that
    # never arrived: the delivered copy stayed transport-acknowledged (a false apprec-missing).
    note = dialog_note(pair.gp_site, pair.hospital_site, "Notat")
    pair.network.down.add(pair.hospital_site.endpoint)
    first = submit(pair.gp, note, actor="epj")
    pair.run()
    for _ in range(8):
        pair.clock.advance(seconds=700)
        pair.run()
    assert pair.message(pair.gp, first).status == "not-delivered"
    pair.network.down.clear()
    second = submit(pair.gp, note, actor="epj")
    pair.run()
    assert pair.message(pair.gp, second).status == "transport-acknowledged"
    copy = received(pair)
    receipts.deliver(pair.hospital, copy.id, actor="epj")
    receipts.send_apprec(pair.hospital, copy.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, second).status == "apprec-ok"
    assert pair.message(pair.gp, first).status == "not-delivered"
    pair.clock.advance(hours=25)
    pair.run()
    assert open_alerts(pair.gp, "apprec-missing") == []


def test_an_apprec_never_goes_to_a_copy_that_was_never_sent(pair: Pair) -> None:
    # An older copy given up before any attempt beside a newer one that was sent: the
    # receiver can only have answered the one it has.
    note = dialog_note(pair.gp_site, pair.hospital_site, "Notat")
    pending = submit(pair.gp, note, actor="epj")
    with pair.gp.store.unit_of_work() as uow:
        row = uow.messages.get(pending)
        assert row is not None
        row.status, row.attempts = "not-delivered", 0  # given up before any attempt
        uow.jobs.cancel_for_message(pending)
        uow.commit()
    pair.clock.advance(seconds=5)
    sent = submit(pair.gp, note, actor="epj")
    pair.run()
    copy = received(pair)
    receipts.deliver(pair.hospital, copy.id, actor="epj")
    receipts.send_apprec(pair.hospital, copy.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, sent).status == "apprec-ok"
    assert pair.message(pair.gp, pending).status == "not-delivered"


def test_an_apprec_goes_to_the_message_sent_from_the_her_id_it_answers(pair: Pair) -> None:
    # Two HER-ids of the GP's (its organisation, and a second one standing in for a service)
    # sent one MsgId; the AppRec to the second went to whichever was sent last.
    note = dialog_note(pair.gp_site, pair.hospital_site, "Notat")
    first = submit(pair.gp, note, actor="epj")
    pair.run()
    second = submit(pair.gp, note, actor="epj")
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        row = uow.messages.get(first)
        assert row is not None
        row.from_her_id = "8100009"  # as if sent from another HER-id of ours
        uow.commit()
    # the hospital answers the copy from 8100001 (both came from it, in fact)
    copies = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    receipts.deliver(pair.hospital, copies[1].id, actor="epj")
    receipts.send_apprec(pair.hospital, copies[1].id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, second).status == "apprec-ok"
    # not the older message, which is still waiting, but from another HER-id of ours
    assert pair.message(pair.gp, first).status == "transport-acknowledged"


def test_a_missing_apprec_raises_an_alert_after_the_deadline(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    pair.clock.advance(hours=23)
    pair.run()
    assert open_alerts(pair.gp, "apprec-missing") == []
    pair.clock.advance(hours=2)
    pair.run()
    [alert] = open_alerts(pair.gp, "apprec-missing")
    assert alert.message_id == message_id  # type: ignore[attr-defined]
    # a late AppRec still closes the loop and resolves the alert
    receipts.deliver(pair.hospital, received(pair).id, actor="epj")
    receipts.send_apprec(pair.hospital, received(pair).id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    assert open_alerts(pair.gp, "apprec-missing") == []


def _alias(pair: Pair, her_id: str) -> None:
    """Let the GP address ``her_id`` as if it were a hospital service (it is not)."""
    with pair.gp.store.unit_of_work() as uow:
        party = uow.parties.get("8200002")
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert party is not None and agreement is not None
        columns = {c.key: getattr(party, c.key) for c in party.__table__.columns}
        uow.parties.upsert(PartyRow(**{**columns, "her_id": her_id}))
        columns = {c.key: getattr(agreement, c.key) for c in agreement.__table__.columns}
        uow.agreements.add(AgreementRow(**{**columns, "id": None, "counterparty_her_id": her_id}))
        uow.commit()


def test_a_message_to_a_service_we_do_not_have_is_purged_and_answered_e21(pair: Pair) -> None:
    _alias(pair, "8200099")
    nowhere = dataclasses.replace(
        pair.hospital_site, address_her_id="8200099", service_name="Finnes ikke"
    )
    message_id = submit(pair.gp, dialog_note(pair.gp_site, nowhere, "feil tjeneste"), actor="t")
    pair.run()
    [row] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    assert row.status == "misaddressed-purged"
    assert row.payload_ref is None  # purged: the content is gone
    with pytest.raises(receipts.AppRecRefused):
        receipts.deliver(pair.hospital, row.id, actor="epj")  # never reaches the inbox
    assert pair.message(pair.hospital, row.id).status == "misaddressed-purged"
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "apprec-rejected" and sent.last_error_code == "E21"
    assert len(open_alerts(pair.hospital, "misaddressed-received")) == 1
    with pair.hospital.store.unit_of_work() as uow:
        details = " ".join(str(e.detail) for e in uow.events.for_message(row.id))
    assert "feil tjeneste" not in details  # no content in the log


def test_a_purge_deletes_the_wire_form_too_and_a_resend_still_gets_its_acknowledgment(
    pair: Pair,
) -> None:
    # The purge released the decrypted payload only; the wire form as received, encrypted to
    # our own key, stayed for good, and the purged content could be read with that key.
    from meldingstjener.transport.base import Delivery

    _alias(pair, "8200099")
    nowhere = dataclasses.replace(
        pair.hospital_site, address_her_id="8200099", service_name="Finnes ikke"
    )
    message_id = submit(pair.gp, dialog_note(pair.gp_site, nowhere, "feil tjeneste"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()  # sent; the hospital's verdict has not run
    [row] = pair.inbound_messages(pair.hospital)
    assert row.wire_ref is not None
    wire = pair.hospital.store.payloads.path(str(row.wire_ref))
    assert wire.is_file()
    pair.run()
    purged = pair.message(pair.hospital, row.id)
    assert purged.status == "misaddressed-purged"
    assert purged.payload_ref is None and purged.wire_ref is None
    assert not wire.is_file()
    # what non-repudiation needs stays: our Acknowledgment, repeated to the sender's resend
    sent = pair.message(pair.gp, message_id)
    pair.network.send(
        Delivery(
            pair.hospital_site.endpoint,
            str(sent.wire_content_type),
            pair.gp.store.payloads.path(str(sent.wire_ref)),
        )
    )
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        [ack] = [r for r in uow.receipts.for_message(message_id) if r.kind == "acknowledgment"]
        events = uow.events.for_message(message_id)
    # the same Acknowledgment again: the sender logs it as a repeat
    [repeat] = [e for e in events if e.code == "signal-repeated"]
    assert repeat.ebxml_message_id == ack.ebxml_message_id


def test_a_misaddressed_message_whose_apprec_cannot_be_sent_raises_apprec_unsent_only(
    pair: Pair,
) -> None:
    # The misaddressed alert says the sender got a negative AppRec; it was committed before
    # the AppRec was tried, and stood when the AppRec could not go (the GP's certificate gone).
    _alias(pair, "8200099")
    with pair.hospital.store.unit_of_work() as uow:
        party = uow.parties.get(pair.gp_site.organisation_her_id)
        assert party is not None
        party.encryption_certificate = None
        uow.commit()
    nowhere = dataclasses.replace(
        pair.hospital_site, address_her_id="8200099", service_name="Finnes ikke"
    )
    submit(pair.gp, dialog_note(pair.gp_site, nowhere, "feil tjeneste"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    assert row.status == "misaddressed-purged" and row.last_error_code == "certificate-problem"
    assert open_alerts(pair.hospital, "misaddressed-received") == []
    [unsent] = open_alerts(pair.hospital, "apprec-unsent")
    assert "E21" in unsent.summary  # type: ignore[attr-defined]


def test_a_clinicians_wrong_recipient_report_sends_a_dialog_avvik(pair: Pair) -> None:
    message_id, row = send_and_deliver(pair)
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    receipts.report_misaddressed(
        pair.hospital, row.id, actor="epj:dr.hansen", reason="Pasienten er ikke vår"
    )
    pair.run()
    after = pair.message(pair.hospital, row.id)
    assert after.status == "misaddressed-purged" and after.payload_ref is None
    [avvik] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "DIALOG_AVVIK"]
    assert avvik.status == "acknowledged"
    assert avvik.conversation_ref_to_parent == pair.message(pair.gp, message_id).msg_id
    assert len(open_alerts(pair.hospital, "misaddressed-received")) == 1


def test_a_purged_payload_a_crash_left_behind_is_deleted_by_its_job(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The purge deletes the file once the row has let go of it; killed just then, the
    # decrypted message stayed on disk for good: the daily sweep looks only at files written
    # since its last run, and the purge comes long after the file was written.
    _, row = send_and_deliver(pair)
    store = pair.hospital.store.payloads
    kept = store.path(str(row.payload_ref))
    wire = store.path(str(row.wire_ref))
    assert kept.is_file() and wire.is_file()
    monkeypatch.setattr(store, "delete", lambda key: False)  # the process died after the commit
    receipts.report_misaddressed(pair.hospital, row.id, actor="epj:test", reason="feil")
    monkeypatch.undo()
    pair.run()
    assert pair.message(pair.hospital, row.id).payload_ref is None
    assert kept.is_file()
    pair.clock.advance(minutes=11)
    pair.run()
    assert not kept.is_file() and not wire.is_file()


def test_auto_apprec_for_partners_configured_so(pair: Pair) -> None:
    with pair.hospital.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8200001", "8100001")
        assert agreement is not None
        agreement.auto_apprec = True
        agreement.apprec_version = "1.0"
        uow.commit()
    message_id, row = send_and_deliver(pair)
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    [apprec] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "APPREC"]
    assert apprec.msg_type_version is not None and "2004-11-21" in apprec.msg_type_version


def _auto_apprec(pair: Pair) -> None:
    with pair.hospital.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8200001", "8100001")
        assert agreement is not None
        agreement.auto_apprec, agreement.apprec_version = True, "1.0"
        uow.commit()


def test_an_automatic_apprec_that_cannot_be_sent_raises_apprec_unsent(pair: Pair) -> None:
    # The sender's certificate is no longer acceptable: the AppRec the agreement asks for is
    # refused. That was a line in the process log, and the message stayed delivered for ever.
    _auto_apprec(pair)
    _, row = send_and_deliver(pair)  # the automatic AppRec is owed from here
    with pair.hospital.store.unit_of_work() as uow:
        party = uow.parties.get(str(row.from_her_id))
        assert party is not None
        party.encryption_certificate = None
        uow.commit()
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "delivered"
    [alert] = open_alerts(pair.hospital, "apprec-unsent")
    assert alert.message_id == row.id and "certificate-problem" in alert.summary  # type: ignore[attr-defined]
    with pair.hospital.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(row.id)]
    assert "certificate-problem" in codes
    assert _jobs(pair.hospital, receipts.AUTO_APPREC) == []


def test_an_automatic_apprec_its_message_cannot_give_raises_apprec_unsent(pair: Pair) -> None:
    # A stored message whose head an AppRec cannot be built from (here: damaged on disk; also
    # one the lenient validator let through): the FormatError went to the worker's crash path,
    # retried as a failing job, with no apprec-unsent.
    _auto_apprec(pair)
    _, row = send_and_deliver(pair)
    assert row.payload_ref is not None
    pair.hospital.store.payloads.path(row.payload_ref).write_bytes(b"<MsgHead>Kari Nordmann")
    pair.run()
    [alert] = open_alerts(pair.hospital, "apprec-unsent")
    assert alert.message_id == row.id and "apprec-unbuildable" in alert.summary  # type: ignore[attr-defined]
    assert "Nordmann" not in alert.summary  # type: ignore[attr-defined]
    assert _jobs(pair.hospital, receipts.AUTO_APPREC) == []


def test_an_automatic_apprec_the_epj_answered_first_is_not_owed(pair: Pair) -> None:
    _auto_apprec(pair)
    message_id, row = send_and_deliver(pair)
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:test")
    pair.run()  # the automatic AppRec's job finds the message answered
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    assert open_alerts(pair.hospital, "apprec-unsent") == []
    assert _jobs(pair.hospital, receipts.AUTO_APPREC) == []


def test_the_server_rejects_format_errors_with_t02(pair: Pair) -> None:
    from meldingstjener.formats import Problem

    sound = inspect(dialog_note(pair.gp_site, pair.hospital_site, "x"))
    assert receipts.judge(pair.hospital, sound, "8200002") is None
    xsd_error = Problem("xsd", "xsd-invalid", "/MsgHead/MsgInfo/MsgId", "not valid", "error")
    faulty = dataclasses.replace(
        sound, report=dataclasses.replace(sound.report, problems=[xsd_error])
    )
    verdict = receipts.judge(pair.hospital, faulty, "8200002")
    assert verdict is not None
    assert verdict.errors[0][0] == "T02" and verdict.status.value == "rejected"
    assert not verdict.purge  # a format error is not a misaddressed message
    warning = dataclasses.replace(xsd_error, severity="warning")
    merely_warned = dataclasses.replace(
        sound, report=dataclasses.replace(sound.report, problems=[warning])
    )
    assert receipts.judge(pair.hospital, merely_warned, "8200002") is None


def test_the_server_rejects_a_content_version_it_does_not_support_with_t10(pair: Pair) -> None:
    # A Dialogmelding in a namespace we do not read, in a MsgHead we do: formats classes the
    # fault as UnsupportedVersion (8221 T10), and the server's own rejection said T02.
    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    supported = b"http://www.kith.no/xmlstds/dialog/2006-10-11"
    assert note.count(supported) == 1
    faulty = note.replace(supported, b"http://www.kith.no/xmlstds/dialog/2099-01-01")
    verdict = receipts.judge(pair.hospital, inspect(faulty), HOSPITAL_SERVICE_HER)
    assert verdict is not None and verdict.errors[0][0] == "T10"
    # sent by a sender that does not validate; its message keeps its MsgId, for the AppRec
    message_id = submit(pair.gp, faulty, actor="t", inspected=inspect(note))
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "apprec-rejected" and sent.last_error_code == "T10"


def test_transport_delivery_state_follows_the_status() -> None:
    assert receipts.transport_delivery_state("retrying") == "Unconfirmed"
    assert receipts.transport_delivery_state("not-delivered") == "Rejected"
    assert receipts.transport_delivery_state("apprec-rejected") == "Acknowledged"


def test_an_apprec_document_from_the_epj_marks_the_message_it_answers(pair: Pair) -> None:
    from meldingstjener.formats import AppRecStatus, build_apprec, read_msghead

    message_id, row = send_and_deliver(pair)
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(row.payload_ref)))
    document = build_apprec(original, status=AppRecStatus.OK, version="1.0")
    submit(pair.hospital, document, actor="folder")
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    assert pair.message(pair.gp, message_id).status == "apprec-ok"


def test_an_apprec_document_for_a_message_answered_already_is_refused(pair: Pair) -> None:
    # The EPJ's second AppRec, a rejection posted as a document after our Ok, went out while
    # the message stayed apprec-sent and the sender's GetStatus kept saying Ok.
    from meldingstjener.engine.errors import SubmitRejected
    from meldingstjener.formats import AppRecError, AppRecStatus, build_apprec, read_msghead

    message_id, row = send_and_deliver(pair)
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(row.payload_ref)))
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    document = build_apprec(
        original,
        status=AppRecStatus.REJECTED,
        errors=[AppRecError.of("E35", "Pasienten finnes ikke")],
        version="1.1",
    )
    with pytest.raises(SubmitRejected) as refused:
        submit(pair.hospital, document, actor="folder")
    assert refused.value.code == "already-answered"
    pair.run()
    assert [m.msg_type for m in pair.inbound_messages(pair.gp)] == ["APPREC"]  # only the Ok
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    [info] = receipts.apprec_info(pair.gp, message_id)
    assert info.app_rec_status == "Ok"


def test_an_apprec_document_marks_the_copy_sent_to_the_answering_her_id(pair: Pair) -> None:
    """One MsgHead sent twice, to our service and to our organisation: the EPJ's AppRec from
    the service marks the copy sent to the service, not the one that happened to come last."""
    from meldingstjener.formats import AppRecStatus, build_apprec, read_msghead

    _alias(pair, HOSPITAL_HER)  # the GP may address the hospital's organisation too
    document = dialog_note(pair.gp_site, pair.hospital_site, "Notat til to")
    submit(pair.gp, document, actor="t")  # To: the service
    submit(pair.gp, document, actor="t", to_her_id=HOSPITAL_HER)
    pair.run()
    copies = {m.to_her_id: m for m in pair.inbound_messages(pair.hospital)}
    to_service, to_organisation = copies[HOSPITAL_SERVICE_HER], copies[HOSPITAL_HER]
    assert to_service.msg_id == to_organisation.msg_id
    assert to_service.created_at <= to_organisation.created_at  # the service's copy is older
    for copy in (to_service, to_organisation):
        receipts.deliver(pair.hospital, copy.id, actor="epj:test")
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(to_service.payload_ref)))
    answer_id = submit(
        pair.hospital, build_apprec(original, status=AppRecStatus.OK, version="1.0"), actor="t"
    )
    assert pair.message(pair.hospital, answer_id).from_her_id == HOSPITAL_SERVICE_HER
    assert pair.message(pair.hospital, to_service.id).status == "apprec-sent"
    assert pair.message(pair.hospital, to_organisation.id).status == "delivered"


def _copy_to_the_hospital(pair: Pair) -> tuple[bytes, bytes]:
    """A note to another doctor (8300001) with the hospital's service as copy receiver, and the
    same note addressed to the hospital, which these tests submit to the hospital directly."""
    note = dialog_note(pair.gp_site, pair.hospital_site, "Kopi til sykehuset")
    return note_with_the_hospital_as_copy(pair, note), note


def test_a_copy_receiver_answers_its_copy_with_an_apprec(pair: Pair) -> None:
    # The AppRec came from the MsgHead's receiver, a HER-id that is not ours: outbound refused
    # it (inconsistent-addressing), and a copy receiver could never send one.
    from meldingstjener.formats import read_apprec

    payload, addressed = _copy_to_the_hospital(pair)
    message_id = submit(pair.gp, payload, actor="t", inspected=inspect(addressed))
    pair.run()
    row = received(pair)
    assert row.status != "rejected" and row.to_her_id == HOSPITAL_SERVICE_HER
    receipts.deliver(pair.hospital, row.id, actor="epj:test")
    answer_id = receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:test")
    answer = pair.message(pair.hospital, answer_id)
    assert answer.from_her_id == HOSPITAL_SERVICE_HER
    apprec = read_apprec(pair.hospital.store.payloads.read_bytes(str(answer.payload_ref)))
    assert (apprec.sender.her_ids.organisation, apprec.sender.her_ids.service) == (
        HOSPITAL_HER,
        HOSPITAL_SERVICE_HER,
    )
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    assert pair.message(pair.gp, message_id).status == "apprec-ok"


def test_a_copy_with_a_format_error_is_rejected_by_an_apprec_from_its_copy_receiver(
    pair: Pair,
) -> None:
    # the server's own T02 came from the MsgHead's receiver too: it could not be sent, and the
    # operator got an apprec-unsent alert instead
    payload, addressed = _copy_to_the_hospital(pair)
    ack = b'<Ack V="J" DN="Ja"/>'
    assert payload.count(ack) == 1
    message_id = submit(
        pair.gp, payload.replace(ack, ack + ack), actor="t", inspected=inspect(addressed)
    )
    pair.run()
    row = received(pair)
    assert pair.message(pair.hospital, row.id).status == "rejected"
    assert open_alerts(pair.hospital, "apprec-unsent") == []
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "apprec-rejected" and sent.last_error_code == "T02"


def test_a_copy_to_a_service_we_do_not_have_is_purged_and_answered_e21(pair: Pair) -> None:
    # A copy (OtherReceiver) to our organisation, naming a service of it we do not have: the
    # check that the receiver service is ours was skipped for copies, and it went to the EPJ
    # with no alert, where the same addressing as main receiver is purged and answered E21.
    _alias(pair, HOSPITAL_HER)  # the GP may address the hospital's organisation
    payload, addressed = _copy_to_the_hospital(pair)
    assert payload.count(HOSPITAL_SERVICE_HER.encode()) == 1
    payload = payload.replace(HOSPITAL_SERVICE_HER.encode(), b"8200099")
    message_id = submit(
        pair.gp, payload, actor="t", to_her_id=HOSPITAL_HER, inspected=inspect(addressed)
    )
    pair.run()
    row = received(pair)
    assert row.to_her_id == HOSPITAL_HER
    assert row.status == "misaddressed-purged" and row.payload_ref is None
    with pytest.raises(receipts.AppRecRefused):
        receipts.deliver(pair.hospital, row.id, actor="epj")  # never reaches the inbox
    [alert] = open_alerts(pair.hospital, "misaddressed-received")
    assert "8200099" in alert.summary  # type: ignore[attr-defined]
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "apprec-rejected" and sent.last_error_code == "E21"


def test_an_apprec_document_that_fits_several_copies_marks_none(tmp_path: Path) -> None:
    """The GP's EPJ submitted one MsgHead twice, both to the hospital's organisation; the AppRec
    comes from a third HER-id of ours (the service the MsgHead names). Nothing tells which copy
    it answers: it goes out, no copy is marked, and the answer's log says why."""
    from engine_pair import make_pair

    from meldingstjener.formats import AppRecStatus, build_apprec, read_msghead

    clinic = '[[identity.services]]\nher_id = "8200003"\nname = "Poliklinikk"\n'
    pair = make_pair(tmp_path, extra_config={HOSPITAL_HER: clinic})
    _alias(pair, HOSPITAL_HER)
    _alias(pair, "8200003")  # the GP knows the clinic from the register
    to_clinic = dataclasses.replace(
        pair.hospital_site, address_her_id="8200003", service_name="Poliklinikk"
    )
    document = dialog_note(pair.gp_site, to_clinic, "Sendt to ganger")
    for _ in range(2):
        submit(pair.gp, document, actor="t", to_her_id=HOSPITAL_HER)
    pair.run()
    copies = pair.inbound_messages(pair.hospital)
    assert [c.to_her_id for c in copies] == [HOSPITAL_HER, HOSPITAL_HER]
    assert copies[0].msg_id == copies[1].msg_id
    for copy in copies:
        receipts.deliver(pair.hospital, copy.id, actor="epj:test")
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(copies[0].payload_ref)))
    answer_id = submit(
        pair.hospital, build_apprec(original, status=AppRecStatus.OK, version="1.0"), actor="t"
    )
    assert pair.message(pair.hospital, answer_id).from_her_id == "8200003"
    assert [pair.message(pair.hospital, c.id).status for c in copies] == ["delivered"] * 2
    with pair.hospital.store.unit_of_work() as uow:
        notes = [e for e in uow.events.for_message(answer_id) if e.code == "apprec-ambiguous"]
    assert len(notes) == 1 and "received 2 times from 8100001" in str(notes[0].detail)
    pair.run()
    assert pair.message(pair.hospital, answer_id).status == "transport-acknowledged"


def test_an_apprec_document_for_a_message_not_marked_read_delivers_it_once(pair: Pair) -> None:
    """The EPJ answers before marking the message read: the answer delivers it, and marking it
    read afterwards sends no automatic AppRec on top of the EPJ's own."""
    from meldingstjener.formats import AppRecStatus, build_apprec, read_msghead

    with pair.hospital.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8200001", "8100001")
        assert agreement is not None
        agreement.auto_apprec, agreement.apprec_version = True, "1.0"
        uow.commit()
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Svar?"), actor="t")
    pair.run()
    row = received(pair)
    assert row.status == "acknowledged"
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(row.payload_ref)))
    submit(pair.hospital, build_apprec(original, status=AppRecStatus.OK, version="1.0"), actor="t")
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    receipts.deliver(pair.hospital, row.id, actor="epj:test")  # marked read afterwards
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    assert [m.msg_type for m in pair.inbound_messages(pair.gp)] == ["APPREC"]


def test_a_resend_after_our_apprec_gets_the_acknowledgment_again(pair: Pair) -> None:
    # The sender missed our Acknowledgment and resends after the EPJ has answered with an
    # AppRec: the transport signal is what it waits for, not the AppRec (a message of its own).
    message_id, row = send_and_deliver(pair)
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    wire = pair.message(pair.gp, message_id)
    from meldingstjener.transport.base import Delivery

    pair.network.send(
        Delivery(
            pair.hospital_site.endpoint,
            str(wire.wire_content_type),
            pair.gp.store.payloads.path(str(wire.wire_ref)),
        )
    )
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        [ack] = [r for r in uow.receipts.for_message(message_id) if r.kind == "acknowledgment"]
        events = uow.events.for_message(message_id)
    # the same Acknowledgment again: the sender logs it as a repeat
    [repeat] = [e for e in events if e.code == "signal-repeated"]
    assert repeat.ebxml_message_id == ack.ebxml_message_id
    with pair.hospital.store.unit_of_work() as uow:
        [duplicate] = [e for e in uow.events.for_message(row.id) if e.code == "duplicate"]
    assert "acknowledgment is sent again" in str(duplicate.detail)


def _send_as_a_careless_sender(pair: Pair, payload: bytes) -> str:
    """Send ``payload`` as a sender that does not validate would: the GP's own check is given
    the reading of a sound message, so the hospital is the first to look at this one."""
    sound = inspect(dialog_note(pair.gp_site, pair.hospital_site, "x"))
    return submit(pair.gp, payload, actor="t", inspected=sound)


def _jobs(ctx: object, kind: str) -> list[object]:
    from sqlalchemy import select

    from meldingstjener.store.tables import JobRow

    with ctx.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        return list(uow.session.scalars(select(JobRow).where(JobRow.kind == kind)))


def test_the_servers_own_rejection_is_stored_with_the_message(pair: Pair) -> None:
    # The verdict (here E21: a service we do not have) commits with the message. Until its
    # AppRec has gone the message is "received": in no inbox, and a crash leaves the job.
    from meldingstjener.engine.worker import Worker

    _alias(pair, "8200099")
    nowhere = dataclasses.replace(
        pair.hospital_site, address_her_id="8200099", service_name="Finnes ikke"
    )
    message_id = submit(pair.gp, dialog_note(pair.gp_site, nowhere, "feil tjeneste"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()  # the send; the hospital's workers have not run
    [row] = pair.inbound_messages(pair.hospital)
    assert row.status == "received"
    assert row.payload_ref is not None
    [verdict] = _jobs(pair.hospital, receipts.SERVER_VERDICT)
    assert verdict.message_id == row.id  # type: ignore[attr-defined]
    with pytest.raises(receipts.AppRecRefused):
        receipts.deliver(pair.hospital, row.id, actor="epj")  # not in the EPJ's inbox
    pair.run()  # the hospital's workers, as after a restart
    after = pair.message(pair.hospital, row.id)
    assert after.status == "misaddressed-purged" and after.payload_ref is None
    assert pair.message(pair.gp, message_id).status == "apprec-rejected"
    assert _jobs(pair.hospital, receipts.SERVER_VERDICT) == []


def test_a_rejection_whose_apprec_cannot_be_built_still_applies_and_alerts(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A format error (T02: the sender has no name), and an AppRec that cannot be built from the
    # message (a MsgHead our reader cannot read is refused with a MessageError before this; the
    # builder's own checks stand in for what else it may refuse). The message is rejected all
    # the same, the operator told.
    from meldingstjener.formats import MissingElement

    def unbuildable(*args: object, **kwargs: object) -> bytes:
        raise MissingElement("stand-in", path="/MsgHead/MsgInfo/GenDate")

    name = b"<OrganisationName>Fjordlegen legekontor</OrganisationName>"
    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    assert note.count(name) == 1
    message_id = _send_as_a_careless_sender(pair, note.replace(name, b""))
    monkeypatch.setattr(receipts, "build_apprec", unbuildable)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [row] = pair.inbound_messages(pair.hospital)
    assert row.status == "rejected" and row.last_error_code == "apprec-unbuildable"
    [alert] = open_alerts(pair.hospital, "apprec-unsent")
    assert "T02" in alert.summary and alert.message_id == row.id  # type: ignore[attr-defined]
    assert _jobs(pair.hospital, receipts.SERVER_VERDICT) == []


def test_a_rejection_for_a_bad_gen_date_gets_its_apprec(pair: Pair) -> None:
    # The GenDate went into the AppRec's OriginalMsgId/IssueDate, where our own validation
    # refused it: the sender never heard why its message was rejected.
    import re

    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    faulty = re.sub(rb"<GenDate>[^<]*</GenDate>", b"<GenDate>13.05.2025 11:51</GenDate>", note)
    # sent by a sender that does not validate; its message keeps its MsgId, for the AppRec
    message_id = submit(pair.gp, faulty, actor="t", inspected=inspect(note))
    pair.run()
    [row] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    assert row.status == "rejected" and row.last_error_code == "T02"
    assert open_alerts(pair.hospital, "apprec-unsent") == []
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "apprec-rejected" and sent.last_error_code == "T02"
    [info] = receipts.apprec_info(pair.gp, message_id)
    assert info.errors[0][0] == "T02"


def test_an_acknowledgment_from_another_party_than_the_receiver_is_ignored(pair: Pair) -> None:
    # 8200099 is a party the GP knows, with a valid signing certificate, but the message went
    # to 8200002: its Acknowledgment must not mark the message as received.
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.engine import inbound, signals
    from meldingstjener.formats.xmlparse import parse_xml

    _alias(pair, "8200099")
    pair.network.down.add(pair.gp_site.endpoint)  # the genuine Acknowledgment waits
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "sent"
    mime = unpackage(
        str(sent.wire_content_type), pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    )
    root = parse_xml(mime.envelope_xml)
    envelope = parse_envelope(root)
    header = envelope.header
    other = dataclasses.replace(header.to_party, her_id="8200099")
    spoofed = dataclasses.replace(envelope, header=dataclasses.replace(header, to_party=other))
    forged = signals.build_ack(pair.hospital, spoofed, root)  # From 8200099, validly signed
    inbound.receive(pair.gp, forged.content_type, forged.body)
    assert pair.message(pair.gp, message_id).status == "sent"
    with pair.gp.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(message_id)]
    assert "Inconsistent" in codes
    genuine = signals.build_ack(pair.hospital, envelope, root)  # From 8200002
    inbound.receive(pair.gp, genuine.content_type, genuine.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_an_untrusted_signal_alerts_until_a_trusted_one_from_its_sender(pair: Pair) -> None:
    # An Acknowledgment that names the hospital but is signed with another key (the GP's own,
    # standing in for a new certificate the register does not have yet, or a forgery) changes
    # nothing; that was an ERROR event only, while the message waited for its give-up.
    from meldingstjener.engine import inbound, signals

    pair.network.down.add(pair.gp_site.endpoint)  # the genuine Acknowledgment waits
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    envelope, root = _sent_envelope(pair, message_id)
    forged = signals.build_ack(pair.gp, envelope, root)  # type: ignore[arg-type]
    inbound.receive(pair.gp, forged.content_type, forged.body)
    assert pair.message(pair.gp, message_id).status == "sent"
    [alert] = open_alerts(pair.gp, "signal-untrusted")
    assert alert.partner_her_id == "8200002" and message_id in alert.summary  # type: ignore[attr-defined]
    assert alert.severity == "error"  # type: ignore[attr-defined]
    genuine = signals.build_ack(pair.hospital, envelope, root)  # type: ignore[arg-type]
    inbound.receive(pair.gp, genuine.content_type, genuine.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert open_alerts(pair.gp, "signal-untrusted") == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_untrusted_signal_from_a_long_party_id_is_logged_without_an_alert(
    tmp_path: Path, database_url: str
) -> None:
    # A PartyId of 200 characters (any sender may name one) went into the event's actor
    # (128 characters): PostgreSQL refused the row, and the signal was an error of the server.
    from engine_pair import make_pair

    from meldingstjener.ebxml import build_acknowledgment, new_message_id, signature_references
    from meldingstjener.ebxml.values import Party
    from meldingstjener.engine import inbound, signals

    pair = make_pair(tmp_path, gp_database_url=database_url)
    try:
        pair.network.down.add(pair.gp_site.endpoint)
        message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
        pair.run()
        envelope, root = _sent_envelope(pair, message_id)
        ack = build_acknowledgment(
            envelope,  # type: ignore[arg-type]
            references=signature_references(root),  # type: ignore[arg-type]
            message_id=new_message_id("hospital.example"),
            timestamp=pair.clock(),
            our_party=Party("urn:example:" + "x" * 188, "Behandler", ""),  # not of type HER
        )
        forged = signals._finish(pair.hospital, ack, "forged")
        inbound.receive(pair.gp, forged.content_type, forged.body)
        assert pair.message(pair.gp, message_id).status == "sent"
        # not the party the message went to: logged, no alert (any PartyId a forger likes would
        # open one that no trusted signal ever closes)
        assert open_alerts(pair.gp, "signal-untrusted") == []
        with pair.gp.store.unit_of_work() as uow:
            [ignored] = [e for e in uow.events.for_message(message_id) if e.kind == "error"]
        assert ignored.code == "SecurityFailure" and ignored.actor == "http:no-her-id"
    finally:
        pair.gp.store.database.dispose()
        pair.hospital.store.database.dispose()


def _sent_envelope(pair: Pair, message_id: str) -> tuple[object, object]:
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.formats.xmlparse import parse_xml

    sent = pair.message(pair.gp, message_id)
    mime = unpackage(
        str(sent.wire_content_type), pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    )
    root = parse_xml(mime.envelope_xml)
    return parse_envelope(root), root


def test_a_message_error_with_warnings_only_does_not_fail_the_message(pair: Pair) -> None:
    # Warnings say the partner processed the message and only remarks on it: no transport
    # error, no alert, and the Acknowledgment still counts afterwards. (Signals other than
    # Acknowledgment and MessageError are refused by the envelope parser as NotSupported.)
    from meldingstjener.ebxml import ErrorCode, ErrorDetail, OriginalIds, Severity
    from meldingstjener.engine import inbound, signals

    pair.network.down.add(pair.gp_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    envelope, root = _sent_envelope(pair, message_id)
    header = envelope.header  # type: ignore[attr-defined]
    remark = ErrorDetail(ErrorCode.UNKNOWN, Severity.WARNING, None, "a remark only")
    warning = signals.build_error(pair.hospital, OriginalIds.of(header), [remark], "8200002")
    inbound.receive(pair.gp, warning.content_type, warning.body)
    assert pair.message(pair.gp, message_id).status == "sent"
    assert open_alerts(pair.gp, "message-error-received") == []
    with pair.gp.store.unit_of_work() as uow:
        [noted] = [e for e in uow.events.for_message(message_id) if e.code == "Unknown"]
    assert "warnings only" in str(noted.detail)
    genuine = signals.build_ack(pair.hospital, envelope, root)  # type: ignore[arg-type]
    inbound.receive(pair.gp, genuine.content_type, genuine.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def _message_error_from_the_hospital(pair: Pair, envelope: object) -> None:
    from meldingstjener.ebxml import ErrorCode, ErrorDetail, OriginalIds, Severity
    from meldingstjener.engine import inbound, signals

    error = ErrorDetail(ErrorCode.DELIVERY_FAILURE, Severity.ERROR, None, "mottak feilet")
    header = envelope.header  # type: ignore[attr-defined]
    wire = signals.build_error(pair.hospital, OriginalIds.of(header), [error], "8200002")
    inbound.receive(pair.gp, wire.content_type, wire.body)


def _log(pair: Pair, message_id: str) -> list[tuple[str, str | None, str | None]]:
    with pair.gp.store.unit_of_work() as uow:
        return [(e.kind, e.to_status, e.detail) for e in uow.events.for_message(message_id)]


def test_an_acknowledgment_after_a_message_error_shows_the_message_delivered(
    pair: Pair,
) -> None:
    # The receiver's Acknowledgment (overtaken in the mail by a MessageError, or the error
    # came from another MSH) proves it has the message: the help desk must see that before
    # anyone resends it. The MessageError's alert stays for follow-up. The AppRec counts too.
    from meldingstjener.engine import inbound, signals

    pair.network.down.add(pair.gp_site.endpoint)  # the hospital's own signals do not arrive
    message_id, row = send_and_deliver(pair)
    envelope, root = _sent_envelope(pair, message_id)
    _message_error_from_the_hospital(pair, envelope)
    assert pair.message(pair.gp, message_id).status == "transport-error"
    ack = signals.build_ack(pair.hospital, envelope, root)  # type: ignore[arg-type]
    inbound.receive(pair.gp, ack.content_type, ack.body)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    # found by what it is, not by place: events of the same moment are ordered by id, but a
    # step that writes the wall clock's time would sort after the engines' standing clock
    [detail] = [d for k, to, d in _log(pair, message_id) if to == "transport-acknowledged"]
    assert "after a MessageError" in str(detail) and "before resending" in str(detail)
    assert len(open_alerts(pair.gp, "message-error-received")) == 1
    pair.network.down.clear()
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:test")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"


def test_a_message_error_after_the_acknowledgment_does_not_ask_for_a_resend(
    pair: Pair,
) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    envelope, _ = _sent_envelope(pair, message_id)
    _message_error_from_the_hospital(pair, envelope)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [detail] = [d for k, _, d in _log(pair, message_id) if k == "error"]
    assert "after the message was transport-acknowledged" in str(detail)
    [alert] = open_alerts(pair.gp, "message-error-received")
    summary = str(alert.summary)  # type: ignore[attr-defined]
    assert "check with the receiver" in summary and "sends the document again" not in summary


def test_a_message_error_s_alert_has_the_epj_send_it_again_not_resend(pair: Pair) -> None:
    # `meldingstjener resend` refuses a message ended by a MessageError (not-resendable): the
    # alert must not send the operator there
    from meldingstjener.engine.resend import Operator, ResendRefused, resend

    pair.network.down.add(pair.gp_site.endpoint)  # the hospital's own signals do not arrive
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    envelope, _ = _sent_envelope(pair, message_id)
    _message_error_from_the_hospital(pair, envelope)
    assert pair.message(pair.gp, message_id).status == "transport-error"
    [alert] = open_alerts(pair.gp, "message-error-received")
    summary = str(alert.summary)  # type: ignore[attr-defined]
    assert "the EPJ (the sender) sends the document again" in summary
    assert "resend does not send a message the receiver's MSH refused" in summary
    assert "and resend" not in summary
    with pytest.raises(ResendRefused) as refused:
        resend(pair.gp, message_id, operator=Operator("cli"))
    assert refused.value.code == "not-resendable"


def test_a_second_message_error_keeps_the_advice_to_send_it_again(pair: Pair) -> None:
    pair.network.down.add(pair.gp_site.endpoint)  # the hospital's own signals do not arrive
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    envelope, _ = _sent_envelope(pair, message_id)
    _message_error_from_the_hospital(pair, envelope)
    _message_error_from_the_hospital(pair, envelope)
    assert pair.message(pair.gp, message_id).status == "transport-error"
    [alert] = open_alerts(pair.gp, "message-error-received")
    summary = str(alert.summary)  # type: ignore[attr-defined]
    assert "the EPJ (the sender) sends the document again" in summary
    assert "and resend" not in summary


def test_a_purge_whose_commit_fails_keeps_the_content(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file goes only once the row has let go of it: deleting it first, a failed commit (or
    # a crash) left a message whose content was gone while its row still pointed at it.
    from meldingstjener.store.uow import UnitOfWork

    _, row = send_and_deliver(pair)
    real_commit = UnitOfWork.commit

    def database_gone_at_the_purge(self: UnitOfWork) -> None:
        if self._after_commit:  # the unit of work that purges
            raise RuntimeError("the database went away")
        real_commit(self)

    monkeypatch.setattr(UnitOfWork, "commit", database_gone_at_the_purge)
    with pytest.raises(RuntimeError):
        receipts.report_misaddressed(pair.hospital, row.id, actor="epj:test", reason="feil")
    monkeypatch.undo()
    kept = pair.message(pair.hospital, row.id)
    assert kept.payload_ref == row.payload_ref and kept.status == "delivered"
    assert pair.hospital.store.payloads.exists(str(row.payload_ref))
    receipts.report_misaddressed(pair.hospital, row.id, actor="epj:test", reason="feil")
    assert not pair.hospital.store.payloads.exists(str(row.payload_ref))  # gone after commit


def test_the_automatic_apprec_is_owed_from_the_delivery_commit(pair: Pair) -> None:
    # Sent after the delivery had committed, a crash in between lost it with nothing to show:
    # now the delivery stores it as a job, and any worker (after a restart too) sends it.
    from sqlalchemy import select

    from meldingstjener.store.tables import JobRow

    with pair.hospital.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8200001", "8100001")
        assert agreement is not None
        agreement.auto_apprec, agreement.apprec_version = True, "1.0"
        uow.commit()
    message_id, row = send_and_deliver(pair)  # delivered; no worker has run since
    with pair.hospital.store.unit_of_work() as uow:
        owed = list(uow.session.scalars(select(JobRow.kind).where(JobRow.message_id == row.id)))
        sent = [m for m in uow.messages.search(LogFilter(direction="out"))]
    assert owed == ["auto-apprec"] and sent == []
    pair.run()
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    assert pair.message(pair.gp, message_id).status == "apprec-ok"


def test_a_signal_is_verified_before_the_store_is_locked(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Verifying may wait seconds for a CRL: on SQLite, where a unit of work holds the store's
    # one write lock, every other writer of the process would wait too.
    from meldingstjener.engine import signals

    lock = pair.gp.store.database.write_lock
    assert lock is not None  # the pair runs on SQLite
    held_while_verifying: list[bool] = []
    original = signals.verify_sender

    def watched(*args: object, **kwargs: object) -> object:
        held_while_verifying.append(lock.locked())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(signals, "verify_sender", watched)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert held_while_verifying == [False]


def test_two_answers_at_once_one_is_refused_and_nothing_of_it_stored(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An EPJ's AppRec is slow, the EPJ times out and retries: the retry passes the unlocked
    # check while the first is still building its AppRec. Under the lock, the second to get
    # there is refused (it raised IllegalTransition, an HTTP 500) and nothing of it is stored.
    _, row = send_and_deliver(pair)
    real_build = receipts.build_apprec
    retried: list[str] = []

    overtaken = False

    def the_retry_overtakes(*args: object, **kwargs: object) -> bytes:
        nonlocal overtaken
        if not overtaken:
            overtaken = True
            retried.append(
                receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:retry")
            )
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(receipts, "build_apprec", the_retry_overtakes)
    files_before = _payload_files(pair)
    with pytest.raises(receipts.AppRecRefused) as refused:
        receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj:first")
    assert refused.value.code == "already-answered"
    assert pair.message(pair.hospital, row.id).status == "apprec-sent"
    with pair.hospital.store.unit_of_work() as uow:
        answers = uow.messages.search(LogFilter(direction="out", limit=100))
    assert [m.id for m in answers] == retried  # one AppRec, the retry's
    [kept] = answers
    assert _payload_files(pair) - files_before == {str(kept.payload_ref), str(kept.wire_ref)}


def _payload_files(pair: Pair) -> set[str]:
    root = pair.hospital.store.payloads.root
    return {p.name for p in root.rglob("*") if p.is_file()}


def test_a_misaddressed_report_whose_answer_cannot_be_sent_raises_no_alert(
    pair: Pair,
) -> None:
    # The alert says the content was purged and the sender told: when the answer cannot be
    # sent (here the sender's certificate is gone), neither happened, and no alert may say so.
    _, row = send_and_deliver(pair)
    with pair.hospital.store.unit_of_work() as uow:
        party = uow.parties.get(str(row.from_her_id))
        assert party is not None
        party.encryption_certificate = None
        uow.commit()
    with pytest.raises(receipts.AppRecRefused) as refused:
        receipts.report_misaddressed(pair.hospital, row.id, actor="epj:test", reason="feil")
    assert refused.value.code == "certificate-problem"
    assert open_alerts(pair.hospital, "misaddressed-received") == []
    kept = pair.message(pair.hospital, row.id)
    assert kept.status == "delivered" and kept.payload_ref == row.payload_ref


def test_a_message_error_also_ends_the_wait_for_an_acknowledgment(pair: Pair) -> None:
    # The ack-timeout waits for either signal: a MessageError shows that the partner's signals
    # reach us, so the ack-missing alert of that partner is resolved (its own alert follows).
    pair.network.down.add(pair.gp_site.endpoint)  # the hospital's Acknowledgment waits
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.clock.advance(minutes=11)  # past RetryInterval: resent, and alerted
    pair.run()
    assert len(open_alerts(pair.gp, "ack-missing")) == 1
    envelope, _ = _sent_envelope(pair, message_id)
    _message_error_from_the_hospital(pair, envelope)
    assert open_alerts(pair.gp, "ack-missing") == []
    assert len(open_alerts(pair.gp, "message-error-received")) == 1


def test_another_partys_message_error_leaves_the_wait_for_an_acknowledgment(pair: Pair) -> None:
    # Party 8200099 (trusted, registered at the receiver's endpoint, but not the receiver)
    # answers our message with a MessageError: it counts for the message, but tells nothing
    # of whether the receiver's own signals reach us.
    from meldingstjener.ebxml import ErrorCode, ErrorDetail, OriginalIds, Severity
    from meldingstjener.engine import inbound, signals

    _alias(pair, "8200099")
    pair.network.down.add(pair.gp_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.clock.advance(minutes=11)
    pair.run()
    assert len(open_alerts(pair.gp, "ack-missing")) == 1
    envelope, _ = _sent_envelope(pair, message_id)
    error = ErrorDetail(ErrorCode.DELIVERY_FAILURE, Severity.ERROR, None, "ikke vår")
    original = OriginalIds.of(envelope.header)  # type: ignore[attr-defined]
    wire = signals.build_error(pair.hospital, original, [error], "8200099")
    inbound.receive(pair.gp, wire.content_type, wire.body)
    assert len(open_alerts(pair.gp, "ack-missing")) == 1


def _registered_at(pair: Pair, her_id: str, endpoint: str | None) -> None:
    """A party the GP knows (the hospital's key stands in for its own, so its signature
    verifies), agreed at ``endpoint``; with no agreement at all for None."""
    _alias(pair, her_id)
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", her_id)
        assert agreement is not None
        if endpoint is None:
            uow.session.delete(agreement)
        else:
            agreement.endpoint = endpoint
        uow.commit()


def _sent_with_its_acknowledgment_held(pair: Pair) -> tuple[str, object]:
    """A message to the hospital's service, sent, whose Acknowledgment does not arrive."""
    pair.network.down.add(pair.gp_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "sent"
    envelope, _ = _sent_envelope(pair, message_id)
    return message_id, envelope


def _message_error_from(pair: Pair, envelope: object, her_id: str) -> None:
    """A MessageError about the message, From ``her_id``, signed with the hospital's key."""
    from meldingstjener.ebxml import ErrorCode, ErrorDetail, OriginalIds, Severity
    from meldingstjener.engine import inbound, signals

    error = ErrorDetail(ErrorCode.DELIVERY_FAILURE, Severity.ERROR, None, "ikke levert")
    original = OriginalIds.of(envelope.header)  # type: ignore[attr-defined]
    wire = signals.build_error(pair.hospital, original, [error], her_id)
    inbound.receive(pair.gp, wire.content_type, wire.body)


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9/ebms", None], ids=["elsewhere", "no-agreement"]
)
def test_a_message_error_from_a_party_not_at_the_receivers_endpoint_is_ignored(
    pair_with_gp_database: Pair, endpoint: str | None
) -> None:
    # A registered party that learnt one of our MessageIds (they travel in clear: a mail's
    # Subject) signed a MessageError about our message to the hospital: that ended the message
    # (transport-error, no more resends, the EPJ told that it was not delivered).
    pair = pair_with_gp_database
    _registered_at(pair, "8200099", endpoint)
    message_id, envelope = _sent_with_its_acknowledgment_held(pair)
    _message_error_from(pair, envelope, "8200099")
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "sent" and sent.last_error_code is None
    assert [job.message_id for job in _jobs(pair.gp, "ack-timeout")] == [message_id]  # type: ignore[attr-defined]
    with pair.gp.store.unit_of_work() as uow:
        [ignored] = [e for e in uow.events.for_message(message_id) if e.kind == "error"]
        kinds = [r.kind for r in uow.receipts.for_message(message_id)]
    assert ignored.code == "Inconsistent" and "MessageError from 8200099 ignored" in str(
        ignored.detail
    )
    assert "message-error" not in kinds
    # on a forger's say-so: no alert (nor one of an untrusted signal: it is trusted)
    assert open_alerts(pair.gp, "message-error-received") == []
    assert open_alerts(pair.gp, "signal-untrusted") == []
    # the message keeps its retries: resent after RetryInterval
    pair.clock.advance(minutes=11)
    pair.run()
    resent = pair.message(pair.gp, message_id)
    assert resent.status == "sent" and resent.attempts == 2


@pytest.mark.parametrize("sender", ["8200002", "8200001"], ids=["to", "organisation"])
def test_a_message_error_from_the_receiver_fails_the_message(
    pair_with_gp_database: Pair, sender: str
) -> None:
    # its To (the hospital's service) or the receiver's organisation (the MsgHead's): as before
    pair = pair_with_gp_database
    message_id, envelope = _sent_with_its_acknowledgment_held(pair)
    _message_error_from(pair, envelope, sender)
    failed = pair.message(pair.gp, message_id)
    assert failed.status == "transport-error" and failed.last_error_code == "DeliveryFailure"
    assert _jobs(pair.gp, "ack-timeout") == []
    [alert] = open_alerts(pair.gp, "message-error-received")
    assert alert.partner_her_id == sender  # type: ignore[attr-defined]


@pytest.mark.parametrize("written", ["as-is", "other-case"])
def test_a_message_error_from_a_party_at_the_receivers_endpoint_fails_the_message(
    pair_with_gp_database: Pair, written: str
) -> None:
    # The MSH at the endpoint the message went to may answer that the To is not one of its
    # HER-ids, From another HER-id it serves there. A URL's scheme and host have no case.
    pair = pair_with_gp_database
    endpoint = pair.hospital_site.endpoint
    if written == "other-case":
        endpoint = endpoint.replace("http://", "HTTP://")
    _registered_at(pair, "8200099", endpoint)
    message_id, envelope = _sent_with_its_acknowledgment_held(pair)
    _message_error_from(pair, envelope, "8200099")
    failed = pair.message(pair.gp, message_id)
    assert failed.status == "transport-error" and failed.last_error_code == "DeliveryFailure"
    assert _jobs(pair.gp, "ack-timeout") == []
    [alert] = open_alerts(pair.gp, "message-error-received")
    assert alert.partner_her_id == "8200099"  # type: ignore[attr-defined]


@pytest.mark.parametrize("sender_at", ["where-it-went", "where-the-to-is-now"])
def test_a_message_error_counts_from_where_the_message_went_after_the_receiver_moved(
    pair_with_gp_database: Pair, sender_at: str
) -> None:
    # The hospital moves its endpoint after our message was delivered to the old one: the MSH
    # there may still answer that the To is not one of its HER-ids. Judged by the To's endpoint
    # now, its genuine MessageError was ignored and the message resent until it gave up.
    pair = pair_with_gp_database
    went_to = pair.hospital_site.endpoint
    moved_to = "http://127.0.0.1:9/ebms"
    _registered_at(pair, "8200099", went_to if sender_at == "where-it-went" else moved_to)
    message_id, envelope = _sent_with_its_acknowledgment_held(pair)
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.endpoint = moved_to
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        kept = uow.messages.get(message_id)
        assert kept is not None and (kept.channel, kept.sent_endpoint) == ("http", went_to)
    _message_error_from(pair, envelope, "8200099")
    failed = pair.message(pair.gp, message_id)
    assert failed.status == "transport-error" and failed.last_error_code == "DeliveryFailure"
    assert _jobs(pair.gp, "ack-timeout") == []


@pytest.mark.parametrize(
    ("edi_address", "applied"),
    [("8200002@EDI.example", True), ("8200099@edi.example", False)],
    ids=["at-the-mailbox", "elsewhere"],
)
def test_a_message_error_by_mail_counts_from_a_party_at_the_mailbox_it_went_to(
    pair_with_gp_database: Pair, edi_address: str, applied: bool
) -> None:
    # By mail the endpoint is the receiver's EDI address: a party the register has at that
    # address (with no agreement of its own) answers for the MSH there; one elsewhere not.
    from engine_pair import Loopback

    pair = pair_with_gp_database
    mailbox = "mailto:8200002@edi.example"
    mail = Loopback(engines={mailbox: pair.hospital}, channel="smtp")
    pair.gp.transports["smtp"] = mail
    _registered_at(pair, "8200099", None)
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        party = uow.parties.get("8200099")
        assert agreement is not None and party is not None
        agreement.channel, agreement.endpoint = "smtp", mailbox
        party.edi_address = edi_address
        uow.commit()
    message_id, envelope = _sent_with_its_acknowledgment_held(pair)
    assert [sent.endpoint for sent in mail.sent] == [mailbox]
    _message_error_from(pair, envelope, "8200099")
    status = pair.message(pair.gp, message_id).status
    assert status == ("transport-error" if applied else "sent")


def test_mail_endpoints_are_the_same_however_written() -> None:
    from meldingstjener.engine.signals import _endpoint_key

    bare = _endpoint_key("smtp", "8200001@testedi.nhn.no")
    assert bare is not None
    assert _endpoint_key("smtp", " mailto:8200001@TestEDI.nhn.no ") == bare
    assert _endpoint_key("smtp", "mailto:8200003@testedi.nhn.no") != bare
    assert _endpoint_key("http", "8200001@testedi.nhn.no") != bare  # another channel
    assert _endpoint_key("smtp", "not an address") is None
    assert _endpoint_key("smtp", "") is None and _endpoint_key("http", None) is None


def test_urls_are_the_same_however_written() -> None:
    from meldingstjener.engine.signals import _endpoint_key

    plain = _endpoint_key("http", "https://msh.sykehus.no/ebms")
    assert plain is not None
    for same in (
        "HTTPS://MSH.Sykehus.no/ebms",
        "https://msh.sykehus.no:443/ebms",
        "https://msh.sykehus.no/ebms/",
    ):
        assert _endpoint_key("http", same) == plain, same
    for other in (
        "https://msh.sykehus.no:8443/ebms",
        "http://msh.sykehus.no/ebms",
        "https://msh.sykehus.no/EBMS",  # a path is the server's to compare
        "https://other.sykehus.no/ebms",
    ):
        assert _endpoint_key("http", other) != plain, other
    assert _endpoint_key("http", "http://h:80/") == _endpoint_key("http", "http://h")


def test_a_validation_layer_failing_by_our_fault_is_no_t02_but_an_alert(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug of ours in a validation layer was that layer's internal-error finding, which the
    # server's own verdict answered with a T02 AppRec: the sender told its valid message was
    # invalid, and nothing logged or alerted.
    from meldingstjener.formats import validation

    def broken(*args: object) -> None:
        text = "-".join(("a", "text", "that", "may", "quote", "the", "message"))
        raise ValueError(text)

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    monkeypatch.setattr(validation, "_dialog_structure", broken)  # at the hospital's reading
    with caplog.at_level("ERROR", logger=validation.__name__):
        pair.run()
    logged = [r.getMessage() for r in caplog.records if r.name == validation.__name__]
    assert logged and "builtins.ValueError, raised through:" in logged[0]
    assert "a-text-that-may-quote-the-message" not in logged[0]
    row = received(pair)
    assert row.status == "acknowledged"  # the EPJ has it, and answers it
    with pair.hospital.store.unit_of_work() as uow:
        notes = [
            e.detail or "" for e in uow.events.for_message(row.id) if e.code == "internal-error"
        ]
    assert notes and "no AppRec" in notes[0] and "AppRec follows" not in notes[0]
    [alert] = open_alerts(pair.hospital, "validation-failed")
    assert alert.message_id == row.id  # type: ignore[attr-defined]
    assert [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "APPREC"] == []
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    receipts.deliver(pair.hospital, row.id, actor="epj")
    receipts.send_apprec(pair.hospital, row.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"


def test_a_question_sent_without_ack_requested_and_answered_in_its_conversation_is_not_alerted(
    pair: Pair,
) -> None:
    """A message sent without AckRequested waits for its AppRec from the send on; a reply in its
    ebXML conversation (NAV answers an EgenandelForesporsel with a Svar, no AppRec) is an
    answer: the deadline passes without an alert. Without the reply, it has one."""
    answered, unanswered = _questions_without_ack_requested(pair, "Spørsmål", "Et annet spørsmål")
    _reply(pair, answered)
    pair.clock.advance(hours=25)
    pair.run()
    alerted = [a.message_id for a in open_alerts(pair.gp, "apprec-missing")]  # type: ignore[attr-defined]
    assert alerted == [unanswered]


def test_a_reply_after_the_deadline_resolves_the_apprec_missing_of_the_question_it_answers(
    pair: Pair,
) -> None:
    """The hospital's Svar comes a day late (25 h): the question's apprec-missing is resolved
    when the Svar is stored, with a note on the question saying which message answered it; the
    other question's stays open. It stayed open for good, as only an AppRec resolved it."""
    answered, unanswered = _questions_without_ack_requested(pair, "Spørsmål", "Et annet spørsmål")
    pair.clock.advance(hours=25)
    pair.run()
    alerted = {a.message_id for a in open_alerts(pair.gp, "apprec-missing")}  # type: ignore[attr-defined]
    assert alerted == {answered, unanswered}
    _reply(pair, answered)
    alerted = {a.message_id for a in open_alerts(pair.gp, "apprec-missing")}  # type: ignore[attr-defined]
    assert alerted == {unanswered}
    [svar] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type != "APPREC"]
    with pair.gp.store.unit_of_work() as uow:
        [note] = [e for e in uow.events.for_message(answered) if e.code == "replied"]
    assert svar.id in str(note.detail) and "after the AppRec deadline" in str(note.detail)
    assert pair.message(pair.gp, answered).status == "sent"


def test_a_message_without_ack_requested_is_stored_and_not_acknowledged(pair: Pair) -> None:
    """review (interop 5): ebMS 2.0 sends an Acknowledgment only for a message with
    eb:AckRequested; one was stored and sent for every message, and again for its resend."""
    from meldingstjener.engine import inbound

    [question] = _questions_without_ack_requested(pair, "Spørsmål")
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"  # stored, and the EPJ's to take
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.receipts.for_message(received.id) == []
        assert uow.jobs.count() == 0
        [stored] = [e for e in uow.events.for_message(received.id) if e.actor == "msh"]
    assert "no Acknowledgment, none was asked for" in str(stored.detail)
    pair.run()
    assert pair.message(pair.gp, question).status == "sent"
    sent = pair.message(pair.gp, question)
    wire = pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    reply = inbound.receive(pair.hospital, str(sent.wire_content_type), wire)  # a resend
    assert reply.body is None
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.receipts.for_message(received.id) == []
        assert uow.jobs.count() == 0


def _without_ack_requested(pair: Pair, content_type: str, wire: bytes) -> bytes:
    """The GP's message ``wire`` as its sender would send it without eb:AckRequested: the
    block removed and the envelope signed again with the GP's key."""
    from lxml import etree

    from meldingstjener.ebxml import unpackage
    from meldingstjener.formats.xmlparse import parse_xml
    from meldingstjener.security.xmldsig import sign_ebxml_envelope

    mime = unpackage(content_type, wire)
    root = parse_xml(mime.envelope_xml)
    header = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Header")
    for block in list(header):
        if etree.QName(block).localname in ("AckRequested", "Signature"):
            header.remove(block)
    attachments = {cid: part.data for cid, part in mime.attachments.items()}
    sign_ebxml_envelope(
        root, attachments, pair.gp.keys.signing_key, pair.gp.keys.signing_certificate
    )
    return wire.replace(mime.envelope_xml, etree.tostring(root))


def test_a_resend_without_ack_requested_gets_no_acknowledgment_again(pair: Pair) -> None:
    """A resend of an acknowledged message, signed again by its sender without AckRequested,
    is not answered with our Acknowledgment (its first receipt asked for one)."""
    from meldingstjener.engine import inbound

    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.network.down.clear()
    sent = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    content_type = str(sent.wire_content_type)
    inbound.receive(pair.hospital, content_type, wire)  # AckRequested: acknowledged
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    unasked = _without_ack_requested(pair, content_type, wire)
    assert inbound.receive(pair.hospital, content_type, unasked).body is None
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0
        [received] = [m for m in uow.messages.search(LogFilter()) if m.direction == "in"]
        [repeat] = [e for e in uow.events.for_message(received.id) if e.code == "duplicate"]
    assert "no Acknowledgment sent again, this one asks for none" in str(repeat.detail)
    inbound.receive(pair.hospital, content_type, wire)  # it asks again: sent again
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.jobs.count() == 1


def test_a_resend_asking_for_an_acknowledgment_gets_one_when_the_first_copy_asked_none(
    pair: Pair,
) -> None:
    """A message whose first copy came without AckRequested (so no Acknowledgment was built),
    resent with it: the resend gets our Acknowledgment, built and stored now; the message is
    not processed again. Only a stored signal was repeated, and none existed."""
    from meldingstjener.engine import inbound

    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.network.down.clear()
    sent = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    content_type = str(sent.wire_content_type)
    unasked = _without_ack_requested(pair, content_type, wire)
    assert inbound.receive(pair.hospital, content_type, unasked).body is None  # the first copy
    with pair.hospital.store.unit_of_work() as uow:
        [received] = [m for m in uow.messages.search(LogFilter()) if m.direction == "in"]
        assert uow.receipts.for_message(received.id) == [] and uow.jobs.count() == 0
    inbound.receive(pair.hospital, content_type, wire)  # the resend asks: acknowledged now
    with pair.hospital.store.unit_of_work() as uow:
        assert [m.id for m in uow.messages.search(LogFilter()) if m.direction == "in"] == [
            received.id
        ]
        [ack] = uow.receipts.for_message(received.id)
        assert (ack.kind, ack.direction) == ("acknowledgment", "out") and ack.wire_ref
        assert uow.jobs.count() == 1
        [repeat] = [e for e in uow.events.for_message(received.id) if e.code == "duplicate"]
    assert "our Acknowledgment queued" in str(repeat.detail)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    inbound.receive(pair.hospital, content_type, wire)  # again: the one stored is repeated
    with pair.hospital.store.unit_of_work() as uow:
        assert len(uow.receipts.for_message(received.id)) == 1


def _questions_without_ack_requested(pair: Pair, *texts: str) -> list[str]:
    """The GP's agreement binds DIALOG_FORESPORSEL to a channel without AckRequested; one
    question per text is sent, and the hospital (as NAV's gateway) sends no Acknowledgment."""
    with pair.gp.store.unit_of_work() as uow:
        row = uow.agreements.for_pair(
            pair.gp_site.address_her_id, pair.hospital_site.address_her_id
        )
        assert row is not None
        agreement = agreement_from_row(row)
        channel = ChannelTerms(None, "http", pair.hospital_site.endpoint, ack_requested="never")
        question = AgreedMessage("DIALOG_FORESPORSEL", "S-DIALOG_FORESPORSEL", (), channel=channel)
        only = {"DIALOG_FORESPORSEL": ("1.0",)}  # the question's binding, no other type
        bound = dataclasses.replace(
            agreement, bindings=(question,), any_message_type=False, message_types=only
        )
        save_agreement(uow, bound)
        uow.commit()
    questions = [
        submit(pair.gp, dialog_question(pair.gp_site, pair.hospital_site, text), actor="t")
        for text in texts
    ]
    Worker(pair.gp, "gp").run_until_idle()
    with pair.hospital.store.unit_of_work() as uow:  # as NAV's gateway: no Acknowledgment
        uow.session.execute(delete(JobRow).where(JobRow.kind == "send-signal"))
        uow.commit()
    assert {pair.message(pair.gp, m).status for m in questions} == {"sent"}
    return questions


def _reply(pair: Pair, question: str) -> None:
    """The hospital answers the GP's ``question`` with a DIALOG_SVAR in its conversation."""
    asked = pair.message(pair.gp, question).msg_id
    [arrived] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_id == asked]
    document = read_msghead(pair.hospital.store.payloads.read_bytes(str(arrived.payload_ref)))
    submit(pair.hospital, build_dialog_svar(document, answer_text="Svar"), actor="t")
    pair.run()


def test_an_apprec_or_a_refused_message_in_the_conversation_is_no_reply() -> None:
    """An AppRec answers the message it names (the AppRec path); a message refused never
    reached the EPJ: neither tells that the question sent without AckRequested was answered."""
    from datetime import UTC, datetime, timedelta

    from meldingstjener.store.tables import MessageRow

    at = datetime(2026, 12, 5, 8, tzinfo=UTC)
    sent = MessageRow(
        direction="out", ebxml_conversation_id="c1", to_her_id="8200002", created_at=at
    )

    def received(**columns: object) -> MessageRow:
        values: dict[str, object] = {
            "direction": "in",
            "ebxml_conversation_id": "c1",
            "from_her_id": "8200002",
            "created_at": at + timedelta(hours=1),
            "msg_type": "DIALOG_SVAR",
            "status": "acknowledged",
            **columns,
        }
        return MessageRow(**values)

    assert receipts._is_reply(sent, received())
    assert not receipts._is_reply(sent, received(msg_type="APPREC"))
    assert not receipts._is_reply(sent, received(status="rejected"))
    assert not receipts._is_reply(sent, received(from_her_id="8200003"))


def test_a_reply_the_server_rejects_leaves_apprec_missing_open(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Svar a day late that the GP's server rejects (its T02 verdict: the EPJ never has it)
    answers nothing: the question's apprec-missing stays open, with no 'replied' note."""
    from meldingstjener.model import InboundStatus

    [question] = _questions_without_ack_requested(pair, "Spørsmål")
    pair.clock.advance(hours=25)
    pair.run()
    judged = receipts.judge

    def judge(ctx: object, message: object, to: object) -> object:  # the GP's reading only
        if getattr(message, "msg_type", None) == "DIALOG_SVAR":
            return receipts.ServerVerdict(
                InboundStatus.REJECTED, [("T02", "x: xsd-invalid")], purge=False, alert=False
            )
        return judged(ctx, message, to)  # type: ignore[arg-type]

    monkeypatch.setattr(receipts, "judge", judge)
    _reply(pair, question)
    [svar] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "DIALOG_SVAR"]
    assert svar.status == "rejected"
    alerted = [a.message_id for a in open_alerts(pair.gp, "apprec-missing")]  # type: ignore[attr-defined]
    assert alerted == [question]
    with pair.gp.store.unit_of_work() as uow:
        assert [e for e in uow.events.for_message(question) if e.code == "replied"] == []
