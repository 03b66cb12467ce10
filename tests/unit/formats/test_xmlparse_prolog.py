"""The prolog is read as libxml2 will read it, and nothing outside the document is ever opened.

libxml2 opens an external DTD subset (``<!DOCTYPE r SYSTEM "/path">``) even with
``load_dtd=False``; a FIFO there blocked the request thread for good, before the envelope's
signature was checked. So a DOCTYPE is refused before parsing in every encoding libxml2 reads
(by byte order mark, NUL pattern or declaration), a prolog too long to read to its end is
refused, and should a DOCTYPE get past, the parser's resolver opens nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meldingstjener.formats import xmlparse
from meldingstjener.formats.xmlparse import XmlMalformed, XmlRefused, parse_xml, parse_xml_file

DOCTYPE = '<!DOCTYPE r [<!ENTITY e "x">]><r>&e;</r>'


@pytest.fixture
def parser_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if libxml2 is asked to parse: the refusal must come before parsing."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the document reached the XML parser")

    monkeypatch.setattr(xmlparse.etree, "fromstring", refuse)
    monkeypatch.setattr(xmlparse.etree, "parse", refuse)


@pytest.mark.usefixtures("parser_must_not_run")
@pytest.mark.parametrize(
    "data",
    [
        ('<?xml version="1.0" encoding="UTF-16"?>' + DOCTYPE).encode("utf-16"),
        ('<?xml version="1.0" encoding="UTF-16"?>' + DOCTYPE).encode("utf-16-le"),
        ('<?xml version="1.0" encoding="UTF-16"?>' + DOCTYPE).encode("utf-16-be"),
        ('<?xml version="1.0" encoding="UTF-32"?>' + DOCTYPE).encode("utf-32"),
        ('<?xml version="1.0"?>' + DOCTYPE).encode("utf-32-be"),
        DOCTYPE.encode("utf-32-le"),
        # in UTF-7 "<!DOCTYPE" is "+ADwAIQ-DOCTYPE": no "<!DOCTYPE" among the bytes
        b'<?xml version="1.0" encoding="UTF-7"?>+ADwAIQ-DOCTYPE r+AD4APA-r/+AD4-',
        # a comment holding what looks like a root element before the DOCTYPE
        b"<!-- <a> --><?pi <b> ?>" + DOCTYPE.encode(),
        b"\xef\xbb\xbf \r\n" + DOCTYPE.encode(),
        b"<!doctype r><r/>",
    ],
    ids=[
        "utf-16",
        "utf-16-le-no-bom",
        "utf-16-be-no-bom",
        "utf-32",
        "utf-32-be-no-bom",
        "utf-32-le-no-declaration",
        "utf-7",
        "root-in-a-comment",
        "utf-8-bom",
        "lower-case",
    ],
)
def test_a_doctype_is_refused_before_parsing_in_any_encoding(data: bytes) -> None:
    with pytest.raises(XmlRefused, match="DOCTYPE"):
        parse_xml(data)


@pytest.mark.usefixtures("parser_must_not_run")
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_prolog_longer_than_the_scan_is_refused(encoding: str) -> None:
    padding = "<!--" + "x" * (70 * 1024) + "-->"
    for after in (DOCTYPE, "<r/>"):  # whatever follows: it could not be checked
        data = ('<?xml version="1.0"?>' + padding + after).encode(encoding)
        with pytest.raises(XmlRefused, match="prolog"):
            parse_xml(data)


@pytest.mark.usefixtures("parser_must_not_run")
def test_a_prolog_longer_than_the_scan_is_refused_in_a_file_too(tmp_path: Path) -> None:
    big = tmp_path / "big.xml"  # over the size read whole: the file is scanned, then parsed
    big.write_bytes(b"<!--" + b"x" * (2 * 1024 * 1024) + b"-->" + DOCTYPE.encode())
    with pytest.raises(XmlRefused, match="prolog"):
        parse_xml_file(big)


@pytest.mark.usefixtures("parser_must_not_run")
@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0" encoding="x-unknown"?><r/>',
        '<?xml version="1.0" encoding="IBM037"?><r/>'.encode("cp037"),  # EBCDIC
        b"\x00\x00<\x00\x00\x00r\x00\x00\x00/\x00\x00\x00>\x00",  # UCS-4, byte order 2143
    ],
    ids=["unknown", "ebcdic", "ucs-4-2143"],
)
def test_an_encoding_whose_prolog_cannot_be_read_is_refused(data: bytes) -> None:
    with pytest.raises(XmlRefused, match=r"encoding|EBCDIC"):
        parse_xml(data)


def test_declared_utf16_in_single_bytes_is_malformed() -> None:
    with pytest.raises(XmlMalformed):
        parse_xml(b'<?xml version="1.0" encoding="UTF-16"?><r/>')


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ('<?xml version="1.0" encoding="UTF-16"?><r>blåbær</r>'.encode("utf-16"), "blåbær"),
        ('<?xml version="1.0"?><r>blåbær</r>'.encode("utf-32"), "blåbær"),
        ('<?xml version="1.0" encoding="ISO-8859-1"?><r>blåbær</r>'.encode("latin-1"), "blåbær"),
        ('<?xml version="1.0" encoding="UTF-7"?><r>blåbær</r>'.encode("utf-7"), "blåbær"),
        ("\ufeff<?xml version='1.0'?>\n<!-- a comment --><?pi x?>\n<r>æ</r>".encode(), "æ"),
        (b"<r>" + b"x" * (100 * 1024) + b"</r>", None),  # larger than the scan, prolog short
    ],
    ids=["utf-16", "utf-32", "latin-1", "utf-7", "bom-comment-pi", "large"],
)
def test_documents_without_a_doctype_parse(data: bytes, text: str | None) -> None:
    root = parse_xml(data)
    assert root.tag == "r"
    if text is not None:
        assert root.text == text


# --- nothing is opened -------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, list[bool]]]:
    """A FIFO, and a list that gets an entry when anything opens it for reading.

    Opening a FIFO for reading blocks until a writer comes: a watcher thread opens it for
    writing whenever a reader waits (a non-blocking open for writing fails while none does),
    so a parser that opens it is let go and the test fails on ``opened`` instead of hanging.
    """
    path = tmp_path / "dtd.fifo"
    os.mkfifo(path)
    opened: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                done.wait(0.005)
                continue
            opened.append(True)
            os.close(fd)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield path, opened
    done.set()
    watcher.join(5)


def _external_subset(path: Path, encoding: str) -> bytes:
    return f'<?xml version="1.0" encoding="{encoding}"?><!DOCTYPE r SYSTEM "{path}"><r/>'.encode(
        encoding
    )


def _external_parameter_entity(path: Path, encoding: str) -> bytes:
    doc = f'<!DOCTYPE r [<!ENTITY % p SYSTEM "{path.as_uri()}"> %p;]><r/>'
    return f'<?xml version="1.0" encoding="{encoding}"?>{doc}'.encode(encoding)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("prefilter", [True, False], ids=["prefilter", "resolver-alone"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("build", [_external_subset, _external_parameter_entity])
def test_an_external_dtd_is_refused_without_opening_it(
    fifo: tuple[Path, list[bool]],
    monkeypatch: pytest.MonkeyPatch,
    prefilter: bool,
    encoding: str,
    build: Callable[[Path, str], bytes],
) -> None:
    path, opened = fifo
    if not prefilter:  # the second line of defence alone: the parser's resolver
        monkeypatch.setattr(xmlparse, "_refuse_doctype_in_prolog", lambda *args: None)
    with pytest.raises(XmlRefused) as caught:
        parse_xml(build(path, encoding))
    assert caught.value.code == "xml-refused"
    assert not opened, "the parser opened the external DTD"


@pytest.mark.timeout(30)
def test_a_large_file_with_an_external_dtd_is_refused_without_opening_it(
    fifo: tuple[Path, list[bool]], tmp_path: Path
) -> None:
    path, opened = fifo
    big = tmp_path / "big.xml"  # over the size read whole: the parser reads the file itself
    doc = f'<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r SYSTEM "{path}"><r>'
    big.write_bytes((doc + "x" * (1024 * 1024) + "</r>").encode("utf-16"))
    with pytest.raises(XmlRefused):
        parse_xml_file(big)
    assert not opened, "the parser opened the external DTD"
