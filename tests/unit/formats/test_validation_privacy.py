"""What validation says of a document never quotes it: element names the sender made up,
errors nobody foresaw (found in review)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from meldingstjener.engine.fagmelding import inspect
from meldingstjener.formats import validation
from meldingstjener.formats.xmlutil import INVALID_NAME, local_name, namespace

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
    assert "/MsgHead/MsgInfo/Sender/Organisation/Ident/*" in paths
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
