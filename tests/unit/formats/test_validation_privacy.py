"""What validation says of a document never quotes it: element names the sender made up,
errors nobody foresaw (found in review)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from meldingstjener.engine.fagmelding import inspect
from meldingstjener.formats import read_msghead, validation, xsd
from meldingstjener.formats.xmlutil import (
    INVALID_NAME,
    ElementPaths,
    local_name,
    namespace,
    path_of,
)

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
NAME = "PATIENTNAME-Nordmann"
FNR = "01017012345"

# a MsgHead whose Ident holds an element of a name that is no QName (two colons), and after it
# a RefDoc/MsgType in a relative namespace: libxml2 warns of that, and lxml then keeps the
# document, with the element under the name it refuses as a QName (the sender of review's s6)
_INVALID_TAG = f"""<?xml version='1.0' encoding='UTF-8'?>
<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"><MsgInfo>
<Type V="DIALOG_NOTAT" DN="Notat"/><MIGversion>v1.2 2006-05-24</MIGversion>
<GenDate>2026-12-05T00:59:43+00:00</GenDate><MsgId>49c06997-d1b3-4399-976a-ab2f9a471c4a</MsgId>
<Ack V="J" DN="Ja"/><Sender><Organisation><OrganisationName>GP</OrganisationName><Ident>
<Id>8100001</Id><Pasient:Kari:{NAME}-{FNR}/>
<TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051"/></Ident></Organisation></Sender>
<Receiver><Organisation><OrganisationName>H</OrganisationName><Ident><Id>8200001</Id>
<TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051"/></Ident><Organisation>
<OrganisationName>S</OrganisationName><Ident><Id>8200002</Id>
<TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051"/></Ident></Organisation>
</Organisation></Receiver><Patient><FamilyName>{NAME}</FamilyName><GivenName>Kari</GivenName>
<Ident><Id>{FNR}</Id><TypeId V="FNR" DN="Fødselsnummer" S="2.16.578.1.12.4.1.1.8116"/>
</Ident></Patient></MsgInfo><Document><RefDoc><IssueDate V="2026-12-05T00:59:43+00:00"/>
<MsgType xmlns="relative" V="XML" DN="XML-instans"/><Content>
<Dialogmelding xmlns="http://www.kith.no/xmlstds/dialog/2006-10-11"><Notat>
<TemaKodet DN="Helseopplysninger" S="2.16.578.1.12.4.1.1.9152" V="1"/>
<TekstNotatInnhold>PATIENT-TEXT-777</TekstNotatInnhold></Notat></Dialogmelding>
</Content></RefDoc></Document></MsgHead>""".encode()


def test_an_invalid_element_name_is_read_as_a_placeholder() -> None:
    root = etree.fromstring(
        f"<r xmlns='urn:x'><Pasient:Kari:{NAME}/><m xmlns='relative'/></r>".encode()
    )
    odd = root[0]
    assert local_name(odd) == INVALID_NAME
    assert namespace(odd) in (None, "urn:x")


def test_inspect_of_an_element_name_lxml_refuses_does_not_raise(kith_xsd: Path) -> None:
    found = inspect(_INVALID_TAG, kith_xsd)
    assert not found.report.valid
    paths = [p.path for p in found.report.problems]
    assert "/MsgHead/MsgInfo/Sender/Organisation/Ident/*[2]" in paths
    assert not any(NAME in path or FNR in path for path in paths)


def test_an_unexpected_error_in_a_layer_is_a_problem_without_its_text(
    monkeypatch: pytest.MonkeyPatch, kith_xsd: Path
) -> None:
    def broken(*args: object) -> None:
        raise ValueError(f"Invalid tag name '{NAME}'")

    monkeypatch.setattr(validation, "_validate_msghead", broken)
    monkeypatch.setattr(validation, "_validate_xsd", broken)
    report = validation.validate(_INVALID_TAG, kith_xsd)
    assert not report.valid
    assert [(p.layer, p.code) for p in report.problems] == [
        ("structure", "internal-error"),
        ("xsd", "internal-error"),
    ]
    assert NAME not in repr(report.as_dict())
    assert "ValueError" in report.problems[0].message


def test_a_path_shows_the_names_of_the_kith_schemas_only() -> None:
    # a name the schemas do not declare is the sender's text: "*" and its position among
    # its parent's elements, numbered apart from the known names around it
    root = etree.fromstring(
        f'<MsgHead xmlns="urn:x"><MsgInfo/><{NAME}/><P{FNR}><Id/></P{FNR}><MsgInfo/>'
        "</MsgHead>".encode()
    )
    got = [path_of(e) for e in root.iter()]
    assert got == [
        "/MsgHead",
        "/MsgHead/MsgInfo[1]",
        "/MsgHead/*[2]",
        "/MsgHead/*[3]",
        "/MsgHead/*[3]/Id",
        "/MsgHead/MsgInfo[2]",
    ]
    paths = ElementPaths()
    assert [paths.of(e) for e in root.iter()] == got
    assert path_of(etree.fromstring(f"<{NAME}><Id/></{NAME}>".encode())[0]) == "/*/Id"


def test_an_element_injected_into_the_patient_is_no_name_in_the_findings(
    samples: Path, kith_xsd: Path
) -> None:
    # review's xsd2: an element named after the patient where the schema allows none
    data = (samples / FORESPORSEL).read_bytes()
    assert b"<Patient>" in data
    data = data.replace(b"<Patient>", f"<Patient><{NAME}/><P{FNR}/>".encode(), 1)
    report = validation.validate(data, kith_xsd)
    paths = [p.path for p in report.problems]
    assert any(path.startswith("/MsgHead/MsgInfo/Patient/*[") for path in paths), paths
    assert not any(NAME in path or FNR in path for path in paths)


def test_a_prefixed_element_the_xsd_layer_cannot_find_is_placed_by_its_line(
    samples: Path, kith_xsd: Path
) -> None:
    data = (samples / FORESPORSEL).read_bytes()
    data = data.replace(b"<Patient>", f'<Patient><p:{NAME} xmlns:p="urn:p"/>'.encode(), 1)
    report = validation.validate(data, kith_xsd)
    xsd = [p.path for p in report.problems if p.layer == "xsd"]
    assert xsd and not any(NAME in path for path in xsd), xsd


@pytest.mark.parametrize("sent", [NAME, f"Pasient {FNR}", "dialog_notat", "X" * 41])
def test_a_message_type_that_is_no_code_is_an_error_and_read_as_a_question_mark(
    samples: Path, sent: str
) -> None:
    data = (samples / FORESPORSEL).read_bytes()
    data = re.sub(
        rb'(<Type V=")DIALOG_FORESPORSEL"[^/]*',
        rb"\1" + sent.encode() + b'" DN="' + NAME.encode() + b'"',
        data,
        count=1,
    )
    assert sent.encode() in data
    report = validation.validate(data)
    assert (report.type, report.type_name) == ("?", None)
    assert ("structure", "invalid-code", "/MsgHead/MsgInfo/Type/@V") in {
        (p.layer, p.code, p.path) for p in report.problems
    }
    assert not report.valid and NAME not in repr(report.as_dict())
    assert read_msghead(data).message_type == "?"
    assert read_msghead(data).message_type_name is None


def test_no_message_type_of_the_samples_is_read_as_a_question_mark(samples: Path) -> None:
    types = {validation.validate(path.read_bytes()).type for path in samples.glob("*.xml")}
    assert "?" not in types and {"DIALOG_FORESPORSEL", "DIALOG_SVAR", "APPREC"} <= types


HELSEFAGLIG = "dialogmelding__1.1__helsefaglig-dialog__samsvar-test-message.xml"


def _injected(samples: Path) -> dict[str, bytes]:
    """Review's priv.py: an element and an attribute named after the patient, in the schema's
    namespace and in the sender's own, and a root element of such a name."""
    data = (samples / HELSEFAGLIG).read_bytes()
    assert data.count(b"<MsgId>") >= 1
    return {
        "element": data.replace(b"<MsgId>", f"<{NAME}/><MsgId>".encode(), 1),
        "root": f'<{NAME} xmlns="urn:{NAME}"/>'.encode(),
        "attribute": data.replace(b"<MsgId>", f'<MsgId P{FNR}="x">'.encode(), 1),
        "prefixed": data.replace(
            b"<MsgId>", f'<x:Kari{NAME} xmlns:x="urn:kari-{FNR}"/><MsgId>'.encode(), 1
        ),
    }


@pytest.mark.parametrize("case", ["element", "root", "attribute", "prefixed"])
def test_no_finding_names_an_element_or_attribute_the_sender_made_up(
    samples: Path, kith_xsd: Path, case: str
) -> None:
    """libxml2 quotes the element and attribute a complaint is about, and the root element's
    name and namespace were told of an unknown document: a name the KITH schemas do not
    declare is the sender's text, and neither the message log nor the AppRec may carry it."""
    report = inspect(_injected(samples)[case], kith_xsd).report
    assert not report.valid and report.problems
    told = repr(report.as_dict())
    assert NAME not in told and FNR not in told and "Kari" not in told, told


def test_an_xsd_complaint_keeps_the_names_the_schemas_declare(
    samples: Path, kith_xsd: Path
) -> None:
    report = inspect(_injected(samples)["attribute"], kith_xsd).report
    assert [p.message for p in report.problems if p.layer == "xsd"] == [
        "Element 'MsgId', attribute '*': The attribute '*' is not allowed."
    ]
    report = inspect(_injected(samples)["element"], kith_xsd).report
    assert "Element '*': This element is not expected. Expected is ( MsgId )." in [
        p.message for p in report.problems
    ]


@pytest.mark.parametrize(
    ("root", "told"),
    [
        (
            b'<AppRec xmlns="http://www.kith.no/xmlstds/apprec/2004-11-21x"/>',
            "an unknown namespace",
        ),
        (
            b'<Dialogmelding xmlns="http://www.kith.no/xmlstds/dialog/2013-01-23"/>',
            "namespace 'http://www.kith.no/xmlstds/dialog/2013-01-23'",
        ),
        (b"<MsgHead/>", "no namespace"),
    ],
)
def test_an_unknown_format_names_a_kith_namespace_only(root: bytes, told: str) -> None:
    (problem,) = validation.validate(root).problems
    assert problem.code == "unknown-format"
    assert problem.message == (
        f"not a business message this server reads: its root element is in {told} "
        "(expected MsgHead 1.2 or AppRec 1.0/1.1)"
    )


@pytest.mark.parametrize(
    ("complaint", "plain"),
    [
        (
            "Element '{http://www.kith.no/xmlstds/msghead/2006-05-24}MsgId': This element is not "
            "expected. Expected is ( {http://www.kith.no/xmlstds/msghead/2006-05-24}Ack ).",
            "Element 'MsgId': This element is not expected. Expected is ( Ack ).",
        ),
        (f"Element '{{urn:a'b}}c}}{NAME}': x.", "Element '*': x."),
        (f"Element '{{http://www.kith.no/xmlstds/{NAME}}}MsgId': x.", "Element 'MsgId': x."),
        (
            "Element '{http://www.w3.org/2000/09/xmldsig#}Signature', attribute 'Id': x.",
            "Element 'Signature', attribute 'Id': x.",
        ),
        (
            f"Element '{{http://www.w3.org/2000/09/xmldsig#{FNR}}}Signature': x.",
            "Element '*': x.",
        ),
        (f"Element 'Id', attribute '{{urn:{NAME}}}V': x.", "Element 'Id', attribute '*': x."),
    ],
)
def test_an_xsd_complaint_names_a_known_name_in_a_known_namespace_only(
    complaint: str, plain: str
) -> None:
    assert xsd._plain(complaint) == plain


@pytest.mark.parametrize("error", [OSError(24, "Too many open files"), MemoryError()])
def test_an_oserror_in_a_layer_goes_to_the_caller(
    monkeypatch: pytest.MonkeyPatch, kith_xsd: Path, error: BaseException
) -> None:
    # the XSD layer re-reading a spooled payload, a process out of files: nothing of the
    # document, and no reason to refuse it for good (T02); the caller answers 503, it comes again
    def broken(*args: object) -> None:
        raise error

    monkeypatch.setattr(validation, "_validate_xsd", broken)
    with pytest.raises(type(error)):
        validation.validate(_INVALID_TAG, kith_xsd)


def test_an_unexpected_error_in_a_layer_is_logged_by_class_and_lines_only(
    monkeypatch: pytest.MonkeyPatch, kith_xsd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> None:
        raise ValueError(f"Invalid tag name '{NAME}'")

    monkeypatch.setattr(validation, "_validate_xsd", broken)
    with caplog.at_level("ERROR", logger=validation.__name__):
        report = validation.validate(_INVALID_TAG, kith_xsd)
    assert ("xsd", "internal-error") in [(p.layer, p.code) for p in report.problems]
    [record] = [r for r in caplog.records if r.name == validation.__name__]
    assert record.levelname == "ERROR" and record.exc_info is None
    logged = record.getMessage()
    assert "builtins.ValueError, raised through:" in logged  # model.privacy.passed_through
    assert "in broken" in logged and "_guarded" in logged
    assert NAME not in logged and FNR not in logged
