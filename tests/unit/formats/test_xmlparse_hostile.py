"""Hostile XML is refused quickly with a clear error, without expanding or reading anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.formats import xmlparse
from meldingstjener.formats.xmlparse import XmlMalformed, XmlRefused, parse_xml, parse_xml_file

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

SECRET = "top-secret-content-that-must-not-leak"


def _external_entity_doc(target: Path) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "{target.as_uri()}">]>\n<r>&x;</r>'
    ).encode()


@pytest.fixture
def parser_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if libxml2 is asked to parse: the refusal must come before parsing."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the document reached the XML parser")

    monkeypatch.setattr(xmlparse.etree, "fromstring", refuse)


@pytest.mark.usefixtures("parser_must_not_run")
def test_billion_laughs_is_refused_before_parsing() -> None:
    with pytest.raises(XmlRefused, match="DOCTYPE"):
        parse_xml(BILLION_LAUGHS)


@pytest.mark.usefixtures("parser_must_not_run")
def test_external_entity_is_refused_before_the_entity_could_be_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    with pytest.raises(XmlRefused) as caught:
        parse_xml(_external_entity_doc(secret))
    assert SECRET not in str(caught.value)


@pytest.mark.usefixtures("parser_must_not_run")
def test_utf16_doctype_is_refused_before_parsing(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    data = _external_entity_doc(secret).decode().replace('"1.0"?>', '"1.0" encoding="UTF-16"?>')
    with pytest.raises(XmlRefused) as caught:
        parse_xml(data.encode("utf-16"))
    assert SECRET not in str(caught.value)
    with pytest.raises(XmlRefused):
        parse_xml(
            BILLION_LAUGHS.decode().replace('"1.0"?>', '"1.0" encoding="UTF-16"?>').encode("utf-16")
        )


def test_200_mb_file_is_refused_by_its_size_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = tmp_path / "huge.xml"
    with huge.open("wb") as handle:  # sparse: 200 MB on paper, nothing on disk
        handle.truncate(200 * 1024 * 1024)

    def no_reading(self: Path) -> bytes:
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(XmlRefused, match="larger than the limit"):
        parse_xml_file(huge)


def test_oversize_bytes_are_refused_before_parsing(parser_must_not_run: None) -> None:
    with pytest.raises(XmlRefused, match="larger than the limit"):
        parse_xml(b"<a>" + b"x" * 2048 + b"</a>", max_bytes=1024)


def test_ten_thousand_levels_of_nesting_are_refused() -> None:
    deep = b"<a>" * 10_000 + b"</a>" * 10_000
    with pytest.raises(XmlRefused, match="nesting") as refused:
        parse_xml(deep)
    # libxml2's advice to its caller is no words for a sender (review: interop 8)
    assert "XML_PARSE_HUGE" not in str(refused.value)


def test_nesting_beyond_the_callers_limit_is_refused() -> None:
    with pytest.raises(XmlRefused, match="deeper than 5"):
        parse_xml(b"<a>" * 6 + b"</a>" * 6, max_depth=5)
    assert parse_xml(b"<a>" * 5 + b"</a>" * 5, max_depth=5).tag == "a"


@pytest.mark.parametrize("data", [b"", b"<a>", b"not xml", b"<a></b>"])
def test_malformed_input_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(XmlMalformed) as caught:
        parse_xml(data)
    assert caught.value.code == "xml-malformed"
    assert caught.value.apprec_code == "T01"


def test_a_plain_document_parses() -> None:
    assert parse_xml(b'<?xml version="1.0" encoding="UTF-8"?><a><b>x</b></a>').find("b").text == "x"


@pytest.mark.usefixtures("parser_must_not_run")
def test_a_network_entity_is_refused_before_parsing() -> None:
    data = b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><r>&x;</r>'
    with pytest.raises(XmlRefused):
        parse_xml(data)
