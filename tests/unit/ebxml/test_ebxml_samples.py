"""Every envelope in the reference samples parses to the right concrete field values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meldingstjener.ebxml import (
    EbxmlError,
    ErrorCode,
    MshDescription,
    Party,
    Severity,
    parse_envelope,
    unpackage_message,
)
from meldingstjener.ebxml.codes import EBMS_SERVICE
from meldingstjener.ebxml.signals import signature_references
from meldingstjener.formats.xmlparse import parse_xml

SAMPLE_DESCRIPTION = MshDescription("Medilink", "1.23.2434", "System X", "1.24.6565")
REAL_MAIL = "real-smtp-mail/2023_08_29T12_56_58_328"


@pytest.fixture(scope="module")
def samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "ebxml"


def test_acknowledgment_sample(samples: Path) -> None:
    envelope = parse_envelope((samples / "nav-acknowledgment.xml").read_bytes())
    header = envelope.header
    assert header.from_party == Party("95879", "Utleverer")
    assert header.to_party == Party("79768", "KontrollUtbetaler", "HER", (("ENH", "889640782"),))
    assert header.cpa_id == "nav:qass:34986"
    assert header.conversation_id == "20250124-114229-355"
    assert header.service == EBMS_SERVICE
    assert header.service_type is None
    assert header.action == "Acknowledgment"
    assert header.message_id == "7a631915-eb02-4b58-bd8c-4851d37c2590"
    assert header.timestamp == datetime(2025, 1, 24, 10, 42, 58, 725072, tzinfo=UTC)
    assert header.ref_to_message_id == "20250124-114229-35564@qa.ebxml.nav.no"
    assert header.description == SAMPLE_DESCRIPTION
    assert envelope.is_acknowledgment and not envelope.is_message_error
    assert not envelope.ack_requested
    assert envelope.signature_present
    ack = envelope.acknowledgment
    assert ack is not None
    assert ack.timestamp == datetime(2025, 1, 24, 10, 42, 29, tzinfo=UTC)
    assert ack.ref_to_message_id == "20250124-114229-35564@qa.ebxml.nav.no"
    assert [tuple(r) for r in ack.references] == [
        ("", "http://www.w3.org/2001/04/xmlenc#sha256", "digestValue")
    ]
    assert envelope.error_list is None
    assert envelope.manifest == ()


def test_message_error_sample(samples: Path) -> None:
    envelope = parse_envelope((samples / "nav-messageerror.xml").read_bytes())
    header = envelope.header
    assert header.from_party == Party("79768", "Frikortregister")
    assert header.to_party == Party("987654321", "Behandler")
    assert header.cpa_id == "unknown"
    assert header.conversation_id == "20140607-214220-751-0"
    assert (header.service, header.action) == (EBMS_SERVICE, "MessageError")
    assert header.message_id == "20140607-214220-84523@dev.ebxml.nav.no"
    assert header.timestamp == datetime(2014, 6, 7, 19, 42, 20, tzinfo=UTC)
    assert header.ref_to_message_id == "autotest_tc_2_2_15"
    assert envelope.is_message_error
    assert envelope.sync_reply
    assert not envelope.signature_present
    errors = envelope.error_list
    assert errors is not None
    assert errors.highest_severity is Severity.ERROR
    assert len(errors.errors) == 1
    error = errors.errors[0]
    assert error.code is ErrorCode.VALUE_NOT_RECOGNIZED
    assert error.reported_code is None
    assert error.severity is Severity.ERROR
    assert error.location == "xpointer(//MessageHeader/CpaId)"
    assert error.description == "Message [autotest_tc_2_2_15] has an invalid CpaId [unknown]"


def test_payload_message_sample(samples: Path) -> None:
    envelope = parse_envelope((samples / "nav-payloadmessage.xml").read_bytes())
    header = envelope.header
    assert header.from_party == Party("123", "Behandler")
    assert header.to_party == Party("321", "KontrollUtbetaler")
    assert header.cpa_id == "nav:qass:35065"
    assert header.conversation_id == "be192d3a-34b5-448a-a374-5eab0524c74d"
    assert (header.service, header.service_type) == ("BehandlerKrav", "string")
    assert header.action == "OppgjorsMelding"
    assert header.message_id == "7104acf8-21e9-4ee7-b894-d413a00a8881"
    assert header.timestamp == datetime(2023, 8, 29, 10, 56, 50, 306947, tzinfo=UTC)
    assert header.ref_to_message_id is None
    assert header.description == SAMPLE_DESCRIPTION
    assert envelope.ack_requested and envelope.ack_signed
    assert not envelope.sync_reply and not envelope.duplicate_elimination
    assert envelope.signature_present
    assert [(m.href, m.content_id) for m in envelope.manifest] == [("cid:ref1", "ref1")]


def test_business_document_is_not_an_envelope(samples: Path) -> None:
    with pytest.raises(EbxmlError) as caught:
        parse_envelope((samples / "nav-dokument.xml").read_bytes())
    assert caught.value.code is ErrorCode.OTHER_XML


def test_real_mail_envelope(samples: Path) -> None:
    message = unpackage_message((samples / f"{REAL_MAIL}.msg").read_bytes())
    envelope = parse_envelope(message.envelope_xml)
    header = envelope.header
    assert header.from_party == Party("8141253", "Behandler")
    assert header.to_party == Party("79768", "KontrollUtbetaler")
    assert header.cpa_id == "nav:qass:35065"
    assert (header.service, header.action) == ("BehandlerKrav", "OppgjorsMelding")
    assert header.message_id == "7104acf8-21e9-4ee7-b894-d413a00a8881"
    assert header.description is None
    assert envelope.ack_requested and envelope.ack_signed and envelope.signature_present
    cid = "3CTGI8UKUKU4.ADHEUDMDCY3Q3@speare.no"
    assert [m.content_id for m in envelope.manifest] == [cid]
    references = signature_references(parse_xml(message.envelope_xml))
    assert references == [
        (
            "",
            "http://www.w3.org/2001/04/xmlenc#sha256",
            "Mw8YxTebu2r+7Q2xcmzX1CxetA2bAdQCUqHetehHMaI=",
        ),
        (
            f"cid:{cid}",
            "http://www.w3.org/2001/04/xmlenc#sha256",
            "ihNHQl8a44GwTy72Bq7m0jyn8/Ap7nbSOtNix4sycTs=",
        ),
    ]


def test_real_mail_unpackages_to_the_right_parts(samples: Path) -> None:
    message = unpackage_message((samples / f"{REAL_MAIL}.msg").read_bytes())
    assert message.start == "ZTTPT8UKUKU4.U2O3MHW7UL03@speare.no"
    assert message.message_id == "CDD3FE0A9E7248329E678B49C38C763ADB81CD33@unknown"
    assert message.headers["soapaction"] == '"ebXML"'
    # The envelope part decodes to exactly the envelope the sample ships beside the mail.
    assert message.envelope_xml == (samples / f"{REAL_MAIL}.xml").read_bytes()
    assert list(message.attachments) == ["3CTGI8UKUKU4.ADHEUDMDCY3Q3@speare.no"]
    part = message.attachments["3CTGI8UKUKU4.ADHEUDMDCY3Q3@speare.no"]
    assert part.content_type.startswith("application/pkcs7-mime")
    assert part.data == (samples / f"{REAL_MAIL}.p7m").read_bytes()
    assert len(part.data) == 4236


def test_real_mail_with_crlf_line_ends_unpackages_the_same(samples: Path) -> None:
    raw = (samples / f"{REAL_MAIL}.msg").read_bytes()
    assert b"\r\n" not in raw  # the sample is stored with LF; make the wire form
    lf = unpackage_message(raw)
    crlf = unpackage_message(raw.replace(b"\n", b"\r\n"))
    assert crlf.envelope_xml == lf.envelope_xml
    assert crlf.attachment_bytes() == lf.attachment_bytes()
