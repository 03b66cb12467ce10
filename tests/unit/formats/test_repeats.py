"""An element the standard allows once, given twice, and a second HER-id at one level, are
structure errors with or without an XSD: the readers take the first, a receiver's EPJ may take
the last and see another party. What the standard lets repeat passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.formats import validate

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"
SENDER_HER = b"""<Ident>
                    <Id>112374</Id>
                    <TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051" />
                </Ident>"""


@pytest.fixture
def sample(samples: Path) -> bytes:
    data = (samples / FORESPORSEL).read_bytes()
    assert data.count(SENDER_HER) == 1
    return data


def _found(data: bytes, schema_dir: Path | None = None) -> set[tuple[str, str, str]]:
    report = validate(data, schema_dir)
    return {(p.code, p.path, p.severity) for p in report.problems if p.layer == "structure"}


def _element(data: bytes, name: bytes) -> bytes:
    start = data.index(b"<" + name + b">")
    return data[start : data.index(b"</" + name + b">", start) + len(name) + 3]


@pytest.mark.parametrize("with_xsd", [False, True], ids=["no-xsd", "kith-xsd"])
def test_a_second_her_id_on_the_sender_organisation_is_an_error(
    sample: bytes, kith_xsd: Path, with_xsd: bool
) -> None:
    # the attacker's own HER-id first, the one the receiver's EPJ may show second
    two = sample.replace(SENDER_HER, SENDER_HER.replace(b"112374", b"1123") + SENDER_HER)
    found = _found(two, kith_xsd if with_xsd else None)
    assert ("repeated-her-id", "/MsgHead/MsgInfo/Sender/Organisation/Ident[2]", "error") in found
    assert not validate(two).valid


def test_the_same_her_id_twice_is_a_warning(sample: bytes) -> None:
    twice = sample.replace(SENDER_HER, SENDER_HER + SENDER_HER)
    found = _found(twice)
    assert ("repeated-her-id", "/MsgHead/MsgInfo/Sender/Organisation/Ident[2]", "warning") in found
    assert validate(twice).valid


def test_a_her_id_beside_other_identifiers_passes(sample: bytes) -> None:
    enh = b'<Ident><Id>974633698</Id><TypeId V="ENH" DN="Organisasjonsnummeret"/></Ident>'
    data = sample.replace(SENDER_HER, SENDER_HER + enh + enh.replace(b"974633698", b"1"))
    assert not {p for p in _found(data) if p[0].startswith("repeated")}
    assert validate(data).valid


def test_a_second_her_id_of_a_health_professional_is_an_error(sample: bytes) -> None:
    professional = b"<HealthcareProfessional><FamilyName>X</FamilyName>" + (
        b'<Ident><Id>1</Id><TypeId V="HER"/></Ident><Ident><Id>2</Id><TypeId V="HER"/></Ident>'
        b"</HealthcareProfessional>"
    )
    receiver = _element(sample, b"Receiver")
    data = sample.replace(
        receiver, receiver.replace(b"</Organisation>\n", b"</Organisation>\n" + professional, 1)
    )
    found = _found(data)
    assert any(
        code == "repeated-her-id" and "HealthcareProfessional/Ident[2]" in path
        for code, path, _ in found
    )


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (b"Sender", "/MsgHead/MsgInfo/Sender[2]"),
        (b"Receiver", "/MsgHead/MsgInfo/Receiver[2]"),
        (b"MsgId", "/MsgHead/MsgInfo/MsgId[2]"),
        (b"MsgInfo", "/MsgHead/MsgInfo[2]"),
    ],
)
def test_a_header_element_given_twice_is_an_error_without_an_xsd(
    sample: bytes, name: bytes, path: str
) -> None:
    element = _element(sample, name)
    data = sample.replace(element, element + element, 1)
    assert ("repeated-element", path, "error") in _found(data)
    assert not validate(data).valid


def test_a_second_service_or_copy_organisation_is_an_error(sample: bytes) -> None:
    sender = _element(sample, b"Sender")
    nested = sender.index(b"<Organisation>", sender.index(b"<Organisation>") + 1)
    service = sender[nested : sender.index(b"</Organisation>", nested) + len(b"</Organisation>")]
    data = sample.replace(sender, sender.replace(service, service + service, 1))
    path = "/MsgHead/MsgInfo/Sender/Organisation/Organisation[2]"
    assert ("repeated-element", path, "error") in _found(data)
    organisation = (
        b"<Organisation><OrganisationName>K</OrganisationName>"
        b'<Ident><Id>5</Id><TypeId V="HER"/></Ident></Organisation>'
    )
    copy = b'<OtherReceiver><RoleReceiver V="COP"/>' + 2 * organisation + b"</OtherReceiver>"
    data = sample.replace(b"</Receiver>", b"</Receiver>" + copy, 1)
    path = "/MsgHead/MsgInfo/OtherReceiver/Organisation[2]"
    assert ("repeated-element", path, "error") in _found(data)


def test_apprec_header_elements_given_twice_are_errors(samples: Path) -> None:
    data = (samples / "app-rec__1.1__all-data.xml").read_bytes()
    sender = _element(data, b"Sender")
    found = _found(data.replace(sender, sender + sender, 1))
    assert ("repeated-element", "/AppRec/Sender[2]", "error") in found
    original = _element(data, b"OriginalMsgId")
    ident = original[original.index(b"<Id>") : original.index(b"</Id>") + 5]
    found = _found(data.replace(original, original.replace(ident, ident + ident), 1))
    assert ("repeated-element", "/AppRec/OriginalMsgId/Id[2]", "error") in found


def test_apprec_departments_and_persons_may_repeat(samples: Path) -> None:
    data = (samples / "app-rec__1.1__all-data.xml").read_bytes()
    dept = _element(data, b"Dept")
    person = _element(data, b"HCPerson")
    data = data.replace(dept, dept + dept, 1).replace(person, person + person, 1)
    assert not {p for p in _found(data) if p[0].startswith("repeated")}


def test_no_sample_has_a_repeat(samples: Path) -> None:
    for path in sorted(samples.glob("*.xml")):
        found = {p for p in _found(path.read_bytes()) if p[0].startswith("repeated")}
        assert not found, path.name
