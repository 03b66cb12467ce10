"""Namespace declarations and attributes are limited per element: canonicalising a document
costs time growing with the square of their number, and real documents carry a handful."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.formats.xmlparse import XmlRefused, parse_xml, parse_xml_file

MAX_NAMESPACES_IN_SCOPE = 64  # xmlparse.MAX_NAMESPACES_IN_SCOPE
MAX_ATTRIBUTES = 64  # xmlparse.MAX_ATTRIBUTES


def declarations(count: int, start: int = 0) -> bytes:
    return b" ".join(b'xmlns:n%d="urn:n:%d"' % (i, i) for i in range(start, start + count))


def attributes(count: int) -> bytes:
    return b" ".join(b'a%d="x"' % i for i in range(count))


def test_more_namespace_declarations_on_one_element_than_the_limit_are_refused() -> None:
    assert parse_xml(b"<r " + declarations(MAX_NAMESPACES_IN_SCOPE) + b"/>").tag == "r"
    with pytest.raises(XmlRefused, match="namespace declarations in scope") as caught:
        parse_xml(b"<r " + declarations(MAX_NAMESPACES_IN_SCOPE + 1) + b"><a/></r>")
    assert caught.value.code == "xml-refused"


def test_namespace_declarations_spread_over_the_ancestors_count_together() -> None:
    # one declaration per level: each element declares one, the innermost has all in scope
    levels = MAX_NAMESPACES_IN_SCOPE + 1
    opened = b"".join(b"<e " + declarations(1, i) + b">" for i in range(levels))
    with pytest.raises(XmlRefused, match="namespace declarations in scope"):
        parse_xml(b"<r>" + opened + b"</e>" * levels + b"</r>")


def test_many_elements_each_with_a_declaration_of_its_own_are_accepted() -> None:
    # siblings' declarations are not in scope of each other
    siblings = b"".join(b"<e " + declarations(1, i) + b"/>" for i in range(1000))
    assert len(parse_xml(b"<r>" + siblings + b"</r>")) == 1000


def test_more_attributes_on_one_element_than_the_limit_are_refused() -> None:
    assert parse_xml(b"<r><a " + attributes(MAX_ATTRIBUTES) + b"/></r>").tag == "r"
    with pytest.raises(XmlRefused, match="attributes on one element"):
        parse_xml(b"<r><a><b " + attributes(MAX_ATTRIBUTES + 1) + b"/></a></r>")


def test_a_large_file_read_in_pieces_is_held_to_the_same_limits(tmp_path: Path) -> None:
    path = tmp_path / "big.xml"
    filler = b"<f>" + b"x" * (2 * 1024 * 1024) + b"</f>"  # past the size read whole
    path.write_bytes(b"<r " + declarations(MAX_NAMESPACES_IN_SCOPE + 1) + b">" + filler + b"</r>")
    with pytest.raises(XmlRefused, match="namespace declarations in scope"):
        parse_xml_file(path)


def test_every_real_sample_and_schema_is_within_the_limits(reference_dir: Path) -> None:
    documents = [
        path
        for path in sorted(reference_dir.rglob("*"))
        if path.suffix in (".xml", ".xsd") and path.is_file()
    ]
    assert len(documents) > 40
    for path in documents:
        parse_xml_file(path)  # raises for a real document the limits would refuse
