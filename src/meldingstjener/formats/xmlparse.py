"""Hardened XML parsing for everything that comes from outside.

No DTDs, no entity expansion, no network, no file opened, limits on size, depth, namespace
declarations in scope and attributes per element. A violation
raises :class:`XmlRefused` (hostile or oversize input) or :class:`XmlMalformed` (not
well-formed), both fast: the size limit is checked before parsing starts (for files: before the
file is opened), a DOCTYPE in the prolog is refused before the parser sees the document, and
entities are never expanded or fetched, so a "billion laughs" document or an external entity
pointing at a local file is refused without expanding or reading anything.

Two lines of defence against an external DTD subset (``<!DOCTYPE r SYSTEM "/path">``), which
libxml2 opens even with ``load_dtd=False``: the prolog is read as libxml2 will read it (encoding
by byte order mark, NUL pattern or declaration) and a DOCTYPE, or a prolog too long to read to
its end, is refused before parsing; and the parser's resolver answers every external load with
nothing, so should a DOCTYPE get past, nothing is opened (a FIFO would block the request for
good) before the DOCTYPE check after parsing refuses the document.

Namespace declarations and attributes are limited because canonicalisation (C14N, which
checking an ebXML signature runs over the whole envelope before the sender is known) costs time
growing with the square of their number on one element: 20,000 ``xmlns:`` declarations on
SOAP:Envelope, a 445 KB request, cost 35 s of CPU. Real documents carry fewer than ten (the
KITH, ebXML and CPA samples at most 7 declarations in scope and 8 attributes on one element),
so the limits leave room and refuse only the made-up.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import os
import re
from collections.abc import Iterator
from typing import BinaryIO

from lxml import etree

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a 35 MB payload base64-encoded inside MsgHead fits
DEFAULT_MAX_DEPTH = 200
# At most this many namespace declarations on an element and its ancestors together (what is
# in scope there, counting a redeclared prefix again), and this many attributes on one element.
MAX_NAMESPACES_IN_SCOPE = 64
MAX_ATTRIBUTES = 64

# A DOCTYPE can only appear in the prolog, before the root element: reading the prolog (an
# optional BOM, XML declaration, comments and processing instructions) in its first bytes is
# enough to refuse it before libxml2 parses anything. A prolog longer than this is refused.
_PROLOG_SCAN_BYTES = 64 * 1024
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


class _NothingExternal(etree.Resolver):
    """Answers every load of an external resource (DTD subset, parameter entity) with an empty
    document: libxml2 routes them through the parser's resolvers before opening a file, and
    without this it opens an external DTD subset even with ``load_dtd=False``."""

    def resolve(self, system_url: str, public_id: str, context: object) -> object:
        return self.resolve_string("", context)


_OPTIONS: dict[str, bool] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    # A 35 MB attachment is one base64 text node, beyond libxml2's default 10 MB text limit.
    # huge_tree lifts that; what it guarded against is covered here: the document size is
    # checked before parsing, DTDs and entities are refused, and depth is limited below.
    "huge_tree": True,
    "remove_blank_text": False,
    "collect_ids": False,
}


def _parser() -> etree.XMLParser:
    parser = etree.XMLParser(**_OPTIONS)
    parser.resolvers.add(_NothingExternal())
    return parser


def reread(
    source: bytes | os.PathLike[str], *, schema: etree.XMLSchema | None = None
) -> etree.iterparse:
    """Read a document again, element by element (their ends), with the options and resolver
    of :func:`parse_xml`. Only for a document :func:`parse_xml` or :func:`parse_xml_file` has
    accepted already: size, prolog and depth are not checked again."""
    reader = etree.iterparse(
        io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source),
        events=("end",),
        schema=schema,
        **_OPTIONS,
    )
    reader.resolvers.add(_NothingExternal())
    return reader


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
    _refuse_doctype_in_prolog(data[:_PROLOG_SCAN_BYTES], len(data))
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
        _refuse_doctype_in_prolog(handle.read(_PROLOG_SCAN_BYTES), size)
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


_HUGE_HINT = re.compile(r",?\s*use XML_PARSE_HUGE option", re.IGNORECASE)


@contextlib.contextmanager
def _syntax_errors() -> Iterator[None]:
    """libxml2's complaints as our error types."""
    try:
        yield
    except etree.XMLSyntaxError as exc:
        # libxml2's advice to its caller ("use XML_PARSE_HUGE option") is no words for a sender
        message = _HUGE_HINT.sub("", str(exc))
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
    _check_namespaces_and_attributes(root)
    return root


def _refuse_doctype_in_prolog(head: bytes, size: int) -> None:
    """Refuse a document whose prolog, read in every way libxml2 may read it, holds a DOCTYPE
    or does not end within ``head`` (the first bytes of a document of ``size`` bytes)."""
    for reading in _prolog_readings(head):
        found = _prolog_end(reading)
        if found == _DOCTYPE:
            raise XmlRefused(
                "XML with a DOCTYPE/DTD is refused (entity declarations are not allowed)"
            )
        if found == _OPEN and size > len(head):
            raise XmlRefused(
                f"XML whose prolog (declaration, comments, processing instructions before the "
                f"root element) is longer than {_PROLOG_SCAN_BYTES} bytes is refused"
            )


# By byte order mark, then by the pattern of NULs around the first "<" (XML 1.0 appendix F):
# the encodings libxml2 detects before it reads a declaration, and then keeps whatever the
# declaration says. Longest marks first (a UTF-32LE mark begins like a UTF-16LE one).
_DETECTED = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<\x00?", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
)
# Patterns libxml2 knows and Python cannot read, or reads another way: UCS-4 in the unusual
# byte orders 2143 and 3412, and EBCDIC ("<?xm" in code page 37).
_UNREADABLE = (b"\x00\x00<\x00", b"\x00<\x00\x00", b"\x4c\x6f\xa7\x94")
# Encodings in which every byte below 0x80 is that ASCII character: the Latin-1 reading
# already shows their markup as it is, a second reading would add nothing.
_ASCII_AS_IS = frozenset({"utf-8", "ascii", "iso8859-1", "iso8859-15", "cp1252"})
_DECLARED = re.compile(
    rb"<\?xml[ \t\r\n][^>]*?encoding[ \t\r\n]*=[ \t\r\n]*[\"']([A-Za-z][\w.:-]*)[\"']"
)


def _prolog_readings(head: bytes) -> list[str]:
    """The first bytes as text in each encoding libxml2 may read them in.

    A byte order mark or NUL pattern fixes the encoding (libxml2 then ignores what the
    declaration says); otherwise the bytes are ASCII-compatible until the declaration names an
    encoding, and both readings are scanned: "+ADwAIQ-DOCTYPE" is a DOCTYPE in UTF-7, which
    libxml2 reads through iconv. An encoding Python cannot decode is refused, since its prolog
    cannot be checked.
    """
    if head.startswith(_UNREADABLE):
        raise XmlRefused("XML in UCS-4 of an unusual byte order or in EBCDIC is not read")
    for mark, encoding in _DETECTED:
        if head.startswith(mark):
            return [_decoded(head, encoding)]
    readings = [head.decode("latin-1")]  # every byte a character: ASCII markup stays visible
    declared = _DECLARED.match(head)
    if declared is not None:
        name = declared.group(1).decode("ascii")
        try:
            codec = codecs.lookup(name).name
        except LookupError:
            raise XmlRefused(
                f"XML declared in encoding {name[:40]!r}, which this server does not read"
            ) from None
        if codec not in _ASCII_AS_IS:
            readings.append(_decoded(head, codec))
    return readings


def _decoded(head: bytes, encoding: str) -> str:
    # Incremental, so a character cut at the end of the scanned bytes is no error; a byte the
    # encoding has no character for becomes U+FFFD, which ends the prolog scan (the parser
    # reports the document as malformed).
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    try:
        return decoder.decode(head, final=False)
    except UnicodeError:  # e.g. declared UTF-16 without a byte order mark: libxml2 fails too
        raise XmlMalformed(
            f"not well-formed XML: its first bytes are not {encoding[:40]!r} as declared"
        ) from None


_ROOT = "root"  # the root element starts: the prolog is clean
_DOCTYPE = "doctype"
_OPEN = "open"  # the text ends inside the prolog
_OTHER = "other"  # something no prolog holds: the parser reports the document as malformed
_SPACE = " \t\r\n"


def _prolog_end(text: str) -> str:
    """Walk the prolog of ``text`` past whitespace, the XML declaration, processing
    instructions and comments, and say what ends it."""
    pos = 1 if text.startswith("\ufeff") else 0
    end = len(text)
    while True:
        while pos < end and text[pos] in _SPACE:
            pos += 1
        if end - pos < len("<!DOCTYPE"):
            return _OPEN  # too little left to tell (a short document: the parser decides)
        if text.startswith("<?", pos):
            close = text.find("?>", pos + 2)
            if close < 0:
                return _OPEN
            pos = close + 2
        elif text.startswith("<!--", pos):
            close = text.find("-->", pos + 4)
            if close < 0:
                return _OPEN
            pos = close + 3
        elif text[pos : pos + 9].upper() == "<!DOCTYPE":
            return _DOCTYPE
        elif text[pos] == "<" and text[pos + 1] != "!":
            return _ROOT
        else:
            return _OTHER


def _check_depth(root: etree._Element, max_depth: int) -> None:
    # libxml2 bounds depth itself (2048 levels with huge_tree); this applies the caller's
    # tighter limit. One XPath step per level, evaluated in C: it touches each element once,
    # where a Python walk over every element cost more than the parse itself.
    if _too_deep(max_depth)(root):
        raise XmlRefused(f"XML nesting deeper than {max_depth} levels")


@functools.lru_cache(maxsize=8)
def _too_deep(max_depth: int) -> etree.XPath:
    return etree.XPath("boolean(" + "/*" * (max_depth + 1) + ")")


def _check_namespaces_and_attributes(root: etree._Element) -> None:
    # The namespace walk yields an event per declaration and one as each leaves scope, nothing
    # for an element that declares none; the attribute test is one XPath evaluated in C. Both
    # cost a fraction of the parse, and stop at the first element over the limit.
    in_scope = 0
    for event, _ in etree.iterwalk(root, events=("start-ns", "end-ns")):
        in_scope += 1 if event == "start-ns" else -1
        if in_scope > MAX_NAMESPACES_IN_SCOPE:
            raise XmlRefused(
                f"XML with more than {MAX_NAMESPACES_IN_SCOPE} namespace declarations in scope "
                f"of one element"
            )
    # evaluated on the tree, not by one compiled XPath shared by the receiving threads: lxml
    # serialises the calls of one XPath object with a lock of its own
    if root.xpath(_TOO_MANY_ATTRIBUTES):
        raise XmlRefused(f"XML with more than {MAX_ATTRIBUTES} attributes on one element")


_TOO_MANY_ATTRIBUTES = f"boolean(/descendant-or-self::*[@*[{MAX_ATTRIBUTES + 1}]])"
