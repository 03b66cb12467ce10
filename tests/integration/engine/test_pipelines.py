"""Outbound and inbound pipelines end to end between two engines, path by path."""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from engine_pair import (
    Pair,
    answer_with_error,
    at_once,
    make_pair,
    refusals_not_stored,
    sent_header,
)
from sqlalchemy import select

from meldingstjener.devsites import dialog_note, dialog_question
from meldingstjener.ebxml import ErrorDetail
from meldingstjener.engine import failing_jobs, payload_io
from meldingstjener.engine.context import EngineContext, HeldReplies
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import HANDLERS, Worker, offer_held_replies
from meldingstjener.store.tables import JobRow, ReceiptRow


def events(pair: Pair, ctx: object, message_id: str) -> list[tuple[str | None, str | None]]:
    with ctx.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        return [(e.to_status, e.code) for e in uow.events.for_message(message_id)]


def job_kinds(uow: object) -> list[str]:
    from sqlalchemy import select

    from meldingstjener.store.tables import JobRow

    return sorted(uow.session.scalars(select(JobRow.kind)))  # type: ignore[attr-defined]


def alerts(ctx: object) -> list[tuple[str, int]]:
    with ctx.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        return [(a.kind, a.count) for a in uow.alerts.list(open_only=True)]


def test_delivery_with_acknowledgment(pair: Pair) -> None:
    payload = dialog_question(pair.gp_site, pair.hospital_site, "Har pasienten fått svar?")
    message_id = submit(pair.gp, payload, actor="test")
    assert pair.message(pair.gp, message_id).status == "accepted"
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "transport-acknowledged"
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"
    assert received.ebxml_message_id == sent.ebxml_message_id
    assert (received.from_her_id, received.to_her_id) == ("8100001", "8200002")
    assert (received.receiver_org_her_id, received.receiver_service_her_id) == (
        "8200001",
        "8200002",
    )
    assert received.msg_type == "DIALOG_FORESPORSEL" and received.patient_present is False
    assert pair.hospital.store.payloads.read_bytes(str(received.payload_ref)) == payload
    with pair.gp.store.unit_of_work() as uow:
        [receipt] = uow.receipts.for_message(message_id)
        assert (
            receipt.kind == "acknowledgment" and receipt.ref_to_message_id == sent.ebxml_message_id
        )
        # the ack-timeout was cancelled; what is left is the wait for the AppRec
        assert job_kinds(uow) == ["apprec-deadline"]
    assert alerts(pair.gp) == []


def test_sync_reply_returns_the_acknowledgment_in_the_response(tmp_path: Path) -> None:
    pair = make_pair(tmp_path, sync_reply=True)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    Worker = __import__("meldingstjener.engine.worker", fromlist=["Worker"]).Worker
    Worker(pair.gp, "gp").run_until_idle()  # only the sender works: the Ack came in the response
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0  # nothing queued on the receiver


def test_wrong_receiver_her_id_gets_a_message_error(pair: Pair) -> None:
    # The hospital's certificates and endpoint, but a HER-id the hospital does not serve.
    with pair.gp.store.unit_of_work() as uow:
        party = uow.parties.get("8200002")
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert party is not None and agreement is not None
        from meldingstjener.store.tables import AgreementRow, PartyRow

        uow.parties.upsert(PartyRow(**{**_columns(party), "her_id": "8299999"}))
        uow.agreements.add(
            AgreementRow(**{**_columns(agreement), "id": None, "counterparty_her_id": "8299999"})
        )
        uow.commit()
    other = dataclasses.replace(
        pair.hospital_site, organisation_her_id="8290000", address_her_id="8299999"
    )
    message_id = submit(pair.gp, dialog_note(pair.gp_site, other, "feil mottaker"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-error"
    assert row.last_error_code == "ValueNotRecognized"
    assert ("message-error-received", 1) in alerts(pair.gp)
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.payload_ref is None


def _columns(row: object) -> dict[str, object]:
    table = row.__table__  # type: ignore[attr-defined]
    return {column.key: getattr(row, column.key) for column in table.columns}


def flip_last_payload_byte(body: bytes) -> bytes:
    if b"pkcs7-mime" not in body:
        return body  # leave the signals alone
    # The encrypted payload is the last part of the binary MIME body.
    end = body.rindex(b"\r\n--")
    return body[: end - 1] + bytes([body[end - 1] ^ 0x01]) + body[end:]


def resend(pair: Pair, message_id: str) -> None:
    """The stored wire form of a sent message, sent again as it is."""
    from meldingstjener.transport.base import Delivery

    row = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.path(str(row.wire_ref))
    pair.network.send(Delivery(pair.hospital_site.endpoint, str(row.wire_content_type), wire))
    pair.run()


def receipt_kinds(ctx: object, message_id: str) -> list[str]:
    with ctx.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        return [r.kind for r in uow.receipts.for_message(message_id)]


def test_tampered_payload_is_a_security_failure(pair: Pair) -> None:
    pair.network.tamper = flip_last_payload_byte
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-error" and row.last_error_code == "SecurityFailure"
    # not verified: answered in the response, not stored (its MessageId is anybody's to write)
    assert pair.inbound_messages(pair.hospital) == []
    [refused] = refusals_not_stored(pair.hospital, row.ebxml_message_id)
    assert refused.code == "SecurityFailure"


def test_a_replay_not_signed_by_the_sender_does_not_get_our_acknowledgment(pair: Pair) -> None:
    # A known MessageId with a payload that no longer matches the sender's signature: not a
    # resend of that message, so our signed Acknowledgment of it is not given out again.
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert receipt_kinds(pair.gp, message_id) == ["acknowledgment"]
    pair.network.tamper = flip_last_payload_byte
    resend(pair, message_id)
    assert receipt_kinds(pair.gp, message_id) == ["acknowledgment"]  # nothing came back
    assert "signal-repeated" not in [code for _, code in events(pair, pair.gp, message_id)]
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"
    codes = [code for _, code in events(pair, pair.hospital, received.id)]
    assert "SecurityFailure" in codes and "duplicate" not in codes
    assert receipt_kinds(pair.hospital, received.id) == ["acknowledgment"]
    pair.network.tamper = None
    resend(pair, message_id)  # the sender's own resend still gets it (logged as a repeat)
    assert receipt_kinds(pair.gp, message_id) == ["acknowledgment"]
    assert [code for _, code in events(pair, pair.gp, message_id)].count("signal-repeated") == 1


def test_a_tampered_copy_that_loses_the_race_does_not_get_our_acknowledgment(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The altered copy passed the duplicate check before the genuine one was stored (they came
    # at once) and was refused: it must not get the genuine message's Acknowledgment, nor be
    # stored against its MessageId (its signature did not verify).
    from meldingstjener.store.uow import MessageRepository

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    looked_up = MessageRepository.by_ebxml_id
    lookups: list[str] = []

    def before_the_genuine_was_stored(self: MessageRepository, *args: object) -> object:
        lookups.append("")
        return None if len(lookups) == 1 else looked_up(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(MessageRepository, "by_ebxml_id", before_the_genuine_was_stored)
    pair.network.tamper = flip_last_payload_byte
    resend(pair, message_id)
    assert lookups  # the copy was taken for a message not seen before
    assert "acknowledgment" not in receipt_kinds(pair.gp, message_id)[1:]
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"
    codes = [code for _, code in events(pair, pair.hospital, received.id)]
    assert "duplicate" not in codes
    [refused] = refusals_not_stored(pair.hospital, received.ebxml_message_id)
    assert refused.code == "SecurityFailure"


def test_a_resend_of_a_refused_message_gets_the_message_error_again(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # refused after its signature verified (the business message names another sender); one
    # whose signature did not verify is not stored (test_refusals)
    seal = payload_io.seal

    def other_sender(ctx: EngineContext, payload: object, *rest: object, **kw: object) -> object:
        assert isinstance(payload, bytes)
        spoofed = payload.replace(b"<Id>8100001</Id>", b"<Id>8100009</Id>")
        return seal(ctx, spoofed, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(payload_io, "seal", other_sender)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    resend(pair, message_id)
    # the same MessageError again: the sender logs it as a repeat
    assert receipt_kinds(pair.gp, message_id) == ["message-error"]
    assert [code for _, code in events(pair, pair.gp, message_id)].count("signal-repeated") == 1
    [refused] = pair.inbound_messages(pair.hospital)
    assert [code for _, code in events(pair, pair.hospital, refused.id)].count("duplicate") == 1


def test_duplicate_resend_is_delivered_once_and_acknowledged_again(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.path(str(row.wire_ref))
    # The same bytes again, as a sender that missed our Acknowledgment would resend them.
    from meldingstjener.transport.base import Delivery

    pair.network.send(Delivery(pair.hospital_site.endpoint, str(row.wire_content_type), wire))
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(received.id)]
        outgoing = [r for r in uow.receipts.for_message(received.id) if r.direction == "out"]
    assert codes.count("duplicate") == 1
    assert len(outgoing) == 1  # the original Acknowledgment, sent twice
    with pair.gp.store.unit_of_work() as uow:
        [ack] = [r for r in uow.receipts.for_message(message_id) if r.kind == "acknowledgment"]
        # the same Acknowledgment again: the sender logs it as a repeat
        [repeat] = [e for e in uow.events.for_message(message_id) if e.code == "signal-repeated"]
        assert repeat.ebxml_message_id == ack.ebxml_message_id
        assert uow.messages.get(message_id).status == "transport-acknowledged"  # type: ignore[union-attr]


def test_receiver_down_then_retried_and_delivered(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "retrying" and row.attempts == 1
    assert ("partner-unreachable", 1) in alerts(pair.gp)
    pair.clock.advance(minutes=10)
    pair.run()
    assert pair.message(pair.gp, message_id).attempts == 2
    pair.network.down.clear()
    pair.clock.advance(minutes=10)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert len(pair.inbound_messages(pair.hospital)) == 1
    assert alerts(pair.gp) == []  # reaching the partner again resolved the alert


def test_receiver_down_beyond_persist_duration_is_not_delivered_with_an_alert(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    for _ in range(10):
        pair.run()
        pair.clock.advance(minutes=10)
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert row.attempts == 4  # the first send and three resends (Retries = 3)
    kinds = dict(alerts(pair.gp))
    assert kinds.get("not-delivered") == 1
    with pair.gp.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.list() if a.kind == "not-delivered"]
        assert "another way" in alert.summary and alert.message_id == message_id
        assert uow.jobs.count() == 0


def test_an_endpoint_the_http_library_cannot_use_ends_the_message_with_an_alert(
    pair: Pair,
) -> None:
    # An agreement endpoint with a broken port: the HTTP library raises an error of its own,
    # not a transport failure. Left to the worker it was retried every 30 s for ever, with the
    # message `accepted`, no attempt counted and no alert.
    from meldingstjener.transport.http import HttpTransport

    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.endpoint = "http://hospital.example:80a/ebms"
        uow.commit()
    pair.gp.transports = {"http": HttpTransport()}
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert "transport-error" in [code for _, code in events(pair, pair.gp, message_id)]
    assert ("not-delivered", 1) in alerts(pair.gp)
    with pair.gp.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0


def test_our_signal_that_cannot_be_delivered_alerts_and_the_alert_ends_when_it_goes(
    pair: Pair,
) -> None:
    from meldingstjener.engine import signals
    from meldingstjener.engine.worker import Worker

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.network.down.add(pair.gp_site.endpoint)  # our Acknowledgment cannot reach the GP
    Worker(pair.gp, "gp").run_until_idle()  # the GP sends; the hospital stores and queues
    hospital = Worker(pair.hospital, "hospital")
    for _ in range(signals.SIGNAL_ATTEMPTS):
        hospital.run_until_idle()
        pair.clock.advance(seconds=3600)
    [received] = pair.inbound_messages(pair.hospital)
    # raised once it had failed for ten minutes, counted at each failure after
    assert "signal-undelivered" in [kind for kind, _ in alerts(pair.hospital)]
    pair.network.down.clear()
    resend(pair, message_id)  # the GP resends; its duplicate gets our Acknowledgment again
    assert receipt_kinds(pair.gp, message_id) == ["acknowledgment"]
    assert [kind for kind, _ in alerts(pair.hospital)] == []
    assert received.status == "acknowledged"


def test_our_signal_refused_for_good_alerts_at_once(pair: Pair) -> None:
    # A failure no retry can mend (here an HTTP 4xx answer, as the HTTP transport reports
    # one) ends the signal's job at once, as a message's send does, instead of twelve tries
    # over an hour and a half before the alert.
    from meldingstjener.engine.worker import Worker
    from meldingstjener.transport.base import Delivery, TransportFailure, TransportResult

    class Refusing:
        channel = "http"

        def send(self, delivery: Delivery) -> TransportResult:
            raise TransportFailure("http-403", "HTTP 403 from the partner", retryable=False)

    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()  # the hospital stores it and owes its signal
    pair.hospital.transports = {"http": Refusing()}  # type: ignore[dict-item]
    Worker(pair.hospital, "hospital").run_until_idle()
    assert ("signal-undelivered", 1) in alerts(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        assert "send-signal" not in job_kinds(uow)


def _answered_with_error(pair: Pair, error: ErrorDetail) -> tuple[str, ReceiptRow]:
    """A message the GP sent, answered by the hospital with a MessageError holding ``error``;
    the message's id and the receipt the GP stored."""
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.network.down.add(pair.hospital_site.endpoint)
    pair.run()
    answer_with_error(pair, message_id, error)
    with pair.gp.store.unit_of_work() as uow:
        [receipt] = [r for r in uow.receipts.for_message(message_id) if r.direction == "in"]
    return message_id, receipt


def test_a_partners_message_error_text_is_stored_without_a_national_id(pair: Pair) -> None:
    # A MessageError's description is the partner's own text and may quote the content.
    from meldingstjener.ebxml import ErrorCode, Severity

    _, receipt = _answered_with_error(
        pair,
        ErrorDetail(
            ErrorCode.DELIVERY_FAILURE, Severity.ERROR, "cid", "pasient 01017012345 finnes ikke"
        ),
    )
    stored = str(receipt.description) + str(receipt.error_codes)
    assert receipt.kind == "message-error" and "finnes ikke" in stored
    assert "01017012345" not in stored and "[redacted-id]" in stored


def test_a_message_past_its_time_to_live_is_refused(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ebMS 2.0: a message whose TimeToLive has passed is not delivered (TimeToLiveExpired).
    from datetime import timedelta

    from meldingstjener.engine import outbound

    build = outbound.build_envelope

    def with_time_to_live(header: object, **rest: object) -> object:
        ttl = dataclasses.replace(header, time_to_live=pair.clock() + timedelta(minutes=1))  # type: ignore[type-var]
        return build(ttl, **rest)  # type: ignore[arg-type]

    monkeypatch.setattr(outbound, "build_envelope", with_time_to_live)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.network.down.clear()
    pair.clock.advance(seconds=90)  # the resend comes after the TimeToLive
    resend(pair, message_id)
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.last_error_code == "TimeToLiveExpired"
    assert refused.payload_ref is None  # not delivered, not even decrypted
    assert receipt_kinds(pair.gp, message_id) == ["message-error"]


def test_a_message_error_code_outside_the_ebms_set_is_kept_as_sent(pair: Pair) -> None:
    from meldingstjener.ebxml import ErrorCode, Severity

    message_id, receipt = _answered_with_error(
        pair,
        ErrorDetail(
            ErrorCode.UNKNOWN, Severity.ERROR, None, "lokal feil", reported_code="NHN:QueueFull"
        ),
    )
    assert pair.message(pair.gp, message_id).last_error_code == "NHN:QueueFull"
    assert receipt.error_codes is not None and receipt.error_codes[0]["code"] == "NHN:QueueFull"


def test_a_message_errors_texts_stay_in_its_receipt_and_the_alert_names_codes(
    pair: Pair,
) -> None:
    # The partner's description may quote the message; the alert's summary also goes out in
    # webhook bodies. Log and alert name the codes, the receipt keeps the words (masked).
    from meldingstjener.ebxml import ErrorCode, Severity

    quoting = "pasient Kari Nordmann 01017012345 finnes ikke"
    message_id, receipt = _answered_with_error(
        pair, ErrorDetail(ErrorCode.VALUE_NOT_RECOGNIZED, Severity.ERROR, "cid", quoting)
    )
    with pair.gp.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True, kind="message-error-received")
        details = [str(e.detail) for e in uow.events.for_message(message_id)]
    assert "MessageError ValueNotRecognized" in alert.summary
    assert "Kari" not in alert.summary and not [d for d in details if "Kari" in d]
    assert "Kari Nordmann" in str(receipt.description)
    assert "01017012345" not in str(receipt.description) + str(receipt.error_codes)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("reported", "shown"),
    [("Kari Nordmann mangler i registeret", "?"), ("NHN:" + "Q" * 80, "NHN:" + "Q" * 60)],
)
def test_a_message_error_code_that_is_no_code_is_shown_as_a_question_mark(
    tmp_path: Path, database_url: str, reported: str, shown: str
) -> None:
    # A partner's errorCode is any text it likes: one that is no code stays out of the log,
    # and none, however long, makes the 64-character code columns refuse the row.
    from meldingstjener.ebxml import ErrorCode, Severity

    pair = make_pair(tmp_path, gp_database_url=database_url)
    try:
        message_id, receipt = _answered_with_error(
            pair,
            ErrorDetail(ErrorCode.UNKNOWN, Severity.ERROR, None, "x", reported_code=reported),
        )
        assert pair.message(pair.gp, message_id).last_error_code == shown
        with pair.gp.store.unit_of_work() as uow:
            [alert] = uow.alerts.list(open_only=True, kind="message-error-received")
            codes = [e.code for e in uow.events.for_message(message_id)]
        assert f"MessageError {shown} " in alert.summary and shown in codes
        assert "Kari" not in alert.summary
        assert receipt.error_codes is not None and receipt.error_codes[0]["code"] == reported
    finally:
        pair.gp.store.database.dispose()
        pair.hospital.store.database.dispose()


def test_a_message_from_a_party_without_a_her_id_is_refused_and_logged(pair: Pair) -> None:
    # A PartyId of another type (here a long URN) is not a HER-id: the refusal is stored
    # without one, instead of putting the URN in a HER-id column (PostgreSQL refused that).
    from meldingstjener.ebxml import (
        Attachment,
        ManifestReference,
        envelope_bytes,
        package,
        parse_envelope,
    )
    from meldingstjener.ebxml import build_envelope as build
    from meldingstjener.ebxml.values import Party
    from meldingstjener.engine import inbound
    from meldingstjener.formats.xmlparse import parse_xml

    header = dataclasses.replace(
        sent_header(
            pair, submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
        ),  # type: ignore[type-var]
        from_party=Party("urn:example:legekontor:" + "x" * 100, "Behandler", ""),
        message_id="urn-sender-1@example.no",
    )
    envelope = envelope_bytes(
        build(header, manifest=[ManifestReference.for_content_id("p@x", "x")], sync_reply=True)
    )
    assert parse_envelope(parse_xml(envelope)).header.from_party.party_type == ""
    body, content_type = package(envelope, [Attachment("p@x", "application/pkcs7-mime", b"x")])
    reply = inbound.receive(pair.hospital, content_type, body)
    assert reply.body is not None and b"ValueNotRecognized" in reply.body
    # no PartyId of type HER (HIS 1037): not stored, logged without its PartyId
    assert pair.inbound_messages(pair.hospital) == []
    [refused] = refusals_not_stored(pair.hospital, "urn-sender-1@example.no")
    assert refused.actor.startswith("http:party-")


def test_missing_acknowledgment_resends_the_same_message_id(pair: Pair) -> None:
    # The hospital stores and acknowledges, but its Acknowledgment never reaches the GP.
    pair.network.down.add(pair.gp_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "sent"
    pair.network.down.clear()
    pair.clock.advance(minutes=11)  # past RetryInterval: resend
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert len(pair.inbound_messages(pair.hospital)) == 1  # delivered once
    sends = [d for d in pair.network.sent if d.endpoint == pair.hospital_site.endpoint]
    assert len(sends) == 2 and len({d.ebxml_message_id for d in sends}) == 1


def test_a_missing_acknowledgment_alerts_at_the_first_resend_until_one_arrives(
    pair: Pair,
) -> None:
    # Each send gets its 2xx, but the hospital's Acknowledgments never reach the GP: that was
    # silent until the message was given up, up to PersistDuration later. A send that works
    # must not resolve the alert (it did work); the partner's Acknowledgment does.
    pair.network.down.add(pair.gp_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert alerts(pair.gp) == []  # nothing is late yet
    pair.clock.advance(minutes=11)  # past RetryInterval: the first resend
    pair.run()
    assert pair.message(pair.gp, message_id).status == "sent"
    assert alerts(pair.gp) == [("ack-missing", 1)]
    with pair.gp.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
        assert alert.partner_her_id == "8200002" and message_id in alert.summary
    pair.network.down.clear()
    pair.clock.advance(minutes=11)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert alerts(pair.gp) == []


def test_signal_for_an_unknown_message_is_logged(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        from sqlalchemy import delete

        from meldingstjener.store.tables import EventRow, MessageRow, ReceiptRow

        for table in (EventRow, ReceiptRow, MessageRow):
            uow.session.execute(delete(table))
        uow.commit()
    # Send the hospital's Acknowledgment again: the GP no longer knows the message.
    [received] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        [ack] = [r for r in uow.receipts.for_message(received.id) if r.direction == "out"]
    from meldingstjener.transport.base import Delivery

    pair.network.send(
        Delivery(
            pair.gp_site.endpoint,
            str(ack.wire_content_type),
            pair.hospital.store.payloads.path(str(ack.wire_ref)),
        )
    )
    with pair.gp.store.unit_of_work() as uow:
        from meldingstjener.store.uow import LogFilter

        logged = [e for e, _ in uow.messages.log(LogFilter()) if e.message_id is None]
    assert len(logged) == 1 and "do not know" in str(logged[0].detail)
    assert logged[0].code == "acknowledgment"
    with pair.gp.store.unit_of_work() as uow:
        assert uow.messages.get(message_id) is None  # nothing was invented for it


def test_invalid_and_inconsistent_messages_are_refused_before_storing(pair: Pair) -> None:
    with pytest.raises(SubmitRejected) as invalid:
        submit(pair.gp, b"<MsgHead/>", actor="t")
    assert invalid.value.code == "invalid-message" and invalid.value.problems
    payload = dialog_note(pair.gp_site, pair.hospital_site, "x")
    with pytest.raises(SubmitRejected) as inconsistent:
        submit(pair.gp, payload, to_her_id="8100001", actor="t")
    assert inconsistent.value.code == "inconsistent-addressing"
    with pytest.raises(SubmitRejected) as not_ours:
        submit(pair.gp, dialog_note(pair.hospital_site, pair.gp_site, "x"), actor="t")
    assert not_ours.value.code == "inconsistent-addressing"
    with pair.gp.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0


def test_a_message_type_or_version_not_agreed_is_refused(pair: Pair) -> None:
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.message_types = [{"type": "DIALOG_NOTAT", "versions": ["1.1"]}]
        uow.commit()
    with pytest.raises(SubmitRejected) as version:
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    assert version.value.code in ("version-not-agreed", "no-common-version")
    with pytest.raises(SubmitRejected) as kind:
        submit(pair.gp, dialog_question(pair.gp_site, pair.hospital_site, "x"), actor="t")
    assert kind.value.code == "message-type-not-agreed"
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.message_types = [{"type": "DIALOG_NOTAT", "versions": ["1.0"]}]
        agreement.state = "suspended"
        uow.commit()
    with pytest.raises(SubmitRejected) as suspended:
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    assert suspended.value.code == "agreement-not-active"
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.state = "active"
        uow.commit()
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_35_mb_business_message_is_delivered_intact(pair: Pair) -> None:
    import hashlib
    import os

    from meldingstjener.formats import (
        Attachment,
        Coded,
        Dialogmelding,
        Notat,
        build_dialogmelding,
    )

    note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="Skannet journal")
    scan = os.urandom(26 * 1024 * 1024)  # 26 MB of attachment is ~35 MB once base64 in XML
    payload = build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Attachment(data=scan, mime_type="application/pdf"),),
    )
    assert 34 * 1024 * 1024 < len(payload) <= 35 * 1024 * 1024
    message_id = submit(pair.gp, payload, actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [received] = pair.inbound_messages(pair.hospital)
    assert received.payload_sha256 == hashlib.sha256(payload).hexdigest()


def test_a_revoked_sender_certificate_is_refused_with_its_reason(tmp_path: Path) -> None:
    from meldingstjener.security.devpki import revoke

    pki = tmp_path / "pki"
    pair = make_pair(tmp_path)
    # as of the engines' clock: it stands still while the wall clock goes on
    revoke(pki, pki / "8100001-sign.pem", when=pair.clock())
    # The hospital restarts and reads the new CRL.
    from meldingstjener.bootstrap import build_engine
    from meldingstjener.config import load_settings

    hospital = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    hospital.transports = {"http": pair.network}
    pair.network.engines[pair.hospital_site.endpoint] = hospital
    pair.hospital = hospital
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-error" and row.last_error_code == "SecurityFailure"
    [refused] = pair.inbound_messages(pair.hospital)
    assert "revoked" in str(refused.last_error_text)


def _claim(pair: Pair, worker: str) -> list[object]:
    from datetime import timedelta

    with pair.gp.store.unit_of_work() as uow:
        jobs = uow.jobs.claim_due(worker, now=pair.clock(), limit=10, lease=timedelta(seconds=120))
        uow.commit()
    return jobs  # type: ignore[return-value]


def test_a_claimed_job_is_not_started_once_its_lease_has_run_low(pair: Pair) -> None:
    # Jobs of a batch run one after another; after a slow one the rest may have little lease
    # left, and another worker may claim them when it runs out. Such a job is not started but
    # given back: due again at once, for any worker, without a try counted.
    from datetime import timedelta

    from sqlalchemy import select

    from meldingstjener.engine.worker import Worker
    from meldingstjener.store.tables import JobRow

    ids = [
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, f"n{n}"), actor="t")
        for n in range(2)
    ]
    slow = Worker(pair.gp, "gp-slow", lease=timedelta(seconds=120))
    jobs = _claim(pair, "gp-slow")
    assert len(jobs) == 2
    pair.clock.advance(seconds=61)  # as if a send before them had taken a minute
    slow._run_jobs(jobs)  # type: ignore[arg-type]
    assert pair.network.sent == []
    with pair.gp.store.unit_of_work() as uow:
        rows = list(uow.session.scalars(select(JobRow)))
        assert [(row.claimed_by, row.attempts) for row in rows] == [(None, 0)] * 2
    pair.run()  # within the lease the slow worker had: claimed by another at once
    assert [pair.message(pair.gp, i).status for i in ids] == ["transport-acknowledged"] * 2
    assert len(pair.network.sent) == 4  # each message once, each Acknowledgment once


def test_the_wait_for_the_acknowledgment_counts_from_the_end_of_a_long_send(pair: Pair) -> None:
    # An upload that takes longer than RetryInterval must not leave the ack-timeout due at
    # once: that would resend at once, and use up one of the agreement's retries.
    from meldingstjener.engine import transmit
    from meldingstjener.store.tables import JobRow
    from meldingstjener.transport.base import Delivery, TransportResult

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    [job] = _claim(pair, "gp-slow")

    class SlowLink:
        def send(self, delivery: Delivery) -> TransportResult:
            pair.clock.advance(minutes=30)  # a large upload over a slow link
            return TransportResult()

    pair.gp.transports = {"http": SlowLink()}  # type: ignore[dict-item]
    transmit.transmit_job(pair.gp, job)  # type: ignore[arg-type]
    with pair.gp.store.unit_of_work() as uow:
        partner = pair.gp.directory.partner(uow, pair.hospital_site.address_her_id)
        [row] = [r for r in uow.session.query(JobRow) if r.message_id == message_id]
    assert row.kind == "ack-timeout"
    assert row.due_at == pair.clock() + partner.retry_interval


def test_an_overtaken_send_that_fails_leaves_the_sent_message_alone(pair: Pair) -> None:
    # A run of the transmit job outlives its lease; meanwhile another worker sends the message
    # (its job row becomes the ack-timeout). The late run's send then fails: the message stays
    # sent and keeps its ack-timeout, so a lost Acknowledgment still leads to a resend.
    from meldingstjener.engine import transmit
    from meldingstjener.engine.worker import Worker
    from meldingstjener.transport.base import Delivery, TransportFailure, TransportResult

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    [late] = _claim(pair, "gp-late")
    pair.clock.advance(seconds=121)
    pair.network.down.add(pair.gp_site.endpoint)  # the Acknowledgment will be lost

    class Overtaken:
        def send(self, delivery: Delivery) -> TransportResult:
            pair.gp.transports = {"http": pair.network}
            Worker(pair.gp, "gp-other").run_until_idle()  # claims the job and gets through
            raise TransportFailure("timeout", "no answer in 60 s")

    pair.gp.transports = {"http": Overtaken()}  # type: ignore[dict-item]
    transmit.transmit_job(pair.gp, late)  # type: ignore[arg-type]
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "sent"
    assert sent.attempts == 1  # the other worker's; the overtaken one uses up no Retry
    with pair.gp.store.unit_of_work() as uow:
        assert job_kinds(uow) == ["ack-timeout"]
    pair.run()  # the hospital's Acknowledgment does not get through
    pair.network.down.clear()
    pair.clock.advance(minutes=11)  # past RetryInterval: resent, answered by the duplicate check
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_late_run_of_a_job_whose_message_was_sent_does_nothing(pair: Pair) -> None:
    # The same, with the other worker done before the late run begins: nothing is sent again
    # and the ack-timeout, which now has the job's id, stays.
    from meldingstjener.engine import transmit
    from meldingstjener.engine.worker import Worker

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    [late] = _claim(pair, "gp-late")
    pair.clock.advance(seconds=121)
    pair.network.down.add(pair.gp_site.endpoint)
    Worker(pair.gp, "gp-other").run_until_idle()
    assert pair.message(pair.gp, message_id).status == "sent"
    sends = len(pair.network.sent)
    assert transmit.transmit_job(pair.gp, late) is None  # type: ignore[arg-type]
    assert len(pair.network.sent) == sends
    with pair.gp.store.unit_of_work() as uow:
        assert job_kinds(uow) == ["ack-timeout"]


def test_a_resend_overtaken_by_a_late_send_is_dropped(pair: Pair) -> None:
    # A run outlives its lease; another worker sends, the Acknowledgment is lost and the
    # ack-timeout schedules a resend. Then the late run gets through: the message is sent
    # again, with an ack-timeout of its own. The resend job, finding it sent, goes (it stayed,
    # claimed again every lease, when a sent message's job was taken for its ack-timeout).
    from meldingstjener.engine import transmit
    from meldingstjener.engine.worker import Worker

    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    [late] = _claim(pair, "gp-late")
    pair.clock.advance(seconds=121)
    pair.network.down.add(pair.gp_site.endpoint)  # the Acknowledgments are lost
    Worker(pair.gp, "gp-other").run_until_idle()
    pair.clock.advance(seconds=601)
    with pair.gp.store.unit_of_work() as uow:
        [timeout] = uow.jobs.claim_due(
            "gp-w", now=pair.clock(), limit=1, lease=timedelta(seconds=120)
        )
        uow.commit()
    transmit.ack_timeout_job(pair.gp, timeout)
    assert pair.message(pair.gp, message_id).status == "retrying"
    transmit.transmit_job(pair.gp, late)  # type: ignore[arg-type]
    assert pair.message(pair.gp, message_id).status == "sent"
    with pair.gp.store.unit_of_work() as uow:
        assert sorted(job_kinds(uow)) == ["ack-timeout", "transmit"]
    Worker(pair.gp, "gp-w2").run_once()  # the resend, due now
    with pair.gp.store.unit_of_work() as uow:
        assert job_kinds(uow) == ["ack-timeout"]
    assert pair.message(pair.gp, message_id).status == "sent"


def test_a_resend_that_waited_past_persist_duration_is_not_sent(pair: Pair) -> None:
    # The receiver remembers a MessageId for PersistDuration (3600 s here) to drop duplicates;
    # a resend after that could be delivered twice. One that waited so long (the sending server
    # was down) gives up instead, with the not-delivered alert.
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    pair.clock.advance(hours=2)
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered" and row.attempts == 1
    assert pair.inbound_messages(pair.hospital) == []
    assert ("not-delivered", 1) in alerts(pair.gp)


def test_a_first_send_claimed_before_is_a_resend_once_persist_duration_has_run_out(
    pair: Pair,
) -> None:
    # A worker claimed the first send and died; whether the partner took the message before,
    # nobody knows. After PersistDuration the partner no longer knows the MessageId, so it is
    # not sent again. A first send that only waited (never claimed) has never been seen: it goes.
    from datetime import timedelta

    claimed = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "a"), actor="t")
    with pair.gp.store.unit_of_work() as uow:
        [died_with] = uow.jobs.claim_due(
            "a-worker-that-died", now=pair.clock(), limit=5, lease=timedelta(seconds=60)
        )
        uow.commit()
    assert died_with.message_id == claimed
    waited = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "b"), actor="t")
    pair.clock.advance(hours=2)
    pair.run()
    assert pair.message(pair.gp, claimed).status == "not-delivered"
    assert pair.message(pair.gp, waited).status == "transport-acknowledged"
    [received] = pair.inbound_messages(pair.hospital)
    assert received.ebxml_message_id == pair.message(pair.gp, waited).ebxml_message_id


@pytest.mark.parametrize("lost", ["the sends", "the acknowledgments"])
def test_no_attempt_is_made_at_or_after_persist_duration(tmp_path: Path, lost: str) -> None:
    # Retries would allow more, but the attempt after the third would fall on PersistDuration
    # itself (30 min with a 10-minute interval): the third is the last. The same when every
    # send arrives and every Acknowledgment is lost: the resend due at 20 minutes goes (the
    # ack-timeout used to refuse it, as if it were the attempt after it).
    pair = make_pair(
        tmp_path, retry_interval_seconds=600, retries=10, persist_duration_seconds=1800
    )
    down = pair.hospital_site if lost == "the sends" else pair.gp_site
    pair.network.down.add(down.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    for _ in range(6):
        pair.run()
        pair.clock.advance(minutes=10)
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered" and row.attempts == 3
    # the resends that arrived were duplicates of the first
    assert len(pair.inbound_messages(pair.hospital)) == (0 if lost == "the sends" else 1)
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def test_a_sync_reply_that_fails_to_process_leaves_the_ack_timeout_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The send is recorded before its synchronous reply is read; if reading it fails in an
    # unforeseen way (here: the store goes away), the job is the ack-timeout by then and keeps
    # its due time, one RetryInterval later, instead of being treated as a failed send.
    from datetime import timedelta

    from sqlalchemy import select

    from meldingstjener.engine import worker as worker_module
    from meldingstjener.store.tables import JobRow

    pair = make_pair(tmp_path, sync_reply=True, retry_interval_seconds=600)

    def store_gone(*_: object, **__: object) -> None:
        raise RuntimeError("the database went away")

    # only the worker's reading of the reply fails; the hospital receives as usual
    from types import SimpleNamespace

    from meldingstjener.engine import inbound

    reader = SimpleNamespace(receive=store_gone, InboundRefused=inbound.InboundRefused)
    monkeypatch.setattr(worker_module, "inbound", reader)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    started = pair.clock()
    worker_module.Worker(pair.gp, "gp").run_until_idle()
    assert pair.message(pair.gp, message_id).status == "sent"
    with pair.gp.store.unit_of_work() as uow:
        [job] = uow.session.scalars(select(JobRow))
        assert job.kind == "ack-timeout"
        assert job.due_at == started + timedelta(seconds=600)
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def _sync_reply_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, retries: int
) -> tuple[Pair, Worker, str, threading.Event]:
    """A note sent with SyncReply by a worker whose database's disk fills between the send's
    record and its Acknowledgment's (the hospital stored the note): the pair, the GP's worker,
    the message, and the disk's state (set: full). The Acknowledgment waits, told by the
    store-failing period, with no traceback; the ack-timeout stays one RetryInterval away."""
    from outage import fill_database_when

    from meldingstjener.engine import inbound
    from meldingstjener.engine import worker as worker_module

    pair = make_pair(
        tmp_path,
        sync_reply=True,
        retry_interval_seconds=600,
        persist_duration_seconds=3600,
        retries=retries,
    )
    full = threading.Event()
    fill_database_when(full, monkeypatch)
    real_receive = inbound.receive

    def receive_on_a_full_disk(ctx: EngineContext, *args: object, **kwargs: object) -> object:
        full.set()
        return real_receive(ctx, *args, **kwargs)  # type: ignore[arg-type]

    # only the GP worker's taking of its first reply: the hospital receives through the module
    reader = SimpleNamespace(
        receive=receive_on_a_full_disk,
        InboundRefused=inbound.InboundRefused,
        InboundDeferred=inbound.InboundDeferred,
    )
    monkeypatch.setattr(worker_module, "inbound", reader)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    sent_at = pair.clock()
    caplog.set_level(logging.INFO)
    worker = Worker(pair.gp, "gp")
    assert worker.run_once() == 1  # the send, and its reply
    monkeypatch.setattr(worker_module, "inbound", inbound)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "raised through" not in caplog.text  # no traceback as text either
    assert pair.gp.store_failing.failing
    assert pair.message(pair.gp, message_id).status == "sent"  # the Acknowledgment not stored
    with pair.gp.store.unit_of_work() as uow:
        [job] = uow.session.scalars(select(JobRow))
        assert (job.kind, job.due_at) == ("ack-timeout", sent_at + timedelta(seconds=600))
    return pair, worker, message_id, full


def test_a_sync_reply_the_full_database_refuses_is_taken_once_it_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The send had no resend left (Retries 0): left to its ack-timeout, it was given up as
    # not-delivered though the hospital took it (an alert to send it another way: twice). Its
    # worker holds the Acknowledgment and offers it again, STORE_PAUSE apart, until it is taken.
    pair, worker, message_id, full = _sync_reply_on_a_full_disk(
        tmp_path, monkeypatch, caplog, retries=0
    )
    pause = failing_jobs.STORE_PAUSE.total_seconds()
    pair.clock.advance(seconds=pause)
    assert worker.claim_turn() == (0, pause)  # still full: offered, refused, and no claim
    assert len(pair.gp.held_replies) == 1
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "raised through" not in caplog.text

    pair.clock.advance(seconds=590 - pause)
    offer_held_replies(pair.gp)  # refused once more: put off past the ack-timeout's time
    assert len(pair.gp.held_replies) == 1

    full.clear()  # the disk freed
    pair.clock.advance(seconds=10)  # the ack-timeout due, the reply not yet
    assert worker.run_once() == 1  # the ack-timeout claimed: the reply taken before it runs
    assert len(pair.gp.held_replies) == 0
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    pair.clock.advance(seconds=3600)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert len(pair.network.sent) == 1  # no resend
    assert not {kind for kind, _ in alerts(pair.gp)} & {"ack-missing", "not-delivered"}
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def test_a_sync_reply_held_by_one_worker_is_taken_by_another_that_claims_its_ack_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The disk freed while the worker that sent sleeps its STORE_PAUSE: another worker of the
    # process claims the ack-timeout first. The reply is the process's, so that worker stores
    # it; held by the sender alone, the send with no resend left was given up as not-delivered
    # (an alert) though the hospital had it, then set transport-acknowledged, the alert open.
    pair, _, message_id, full = _sync_reply_on_a_full_disk(tmp_path, monkeypatch, caplog, retries=0)
    full.clear()
    pair.clock.advance(seconds=600)
    assert Worker(pair.gp, "gp-other").run_once() == 1  # the ack-timeout
    assert len(pair.gp.held_replies) == 0
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert not {kind for kind, _ in alerts(pair.gp)} & {"ack-missing", "not-delivered"}
    assert len(pair.network.sent) == 1
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def test_an_ack_timeout_waits_for_the_store_while_its_message_s_sync_reply_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The ack-timeout's handler takes the held reply first, whatever offered it before: while
    # the store refuses that reply the ack-timeout neither resends nor gives up, it waits as
    # the reply does; once the store takes the reply the message is acknowledged.
    pair, _, message_id, full = _sync_reply_on_a_full_disk(tmp_path, monkeypatch, caplog, retries=0)
    pair.clock.advance(seconds=600)
    lease = timedelta(seconds=120)  # _claim's
    full.clear()  # for the claim alone: the handler meets the full disk
    [job] = _claim(pair, "gp-other")
    full.set()
    HANDLERS[job.kind](pair.gp, job)  # refused again: its job left to wait, not run
    assert len(pair.gp.held_replies) == 1
    assert pair.message(pair.gp, message_id).status == "sent"
    assert len(pair.network.sent) == 1

    full.clear()
    pair.clock.advance(seconds=lease.total_seconds() + 1)  # the claim (not put back) ran out
    [job] = _claim(pair, "gp-other")
    HANDLERS[job.kind](pair.gp, job)  # no offer before it: the handler takes the reply
    assert len(pair.gp.held_replies) == 0
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert not {kind for kind, _ in alerts(pair.gp)} & {"ack-missing", "not-delivered"}
    assert len(pair.network.sent) == 1
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def test_a_sync_reply_the_full_database_refused_and_lost_is_had_again_by_the_resend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The process that held it stopped (a restart), or another process claims the message's
    # ack-timeout: it resends the same MessageId, which the partner's duplicate elimination
    # answers with the same Acknowledgment.
    pair, _, message_id, full = _sync_reply_on_a_full_disk(tmp_path, monkeypatch, caplog, retries=2)
    pair.gp.held_replies = HeldReplies()  # the process restarted: nothing held
    full.clear()
    pair.clock.advance(seconds=600)
    pair.run()  # workers of their own: the held reply gone with the first
    first, resend = pair.network.sent
    assert resend.ebxml_message_id == first.ebxml_message_id
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert len(pair.inbound_messages(pair.hospital)) == 1  # the resend a duplicate
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_same_message_arriving_at_once_is_stored_once_and_leaves_no_copies(
    tmp_path: Path, database_url: str
) -> None:
    # Several requests carry the same message at the same moment; each passes the duplicate
    # check before any has committed, and the unique key decides. Every request is answered
    # with the Acknowledgment, one message is stored, and no request leaves its decrypted copy
    # behind. (Whether the race is met in a run depends on timing; these hold either way.)
    from meldingstjener.engine import inbound

    pair = make_pair(tmp_path, hospital_database_url=database_url)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    sent = pair.message(pair.gp, message_id)
    body = pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    at_once(4, lambda: inbound.receive(pair.hospital, str(sent.wire_content_type), body))
    [stored] = pair.inbound_messages(pair.hospital)
    root = pair.hospital.store.payloads.root
    files = sorted(path.name for path in root.rglob("*") if path.is_file())
    with pair.hospital.store.unit_of_work() as uow:
        signals = [r.wire_ref for r in uow.receipts.for_message(stored.id)]
        duplicates = [e for e in uow.events.for_message(stored.id) if e.code == "duplicate"]
    assert files == sorted([str(stored.payload_ref), str(stored.wire_ref), *map(str, signals)])
    assert len(duplicates) == 3
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()
