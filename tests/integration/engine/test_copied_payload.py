"""A payload's content key is used in one received message only.

The ciphertext of a payload is not bound to the envelope that carries it: a registered party
holding a copy of another partner's payload to us could put it into signed messages of its own.
Altered, each such message was an oracle: refused as not decryptable when the CBC padding came
out wrong, as unreadable when it came out right (garbage), which is enough to decrypt the copy
block by block. Unaltered, the copy was a second delivery of the same content. Now the second
use of a content key is refused before anything is decrypted, with one answer whatever the
content, and without naming the message that used it first.

The party copying payloads here is the GP office itself (the only other party the hospital
knows): what is checked is the key, not who sends it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from engine_pair import Pair, at_once

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml import unpackage
from meldingstjener.engine import inbound
from meldingstjener.engine.outbound import submit
from meldingstjener.security import cms_enveloped
from meldingstjener.store.uow import ContentKeyRepository

COPIED = "content-encryption key was used in another message before"


def captured_payload(pair: Pair, index: int = 0) -> bytes:
    """The encrypted payload part of the ``index``-th message the GP office sent the hospital."""
    deliveries = [
        d
        for d in pair.network.sent
        if d.endpoint == pair.hospital_site.endpoint and b"pkcs7-mime" in _body(d.body)
    ]
    mime = unpackage(deliveries[index].content_type, _body(deliveries[index].body))
    [part] = mime.attachments.values()
    return part.data


def _body(body: bytes | Path) -> bytes:
    return body.read_bytes() if isinstance(body, Path) else body


def send_with_payload(pair: Pair, monkeypatch: pytest.MonkeyPatch, ciphertext: bytes) -> str:
    """A new message of the GP office's, signed as usual, that carries ``ciphertext`` as its
    encrypted payload."""
    real = cms_enveloped.encrypt
    taken: list[bytes] = []

    def copy_instead(*args: object, **kwargs: object) -> bytes:
        if taken:
            return real(*args, **kwargs)  # type: ignore[arg-type]
        taken.append(ciphertext)
        return ciphertext

    monkeypatch.setattr(cms_enveloped, "encrypt", copy_instead)
    try:
        message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "y"), actor="t")
        pair.run()
    finally:
        monkeypatch.setattr(cms_enveloped, "encrypt", real)
    assert taken, "the message was not sealed"
    return message_id


def refusal_of(pair: Pair, message_id: str) -> tuple[str, str | None, str]:
    """(status, error code, what we were told) of a message the GP office sent."""
    sent = pair.message(pair.gp, message_id)
    with pair.gp.store.unit_of_work() as uow:
        told = [r.description for r in uow.receipts.for_message(message_id)]
    return sent.status, sent.last_error_code, " ".join(str(t) for t in told)


def bad_padding(ciphertext: bytes) -> bytes:
    # The encrypted content is the last element of the EnvelopedData (DER, definite lengths):
    # flipping bit 0 of the second-to-last block's last byte flips it in the last plaintext
    # byte, the padding length, which then never checks out (1..16 becomes 0 or another
    # length whose other bytes disagree).
    at = len(ciphertext) - 17
    return ciphertext[:at] + bytes([ciphertext[at] ^ 0x01]) + ciphertext[at + 1 :]


def test_a_copied_payload_is_refused_the_same_way_whatever_its_content(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, first).status == "transport-acknowledged"
    payload = captured_payload(pair)
    as_is = send_with_payload(pair, monkeypatch, payload)
    padding_broken = send_with_payload(pair, monkeypatch, bad_padding(payload))
    answers = {refusal_of(pair, as_is), refusal_of(pair, padding_broken)}
    assert len(answers) == 1, answers  # one answer: nothing to learn from it
    [(status, code, told)] = answers
    assert status == "transport-error" and code == "SecurityFailure"
    assert COPIED in told and first not in told
    received = pair.inbound_messages(pair.hospital)
    assert sorted(m.status for m in received) == ["acknowledged", "rejected", "rejected"]
    # never decrypted: refused before, so nothing of its content was judged
    for message in received:
        if message.status == "rejected":
            assert message.last_error_code == "SecurityFailure"
            assert COPIED in str(message.last_error_text)


def test_a_refusal_before_decryption_leaves_the_key_to_its_message(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    original = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, original).status == "retrying"
    payload = captured_payload(pair)
    pair.network.down.clear()
    # a copy in a message whose signature fails is refused before its payload is opened
    flip = pair.network.tamper = _flip_signature_value
    copy = send_with_payload(pair, monkeypatch, payload)
    assert pair.network.tamper is flip
    pair.network.tamper = None
    status, code, _ = refusal_of(pair, copy)
    assert status == "transport-error" and code == "SecurityFailure"
    pair.clock.advance(seconds=601)  # the original's retry
    pair.run()
    assert pair.message(pair.gp, original).status == "transport-acknowledged"


def _flip_signature_value(body: bytes) -> bytes:
    if b"pkcs7-mime" not in body:
        return body
    start = body.index(b"SignatureValue>") + len(b"SignatureValue>")
    flipped = b"A" if body[start : start + 1] != b"A" else b"B"
    return body[:start] + flipped + body[start + 1 :]


def test_two_messages_with_one_key_at_once_store_one(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before decryption and the store race: two requests may both find the key
    unused. The table's key decides; the later one is refused as a copy."""
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    payload = captured_payload(pair)
    # the first request's row not committed yet when the second looks
    monkeypatch.setattr(ContentKeyRepository, "used", lambda _self, _digests: False)
    copy = send_with_payload(pair, monkeypatch, payload)
    status, code, told = refusal_of(pair, copy)
    assert status == "transport-error" and code == "SecurityFailure" and COPIED in told
    assert pair.message(pair.gp, first).status == "transport-acknowledged"
    received = pair.inbound_messages(pair.hospital)
    assert sorted(m.status for m in received) == ["acknowledged", "rejected"]


def test_a_spooled_copy_that_loses_the_race_is_refused_and_its_file_kept_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A body over a megabyte, and every mail, arrives in a spool that becomes the stored wire
    # form by a rename: the refusal after the lost race must still find it (it was answered
    # 503, with a store-failing alert, when the file had gone first).
    pair.network.down.add(pair.hospital_site.endpoint)
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    payload = captured_payload(pair)
    for _ in range(2):
        send_with_payload(pair, monkeypatch, payload)
    first, second = [d for d in pair.network.sent if d.endpoint == pair.hospital_site.endpoint][-2:]
    inbound.receive(pair.hospital, first.content_type, _body(first.body))
    monkeypatch.setattr(ContentKeyRepository, "used", lambda _self, _digests: False)
    spool = pair.hospital.store.payloads.spool()
    spool.write(_body(second.body))
    inbound.receive(pair.hospital, second.content_type, spool)
    received = pair.inbound_messages(pair.hospital)
    assert sorted(m.status for m in received) == ["acknowledged", "rejected"]
    [refused] = [m for m in received if m.status == "rejected"]
    assert COPIED in str(refused.last_error_text)
    stored = pair.hospital.store.payloads
    assert stored.read_bytes(str(refused.wire_ref)) == _body(second.body)
    root = stored.root
    files = [p for p in root.rglob("*") if p.is_file()]
    # per message its wire form and its signal; the accepted one also its business message
    assert len(files) == 5


def test_a_resend_of_the_same_message_is_no_copy(pair: Pair) -> None:
    # the resend carries the same payload, and the same MessageId: answered as a duplicate
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    [delivery] = [d for d in pair.network.sent if d.endpoint == pair.hospital_site.endpoint]
    inbound.receive(pair.hospital, delivery.content_type, _body(delivery.body))
    received = pair.inbound_messages(pair.hospital)
    assert [m.status for m in received] == ["acknowledged"]
    assert pair.message(pair.gp, first).status == "transport-acknowledged"


def test_a_key_used_by_a_refused_message_is_used(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # refused after decryption (its content is no fagmelding): the key was used all the same
    our_certificate = pair.hospital.keys.decryption_candidates[0][1]
    garbage = cms_enveloped.encrypt(b"not a business message", our_certificate)
    first = send_with_payload(pair, monkeypatch, garbage)
    assert refusal_of(pair, first)[:2] == ("transport-error", "OtherXml")
    copy = send_with_payload(pair, monkeypatch, garbage)
    status, code, told = refusal_of(pair, copy)
    assert (status, code) == ("transport-error", "SecurityFailure") and COPIED in told


def test_two_copies_at_once_one_goes_through(
    pair_with_hospital_database: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = pair_with_hospital_database
    pair.network.down.add(pair.hospital_site.endpoint)  # everything stays on the wire
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    payload = captured_payload(pair)
    for _ in range(2):
        send_with_payload(pair, monkeypatch, payload)
    copies = [d for d in pair.network.sent if d.endpoint == pair.hospital_site.endpoint][-2:]
    assert len({c.ebxml_message_id for c in copies}) == 2
    turn = iter(copies)
    lock = threading.Lock()

    def receive_one() -> inbound.InboundReply:
        with lock:
            copy = next(turn)
        return inbound.receive(pair.hospital, copy.content_type, _body(copy.body))

    at_once(2, receive_one)
    received = pair.inbound_messages(pair.hospital)
    assert sorted(m.status for m in received) == ["acknowledged", "rejected"]
    [refused] = [m for m in received if m.status == "rejected"]
    assert COPIED in str(refused.last_error_text)
