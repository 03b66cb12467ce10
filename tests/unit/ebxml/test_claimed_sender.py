"""The From HER-id a refused request names (the store-failing alert's senders, the ebms-refused
alert's party): read from the envelope parsed as XML, whatever else in it is wrong, by the rule
the envelope's parser reads a PartyId of type HER by."""

from __future__ import annotations

import pytest
from ebxml_factories import SENDER, payload_bytes

from meldingstjener.engine.ebms_alerts import claimed_sender, claimed_sender_of_head

LIMIT = 1024 * 1024
SENT_BY = f'<eb:PartyId eb:type="HER">{SENDER.her_id}</eb:PartyId>'


def _envelope(party_id: str = SENT_BY, **changes: object) -> bytes:
    envelope = payload_bytes(**changes).decode()
    assert envelope.count(SENT_BY) == 1
    return envelope.replace(SENT_BY, party_id).encode()


def test_the_from_of_a_readable_envelope_is_named() -> None:
    assert claimed_sender("text/xml", _envelope(), max_xml_bytes=LIMIT) == SENDER.her_id


def test_a_defect_elsewhere_in_the_envelope_does_not_hide_its_from() -> None:
    broken = _envelope().replace(b"<eb:ConversationId>conv-1</eb:ConversationId>", b"")
    assert broken != _envelope()

    assert claimed_sender("text/xml", broken, max_xml_bytes=LIMIT) == SENDER.her_id


@pytest.mark.parametrize(
    ("party_id", "named"),
    [
        (f'<eb:PartyId eb:type=" her ">  {SENDER.her_id} </eb:PartyId>', SENDER.her_id),
        (f'<eb:PartyId type="HER">{SENDER.her_id}</eb:PartyId>', SENDER.her_id),  # bare
        # a comment cuts what element.text reads: the parser refuses such a value
        ('<eb:PartyId eb:type="HER">81<!---->41253</eb:PartyId>', None),
        ('<eb:PartyId eb:type="HER">not-a-her-id</eb:PartyId>', None),
    ],
)
def test_a_party_id_of_type_her_is_read_as_the_envelope_parser_reads_it(
    party_id: str, named: str | None
) -> None:
    envelope = _envelope(party_id)

    assert claimed_sender("text/xml", envelope, max_xml_bytes=LIMIT) == named


BOUNDARY = "b-1"
MULTIPART = f'multipart/related; type="text/xml"; boundary="{BOUNDARY}"'


def _multipart_head(envelope: bytes) -> bytes:
    """The first bytes of a large body: its envelope part, then a payload part cut short."""
    return (
        f"--{BOUNDARY}\r\nContent-ID: <envelope@x>\r\nContent-Type: text/xml\r\n\r\n".encode()
        + envelope
        + f"\r\n--{BOUNDARY}\r\nContent-ID: <part-1@x>\r\n\r\n".encode()
        + b"x" * 1000
    )


def test_the_from_is_read_from_the_first_bytes_of_a_body_that_hold_the_envelope() -> None:
    head = _multipart_head(_envelope())

    assert claimed_sender_of_head(MULTIPART, head, max_xml_bytes=LIMIT) == SENDER.her_id


def test_first_bytes_that_end_inside_the_envelope_name_no_sender() -> None:
    head = _multipart_head(_envelope())
    inside = head[: head.index(b"</eb:MessageHeader>")]

    assert claimed_sender_of_head(MULTIPART, inside, max_xml_bytes=LIMIT) is None
    assert claimed_sender_of_head("text/xml", _envelope()[:-40], max_xml_bytes=LIMIT) is None
