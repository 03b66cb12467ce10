"""Acknowledgment and MessageError: built by us, read back, addressed back to the sender."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from ebxml_factories import RECEIVER, SENDER, payload_bytes, payload_header
from lxml import etree

from meldingstjener.ebxml import (
    EbxmlError,
    ErrorCode,
    ErrorDetail,
    OriginalIds,
    Party,
    ReceiptDigests,
    Severity,
    SignedReference,
    build_acknowledgment,
    build_message_error,
    compare_receipt_digests,
    envelope_bytes,
    parse_envelope,
    signature_references,
    unpackage_message,
)
from meldingstjener.ebxml.codes import DS_NS, EB_NS, EBMS_SERVICE, MAX_DESCRIPTION_CHARS
from meldingstjener.formats.xmlparse import parse_xml

ACKED_AT = datetime(2024, 3, 1, 12, 31, tzinfo=UTC)
RECEIVED_AT = datetime(2024, 3, 1, 12, 30, 59, tzinfo=UTC)
REFERENCES = [
    SignedReference("", "http://www.w3.org/2001/04/xmlenc#sha256", "AAAA"),
    ("cid:part-1@x", "http://www.w3.org/2001/04/xmlenc#sha256", "BBBB"),
]


def test_acknowledgment_round_trip() -> None:
    original = parse_envelope(payload_bytes())
    root = build_acknowledgment(
        original,
        references=REFERENCES,
        message_id="ack-1@us",
        timestamp=ACKED_AT,
        received_at=RECEIVED_AT,
    )
    ack = parse_envelope(envelope_bytes(root))
    header = ack.header
    assert (header.service, header.action) == (EBMS_SERVICE, "Acknowledgment")
    assert header.from_party == RECEIVER  # us: the original's To
    assert header.to_party == SENDER
    assert header.cpa_id == original.header.cpa_id
    assert header.conversation_id == original.header.conversation_id
    assert header.ref_to_message_id == "m-1@msh.example.no"
    assert header.message_id == "ack-1@us"
    assert header.timestamp == ACKED_AT
    assert not ack.ack_requested  # signals are never acknowledged
    assert ack.acknowledgment is not None
    assert ack.acknowledgment.ref_to_message_id == "m-1@msh.example.no"
    assert ack.acknowledgment.timestamp == RECEIVED_AT
    assert list(ack.acknowledgment.references) == [tuple(r) for r in REFERENCES]
    block = root.find(f".//{{{EB_NS}}}Acknowledgment")
    assert block is not None
    assert block.get("{http://schemas.xmlsoap.org/soap/envelope/}actor") == (
        "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
    )
    # The whole-envelope reference restates the HIS 1037 transforms.
    transforms = block.findall(f".//{{{DS_NS}}}Transform")
    assert [t.get("Algorithm") for t in transforms] == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    ]


def test_acknowledgment_our_party_can_be_given() -> None:
    us = Party("79768", "Mottaker", "HER", (("ENH", "889640782"),))
    root = build_acknowledgment(
        payload_header(), references=[], message_id="a@us", timestamp=ACKED_AT, our_party=us
    )
    assert parse_envelope(envelope_bytes(root)).header.from_party == us


def test_acknowledgment_refs_mismatch_is_inconsistent() -> None:
    root = build_acknowledgment(
        payload_header(), references=[], message_id="a@us", timestamp=ACKED_AT
    )
    ref = root.find(f".//{{{EB_NS}}}Acknowledgment/{{{EB_NS}}}RefToMessageId")
    assert ref is not None
    ref.text = "someone-else@x"
    with pytest.raises(EbxmlError) as caught:
        parse_envelope(envelope_bytes(root))
    assert caught.value.code is ErrorCode.INCONSISTENT


def test_message_error_round_trip() -> None:
    errors = [
        ErrorDetail(ErrorCode.SECURITY_FAILURE, Severity.ERROR, "cid:part-1@x", "digest mismatch"),
        ErrorDetail(
            ErrorCode.INCONSISTENT, Severity.WARNING, "xpointer(//eb:MessageHeader/eb:CPAId)"
        ),
    ]
    root = build_message_error(
        parse_envelope(payload_bytes()), errors, message_id="err-1@us", timestamp=ACKED_AT
    )
    parsed = parse_envelope(envelope_bytes(root))
    assert parsed.is_message_error
    assert parsed.header.from_party == RECEIVER and parsed.header.to_party == SENDER
    assert parsed.header.ref_to_message_id == "m-1@msh.example.no"
    assert not parsed.ack_requested
    assert parsed.error_list is not None
    assert parsed.error_list.highest_severity is Severity.ERROR
    assert parsed.error_list.errors == tuple(errors)


def test_message_error_of_warnings_only_has_highest_severity_warning() -> None:
    root = build_message_error(
        payload_header(),
        [ErrorDetail(ErrorCode.NOT_SUPPORTED, Severity.WARNING)],
        message_id="err-2@us",
        timestamp=ACKED_AT,
    )
    error_list = parse_envelope(envelope_bytes(root)).error_list
    assert error_list is not None and error_list.highest_severity is Severity.WARNING


def test_message_error_for_a_message_whose_id_was_unreadable() -> None:
    ids = OriginalIds(sender=SENDER, cpa_id="nav:qass:35065", conversation_id="c-9")
    root = build_message_error(
        ids,
        [EbxmlError(ErrorCode.OTHER_XML, "MessageId missing", "//eb:MessageData").to_detail()],
        message_id="err-3@us",
        timestamp=ACKED_AT,
        our_party=RECEIVER,
    )
    parsed = parse_envelope(envelope_bytes(root))
    assert parsed.header.ref_to_message_id is None
    assert parsed.header.to_party == SENDER
    assert parsed.error_list is not None
    assert parsed.error_list.errors[0].code is ErrorCode.OTHER_XML
    # an XPointer on the wire, as NAV's MSH writes them (review: interop 6)
    assert parsed.error_list.errors[0].location == "xpointer(//eb:MessageData)"


@pytest.mark.parametrize(
    ("ours", "on_the_wire"),
    [
        ("//eb:MessageHeader/eb:Action", "xpointer(//eb:MessageHeader/eb:Action)"),
        ("eb:MessageHeader/eb:To/eb:PartyId", "xpointer(//eb:MessageHeader/eb:To/eb:PartyId)"),
        ("ds:Signature/ds:KeyInfo", "xpointer(//ds:Signature/ds:KeyInfo)"),
        ("/SOAP:Envelope/SOAP:Header/X", "xpointer(/SOAP:Envelope/SOAP:Header/X)"),
        ("cid:a%20b@x", "cid:a%20b@x"),
        ("xpointer(//MessageHeader/CpaId)", "xpointer(//MessageHeader/CpaId)"),
    ],
)
def test_an_error_location_goes_as_an_xpointer_or_a_cid_url(ours: str, on_the_wire: str) -> None:
    root = build_message_error(
        OriginalIds(sender=SENDER, cpa_id="c", conversation_id="c"),
        [ErrorDetail(ErrorCode.OTHER_XML, Severity.ERROR, ours, "x")],
        message_id="err-4@us",
        timestamp=ACKED_AT,
        our_party=RECEIVER,
    )
    [error] = parse_envelope(envelope_bytes(root)).error_list.errors  # type: ignore[union-attr]
    assert error.location == on_the_wire


def test_a_part_is_located_by_its_cid_url() -> None:
    from meldingstjener.contentid import content_id_of_url
    from meldingstjener.ebxml.codes import cid_location

    assert cid_location("a b%c@x") == "cid:a%20b%25c@x"
    assert content_id_of_url(cid_location("a b%c@x")) == "a b%c@x"


def test_message_error_needs_errors_and_a_sender() -> None:
    with pytest.raises(ValueError):
        build_message_error(payload_header(), [], message_id="e@us", timestamp=ACKED_AT)
    ids = OriginalIds(sender=SENDER, cpa_id="c", conversation_id="c")
    with pytest.raises(ValueError):
        build_message_error(
            ids, [ErrorDetail(ErrorCode.UNKNOWN)], message_id="e@us", timestamp=ACKED_AT
        )


def test_signature_references_of_an_unsigned_envelope_are_empty() -> None:
    assert signature_references(parse_xml(payload_bytes())) == []


def test_acknowledgment_for_the_real_mail_carries_its_digests(reference_dir: Path) -> None:
    mail = reference_dir / "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328.msg"
    message = unpackage_message(mail.read_bytes())
    root = parse_xml(message.envelope_xml)
    original = parse_envelope(root)
    ack_root = build_acknowledgment(
        original,
        references=signature_references(root),
        message_id="ack@nav",
        timestamp=ACKED_AT,
    )
    ack = parse_envelope(etree.tostring(ack_root))
    assert ack.header.to_party.her_id == "8141253"
    assert ack.header.from_party.her_id == "79768"
    assert ack.header.ref_to_message_id == "7104acf8-21e9-4ee7-b894-d413a00a8881"
    assert ack.acknowledgment is not None
    assert [r.digest_value for r in ack.acknowledgment.references] == [
        "Mw8YxTebu2r+7Q2xcmzX1CxetA2bAdQCUqHetehHMaI=",
        "ihNHQl8a44GwTy72Bq7m0jyn8/Ap7nbSOtNix4sycTs=",
    ]


def test_a_long_error_description_is_cut_when_built_and_when_read() -> None:
    # ours quote up to three XML parser messages: 288 characters were refused whole (OtherXml)
    # by a peer reading eb:Description as a 255-character value, the refusal in it lost
    long = "the business message cannot be interpreted: " + "x" * 256
    root = build_message_error(
        payload_header(),
        [ErrorDetail(ErrorCode.OTHER_XML, Severity.ERROR, "cid", long)],
        message_id="err-3@us",
        timestamp=ACKED_AT,
    )
    error_list = parse_envelope(envelope_bytes(root)).error_list
    assert error_list is not None
    [error] = error_list.errors
    assert error.description is not None and long.startswith(error.description[:-1])
    assert len(error.description) <= MAX_DESCRIPTION_CHARS
    # a peer's longer text is read, cut, not refused
    description = root.find(f".//{{{EB_NS}}}Description")
    assert description is not None
    description.text = long
    error_list = parse_envelope(envelope_bytes(root)).error_list
    assert error_list is not None
    assert error_list.errors[0].description == long[: MAX_DESCRIPTION_CHARS - 1] + "\u2026"


# --- what an Acknowledgment's digests prove of what we sent ----------------------------------

SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SIGNED = [SignedReference("", SHA256, "AAAA"), SignedReference("cid:part-1@x", SHA256, "BBBB")]


def test_an_acknowledgment_repeating_our_digests_proves_the_payload() -> None:
    digests = compare_receipt_digests(SIGNED, SIGNED)
    assert digests == ReceiptDigests(matched=("", "cid:part-1@x"))
    assert digests.proves_payload


def test_a_digest_value_not_ours_contradicts() -> None:
    value = compare_receipt_digests(SIGNED, [SignedReference("cid:part-1@x", SHA256, "CCCC")])
    assert value.contradicted == ("cid:part-1@x",) and not value.proves_payload


def test_a_digest_of_another_method_or_empty_is_not_comparable() -> None:
    # a partner MSH computing the digests itself with sha1 proves nothing either way
    sha1 = "http://www.w3.org/2000/09/xmldsig#sha1"
    method = compare_receipt_digests(SIGNED, [SignedReference("", sha1, "AAAA")])
    assert method == ReceiptDigests(not_comparable=("",))
    empty = compare_receipt_digests(SIGNED, [SignedReference("", SHA256, "")])
    assert empty == ReceiptDigests(not_comparable=("",))


def test_a_digest_value_is_compared_as_base64_whitespace_aside() -> None:
    spaced = compare_receipt_digests(
        [SignedReference("", SHA256, "AAAAAA==")], [SignedReference("", SHA256, " AAAA\nAA== ")]
    )
    assert spaced.matched == ("",)


@pytest.mark.parametrize("uri", ["cid:<part-1@x>", "cid:%3Cpart-1@x%3E", "CID:part%2D1@x"])
def test_a_cid_uri_is_compared_by_its_content_id(uri: str) -> None:
    digests = compare_receipt_digests(SIGNED, [SignedReference(uri, SHA256, "BBBB")])
    assert digests == ReceiptDigests(matched=("cid:part-1@x",)) and digests.proves_payload
    other = compare_receipt_digests(SIGNED, [SignedReference(uri, SHA256, "CCCC")])
    assert other.contradicted == ("cid:part-1@x",)


def test_no_references_or_the_envelope_s_alone_prove_no_payload() -> None:
    assert compare_receipt_digests(SIGNED, []) == ReceiptDigests()
    envelope_only = compare_receipt_digests(SIGNED, [SIGNED[0]])
    assert envelope_only.matched == ("",) and not envelope_only.proves_payload
    elsewhere = compare_receipt_digests(SIGNED, [SignedReference("cid:other@y", SHA256, "DDDD")])
    assert elsewhere == ReceiptDigests(not_ours=("cid:other@y",))


def test_the_digests_of_an_acknowledgment_we_built_are_those_we_received() -> None:
    original = parse_envelope(payload_bytes())
    root = build_acknowledgment(
        original, references=REFERENCES, message_id="ack-1@us", timestamp=ACKED_AT
    )
    ack = parse_envelope(envelope_bytes(root)).acknowledgment
    assert ack is not None
    sent = [SignedReference(*reference) for reference in REFERENCES]
    assert compare_receipt_digests(sent, ack.references).matched == ("", "cid:part-1@x")
