"""Received messages we refuse: what we store of them, and the alerts that make them visible."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_pair import Pair
from sqlalchemy import text

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import payload_io
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit


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
    assert "Nordmann" in str(error.description)  # the sender is told about its own message
    stored = stored_text(pair.hospital)
    assert "Nordmann" not in stored and "Kari" not in stored
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.last_error_code == "OtherXml"
    assert str(refused.last_error_text).endswith("cannot be interpreted (xml-malformed)")


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


def test_our_key_failing_to_decrypt_is_a_critical_alert_until_a_message_is_decrypted(
    pair: Pair,
) -> None:
    # Our encryption certificate was renewed in the register (the GP's copy of it is the new
    # one) before its key was installed here: every message to us fails to decrypt.
    import base64
    import dataclasses
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    from meldingstjener.security.devpki import issue_certificate, load_pki

    pki = load_pki(pair.gp_site.config_path.parent.parent / "pki")
    old = pki.parties["8200001"].encryption.certificate
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
    with pair.gp.store.unit_of_work() as uow:
        for her_id in ("8200001", "8200002"):
            party = uow.parties.get(her_id)
            if party is not None and party.encryption_certificate is not None:
                party.encryption_certificate = base64.b64encode(
                    renewed.public_bytes(Encoding.DER)
                ).decode()
        uow.commit()
    send_note(pair)
    send_note(pair)
    decryption = "certificate-invalid:our-decryption"
    assert open_alerts(pair.hospital) == {decryption: ("critical", 2)}
    with pair.hospital.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=True)
    assert "recipient-not-found" in alert.summary and "8100001" in alert.summary
    # the key is installed (as the previous pair beside the current one)
    keys = pair.hospital.keys
    pair.hospital.keys = dataclasses.replace(
        keys, decryption_candidates=[*keys.decryption_candidates, (key, renewed)]
    )
    message_id = send_note(pair)
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert open_alerts(pair.hospital) == {}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_alert_raised_by_another_process_is_resolved_by_the_next_heartbeat(
    tmp_path: Path, database_url: str
) -> None:
    # Two serve processes on one store. The first refuses a message; the GP's next message
    # reaches the second, which did not know of the alert yet. Its heartbeat reads the open
    # alerts and sees that the sender's message went through here after the refusal.
    from engine_pair import make_pair

    from meldingstjener.bootstrap import build_engine
    from meldingstjener.config import load_settings
    from meldingstjener.engine.instances import beat

    pair = make_pair(tmp_path, hospital_database_url=database_url)
    second = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    second.transports = pair.hospital.transports
    first = pair.hospital
    try:
        beat(second, "second:8080", started=True)  # it has read the open alerts: none
        pair.network.tamper = flip_last_payload_byte
        send_note(pair)
        assert open_alerts(first) == {REFUSED: ("error", 1)}
        pair.network.tamper = None
        pair.network.engines[pair.hospital_site.endpoint] = pair.hospital = second
        pair.clock.advance(seconds=1)
        message_id = send_note(pair)
        assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
        assert open_alerts(second) == {REFUSED: ("error", 1)}  # not known here yet
        beat(second, "second:8080")
        assert open_alerts(second) == {}
    finally:
        for ctx in (pair.gp, first, second):
            ctx.store.database.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_heartbeats_catch_up_leaves_a_refusal_raised_after_the_message_went_through(
    tmp_path: Path, database_url: str
) -> None:
    # The second process stored a message of the sender after the first refused one; its
    # heartbeat reads the open alert and would resolve it. Between that read and the resolve,
    # the first refuses another message of the sender: that refusal is newer than the message
    # that went through, and must stay open.
    from engine_pair import make_pair
    from sqlalchemy import event

    from meldingstjener.bootstrap import build_engine
    from meldingstjener.config import load_settings
    from meldingstjener.engine.alerts import AlertKind, raise_alert
    from meldingstjener.engine.instances import beat

    pair = make_pair(tmp_path, hospital_database_url=database_url)
    second = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    second.transports = pair.hospital.transports
    first = pair.hospital
    try:
        beat(second, "second:8080", started=True)
        pair.network.tamper = flip_last_payload_byte
        send_note(pair)
        pair.network.tamper = None
        pair.network.engines[pair.hospital_site.endpoint] = pair.hospital = second
        pair.clock.advance(seconds=1)
        send_note(pair)  # went through at the second
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
    finally:
        for ctx in (pair.gp, first, second):
            ctx.store.database.dispose()
