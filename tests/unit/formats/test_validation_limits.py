"""A hostile document costs validation linear time and a bounded report: each layer lists at most
MAX_PROBLEMS_PER_LAYER problems and then one saying more were cut, and paths are worked out
once per parent. (No timings are asserted; the time-outs only stop a quadratic run.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from meldingstjener.formats import validate, xsd
from meldingstjener.formats.validation import MAX_PROBLEMS_PER_LAYER, TOO_MANY_PROBLEMS
from meldingstjener.formats.xmlutil import ElementPaths, path_of

FORESPORSEL = "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml"


def _apprec(errors: bytes, version: str = "1.1") -> bytes:
    ns, mig = {
        "1.0": ("http://www.kith.no/xmlstds/apprec/2004-11-21", "1.0 2004-11-21"),
        "1.1": ("http://www.kith.no/xmlstds/apprec/2012-02-15", "v1.1 2012-02-15"),
    }[version]
    return (
        (
            f'<AppRec xmlns="{ns}"><MsgType V="APPREC"/><MIGversion>{mig}</MIGversion>'
            "<GenDate>2024-01-01T00:00:00</GenDate><Id>x</Id>"
            '<Sender><HCP><Inst><Name>a</Name><Id>1</Id><TypeId V="HER"/></Inst></HCP></Sender>'
            '<Receiver><HCP><Inst><Name>b</Name><Id>2</Id><TypeId V="HER"/></Inst></HCP></Receiver>'
            '<Status V="2"/>'
        ).encode()
        + errors
        + (
            b'<OriginalMsgId><MsgType V="X"/><IssueDate>2024-01-01T00:00:00</IssueDate><Id>y</Id>'
            b"</OriginalMsgId></AppRec>"
        )
    )


def _layer(report: object, layer: str) -> list[tuple[str, str, str]]:
    problems = getattr(report, "problems", [])
    return [(p.code, p.path, p.severity) for p in problems if p.layer == layer]


def test_a_layer_lists_at_most_the_cap_and_then_says_more_were_cut() -> None:
    report = validate(_apprec(b"<Error/>" * 500))
    structure = _layer(report, "structure")
    assert len(structure) == MAX_PROBLEMS_PER_LAYER + 1
    assert structure[0] == ("missing-element", "/AppRec/Error[1]/@V", "error")
    assert structure[-2] == ("missing-element", "/AppRec/Error[100]/@V", "error")
    assert structure[-1] == (TOO_MANY_PROBLEMS, "/", "error")
    assert not report.valid


def test_the_cut_is_an_error_only_when_an_error_was_cut(samples: Path) -> None:
    data = (samples / FORESPORSEL).read_bytes()
    # a Document with neither Content nor FileReference is a warning
    empty = b'<Document><RefDoc><MsgType V="A"/></RefDoc></Document>'
    warnings_only = data.replace(b"</MsgHead>", empty * 150 + b"</MsgHead>")
    report = validate(warnings_only)
    assert _layer(report, "structure")[-1] == (TOO_MANY_PROBLEMS, "/", "warning")
    assert report.valid  # 150 warnings are not an error, cut or not
    # an error after the cap (a MsgType neither XML nor A) is cut, and makes the cut an error
    then_error = warnings_only.replace(
        b"</MsgHead>", b'<Document><RefDoc><MsgType V="Q"/></RefDoc></Document></MsgHead>'
    )
    report = validate(then_error)
    assert _layer(report, "structure")[-1] == (TOO_MANY_PROBLEMS, "/", "error")
    assert not report.valid


@pytest.mark.timeout(120)
def test_32000_faulty_siblings_are_validated_in_linear_time() -> None:
    # 16,000 of these took 103 s when every path numbered all siblings again
    report = validate(_apprec(b"<Error/>" * 32_000))
    assert len(report.problems) <= 4 * (MAX_PROBLEMS_PER_LAYER + 1)
    assert _layer(report, "structure")[-1][0] == TOO_MANY_PROBLEMS


@pytest.mark.timeout(120)
def test_16000_empty_documents_are_validated_in_linear_time(samples: Path) -> None:
    data = (samples / FORESPORSEL).read_bytes()
    report = validate(data.replace(b"</MsgHead>", b"<Document/>" * 16_000 + b"</MsgHead>"))
    structure = _layer(report, "structure")
    assert structure[0] == ("missing-element", "/MsgHead/Document[3]/RefDoc", "error")
    assert structure[-1][0] == TOO_MANY_PROBLEMS


@pytest.mark.timeout(120)
@pytest.mark.parametrize("as_file", [False, True], ids=["bytes", "file"])
def test_32000_schema_complaints_are_found_in_linear_time(
    kith_xsd: Path, tmp_path: Path, as_file: bool
) -> None:
    # lxml locates every complaint of a tree by walking its preceding siblings; a document this
    # large is validated while it is read again instead
    data = _apprec(b'<Error V="X99" S="x"/>' * 32_000, version="1.0")
    source: bytes | Path = data
    if as_file:
        source = tmp_path / "apprec.xml"
        source.write_bytes(data)
    report = validate(source, kith_xsd)
    found = _layer(report, "xsd")
    assert len(found) == MAX_PROBLEMS_PER_LAYER + 1
    assert found[-1] == (TOO_MANY_PROBLEMS, "/", "error")


def test_a_large_document_read_again_gets_the_complaints_of_the_tree(
    samples: Path, kith_xsd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    invalid = [
        "app-rec__missing-migversion.xml",
        "dialogmelding__invalid-version.xml",
        "helsenorge-MetadataTestsDialogmelding11.xml",
    ]
    for name in invalid:
        path = samples / name
        by_tree = [p.message for p in validate(path.read_bytes(), kith_xsd).problems]
        monkeypatch.setattr(xsd, "_TREE_NODES_MAX", -1)  # every document counts as large
        read_again = [p.message for p in validate(path.read_bytes(), kith_xsd).problems]
        from_file = [p.message for p in validate(path, kith_xsd).problems]
        monkeypatch.undo()
        assert by_tree == read_again == from_file, name
        assert any(p for p in by_tree), name
    monkeypatch.setattr(xsd, "_TREE_NODES_MAX", -1)
    assert validate((samples / FORESPORSEL).read_bytes(), kith_xsd).valid


def test_paths_number_same_named_siblings_only() -> None:
    root = etree.fromstring(
        b'<MsgHead xmlns="urn:x"><Document/><!--c--><Document><Id/><Name/><Id/></Document>'
        b"<Ident/></MsgHead>"
    )
    got = [path_of(e) for e in root.iter() if isinstance(e.tag, str)]
    assert got == [
        "/MsgHead",
        "/MsgHead/Document[1]",
        "/MsgHead/Document[2]",
        "/MsgHead/Document[2]/Id[1]",
        "/MsgHead/Document[2]/Name",
        "/MsgHead/Document[2]/Id[2]",
        "/MsgHead/Ident",
    ]
    paths = ElementPaths()  # one numbering for the tree, the same answers
    assert [paths.of(e) for e in root.iter() if isinstance(e.tag, str)] == got


def test_the_report_keeps_no_element_of_the_document() -> None:
    # the paths numbered while validating hold elements, and each element its whole tree (a
    # 35 MB attachment's): the report, which outlives the validation, must not keep them
    report = validate(_apprec(b"<Error/>" * 3))
    assert len(report.problems) == 4
    assert not report._paths._labels
