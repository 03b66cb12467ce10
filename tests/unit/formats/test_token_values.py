"""A coded value's V (and S) is read as the KITH schemas read it: an xs:token, whitespace
collapsed, so a value the XSD takes as ``HER`` is a HER-id to the readers too."""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from meldingstjener.formats import read_apprec, read_msghead, validate
from meldingstjener.formats.xmlutil import Coded, coded_of

NOTAT = "dialogmelding__1.0__foresporsel-og-svar__dialog-notat-webmed-test.xml"


def test_a_her_id_typed_with_spaces_around_her_is_the_apprec_senders_her_id(
    samples: Path, kith_xsd: Path
) -> None:
    data = (samples / "app-rec__1.0__example-avvist.xml").read_bytes()
    assert b'<TypeId V=" HER"' in data  # the sample as it comes: the schema finds it valid
    assert validate(data, kith_xsd).valid
    apprec = read_apprec(data)
    assert apprec.sender.her_ids.organisation == "56704"
    assert validate(data).sender.organisation == "56704"


def test_a_message_type_and_her_id_with_spaces_are_read_as_the_schema_reads_them(
    samples: Path, kith_xsd: Path
) -> None:
    data = (samples / NOTAT).read_bytes()
    data = data.replace(b'<Type V="DIALOG_NOTAT"', b'<Type V=" DIALOG_NOTAT "', 1)
    data = data.replace(b'<TypeId V="HER"', b'<TypeId V="&#9;HER\n"', 1)
    assert validate(data, kith_xsd).valid
    head = read_msghead(data)
    assert head.message_type == "DIALOG_NOTAT"
    assert head.sender_her_ids.organisation is not None
    report = validate(data)
    assert report.type == "DIALOG_NOTAT"
    assert report.type_name == "Notat"
    assert report.sender == head.sender_her_ids
    assert not [p for p in report.problems if p.code in ("invalid-code", "missing-her-id")]


def test_only_xml_schemas_whitespace_is_collapsed_and_strings_are_kept() -> None:
    element = etree.fromstring('<TypeId V=" a &#9; b&#10;" S=" 2.16.578 " DN=" HER-id " OT=" x "/>')
    assert coded_of(element) == Coded(v="a b", s="2.16.578", dn=" HER-id ", ot=" x ")
    # a no-break space is a character of the value to the validator, not whitespace
    assert coded_of(etree.fromstring('<TypeId V="\u00a0HER"/>')).v == "\u00a0HER"
