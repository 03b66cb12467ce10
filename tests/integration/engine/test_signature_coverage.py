"""What we read from an envelope is what its signature covers.

The envelope's signature leaves out elements whose SOAP:actor is nextMSH or next (a hop may
change them) and comments (canonicalisation drops them). Either could put a value before or
inside a signed one and be read instead, with the signature intact: a signed envelope of any
partner, captured, would then say another message id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from engine_pair import Pair

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml import unpackage
from meldingstjener.engine import inbound
from meldingstjener.engine.outbound import submit
from meldingstjener.transport.base import Delivery

NEXT_MSH = 'actor="urn:oasis:names:tc:ebxml-msg:actor:nextMSH"'


def _sent_to(pair: Pair, endpoint: str) -> list[Delivery]:
    return [d for d in pair.network.sent if d.endpoint == endpoint]


def _wire(delivery: Delivery) -> tuple[str, bytes, str]:
    """(content type, body, envelope XML) of a delivery as it went over the wire."""
    body = delivery.body.read_bytes() if isinstance(delivery.body, Path) else delivery.body
    assert isinstance(body, bytes)
    return delivery.content_type, body, unpackage(delivery.content_type, body).envelope_xml.decode()


def _prefixes(envelope: str) -> tuple[str, str]:
    soap = re.search(r"<(\w+):Envelope", envelope)
    eb = re.search(r"<(\w+):MessageHeader", envelope)
    assert soap is not None and eb is not None
    return soap.group(1), eb.group(1)


def _inbound_rows(pair: Pair) -> int:
    return len(pair.inbound_messages(pair.hospital))


@pytest.mark.parametrize("trick", ["hop-to-hop element", "comment"])
def test_a_captured_message_cannot_be_replayed_under_another_message_id(
    pair: Pair, trick: str
) -> None:
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert _inbound_rows(pair) == 1
    content_type, body, envelope = _wire(_sent_to(pair, pair.hospital_site.endpoint)[0])
    soap, eb = _prefixes(envelope)
    message_id = re.search(rf"<{eb}:MessageId>([^<]+)<", envelope)
    assert message_id is not None
    value = message_id.group(1)
    if trick == "comment":  # "abc<!---->xyz" read as "abc": a new id, the digest unchanged
        forged = envelope.replace(
            f"<{eb}:MessageId>{value}<", f"<{eb}:MessageId>{value[:-3]}<!---->{value[-3:]}<"
        )
    else:
        forged = envelope.replace(
            f"<{eb}:MessageId>",
            f"<{eb}:MessageId {soap}:{NEXT_MSH}>replayed-1</{eb}:MessageId><{eb}:MessageId>",
            1,
        )
    assert forged != envelope
    forged_body = body.replace(envelope.encode(), forged.encode())
    with pytest.raises(inbound.InboundRefused, match="SecurityFailure"):
        inbound.receive(pair.hospital, content_type, forged_body)
    assert _inbound_rows(pair) == 1  # never a second message


def test_a_signed_acknowledgment_cannot_be_pointed_at_another_message(pair: Pair) -> None:
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "one"), actor="t")
    pair.run()
    assert pair.message(pair.gp, first).status == "transport-acknowledged"
    content_type, body, envelope = _wire(_sent_to(pair, pair.gp_site.endpoint)[-1])
    pair.network.down.add(pair.hospital_site.endpoint)
    second = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "two"), actor="t")
    pair.run()
    target = pair.message(pair.gp, second)
    assert target.status == "retrying"
    soap, eb = _prefixes(envelope)
    hop = f"{soap}:{NEXT_MSH}"
    forged = envelope.replace(
        f"<{eb}:MessageId>", f"<{eb}:MessageId {hop}>forged-1</{eb}:MessageId><{eb}:MessageId>", 1
    ).replace(
        f"<{eb}:RefToMessageId>",
        f"<{eb}:RefToMessageId {hop}>{target.ebxml_message_id}</{eb}:RefToMessageId>"
        f"<{eb}:RefToMessageId>",
    )
    assert forged != envelope
    with pytest.raises(inbound.InboundRefused, match="SecurityFailure"):
        inbound.receive(pair.gp, content_type, body.replace(envelope.encode(), forged.encode()))
    assert pair.message(pair.gp, second).status == "retrying"  # still owed, still resent


def _multipart(parts: list[tuple[str, str, bytes]], start: str) -> tuple[str, bytes]:
    """A multipart/related body of (raw Content-ID header value, Content-Type, bytes) parts."""
    body = b""
    for content_id, media, data in parts:
        body += (
            b"--B\r\nContent-Type: " + media.encode() + b"\r\nContent-Transfer-Encoding: binary"
            b"\r\nContent-ID: " + content_id.encode() + b"\r\n\r\n" + data + b"\r\n"
        )
    body += b"--B--\r\n"
    return f'multipart/related; type="text/xml"; boundary="B"; start="<{start}>"', body


def test_a_payload_cannot_be_swapped_under_a_genuine_signature_by_its_content_id(
    pair: Pair,
) -> None:
    """MIME headers are not signed: the genuine payload renamed <<cid>>, another part (encrypted
    to the receiver by anyone) given <cid>. Two parts to one reader of content-ids and one to
    another would let the signature check the genuine bytes and the manifest's cid:cid pick the
    other part."""
    pair.network.down.add(pair.hospital_site.endpoint)
    for text in ("GENUINE note", "ATTACKER note"):
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, text), actor="t")
    pair.run()
    genuine, other = (
        unpackage(content_type, body)
        for content_type, body, _ in map(_wire, _sent_to(pair, pair.hospital_site.endpoint)[:2])
    )
    ((cid, genuine_part),) = genuine.attachments.items()
    ((_, other_part),) = other.attachments.items()
    content_type, forged = _multipart(
        [
            (f"<{genuine.start}>", "text/xml; charset=UTF-8", genuine.envelope_xml),
            (f"<{cid}>", other_part.content_type, other_part.data),
            (f"<<{cid}>>", genuine_part.content_type, genuine_part.data),
        ],
        genuine.start,
    )
    try:
        reply = inbound.receive(pair.hospital, content_type, forged)
    except inbound.InboundRefused as refused:
        assert refused.code == "MimeProblem"
    else:
        assert reply.body is not None and b"MessageError" in reply.body
        assert b"MimeProblem" in reply.body
    assert _inbound_rows(pair) == 0
