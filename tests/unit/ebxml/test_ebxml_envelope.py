"""Building and parsing envelopes: round trips, the schema, and the field formats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from ebxml_factories import RECEIVER, SENDER, payload_header
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from meldingstjener.contentid import content_id
from meldingstjener.ebxml import (
    Envelope,
    ManifestReference,
    MshDescription,
    Party,
    build_envelope,
    build_from,
    envelope_bytes,
    new_message_id,
    parse_envelope,
)
from meldingstjener.ebxml.codes import EB_NS, MAX_DESCRIPTION_CHARS
from meldingstjener.ebxml.description import MAX_JSON_DESCRIPTION_CHARS
from meldingstjener.ebxml.ids import format_timestamp, parse_timestamp

TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=40,
)
HER = st.integers(min_value=1, max_value=999_999_999).map(str)
MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)
DESCRIPTIONS = st.none() | st.builds(MshDescription, TEXT, TEXT, st.none() | TEXT, st.none() | TEXT)
PARTIES = st.builds(Party, HER, st.none() | TEXT)


@settings(max_examples=60, deadline=None)
@given(
    from_party=PARTIES,
    to_party=PARTIES,
    cpa_id=TEXT,
    conversation_id=TEXT,
    service=TEXT,
    action=TEXT,
    message_id=TEXT,
    timestamp=MOMENTS,
    ref=st.none() | TEXT,
    ttl=st.none() | MOMENTS,
    description=DESCRIPTIONS,
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    # a content-id holds no angle brackets (and a manifest reference naming one is refused)
    cids=st.lists(TEXT.filter(lambda t: content_id(t) is not None), max_size=3, unique=True),
)
def test_envelope_fields_round_trip(
    from_party: Party,
    to_party: Party,
    cpa_id: str,
    conversation_id: str,
    service: str,
    action: str,
    message_id: str,
    timestamp: datetime,
    ref: str | None,
    ttl: datetime | None,
    description: MshDescription | None,
    flags: tuple[bool, bool, bool, bool],
    cids: list[str],
) -> None:
    ack_requested, ack_signed, sync_reply, duplicate_elimination = flags
    header = payload_header(
        from_party=from_party,
        to_party=to_party,
        cpa_id=cpa_id,
        conversation_id=conversation_id,
        service=service,
        action=action,
        message_id=message_id,
        timestamp=timestamp,
        ref_to_message_id=ref,
        time_to_live=ttl,
        description=description,
    )
    original = Envelope(
        header=header,
        ack_requested=ack_requested,
        ack_signed=ack_signed and ack_requested,
        sync_reply=sync_reply,
        duplicate_elimination=duplicate_elimination,
        manifest=tuple(ManifestReference.for_content_id(cid) for cid in cids),
    )
    parsed = parse_envelope(envelope_bytes(build_from(original)))
    assert parsed == original


def test_built_blocks_are_valid_against_the_ebms_schema(reference_dir: Path) -> None:
    schema = etree.XMLSchema(etree.parse(reference_dir / "xsd/ebxml/msg-header-2_0.xsd"))
    root = build_envelope(
        payload_header(ref_to_message_id="r@x", time_to_live=datetime(2030, 1, 1, tzinfo=UTC)),
        manifest=[ManifestReference.for_content_id("a@b", "the payload")],
        sync_reply=True,
        duplicate_elimination=True,
    )
    blocks = [el for el in root.iter() if etree.QName(el).namespace == EB_NS]
    checked = 0
    for block in blocks:
        if etree.QName(block).localname in (
            "MessageHeader",
            "AckRequested",
            "SyncReply",
            "Manifest",
        ):
            assert schema.validate(etree.ElementTree(block)), schema.error_log
            checked += 1
    assert checked == 4


def test_header_element_order_follows_the_schema() -> None:
    root = build_envelope(payload_header(), duplicate_elimination=True)
    header = root.find(f".//{{{EB_NS}}}MessageHeader")
    assert header is not None
    names = [etree.QName(child).localname for child in header]
    assert names == [
        "From",
        "To",
        "CPAId",
        "ConversationId",
        "Service",
        "Action",
        "MessageData",
        "DuplicateElimination",
        "Description",
    ]


def test_description_is_hits_1210_json() -> None:
    root = build_envelope(payload_header())
    description = root.find(f".//{{{EB_NS}}}Description")
    assert description is not None
    assert description.text == (
        '{"MSH-system":"meldingstjener","MSH-versjon":"0.1.0",'
        '"fagsystem":"EPJ","fagsystem-versjon":"7.1"}'
    )
    assert description.get("{http://www.w3.org/XML/1998/namespace}lang") == "NO"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"MSH-system":"NAV EBMS","MSH-versjon":"1.0.0"}', MshDescription("NAV EBMS", "1.0.0")),
        ('  {"MSH-versjon": 2, "fagsystem": "X"}\n', MshDescription(None, "2", "X")),
        ("Sent by our MSH", None),
        ("{not json", None),
        ('{"other": "keys"}', None),
        ("[1, 2]", None),
        ("", None),
    ],
)
def test_description_from_text(text: str, expected: MshDescription | None) -> None:
    assert MshDescription.from_text(text) == expected


def test_a_json_description_is_read_up_to_its_own_limit_not_the_cut_of_a_description() -> None:
    """Two limits, two names: the longest text read as HITS 1210 JSON, and where a
    description is cut (codes.MAX_DESCRIPTION_CHARS, far shorter)."""
    assert MAX_JSON_DESCRIPTION_CHARS > MAX_DESCRIPTION_CHARS
    head = '{"MSH-system":"X","fagsystem":"'
    fits = head + "y" * (MAX_JSON_DESCRIPTION_CHARS - len(head) - 2) + '"}'
    assert MshDescription.from_text(fits) == MshDescription("X", None, fits[len(head) : -2])
    assert MshDescription.from_text(fits[:-2] + 'y"}') is None


def test_party_with_extra_party_ids_round_trips() -> None:
    party = Party("79768", "KontrollUtbetaler", "HER", (("ENH", "889640782"),))
    parsed = parse_envelope(envelope_bytes(build_envelope(payload_header(to_party=party))))
    assert parsed.header.to_party == party
    assert parsed.header.from_party == SENDER


def test_her_id_is_normalised() -> None:
    parsed = parse_envelope(
        envelope_bytes(build_envelope(payload_header(to_party=Party("0079768", None))))
    )
    assert parsed.header.to_party.her_id == RECEIVER.her_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-24T10:42:58.7250721Z", datetime(2025, 1, 24, 10, 42, 58, 725072, tzinfo=UTC)),
        ("2014-06-07T19:42:20Z", datetime(2014, 6, 7, 19, 42, 20, tzinfo=UTC)),
        ("2014-06-07T21:42:20+02:00", datetime(2014, 6, 7, 19, 42, 20, tzinfo=UTC)),
        ("2014-06-07T21:42:20.5+0200", datetime(2014, 6, 7, 19, 42, 20, 500000, tzinfo=UTC)),
        ("2014-06-07T19:42:20", datetime(2014, 6, 7, 19, 42, 20, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2014-06-07", "2014-13-07T19:42:20Z"])
def test_parse_timestamp_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_format_timestamp_is_utc_with_z() -> None:
    oslo = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2024, 5, 1, 14, 0, 0, tzinfo=oslo)) == "2024-05-01T12:00:00Z"
    assert format_timestamp(datetime(2024, 5, 1, 12, 0, 0, 1500, tzinfo=UTC)) == (
        "2024-05-01T12:00:00.001500Z"
    )


def test_new_message_id() -> None:
    first, second = new_message_id("msh.example.no"), new_message_id("msh.example.no")
    assert first != second
    assert first.endswith("@msh.example.no")
    assert len(first.split("@")[0]) == 36
    with pytest.raises(ValueError):
        new_message_id("bad host")


def test_manifest_content_id_is_percent_decoded() -> None:
    reference = ManifestReference.for_content_id("<a b%c@x>")
    assert reference.href == "cid:a%20b%25c@x"
    assert reference.content_id == "a b%c@x"
    parsed = parse_envelope(envelope_bytes(build_envelope(payload_header(), manifest=[reference])))
    assert parsed.manifest == (reference,)


def test_a_long_manifest_description_is_cut_not_refused() -> None:
    reference = ManifestReference.for_content_id("p@x", "d" * 300)
    root = build_envelope(payload_header(), manifest=[reference])
    [parsed] = parse_envelope(envelope_bytes(root)).manifest
    assert parsed.description == "d" * 254 + "\u2026"
    described = root.find(f".//{{{EB_NS}}}Reference/{{{EB_NS}}}Description")
    assert described is not None
    described.text = "e" * 300  # a peer's, uncut
    [parsed] = parse_envelope(envelope_bytes(root)).manifest
    assert parsed.description == "e" * 254 + "\u2026"
