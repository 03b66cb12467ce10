"""validate(): structural rules, XSD layer and help-desk business rules, each with a path."""

from __future__ import annotations

from pathlib import Path

from meldingstjener.formats import (
    Coded,
    Dialogmelding,
    Notat,
    Party,
    build_dialogmelding,
    read_msghead,
    validate,
)
from meldingstjener.formats.msghead import RefDoc, build_msghead

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
EPIKRISE_12 = "http://www.kith.no/xmlstds/epikrise/2012-02-15"


def _codes(data: bytes, schema_dir: Path | None = None) -> set[tuple[str, str, str]]:
    return {(p.layer, p.code, p.path) for p in validate(data, schema_dir).problems}


def test_valid_sample_report(samples: Path, kith_xsd: Path) -> None:
    report = validate((samples / FORESPORSEL).read_bytes(), kith_xsd)
    assert report.valid, report.problems
    assert (report.format, report.type, report.version) == (
        "MsgHead",
        "DIALOG_FORESPORSEL",
        "v1.2 2006-05-24",
    )
    assert report.content == "Dialogmelding 1.0"
    assert report.patient_present
    data = report.as_dict()
    assert "15720255178" not in repr(data) and "LENESTOL" not in repr(data)


def test_not_xml_is_not_well_formed() -> None:
    report = validate(b"<MsgHead>")
    assert not report.well_formed and not report.valid
    assert report.problems[0].code == "xml-malformed"


def test_missing_elements_are_listed_with_paths(samples: Path) -> None:
    report = validate((samples / "dialogmelding__invalid-version.xml").read_bytes())
    codes = {(p.code, p.path) for p in report.problems}
    assert ("unsupported-version", "/MsgHead/MsgInfo/MIGversion") in codes
    assert ("missing-element", "/MsgHead/MsgInfo/MsgId") in codes
    assert ("missing-element", "/MsgHead/MsgInfo/Sender") in codes
    assert ("missing-element", "/MsgHead/Document") in codes
    assert all(p.message for p in report.problems)


def test_unknown_apprec_status_is_reported(samples: Path) -> None:
    report = validate((samples / "app-rec__1.1__unknown-status.xml").read_bytes())
    assert not report.valid
    assert [p.code for p in report.problems] == ["unknown-status"]
    assert report.sender.organisation == "8142987"


def test_xsd_layer_finds_what_the_builtin_rules_do_not(samples: Path, kith_xsd: Path) -> None:
    data = (samples / "helsenorge-MetadataTestsDialogmelding11.xml").read_bytes()
    assert validate(data).valid  # structurally fine ...
    report = validate(data, kith_xsd)  # ... but the schema refuses an attribute
    xsd = [p for p in report.problems if p.layer == "xsd"]
    assert xsd and xsd[0].path == "/MsgHead/Document[2]/RefDoc/Content/Base64Container"
    # xsi:schemaLocation in a namespace that is not XML Schema instance's (a typo of it): the
    # sender's text, so neither it nor the name is told
    assert xsd[0].message == (
        "Element 'Base64Container', attribute '*': The attribute '*' is not allowed."
    )


def test_missing_schema_directory_is_a_problem_not_a_crash(samples: Path, tmp_path: Path) -> None:
    report = validate((samples / FORESPORSEL).read_bytes(), tmp_path / "nowhere")
    assert [p.code for p in report.problems] == ["schema-error"]


def test_schema_import_outside_the_directory_is_not_fetched(samples: Path, tmp_path: Path) -> None:
    (tmp_path / "evil.xsd").write_text(
        '<schema xmlns="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:evil">'
        '<import namespace="urn:far" schemaLocation="http://127.0.0.1:9/far.xsd"/>'
        '<import namespace="urn:up" schemaLocation="../../etc/passwd"/></schema>'
    )
    report = validate((samples / FORESPORSEL).read_bytes(), tmp_path)
    assert [p.code for p in report.problems] in (["no-schema"], ["schema-error"])


def _epikrise(service: bool) -> bytes:
    sender = Party.of("Sykehuset", 59, service_name="Medisinsk avdeling", service_her_id=90998)
    receiver = (
        Party.of("Legekontoret", 56704, service_name="Fastlegene", service_her_id=90990)
        if service
        else Party.of("Legekontoret", 56704)
    )
    note = Dialogmelding(version="1.0", notater=(Notat(tema_kodet=Coded(v="99")),))
    head = read_msghead(
        build_dialogmelding(message_type="EPIKRISE", sender=sender, receiver=receiver, dialog=note)
    )
    # Swap the content for an (empty) Epikrise 1.2 instance: the rule keys on its namespace.
    document = head.documents[0]
    epikrise = RefDoc(
        msg_type=document.ref_doc.msg_type,
        content_xml=f'<Epikrise xmlns="{EPIKRISE_12}"></Epikrise>'.encode(),
    )
    return build_msghead(
        type(head)(msg_info=head.msg_info, documents=(type(document)(ref_doc=epikrise),))
    )


def test_service_addressing_is_mandatory_for_epikrise_12() -> None:
    path = "/MsgHead/MsgInfo/Receiver/Organisation/Organisation"
    assert ("business", "service-addressing-required", path) in _codes(_epikrise(service=False))
    assert not validate(_epikrise(service=False)).valid
    assert validate(_epikrise(service=True)).valid


def test_her_ids_and_gen_date_rules(samples: Path) -> None:
    data = (samples / FORESPORSEL).read_bytes()
    bad_her = data.replace(b"<Id>112374</Id>", b"<Id>abc</Id>", 1).replace(
        b"<Id>8094866</Id>", b"<Id>0</Id>", 1
    )
    codes = _codes(bad_her)
    assert ("business", "missing-her-id", "/MsgHead/MsgInfo/Sender/Organisation") in codes
    assert ("business", "invalid-her-id", "/MsgHead/MsgInfo/Sender/Organisation/Ident") in codes
    future = data.replace(b"2025-05-13T11:51:01</GenDate>", b"2999-01-01T00:00:00</GenDate>")
    assert ("business", "gen-date-in-future", "/MsgHead/MsgInfo/GenDate") in _codes(future)
    nonsense = data.replace(b"2025-05-13T11:51:01</GenDate>", b"yesterday</GenDate>")
    assert ("business", "invalid-gen-date", "/MsgHead/MsgInfo/GenDate") in _codes(nonsense)
    # year 1 without an offset has no local time to take it in: it raised ValueError, and the
    # message went down every path of an unforeseen error instead of being refused
    first_year = data.replace(b"2025-05-13T11:51:01</GenDate>", b"0001-01-01T00:00:00</GenDate>")
    assert ("business", "invalid-gen-date", "/MsgHead/MsgInfo/GenDate") in _codes(first_year)


def test_unknown_codes_are_warnings_not_crashes(samples: Path) -> None:
    data = (samples / FORESPORSEL).read_bytes().replace(b'"DIALOG_FORESPORSEL"', b'"NY_TYPE"')
    report = validate(data)
    unknown = [p for p in report.problems if p.code == "unknown-code"]
    assert unknown and unknown[0].severity == "warning"
    assert report.valid
    apprec = (samples / "app-rec__1.1__example-avvist.xml").read_bytes().replace(b'"E21"', b'"E77"')
    report = validate(apprec)
    assert [p.code for p in report.problems] == ["unknown-code"]
    assert report.valid


def test_rejected_apprec_without_error_is_invalid(samples: Path) -> None:
    data = (samples / "app-rec__1.1__example-avvist.xml").read_bytes()
    start = data.index(b"<Error")
    end = data.index(b"/>", start) + 2
    report = validate(data[:start] + data[end:])
    assert [p.code for p in report.problems] == ["missing-error"]
    assert not report.valid


def test_an_answer_without_conversation_ref_is_flagged(samples: Path) -> None:
    name = "dialogmelding__1.0__foresporsel-og-svar__dialog-svar-webmed-test-2.xml"
    data = (samples / name).read_bytes()
    start = data.index(b"<ConversationRef>")
    end = data.index(b"</ConversationRef>") + len(b"</ConversationRef>")
    assert "missing-conversation-ref" not in {p.code for p in validate(data).problems}
    report = validate(data[:start] + data[end:])
    flagged = [p for p in report.problems if p.code == "missing-conversation-ref"]
    assert flagged and flagged[0].severity == "warning"
