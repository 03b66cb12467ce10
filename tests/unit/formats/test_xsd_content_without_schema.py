"""A business document whose namespace has no schema in the schema directory is not validated
against one: a ``no-schema`` warning, never an error, though MsgHead's RefDoc/Content wildcard
is strict. One whose namespace has a schema is still held to it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meldingstjener.formats import validate
from meldingstjener.formats.validation import ERROR, WARNING, Problem

NOTAT = "dialogmelding__1.0__foresporsel-og-svar__dialog-notat-webmed-test.xml"
DIALOG_10 = b'xmlns="http://www.kith.no/xmlstds/dialog/2006-10-11"'
CONTENT = "/MsgHead/Document/RefDoc/Content/*[1]"


def _xsd(problems: list[Problem]) -> list[tuple[str, str, str]]:
    return [(p.code, p.severity, p.path) for p in problems if p.layer == "xsd"]


@pytest.fixture
def real_pom(reference_dir: Path) -> bytes:
    """A POM (BehandlerKrav, namespace .../bkm/2006-12-20) as received by mail, decrypted."""
    path = (
        reference_dir / "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328.p7m.deenveloped.ungz"
    )
    if not path.is_file():
        pytest.skip(f"the real POM sample is not at {path}")
    return path.read_bytes()


def _notat(samples: Path) -> bytes:
    data = (samples / NOTAT).read_bytes()
    assert DIALOG_10 in data
    return data


def test_a_real_pom_without_its_schema_is_valid_with_one_no_schema_warning(
    real_pom: bytes, kith_xsd: Path
) -> None:
    assert not (kith_xsd / "bkm.xsd").exists()
    report = validate(real_pom, kith_xsd)
    assert report.valid, report.problems
    assert _xsd(report.problems) == [("no-schema", WARNING, CONTENT)]


def test_a_dialogmelding_whose_schema_is_not_in_the_directory_is_valid_with_a_warning(
    samples: Path, kith_xsd: Path, tmp_path: Path
) -> None:
    for schema in kith_xsd.glob("*.xsd"):
        if not schema.name.startswith("dialogmelding"):
            shutil.copy(schema, tmp_path)
    report = validate(_notat(samples), tmp_path)
    assert report.valid, report.problems
    assert _xsd(report.problems) == [
        ("no-schema", WARNING, "/MsgHead/Document/RefDoc/Content/Dialogmelding")
    ]


def test_a_large_document_without_its_schema_is_valid_too(samples: Path, kith_xsd: Path) -> None:
    # more than 10,000 elements: validated while the document is read again (xsd.py)
    big = b'<x:Big xmlns:x="urn:example:none">' + b"<x:i/>" * 10_001 + b"</x:Big>"
    data = _notat(samples)
    start = data.index(b"<Dialogmelding ")
    end = data.index(b"</Dialogmelding>") + len(b"</Dialogmelding>")
    report = validate(data[:start] + big + data[end:], kith_xsd)
    assert report.valid, report.problems
    assert _xsd(report.problems) == [("no-schema", WARNING, CONTENT)]


def test_a_business_document_whose_schema_is_there_is_still_held_to_it(
    samples: Path, kith_xsd: Path
) -> None:
    data = _notat(samples).replace(b"<DatoNotat>", b"<Ukjent/><DatoNotat>", 1)
    report = validate(data, kith_xsd)
    assert not report.valid
    [problem] = [p for p in report.problems if p.layer == "xsd"]
    assert (problem.code, problem.severity) == ("xsd-invalid", ERROR)
    assert problem.path.startswith("/MsgHead/Document/RefDoc/Content/Dialogmelding/Notat")


def test_a_root_element_its_namespaces_schema_does_not_declare_is_an_error(
    samples: Path, kith_xsd: Path
) -> None:
    data = _notat(samples).replace(b"<Dialogmelding ", b"<Dialogmeldinger ", 1)
    data = data.replace(b"</Dialogmelding>", b"</Dialogmeldinger>", 1)
    report = validate(data, kith_xsd)
    assert not report.valid
    assert _xsd(report.problems) == [("xsd-invalid", ERROR, CONTENT)]


@pytest.mark.parametrize(
    ("main", "declared_in_main"),
    [("ex-main.xsd", False), ("ex.xsd", True)],  # named after its part, or before it
)
def test_a_root_element_declared_in_an_including_or_included_schema_file_is_declared(
    samples: Path, kith_xsd: Path, tmp_path: Path, main: str, declared_in_main: bool
) -> None:
    # a schema may keep its declarations in files it includes: they are its own, and the
    # including file is the namespace's schema whatever the files' names
    for schema in kith_xsd.glob("*.xsd"):
        shutil.copy(schema, tmp_path)
    head = (
        '<schema xmlns="http://www.w3.org/2001/XMLSchema" xmlns:d="urn:ex:doc" '
        'targetNamespace="urn:ex:doc" elementFormDefault="qualified">'
    )
    doc = '<complexType name="DocType"><sequence><element name="A" type="string"/></sequence>'
    doc += "</complexType>"
    element = '<element name="Doc" type="d:DocType"/>'
    (tmp_path / main).write_text(
        f'{head}<include schemaLocation="ex-part.xsd"/>{element if declared_in_main else ""}'
        "</schema>"
    )
    (tmp_path / "ex-part.xsd").write_text(
        f"{head}{doc}{'' if declared_in_main else element}</schema>"
    )
    data = _notat(samples)
    start = data.index(b"<Dialogmelding ")
    end = data.index(b"</Dialogmelding>") + len(b"</Dialogmelding>")
    for body, valid in ((b"<A>x</A>", True), (b"<B>x</B>", False)):
        document = b'<Doc xmlns="urn:ex:doc">' + body + b"</Doc>"
        report = validate(data[:start] + document + data[end:], tmp_path)
        assert report.valid is valid, report.problems
