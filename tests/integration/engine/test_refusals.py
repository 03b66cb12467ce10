"""Received messages we refuse: what we store of them, and the alerts that make them visible."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_pair import Pair, make_pair, refusals_not_stored
from sqlalchemy import text

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import payload_io
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import Coded, Dialogmelding, Notat, Party


def stored_text(ctx: EngineContext) -> str:
    """Every row of the tables that keep texts about messages, as one string."""
    with ctx.store.unit_of_work() as uow:
        return "\n".join(
            str(tuple(row))
            for table in ("messages", "message_events", "receipts", "alerts")
            for row in uow.session.execute(text(f"SELECT * FROM {table}"))
        )


def test_a_fagmelding_that_is_not_xml_is_stored_with_codes_only(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A partner whose MSH does not check what its EPJ wrote: the Notat's text went into the
    # XML unescaped. The parser's message quotes it ("... value for attribute Nordmann").
    seal = payload_io.seal

    def unescaped(ctx: EngineContext, payload: object, *rest: object, **kw: object) -> object:
        assert isinstance(payload, bytes)
        return seal(ctx, payload.replace(b"PASIENT", b"<Kari Nordmann>"), *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(payload_io, "seal", unescaped)
    note = dialog_note(pair.gp_site, pair.hospital_site, "Ring pasient PASIENT i morgen")
    message_id = submit(pair.gp, note, actor="t")
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "transport-error" and sent.last_error_code == "OtherXml"
    with pair.gp.store.unit_of_work() as uow:
        [error] = uow.receipts.for_message(message_id)
    # The MessageError is signed, not encrypted: the parser's text quotes the fagmelding, and
    # only its codes and paths go back (it told the sender "... attribute Nordmann")
    assert "Nordmann" not in str(error.description) and "Kari" not in str(error.description)
    assert "xml-malformed" in str(error.description)
    stored = stored_text(pair.hospital)
    assert "Nordmann" not in stored and "Kari" not in stored
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.last_error_code == "OtherXml"
    assert str(refused.last_error_text).endswith("cannot be interpreted (xml-malformed)")


def test_a_refusal_of_a_fagmelding_quotes_none_of_it_on_the_wire(pair: Pair) -> None:
    # review (interop 4): a MIGversion the reader does not read was quoted in the
    # MessageError's eb:Description, which travels signed, not encrypted, and was kept so in
    # the hospital's payload store; the location was a bare "cid"
    import re

    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.engine.fagmelding import inspect
    from meldingstjener.formats.xmlparse import parse_xml

    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    secret = b"Kari Nordmann 01017012345"
    faulty = re.sub(
        rb"<MIGversion>[^<]*</MIGversion>", b"<MIGversion>" + secret + b"</MIGversion>", note
    )
    message_id = submit(pair.gp, faulty, actor="t", inspected=inspect(note))
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert (sent.status, sent.last_error_code) == ("transport-error", "OtherXml")
    [refused] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        [ours] = [r for r in uow.receipts.for_message(refused.id) if r.direction == "out"]
    wire = pair.hospital.store.payloads.read_bytes(str(ours.wire_ref))
    assert b"Nordmann" not in wire and b"01017012345" not in wire
    mime = unpackage(str(ours.wire_content_type), wire)
    [error] = parse_envelope(parse_xml(mime.envelope_xml)).error_list.errors  # type: ignore[union-attr]
    assert error.description == (
        "the business message cannot be interpreted: "
        "unsupported-version at /MsgHead/MsgInfo/MIGversion"
    )
    [payload_cid] = unpackage(
        str(sent.wire_content_type), pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    ).attachments
    assert error.location == f"cid:{payload_cid}"


@pytest.mark.parametrize(
    ("fault", "pattern", "replacement", "code"),
    [
        ("no MsgId", rb"<MsgId>[^<]*</MsgId>", b"", "missing-element"),
        ("no GenDate", rb"<GenDate>[^<]*</GenDate>", b"", "missing-element"),
        (
            "a MsgHead version we do not read",
            rb"<MIGversion>[^<]*</MIGversion>",
            b"<MIGversion>v1.3</MIGversion>",
            "unsupported-version",
        ),
    ],
    ids=["no-msgid", "no-gendate", "unsupported-version"],
)
def test_a_msghead_our_reader_cannot_read_is_refused_with_other_xml(
    pair: Pair, fault: str, pattern: bytes, replacement: bytes, code: str
) -> None:
    # Well-formed, a MsgHead, but not one the reader reads: it was acknowledged, and then no
    # AppRec could be built (it quotes the MsgId and GenDate). The sender held a positive
    # transport receipt and heard nothing more; now it gets the MessageError of a document
    # that cannot be interpreted.
    import re

    from meldingstjener.engine.fagmelding import inspect

    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    faulty = re.sub(pattern, replacement, note)
    assert faulty != note, fault
    # sent by a sender that does not validate: the GP's own check reads the sound note
    message_id = submit(pair.gp, faulty, actor="t", inspected=inspect(note))
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert (sent.status, sent.last_error_code) == ("transport-error", "OtherXml"), fault
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.last_error_code == "OtherXml"
    assert str(refused.last_error_text).endswith(f"cannot be interpreted ({code})")


def test_a_fagmelding_larger_than_formats_max_xml_bytes_is_refused(tmp_path: Path) -> None:
    # formats.max_xml_bytes held for the envelope only: the business message was parsed with
    # the 64 MB default whatever the operator had set
    from meldingstjener.devsites import HOSPITAL_HER

    limit = 20_000
    made = make_pair(tmp_path, extra_config={HOSPITAL_HER: f"[formats]\nmax_xml_bytes = {limit}\n"})
    try:
        assert made.hospital.policy.max_xml_bytes == limit
        note = dialog_note(made.gp_site, made.hospital_site, "x" * (2 * limit))
        message_id = submit(made.gp, note, actor="t")
        made.run()
        sent = made.message(made.gp, message_id)
        assert sent.status == "transport-error" and sent.last_error_code == "OtherXml"
        [refused] = made.inbound_messages(made.hospital)
        assert refused.status == "rejected"
        assert str(refused.last_error_text).endswith("cannot be interpreted (xml-refused)")
        small = submit(made.gp, dialog_note(made.gp_site, made.hospital_site, "x"), actor="t")
        made.run()
        assert made.message(made.gp, small).status == "transport-acknowledged"
    finally:
        made.gp.store.database.dispose()
        made.hospital.store.database.dispose()


def test_a_fagmelding_submitted_larger_than_formats_max_xml_bytes_is_refused(
    tmp_path: Path,
) -> None:
    # the sending side parsed what an EPJ submitted with the 64 MB default as well
    from meldingstjener.devsites import GP_HER
    from meldingstjener.engine.outbound import SubmitRejected

    limit = 20_000
    made = make_pair(tmp_path, extra_config={GP_HER: f"[formats]\nmax_xml_bytes = {limit}\n"})
    try:
        note = dialog_note(made.gp_site, made.hospital_site, "x" * (2 * limit))
        with pytest.raises(SubmitRejected) as refused:
            submit(made.gp, note, actor="t")
        assert refused.value.code == "invalid-message"
        assert any("xml-refused" in line for line in refused.value.problems)
        small = submit(made.gp, dialog_note(made.gp_site, made.hospital_site, "x"), actor="t")
        made.run()
        assert made.message(made.gp, small).status == "transport-acknowledged"
    finally:
        made.gp.store.database.dispose()
        made.hospital.store.database.dispose()


def test_a_submit_whose_wire_form_cannot_be_stored_leaves_no_plain_text_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The EPJ's plain text was stored, then the disk was full for the wire form: the plain text
    # waited for the day's sweep (and one more copy for each retry of the EPJ).
    made = make_pair(tmp_path)
    try:
        payloads = made.gp.store.payloads
        real_put = payloads.put
        calls = 0

        def full_at_the_second(source: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise OSError(28, "No space left on device")
            return real_put(source)

        before = {p for p in payloads.root.rglob("*") if p.is_file()}
        monkeypatch.setattr(payloads, "put", full_at_the_second)
        with pytest.raises(OSError):
            submit(made.gp, dialog_note(made.gp_site, made.hospital_site, "x"), actor="t")
        assert calls == 2
        assert {p for p in payloads.root.rglob("*") if p.is_file()} == before
    finally:
        made.gp.store.database.dispose()
        made.hospital.store.database.dispose()


def open_alerts(ctx: EngineContext) -> dict[str, tuple[str, int]]:
    """dedup key -> (severity, count) of the open alerts."""
    with ctx.store.unit_of_work() as uow:
        return {a.dedup_key: (a.severity, a.count) for a in uow.alerts.list(open_only=True)}


def flip_last_payload_byte(body: bytes) -> bytes:
    """The signature no longer matches the payload (the encrypted payload is the last part)."""
    if b"pkcs7-mime" not in body:
        return body  # leave the signals alone
    end = body.rindex(b"\r\n--")
    return body[: end - 1] + bytes([body[end - 1] ^ 0x01]) + body[end:]


def send_note(pair: Pair) -> str:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    return message_id


REFUSED = "message-refused:8100001:SecurityFailure"


def test_a_sender_her_id_split_by_a_comment_is_refused_as_inconsistent(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The envelope says 8100001; the MsgHead's sender Ident reads 8100001 up to the comment and
    # 81000019 to XPath, the XSD and the receiver's EPJ. Read the first way, the check of the
    # envelope against the MsgHead passed, and the patient record showed another sender.
    seal = payload_io.seal

    def split(ctx: EngineContext, payload: object, *rest: object, **kw: object) -> object:
        assert isinstance(payload, bytes) and payload.count(b"<Id>8100001</Id>") == 1
        spoofed = payload.replace(b"<Id>8100001</Id>", b"<Id>8100001<!---->9</Id>")
        return seal(ctx, spoofed, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(payload_io, "seal", split)
    message_id = send_note(pair)
    # The reader refuses a value with markup, so the MsgHead cannot be read: refused as a
    # business message that cannot be interpreted (OtherXml) before its HER-ids are compared
    # (Inconsistent); refused either way, and never read one way of two.
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "transport-error" and sent.last_error_code == "OtherXml"
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.last_error_code == "OtherXml"
    assert str(refused.last_error_text).endswith("(markup-in-value)")


def test_refused_messages_raise_one_alert_per_sender_and_code_until_one_is_stored(
    pair: Pair,
) -> None:
    pair.network.tamper = flip_last_payload_byte
    send_note(pair)
    send_note(pair)
    assert open_alerts(pair.hospital) == {REFUSED: ("error", 2)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert alert.partner_her_id == "8100001" and "SecurityFailure" in alert.summary
    pair.network.tamper = None
    message_id = send_note(pair)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert open_alerts(pair.hospital) == {}


def test_a_repeat_that_is_not_its_senders_resend_raises_the_alert_too(pair: Pair) -> None:
    message_id = send_note(pair)
    pair.network.tamper = flip_last_payload_byte
    from meldingstjener.transport.base import Delivery

    sent = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.path(str(sent.wire_ref))
    pair.network.send(Delivery(pair.hospital_site.endpoint, str(sent.wire_content_type), wire))
    assert open_alerts(pair.hospital) == {REFUSED: ("error", 1)}


def test_a_good_message_costs_no_statement_on_the_alerts_while_none_is_open(
    pair: Pair,
) -> None:
    from sqlalchemy import event

    send_note(pair)  # this process has read the open alerts once
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    engine = pair.hospital.store.database.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        send_note(pair)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert any("INSERT INTO messages" in s for s in statements)
    assert not any("alerts" in s for s in statements)


def renewed_encryption_certificate(pair: Pair, her_id: str) -> tuple[Any, Any]:
    """A new key and encryption certificate for ``her_id`` (a renewal), as the address register
    would name it: (key, certificate)."""
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    from meldingstjener.security.devpki import issue_certificate, load_pki

    pki = load_pki(pair.gp_site.config_path.parent.parent / "pki")
    old = pki.parties[her_id].encryption.certificate
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    renewed = issue_certificate(
        pki.ca,
        key.public_key(),
        old.subject,
        old.extensions.get_extension_for_class(x509.KeyUsage).value,
        not_before=pair.clock() - timedelta(hours=1),
        not_after=pair.clock() + timedelta(days=365),
        extended_usage=list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value),
    )
    return key, renewed


def copy_of_encryption_certificate(ctx: EngineContext, her_ids: tuple[str, ...], cert: Any) -> str:
    """Set ``ctx``'s copy of the encryption certificate of ``her_ids`` to ``cert``; the copy
    it had (base64)."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    had = ""
    with ctx.store.unit_of_work() as uow:
        for her_id in her_ids:
            party = uow.parties.get(her_id)
            if party is not None and party.encryption_certificate is not None:
                had = party.encryption_certificate
                party.encryption_certificate = (
                    cert
                    if isinstance(cert, str)
                    else base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
                )
        uow.commit()
    return had


def test_our_key_failing_to_decrypt_is_a_critical_alert_until_a_message_is_decrypted(
    pair: Pair,
) -> None:
    # Our encryption certificate was renewed in the register (the GP's copy of it is the new
    # one) before its key was installed here: every message to us fails to decrypt.
    import dataclasses

    key, renewed = renewed_encryption_certificate(pair, "8200001")
    copy_of_encryption_certificate(pair.gp, ("8200001", "8200002"), renewed)
    send_note(pair)
    send_note(pair)
    decryption = "certificate-invalid:our-decryption:8100001"
    assert open_alerts(pair.hospital) == {decryption: ("critical", 2)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert "recipient-not-found" in alert.summary and "8100001" in alert.summary
    assert alert.partner_her_id == "8100001"
    # the key is installed (as the previous pair beside the current one)
    keys = pair.hospital.keys
    pair.hospital.keys = dataclasses.replace(
        keys, decryption_candidates=[*keys.decryption_candidates, (key, renewed)]
    )
    message_id = send_note(pair)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert open_alerts(pair.hospital) == {}


def test_our_key_failing_on_one_senders_messages_is_that_senders_alert(pair: Pair) -> None:
    # The hospital's service (8200002) encrypts its messages to the GP with an old copy of the
    # GP's certificate. Other senders' messages are decrypted meanwhile (here the hospital
    # organisation's, 8200001, once the copy is put right): they do not end the service's
    # alert, which would be raised again at its next message, a webhook call each time.
    from meldingstjener.formats import build_dialogmelding

    _, renewed = renewed_encryption_certificate(pair, "8100001")
    had = copy_of_encryption_certificate(pair.hospital, ("8100001",), renewed)

    def send_from(sender: Party) -> str:
        note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="x")
        message = build_dialogmelding(
            message_type="DIALOG_NOTAT",
            sender=sender,
            receiver=pair.gp_site.party(),
            dialog=Dialogmelding(version="1.0", notater=(note,)),
        )
        message_id = submit(pair.hospital, message, actor="t")
        pair.run()
        return message_id

    service = pair.hospital_site.party()
    organisation = Party.of(pair.hospital_site.name, pair.hospital_site.organisation_her_id)
    send_from(service)
    decryption = "certificate-invalid:our-decryption:8200002"
    assert open_alerts(pair.gp) == {decryption: ("critical", 1)}
    copy_of_encryption_certificate(pair.hospital, ("8100001",), had)
    message_id = send_from(organisation)
    assert pair.message(pair.hospital, message_id).status == "transport-acknowledged"
    assert open_alerts(pair.gp) == {decryption: ("critical", 1)}
    message_id = send_from(service)
    assert pair.message(pair.hospital, message_id).status == "transport-acknowledged"
    assert open_alerts(pair.gp) == {}


def forged(body: bytes, from_party_id: bytes, party_type: bytes = b"HER") -> bytes:
    """``body`` (a message from the GP) with another From and a MessageId of its own, unsigned
    by that sender: what anybody can send to POST /ebms."""
    import re
    import uuid

    genuine = b'<eb:PartyId eb:type="HER">8100001</eb:PartyId><eb:Role>DIALOG_NOTATsender'
    assert genuine in body
    body = body.replace(
        genuine,
        b'<eb:PartyId eb:type="' + party_type + b'">' + from_party_id + b"</eb:PartyId>"
        b"<eb:Role>DIALOG_NOTATsender",
    )
    message_id = f"{uuid.uuid4()}@anywhere".encode()
    return re.sub(
        rb"<eb:MessageId>[^<]+</eb:MessageId>",
        b"<eb:MessageId>" + message_id + b"</eb:MessageId>",
        body,
    )


def a_wire(pair: Pair) -> tuple[bytes, str]:
    """A message from the GP to the hospital as it goes over the wire (kept from the network)."""
    pair.network.down.add(pair.hospital_site.endpoint)
    row = pair.message(pair.gp, send_note(pair))
    pair.network.down.clear()
    return pair.gp.store.payloads.read_bytes(str(row.wire_ref)), str(row.wire_content_type)


def test_refusals_of_senders_we_do_not_know_share_one_alert(pair: Pair) -> None:
    # Anybody can send a well-formed message naming any From: an alert (and a webhook call)
    # per sender would be one per request, and each process would keep them all in memory.
    from meldingstjener.engine import inbound

    body, content_type = a_wire(pair)
    for her_id in (b"9100001", b"9100002", b"9100003"):
        inbound.receive(pair.hospital, content_type, forged(body, her_id))
    assert open_alerts(pair.hospital) == {
        "message-refused:unknown-sender:SecurityFailure": ("error", 3)
    }
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert alert.partner_her_id is None
    assert "its sender is not a known communication party" in alert.summary
    assert "whose From reads 9100003 (not verified)" in alert.summary
    # refused before it verified, so not stored and no MessageError: told in the response
    assert "told, in the response to its request" in alert.summary
    assert "MessageError" not in alert.summary
    assert pair.hospital.recovery._open == {}  # nothing kept in memory for them
    send_note(pair)  # a known sender's message resolves only what is about that sender
    assert open_alerts(pair.hospital) == {
        "message-refused:unknown-sender:SecurityFailure": ("error", 3)
    }


def test_an_alert_quotes_nothing_the_sender_chose(pair: Pair) -> None:
    # A PartyId of a type other than HER is any text (up to 255 characters): not for an alert
    # text, which webhooks pass on. The alert names the code, a reason of ours, and a digest.
    from meldingstjener.engine import inbound

    body, content_type = a_wire(pair)
    inbound.receive(pair.hospital, content_type, forged(body, b"Kari Nordmann", b"navn"))
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    # no PartyId of type HER: refused before any certificate is looked up by it
    assert alert.dedup_key == "message-refused:unknown-sender:ValueNotRecognized"
    assert "Nordmann" not in alert.summary
    assert "whose From reads party-" in alert.summary


def test_the_open_alerts_kept_in_memory_are_capped(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However many are open, each process keeps at most REMEMBERED subjects in memory; the
    # rest are left to the database (resolved by hand, or once fewer are open).
    from meldingstjener.engine import recovery
    from meldingstjener.engine.alerts import AlertKind
    from meldingstjener.engine.instances import beat

    monkeypatch.setattr(recovery, "REMEMBERED", 2)
    watch = pair.hospital.recovery
    for her_id in ("9100001", "9100002", "9100003"):
        with pair.hospital.store.unit_of_work() as uow:
            watch.raise_alert(
                uow,
                AlertKind.MESSAGE_REFUSED,
                "refused",
                subject=recovery.sender(her_id),
                key=f"{her_id}:SecurityFailure",
                at=pair.clock(),
            )
            uow.commit()
    assert len(watch._open) == 2
    beat(pair.hospital, "h:8080", started=True)  # read back from the store: capped too
    assert len(watch._open) == 2
    assert len(open_alerts(pair.hospital)) == 3


@pytest.fixture
def two_processes(tmp_path: Path, database_url: str) -> Iterator[tuple[Pair, EngineContext]]:
    """A pair whose hospital store (PostgreSQL) a second ``serve`` process shares, started (it
    has read the open alerts: none); the pair's hospital is the first."""
    from meldingstjener.bootstrap import build_engine
    from meldingstjener.config import load_settings
    from meldingstjener.engine.instances import beat

    pair = make_pair(tmp_path, hospital_database_url=database_url)
    first = pair.hospital
    second = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    second.transports = first.transports
    try:
        beat(second, "second:8080", started=True)
        yield pair, second
    finally:
        for ctx in (pair.gp, first, second):
            ctx.store.database.dispose()


def _refused_at_the_first_then_sent_to_the_second(pair: Pair, second: EngineContext) -> str:
    """The first process refuses a message of the GP; the GP's next message goes to the
    second. Returns that message's id."""
    pair.network.tamper = flip_last_payload_byte
    send_note(pair)
    assert open_alerts(pair.hospital) == {REFUSED: ("error", 1)}
    pair.network.tamper = None
    pair.network.engines[pair.hospital_site.endpoint] = pair.hospital = second
    pair.clock.advance(seconds=1)
    return send_note(pair)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_alert_raised_by_another_process_is_resolved_by_the_next_heartbeat(
    two_processes: tuple[Pair, EngineContext],
) -> None:
    # Two serve processes on one store. The first refuses a message; the GP's next message
    # reaches the second, which did not know of the alert yet. Its heartbeat reads the open
    # alerts and sees that the sender's message went through here after the refusal.
    from meldingstjener.engine.instances import beat

    pair, second = two_processes
    message_id = _refused_at_the_first_then_sent_to_the_second(pair, second)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert open_alerts(second) == {REFUSED: ("error", 1)}  # not known here yet
    beat(second, "second:8080")
    assert open_alerts(second) == {}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_heartbeats_catch_up_leaves_a_refusal_raised_after_the_message_went_through(
    two_processes: tuple[Pair, EngineContext],
) -> None:
    # The second process stored a message of the sender after the first refused one; its
    # heartbeat reads the open alert and would resolve it. Between that read and the resolve,
    # the first refuses another message of the sender: that refusal is newer than the message
    # that went through, and must stay open.
    from sqlalchemy import event

    from meldingstjener.engine.alerts import AlertKind, raise_alert
    from meldingstjener.engine.instances import beat

    pair, second = two_processes
    first = pair.hospital
    _refused_at_the_first_then_sent_to_the_second(pair, second)  # went through at the second
    pair.clock.advance(seconds=1)

    raised: list[bool] = []

    def refused_meanwhile(
        _conn: object, _cursor: object, statement: str, params: object, *_: object
    ) -> None:
        resolving = "SET resolved_at" in statement and isinstance(params, dict)
        if resolving and params.get("dedup_key") == REFUSED and not raised:  # type: ignore[union-attr]
            raised.append(True)
            with first.store.unit_of_work() as uow:  # the first refuses another
                raise_alert(
                    uow,
                    AlertKind.MESSAGE_REFUSED,
                    "refused again",
                    at=pair.clock(),
                    key="8100001:SecurityFailure",
                )
                uow.commit()

    engine = second.store.database.engine
    event.listen(engine, "before_cursor_execute", refused_meanwhile)
    try:
        beat(second, "second:8080")
    finally:
        event.remove(engine, "before_cursor_execute", refused_meanwhile)
    assert raised
    assert open_alerts(second) == {REFUSED: ("error", 2)}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_known_message_id_from_another_party_is_logged_without_its_party_id(
    tmp_path: Path, database_url: str
) -> None:
    # A known eb:MessageId with another From is refused and logged against the message it
    # names. The From is any text (255 characters): the log's actor (128) and texts name the
    # sender as a HER-id or a digest (PostgreSQL refused the event, and the request failed).
    from meldingstjener.engine import inbound

    pair = make_pair(tmp_path, hospital_database_url=database_url)
    try:
        body, content_type = a_wire(pair)
        inbound.receive(pair.hospital, content_type, body)
        [stored] = pair.inbound_messages(pair.hospital)
        long_party = b"urn:example:" + b"x" * 200
        genuine = b'<eb:PartyId eb:type="HER">8100001</eb:PartyId>'
        inbound.receive(
            pair.hospital,
            content_type,
            body.replace(genuine, b'<eb:PartyId eb:type="navn">' + long_party + b"</eb:PartyId>"),
        )
        # a From without a PartyId of type HER is refused before the MessageId is looked up
        [refusal] = refusals_not_stored(pair.hospital, stored.ebxml_message_id)
        assert refusal.code == "ValueNotRecognized"
        assert refusal.actor.startswith("http:party-") and len(refusal.actor) <= 128
        assert b"xxxxxxxx" not in stored_text(pair.hospital).encode()
        assert [row.id for row in pair.inbound_messages(pair.hospital)] == [stored.id]
    finally:
        pair.gp.store.database.dispose()
        pair.hospital.store.database.dispose()


def test_a_forged_message_does_not_take_its_message_id_from_the_genuine_one(pair: Pair) -> None:
    # A MessageId travels in clear (a mail's Subject). A message that names it and its sender's
    # From, but whose signature does not verify, was stored under it as refused and our signed
    # MessageError queued to that sender: its waiting message ended there, and its resend was
    # taken for a repeat of the refused one, never stored.
    from meldingstjener.engine import inbound

    pair.network.down.add(pair.hospital_site.endpoint)
    waiting = pair.message(pair.gp, send_note(pair))
    assert waiting.status == "retrying"  # the GP's message, waiting to be resent
    pair.network.down.clear()
    body = pair.gp.store.payloads.read_bytes(str(waiting.wire_ref))
    content_type = str(waiting.wire_content_type)
    reply = inbound.receive(pair.hospital, content_type, flip_last_payload_byte(body))
    assert reply.body is not None and b"SecurityFailure" in reply.body  # to whoever sent it
    assert pair.inbound_messages(pair.hospital) == []
    assert open_alerts(pair.hospital) == {REFUSED: ("error", 1)}  # seen as before
    pair.run()
    assert pair.message(pair.gp, waiting.id).status == "retrying"
    inbound.receive(pair.hospital, content_type, body)  # its resend
    [stored] = pair.inbound_messages(pair.hospital)
    assert stored.status == "acknowledged"
    assert stored.ebxml_message_id == waiting.ebxml_message_id
    pair.run()
    assert pair.message(pair.gp, waiting.id).status == "transport-acknowledged"


def test_a_message_whose_from_has_no_party_id_of_type_her_is_refused_unverified(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its PartyId's value (a HER-id, typed otherwise) was used to look up certificates and check
    # the signature, and the message stored with no HER-id: its signals queued to "None", and
    # the duplicate check's sender comparison None == None.
    import dataclasses

    from meldingstjener.ebxml import build as ebxml_build

    add_party = ebxml_build._add_party

    def other_type(parent: Any, name: str, party: Any) -> Any:
        if name == "From":
            party = dataclasses.replace(party, party_type="urn:example:partyid-type:unregistered")
        return add_party(parent, name, party)

    monkeypatch.setattr(ebxml_build, "_add_party", other_type)
    message_id = send_note(pair)
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "transport-error" and sent.last_error_code == "ValueNotRecognized"
    assert pair.inbound_messages(pair.hospital) == []
    assert open_alerts(pair.hospital) == {
        "message-refused:unknown-sender:ValueNotRecognized": ("error", 1)
    }
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0


@pytest.mark.parametrize(
    "defect",
    [
        b"Content-Transfer-Encoding: x-gzip64\r\nContent-ID: <{cid}>",
        b"Content-Transfer-Encoding: binary\r\nX-Content-ID: <{cid}>",
        b"Content-Transfer-Encoding: binary\r\nContent-ID: <<{cid}>>",
    ],
    ids=["unknown-transfer-encoding", "no-content-id", "not-a-content-id"],
)
def test_a_mime_defect_outside_a_readable_envelope_gets_a_message_error(
    pair: Pair, defect: bytes
) -> None:
    # The sender got HTTP 400 text, no ebXML MessageError, and resent until it gave up.
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.engine import inbound
    from meldingstjener.formats.xmlparse import parse_xml

    body, content_type = a_wire(pair)
    mime = unpackage(content_type, body)
    ((cid, part),) = mime.attachments.items()
    head = b"--B\r\nContent-Type: %s\r\n"
    rebuilt = (
        head % b"text/xml"
        + b"Content-Transfer-Encoding: binary\r\nContent-ID: <%s>\r\n\r\n" % mime.start.encode()
        + mime.envelope_xml
        + b"\r\n"
        + head % part.content_type.encode()
        + defect.replace(b"{cid}", cid.encode())
        + b"\r\n\r\n"
        + part.data
        + b"\r\n--B--\r\n"
    )
    reply = inbound.receive(
        pair.hospital, f'multipart/related; boundary="B"; start="<{mime.start}>"', rebuilt
    )
    assert reply.body is not None and reply.content_type is not None
    [error] = parse_envelope(  # type: ignore[union-attr]
        parse_xml(unpackage(reply.content_type, reply.body).envelope_xml)
    ).error_list.errors
    assert error.code == "MimeProblem"
    # the part, where it names a content-id (review: interop 6)
    assert error.location == (
        None if defect.startswith(b"Content-Transfer-Encoding: binary") else f"cid:{cid}"
    )
    assert pair.inbound_messages(pair.hospital) == []  # not verified: not stored
    assert open_alerts(pair.hospital) == {"message-refused:8100001:MimeProblem": ("error", 1)}


def _with_a_mime_defect(body: bytes, content_type: str) -> tuple[str, bytes]:
    """``body`` with its payload part's Content-Transfer-Encoding one nobody knows: its
    Content-Type and body."""
    from meldingstjener.ebxml import unpackage

    mime = unpackage(content_type, body)
    ((cid, part),) = mime.attachments.items()
    head = b"--B\r\nContent-Type: %s\r\n"
    rebuilt = (
        head % b"text/xml"
        + b"Content-Transfer-Encoding: binary\r\nContent-ID: <%s>\r\n\r\n" % mime.start.encode()
        + mime.envelope_xml
        + b"\r\n"
        + head % part.content_type.encode()
        + b"Content-Transfer-Encoding: x-gzip64\r\nContent-ID: <%s>" % cid.encode()
        + b"\r\n\r\n"
        + part.data
        + b"\r\n--B--\r\n"
    )
    return f'multipart/related; boundary="B"; start="<{mime.start}>"', rebuilt


@pytest.mark.parametrize("action", ["Acknowledgment", "Nonsense"])
def test_a_signal_with_a_mime_defect_is_answered_as_one_not_supported_is(
    pair: Pair, action: str
) -> None:
    # one rule for both refusals before a check: any envelope but a MessageError is answered
    # (a MIME defect in an Acknowledgment's envelope was answered with nothing)
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.engine import inbound
    from meldingstjener.formats.xmlparse import parse_xml

    body, content_type = a_wire(pair)
    changed = _envelope_changed(body, content_type, _service_action(action))
    reply = inbound.receive(pair.hospital, *_with_a_mime_defect(changed, content_type))
    assert reply.body is not None and reply.content_type is not None
    answer = parse_envelope(parse_xml(unpackage(reply.content_type, reply.body).envelope_xml))
    [error] = answer.error_list.errors  # type: ignore[union-attr]
    assert error.code == "MimeProblem" and answer.header.ref_to_message_id is not None


def test_a_message_error_with_a_mime_defect_is_not_answered_with_one(pair: Pair) -> None:
    from meldingstjener.engine import inbound

    body, content_type = a_wire(pair)
    changed = _envelope_changed(body, content_type, _service_action("MessageError"))
    with pytest.raises(inbound.InboundRefused) as refused:
        inbound.receive(pair.hospital, *_with_a_mime_defect(changed, content_type))
    assert refused.value.code == "MimeProblem"


def test_a_mail_whose_signature_does_not_verify_is_quarantined_not_stored(
    pair: Pair, tmp_path: Path
) -> None:
    # By mail there is no response to answer an unverified refusal in, and a MessageError
    # mailed to whom its From names may go to a party that never sent it. The mail is put
    # aside whole, so that a genuine partner's message refused by a stale copy of its signing
    # certificate is there to reprocess, not deleted from the mailbox with nothing kept.
    from meldingstjener.engine.alerts import AlertKind
    from meldingstjener.engine.mail_channel import MailIntake, Quarantine

    body, content_type = a_wire(pair)
    mail = (
        b"Message-ID: <flipped-1@gp.example>\r\nContent-Type: "
        + content_type.encode()
        + b"\r\n\r\n"
        + flip_last_payload_byte(body)
    )
    intake = MailIntake(pair.hospital, tmp_path / "quarantine")
    with pytest.raises(Quarantine) as quarantined:
        intake.on_mail(mail)
    assert str(quarantined.value) == "SecurityFailure"
    [kept] = (tmp_path / "quarantine").glob("*.eml")
    assert kept.read_bytes() == mail  # the whole mail, to reprocess
    assert pair.inbound_messages(pair.hospital) == []
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.jobs.count() == 0  # nothing mailed to whom the From names
        alerts = {a.kind: a for a in uow.alerts.list(open_only=True)}
    assert set(alerts) == {AlertKind.MESSAGE_REFUSED, AlertKind.MAIL_QUARANTINED}
    assert "Its mail was quarantined whole" in alerts[AlertKind.MESSAGE_REFUSED].summary
    assert alerts[AlertKind.MESSAGE_REFUSED].partner_her_id == "8100001"


def _envelope_changed(body: bytes, content_type: str, change: Any) -> bytes:
    """``body`` with its SOAP envelope changed by ``change`` (an lxml root, changed in place);
    the rest of the MIME message as it was."""
    from lxml import etree

    from meldingstjener.ebxml import unpackage
    from meldingstjener.formats.xmlparse import parse_xml

    xml = unpackage(content_type, body).envelope_xml
    root = parse_xml(xml)
    change(root)
    return body.replace(xml, etree.tostring(root))


_EB = "{http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd}"
_SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"


def _version(root: Any) -> None:
    root.find(f".//{_EB}MessageHeader").set(f"{_EB}version", "3.0")


def _must_understand(root: Any) -> None:
    from lxml import etree

    block = etree.SubElement(root.find(f"{_SOAP}Header"), "{urn:example:x}Routing")
    block.set(f"{_SOAP}mustUnderstand", "1")


def _service_action(action: str) -> Any:
    def change(root: Any) -> None:
        header = root.find(f".//{_EB}MessageHeader")
        service = header.find(f"{_EB}Service")
        service.text = "urn:oasis:names:tc:ebxml-msg:service"
        service.attrib.pop(f"{_EB}type", None)
        header.find(f"{_EB}Action").text = action

    return change


@pytest.mark.parametrize(
    ("change", "location"),
    [
        (_version, "//eb:MessageHeader/@eb:version"),
        (_must_understand, "/SOAP:Envelope/SOAP:Header/Routing"),
        (_service_action("Ping"), "//eb:MessageHeader/eb:Action"),
        (_service_action("StatusRequest"), "//eb:MessageHeader/eb:Action"),
        (_service_action("Nonsense"), "//eb:MessageHeader/eb:Action"),
    ],
    ids=["eb-version", "must-understand", "ping", "status-request", "unknown-signal"],
)
def test_what_we_do_not_support_in_a_readable_envelope_gets_a_signed_message_error(
    pair: Pair, change: Any, location: str
) -> None:
    # review (interop 3): answered HTTP 400 "unreadable ebXML message" in plain text, with no
    # RefToMessageId, about a message whose MessageHeader had been read
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.engine import inbound
    from meldingstjener.formats.xmlparse import parse_xml

    body, content_type = a_wire(pair)
    sent = parse_envelope(parse_xml(unpackage(content_type, body).envelope_xml)).header
    reply = inbound.receive(
        pair.hospital, content_type, _envelope_changed(body, content_type, change)
    )
    assert reply.body is not None and reply.content_type is not None
    answer = parse_xml(unpackage(reply.content_type, reply.body).envelope_xml)
    envelope = parse_envelope(answer)
    assert envelope.is_message_error and envelope.signature_present
    assert envelope.header.ref_to_message_id == sent.message_id
    assert envelope.header.to_party.her_id == "8100001"
    [error] = envelope.error_list.errors  # type: ignore[union-attr]
    assert error.code == "NotSupported" and error.location == f"xpointer({location})"
    assert pair.inbound_messages(pair.hospital) == []  # not verified: not stored
    assert open_alerts(pair.hospital) == {"message-refused:8100001:NotSupported": ("error", 1)}


def test_a_message_error_we_cannot_read_is_not_answered_with_one(pair: Pair) -> None:
    from meldingstjener.engine import inbound

    body, content_type = a_wire(pair)
    changed = _envelope_changed(body, content_type, _service_action("MessageError"))
    changed = changed.replace(b'eb:version="2.0"', b'eb:version="3.0"', 1)
    with pytest.raises(inbound.InboundRefused) as refused:
        inbound.receive(pair.hospital, content_type, changed)
    assert refused.value.code == "NotSupported"


def test_a_cpa_id_not_agreed_is_taken_with_a_note_not_refused(pair: Pair) -> None:
    # review (interop 1): not refused (a well-formed, correctly signed message may not be
    # refused with an ebXML error), but the help desk sees it on the message
    send_note(pair)
    [first] = pair.inbound_messages(pair.hospital)
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair(
            pair.gp_site.address_her_id, pair.hospital_site.address_her_id
        )
        assert agreement is not None
        agreement.cpa_id = "nhn:cpa:unknown"
        uow.commit()
    message_id = send_note(pair)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [second] = [m for m in pair.inbound_messages(pair.hospital) if m.id != first.id]
    assert second.cpa_id == "nhn:cpa:unknown" and second.status == "acknowledged"
    with pair.hospital.store.unit_of_work() as uow:
        [note] = [e for e in uow.events.for_message(second.id) if e.code == "cpa-not-agreed"]
        assert not [e for e in uow.events.for_message(first.id) if e.code == "cpa-not-agreed"]
    assert str(note.detail).startswith(
        "its CPAId 'nhn:cpa:unknown' is not the id of an agreement of ours with 8100001 (ours is "
        "nhn:cpa:8100001:8200001)"
    )
