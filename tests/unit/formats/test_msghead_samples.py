"""MsgHead 1.2: every sample parses, valid ones round-trip and the built XML is XSD-valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from formats_sample_names import VALID_APPREC_SAMPLES, VALID_MSGHEAD_SAMPLES

from meldingstjener.formats import (
    FormatError,
    MsgHead,
    UnknownMessageFormat,
    UnsupportedVersion,
    answer_conversation_ref,
    build_msghead,
    read_apprec,
    read_msghead,
    validate,
)
from meldingstjener.model import HerId, PartyRef

INVALID_SAMPLES = {
    "app-rec__1.0__unknown-status.xml": "unknown-status",
    "app-rec__1.1__unknown-status.xml": "unknown-status",
    "app-rec__missing-migversion.xml": "unsupported-version",
    "app-rec__unknown-migversion.xml": "unsupported-version",
    "dialogmelding__invalid-version.xml": "unsupported-version",
    "helsenorge-SoapFault.xml": "unknown-format",
}


def _read_any(data: bytes) -> object:
    return read_apprec(data) if b"<AppRec" in data[:1000] else read_msghead(data)


def test_every_sample_is_either_read_or_refused_with_the_expected_code(samples: Path) -> None:
    names = sorted(p.name for p in samples.glob("*.xml"))
    assert len(names) >= 20
    for name in names:
        data = (samples / name).read_bytes()
        if name in INVALID_SAMPLES:
            with pytest.raises(FormatError) as caught:
                _read_any(data)
            assert caught.value.code == INVALID_SAMPLES[name], name
        else:
            assert _read_any(data) is not None
    assert set(INVALID_SAMPLES) <= set(names)
    assert set(VALID_MSGHEAD_SAMPLES) | set(VALID_APPREC_SAMPLES) <= set(names)


@pytest.mark.parametrize("name", VALID_MSGHEAD_SAMPLES)
def test_msghead_round_trip_is_equal_and_xsd_valid(
    name: str, samples: Path, kith_xsd: Path
) -> None:
    head = read_msghead((samples / name).read_bytes())
    built = build_msghead(head)
    assert built.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert read_msghead(built) == head
    report = validate(built, kith_xsd)
    assert [p for p in report.problems if p.layer in ("xsd", "structure")] == []


def test_foresporsel_sample_details(samples: Path) -> None:
    name = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
    head = read_msghead((samples / name).read_bytes())
    assert head.message_type == "DIALOG_FORESPORSEL"
    assert head.message_type_name == "Forespørsel"
    assert head.mig_version == "v1.2 2006-05-24"
    assert head.msg_id == "6ddb98ed-9e34-4efa-9163-62e4ea0cbf43"
    assert head.msg_info.processing_status is not None
    assert head.msg_info.processing_status.v == "D"
    assert head.sender_her_ids == PartyRef(HerId("112374"), HerId("8094866"), None)
    assert head.receiver_her_ids == PartyRef(HerId("8142987"), HerId("8143060"), None)
    assert head.receiver_her_ids.communication_party == "8143060"
    assert head.patient_present
    assert head.signature_present is False
    assert head.main_document is not None
    assert head.main_document.content_xml is not None
    (attachment,) = head.attachments
    assert attachment.mime_type == "application/pdf"
    assert attachment.content_base64 is not None
    assert attachment.content_base64.startswith(b"%PDF-1.2")


def test_svar_sample_conversation_ref_and_person_level(samples: Path) -> None:
    name = "dialogmelding__1.0__foresporsel-og-svar__dialog-svar-webmed-test-2.xml"
    head = read_msghead((samples / name).read_bytes())
    assert head.conversation_ref is not None
    assert head.conversation_ref.ref_to_parent == "4caf06e0-6df9-4f64-9b36-87b451fd051c"
    assert head.msg_info.ack is not None and head.msg_info.ack.v == "J"
    assert head.sender_her_ids.person == "8143025"  # HCP directly under the organisation
    assert head.msg_info.sender.organisation.address is not None
    follow_up = answer_conversation_ref(head)
    assert follow_up.ref_to_parent == head.msg_id
    assert follow_up.ref_to_conversation == "4caf06e0-6df9-4f64-9b36-87b451fd051c"


def test_attachments_with_comments_and_file_references(samples: Path) -> None:
    head = read_msghead((samples / "helsenorge-MetadataTestsDialogmelding11.xml").read_bytes())
    first, by_reference, second = head.attachments
    assert first.content_base64 is not None and first.content_base64.startswith(b"Lots")
    assert by_reference.file_reference == "https://someurl.com/myfile.pdf"
    assert by_reference.content_base64 is None
    assert second.content_base64 is not None and len(second.content_base64) > len(
        first.content_base64
    )


def test_patient_identity_is_not_in_repr(samples: Path) -> None:
    name = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
    head = read_msghead((samples / name).read_bytes())
    text = repr(head)
    assert "15720255178" not in text
    assert "LENESTOL" not in text
    assert head.msg_info.patient is not None
    assert head.msg_info.patient.family_name == "LENESTOL"  # still available to code


def test_signature_presence_is_reported() -> None:
    head_xml = (
        b'<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24">'
        b"<MsgInfo><Type V='EPIKRISE'/><MIGversion>v1.2 2006-05-24</MIGversion>"
        b"<GenDate>2024-01-01T10:00:00</GenDate><MsgId>m1</MsgId>"
        b"<Sender><Organisation><OrganisationName>A</OrganisationName><Ident><Id>1</Id>"
        b"<TypeId V='HER'/></Ident></Organisation></Sender>"
        b"<Receiver><Organisation><OrganisationName>B</OrganisationName><Ident><Id>2</Id>"
        b"<TypeId V='HER'/></Ident></Organisation></Receiver></MsgInfo>"
        b"<Document><RefDoc><MsgType V='XML'/><Content><x xmlns='urn:x'/></Content></RefDoc>"
        b"</Document><Signature xmlns='http://www.w3.org/2000/09/xmldsig#'/></MsgHead>"
    )
    head = read_msghead(head_xml)
    assert isinstance(head, MsgHead)
    assert head.signature_present
    assert head.message_type_name == "Epikrise"  # from code list 8279: the sender gave no DN
    # The builder never signs (that is the security layer's job).
    assert read_msghead(build_msghead(head)).signature_present is False


def test_wrong_root_and_version_errors_carry_codes() -> None:
    with pytest.raises(UnknownMessageFormat) as caught:
        read_msghead(b"<Foo/>")
    assert caught.value.apprec_code == "T10"
    with pytest.raises(UnsupportedVersion) as version_error:
        read_msghead(
            b'<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"><MsgInfo/></MsgHead>'
        )
    assert version_error.value.path == "/MsgHead/MsgInfo/MIGversion"
