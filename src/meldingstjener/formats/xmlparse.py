"""Hardened XML parsing for everything that comes from outside.

No DTDs, no entity expansion, no network, limits on size and depth. A violation raises
:class:`XmlRefused` (hostile or oversize input) or :class:`XmlMalformed` (not well-formed), both
fast: the size limit is checked before parsing starts (for files: before the file is opened),
a DOCTYPE in the prolog is refused before the parser sees the document, and entities are never
expanded or fetched, so a "billion laughs" document or an external entity pointing at a local
file is refused without expanding or reading anything.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

from lxml import etree

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a 35 MB payload base64-encoded inside MsgHead fits
DEFAULT_MAX_DEPTH = 200

# A DOCTYPE can only appear in the prolog, before the root element. Looking at the first bytes
# (after an optional BOM, XML declaration, comments and processing instructions) is enough to
# refuse it before libxml2 parses anything; the docinfo check after parsing covers encodings
# this ASCII scan cannot see (UTF-16).
_PROLOG_SCAN_BYTES = 64 * 1024
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_ROOT_START = re.compile(rb"<[A-Za-z_]")
_READ_WHOLE = 1024 * 1024  # files up to this size are read whole and parsed from memory


class XmlError(ValueError):
    """Base of XML input errors. ``code`` is a stable short code for logs and receipts."""

    code = "xml-error"
    apprec_code = "T01"  # code list 8221: not XML / not well-formed / unreadable


class XmlRefused(XmlError):
    """Input refused for safety: DTD, entity declarations, too large, too deep."""

    code = "xml-refused"


class XmlMalformed(XmlError):
    """Input that is not well-formed XML."""

    code = "xml-malformed"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        # A 35 MB attachment is one base64 text node, beyond libxml2's default 10 MB text limit.
        # huge_tree lifts that; what it guarded against is covered here: the document size is
        # checked before parsing, DTDs and entities are refused, and depth is limited below.
        huge_tree=True,
        remove_blank_text=False,
        collect_ids=False,
    )


def parse_xml(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> etree._Element:
    """Parse ``data`` safely and return the root element."""
    if len(data) > max_bytes:
        raise XmlRefused(
            f"XML document of {len(data)} bytes is larger than the limit of {max_bytes}"
        )
    _refuse_doctype_in_prolog(data)
    with _syntax_errors():
        root = etree.fromstring(data, parser=_parser())
    return _checked(root, max_depth)


def parse_xml_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> etree._Element:
    """Parse the file at ``path`` safely; its size is checked before it is opened.

    The parser reads the file in pieces, so a 35 MB document costs its tree, not also its
    bytes; the size limit also holds while reading (a file that grows meanwhile is refused).
    """
    size = os.stat(path).st_size
    if size > max_bytes:
        raise XmlRefused(f"XML file of {size} bytes is larger than the limit of {max_bytes}")
    with open(path, "rb") as handle:
        if size <= _READ_WHOLE:  # one read and a parse from memory is cheaper for small files
            return parse_xml(handle.read(max_bytes + 1), max_bytes=max_bytes, max_depth=max_depth)
        _refuse_doctype_in_prolog(handle.read(_PROLOG_SCAN_BYTES))
        handle.seek(0)
        with _syntax_errors():
            root = etree.parse(_Limited(handle, max_bytes), parser=_parser()).getroot()
    return _checked(root, max_depth)


class _Limited:
    """A file object for the parser that refuses to read past ``limit`` bytes."""

    def __init__(self, handle: BinaryIO, limit: int) -> None:
        self.handle = handle
        self.limit = limit
        self.seen = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.seen += len(data)
        if self.seen > self.limit:
            raise XmlRefused(f"XML file grew beyond the limit of {self.limit} bytes")
        return data


@contextlib.contextmanager
def _syntax_errors() -> Iterator[None]:
    """libxml2's complaints as our error types."""
    try:
        yield
    except etree.XMLSyntaxError as exc:
        message = str(exc)
        lowered = message.lower()
        if "depth" in lowered and ("excessive" in lowered or "exceed" in lowered):
            raise XmlRefused(f"XML nesting deeper than the parser allows: {message}") from None
        if "entity" in lowered:
            raise XmlRefused(f"XML with entity references is refused: {message}") from None
        raise XmlMalformed(f"not well-formed XML: {message}") from None
    except XmlRefused:
        raise
    except ValueError as exc:  # e.g. a str with an encoding declaration, or empty input
        raise XmlMalformed(f"not well-formed XML: {exc}") from None


def _checked(root: etree._Element | None, max_depth: int) -> etree._Element:
    if root is None:
        raise XmlMalformed("not well-formed XML: no root element")
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise XmlRefused("XML with a DOCTYPE/DTD is refused (entity declarations are not allowed)")
    _check_depth(root, max_depth)
    return root


def _refuse_doctype_in_prolog(data: bytes) -> None:
    head = data[:_PROLOG_SCAN_BYTES]
    doctype = _DOCTYPE.search(head)
    if doctype is None:
        return
    root = _ROOT_START.search(head)
    if root is None or doctype.start() < root.start():
        raise XmlRefused("XML with a DOCTYPE/DTD is refused (entity declarations are not allowed)")


def _check_depth(root: etree._Element, max_depth: int) -> None:
    # libxml2 bounds depth itself (2048 levels with huge_tree); this applies the caller's
    # tighter limit. One XPath step per level, evaluated in C: it touches each element once,
    # where a Python walk over every element cost more than the parse itself.
    if _too_deep(max_depth)(root):
        raise XmlRefused(f"XML nesting deeper than {max_depth} levels")


@functools.lru_cache(maxsize=8)
def _too_deep(max_depth: int) -> etree.XPath:
    return etree.XPath("boolean(" + "/*" * (max_depth + 1) + ")")
