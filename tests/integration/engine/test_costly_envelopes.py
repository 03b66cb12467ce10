"""Requests made to cost the receiver much before anybody is authenticated are refused before
the costly part: a known partner's From is all such a request needs (HER-ids are public)."""

from __future__ import annotations

import pytest
from engine_pair import Pair

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml import Attachment
from meldingstjener.engine import inbound, payload_io
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit


def gp_wire(pair: Pair) -> tuple[bytes, str]:
    """A message from the GP to the hospital as it goes over the wire (kept from the network)."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.network.down.clear()
    row = pair.message(pair.gp, message_id)
    return pair.gp.store.payloads.read_bytes(str(row.wire_ref)), str(row.wire_content_type)


MANY_DECLARATIONS = b" ".join(b'xmlns:n%d="urn:n:%d"' % (i, i) for i in range(100))
MANY_ATTRIBUTES = b" ".join(b'a%d="x"' % i for i in range(100))


@pytest.mark.parametrize(
    ("element", "added"),
    [(b"<SOAP:Envelope ", MANY_DECLARATIONS), (b"<SOAP:Header", MANY_ATTRIBUTES)],
    ids=["namespace-declarations", "attributes"],
)
def test_an_envelope_made_costly_to_canonicalise_is_refused_as_other_xml_before_its_signature(
    pair: Pair, element: bytes, added: bytes
) -> None:
    # Checking the signature canonicalises the whole envelope, at a cost growing with the
    # square of the declarations or attributes on one element: 20,000 declarations on
    # SOAP:Envelope cost 35 s of CPU. Refused as unreadable XML, no signature is checked.
    body, content_type = gp_wire(pair)
    assert element in body
    costly = body.replace(element, element + b" " + added + b" ", 1)
    with pytest.raises(inbound.InboundRefused) as refused:
        inbound.receive(pair.hospital, content_type, costly)
    assert refused.value.code == "OtherXml"
    assert "namespace declarations" in refused.value.detail or "attributes" in refused.value.detail
    # the genuine message is still received
    inbound.receive(pair.hospital, content_type, body)
    assert [row.status for row in pair.inbound_messages(pair.hospital)] == ["acknowledged"]


def flip_last_payload_byte(body: bytes) -> bytes:
    """The signature no longer matches the payload (the encrypted payload is the last part)."""
    end = body.rindex(b"\r\n--")
    return body[: end - 1] + bytes([body[end - 1] ^ 0x01]) + body[end:]


def test_a_payloads_content_keys_are_read_only_after_its_signature_verified(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading the keys of a payload that names our certificate thousands of times (issuer and
    # serial are public) and looking them up cost seconds: not for a sender not yet verified.
    read: list[str] = []
    wrapped_keys = payload_io.wrapped_keys

    def reading(ctx: EngineContext, part: Attachment) -> frozenset[str]:
        read.append(part.content_id)
        return wrapped_keys(ctx, part)

    monkeypatch.setattr(payload_io, "wrapped_keys", reading)
    body, content_type = gp_wire(pair)
    reply = inbound.receive(pair.hospital, content_type, flip_last_payload_byte(body))
    assert reply.body is not None and b"SecurityFailure" in reply.body
    assert read == []
    # a verified message has its keys read (and recorded: a copy of its payload is refused)
    inbound.receive(pair.hospital, content_type, body)
    assert len(read) == 1
    assert [row.status for row in pair.inbound_messages(pair.hospital)] == ["acknowledged"]
