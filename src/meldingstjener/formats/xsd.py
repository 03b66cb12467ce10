"""XSD validation against the official KITH schemas, loaded from a configured directory.

The package does not ship the schemas. Every ``*.xsd`` in the directory is mapped by its
targetNamespace (so the official file names do not matter), and one wrapper schema importing
all of them is compiled once per directory and cached. The KITH schemas import each other by
relative path; those imports are resolved inside the directory only: the parser never touches
the network and refuses DTDs, like every other parser in this package. MsgHead's strict
RefDoc/Content wildcard is compiled lax, so a business document with no schema in the directory
is a warning of the validation layer, not a schema error (see :func:`_with_lax_content`).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lxml import etree

from meldingstjener.formats.element_names import KNOWN_ELEMENT_NAMES
from meldingstjener.formats.errors import FormatError
from meldingstjener.formats.xmlparse import reread
from meldingstjener.formats.xmlutil import NS_DSIG, NS_MSGHEAD, NS_XSI, ElementPaths

_XS = "http://www.w3.org/2001/XMLSchema"


class SchemaError(FormatError):
    """The schema directory cannot be used (missing, unreadable, schemas do not compile)."""

    code = "schema-error"
    apprec_code = "T99"


@dataclass(frozen=True, slots=True)
class XsdIssue:
    line: int
    path: str
    message: str


class _LocalOnly(etree.Resolver):
    """Resolves schema imports inside the schema directory; anything else gets an empty answer.
    A file in ``replaced`` is read as the text given there instead."""

    def __init__(self, root: Path, replaced: dict[Path, bytes] | None = None) -> None:
        super().__init__()
        self._root = root
        self._replaced = replaced or {}

    def resolve(self, system_url: str, public_id: str, context: object) -> object:
        if system_url.startswith("file:"):
            path = Path(system_url.removeprefix("file://")).resolve()
        elif "://" in system_url:
            path = None
        else:
            path = (self._root / system_url).resolve()
        if path is None or not path.is_relative_to(self._root) or not path.is_file():
            # An empty schema: the import fails to compile with a clear error, nothing is fetched.
            return self.resolve_string(
                f'<schema xmlns="{_XS}"/>', context, base_url=str(self._root / "refused.xsd")
            )
        if path in self._replaced:
            return self.resolve_string(self._replaced[path], context, base_url=str(path))
        return self.resolve_filename(str(path), context)


def _schema_parser(root: Path, replaced: dict[Path, bytes] | None = None) -> etree.XMLParser:
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    parser.resolvers.add(_LocalOnly(root, replaced))
    return parser


def _with_lax_content(schema: etree._ElementTree) -> bytes | None:
    """The MsgHead schema with the wildcard of its RefDoc/Content lax, or None when it has no
    strict one.

    MsgHead 1.2 declares Content ``<any processContents="strict"/>``: a business document
    whose namespace has no schema in the directory (a POM, when only MsgHead and AppRec are
    there) would be invalid for want of a declaration, the sender's fault, where the rule is
    that a document with no schema is a ``no-schema`` warning (``validation._validate_xsd``).
    Lax, a document whose root element is declared is validated as strictly as before; one
    that is not is skipped, and the validation layer says which of those is a warning and
    which an error (see :meth:`SchemaSet.declares`)."""
    changed = False
    for element in schema.getroot().iter(f"{{{_XS}}}element"):
        if element.get("name") != "Content":
            continue
        for wildcard in element.iter(f"{{{_XS}}}any"):
            if wildcard.get("processContents", "strict") == "strict":
                wildcard.set("processContents", "lax")
                changed = True
    return etree.tostring(schema) if changed else None


def _global_elements(
    trees: dict[str, etree._ElementTree], parsed: dict[Path, etree._ElementTree]
) -> frozenset[str]:
    """The global element declarations (``{namespace}name``) of each namespace's schema as
    compiled: its file and the files it includes, however deep (an include takes the
    including schema's namespace, also one with no targetNamespace of its own)."""
    found: set[str] = set()
    for target, tree in trees.items():
        todo, seen = [tree], set()
        while todo:
            schema = todo.pop().getroot()
            found.update(
                f"{{{target}}}{element.get('name')}"
                for element in schema.iterchildren(f"{{{_XS}}}element")
                if element.get("name")
            )
            for path in _included(schema.getroottree()):
                if path in parsed and path not in seen:  # only files of the directory
                    seen.add(path)
                    todo.append(parsed[path])
    return frozenset(found)


def _included(tree: etree._ElementTree) -> list[Path]:
    """The files a schema includes (``xs:include``), by their resolved paths."""
    base = Path(tree.docinfo.URL or "").parent
    return [
        (base / (include.get("schemaLocation") or "")).resolve()
        for include in tree.getroot().iterchildren(f"{{{_XS}}}include")
    ]


class SchemaSet:
    """The compiled KITH schemas of one directory, by target namespace."""

    def __init__(self, directory: Path) -> None:
        root = directory.resolve()
        if not root.is_dir():
            raise SchemaError(f"schema directory {directory} does not exist")
        self.directory = root
        self.files: dict[str, Path] = {}
        trees: dict[str, etree._ElementTree] = {}
        parsed: dict[Path, etree._ElementTree] = {}
        for path in sorted(root.glob("*.xsd")):
            try:
                parsed[path.resolve()] = etree.parse(str(path), _schema_parser(root))
            except etree.XMLSyntaxError as exc:
                raise SchemaError(f"schema {path.name} is not well-formed: {exc}") from None
        # a namespace's schema is its first file that no other includes: an included part
        # (whose name may sort first) is compiled through the file that includes it
        included = {path for tree in parsed.values() for path in _included(tree)}
        for path, tree in sorted(parsed.items(), key=lambda item: (item[0] in included, item[0])):
            target = tree.getroot().get("targetNamespace")
            if target and target not in self.files:
                self.files[target] = path
                trees[target] = tree
        if not self.files:
            raise SchemaError(f"no XML schemas (*.xsd) in {directory}")
        self._elements = _global_elements(trees, parsed)
        replaced: dict[Path, bytes] = {}
        if NS_MSGHEAD in trees and (lax := _with_lax_content(trees[NS_MSGHEAD])) is not None:
            replaced[self.files[NS_MSGHEAD]] = lax
        imports = "".join(
            f"<xs:import namespace={quoteattr(ns)} schemaLocation={quoteattr(p.name)}/>"
            for ns, p in self.files.items()
        )
        wrapper = f'<xs:schema xmlns:xs="{_XS}">{imports}</xs:schema>'
        parser = _schema_parser(root, replaced)
        try:
            document = etree.fromstring(
                wrapper.encode(), parser, base_url=str(root / "__wrapper__.xsd")
            )
            self._schema = etree.XMLSchema(document)
        except (etree.XMLSchemaParseError, etree.XMLSyntaxError) as exc:
            raise SchemaError(f"schemas in {directory} do not compile: {exc}") from None
        self._lock = threading.Lock()  # an XMLSchema object keeps its error log: one at a time

    def covers(self, namespace: str | None) -> bool:
        return namespace in self.files

    def declares(self, tag: str) -> bool:
        """Whether ``tag`` (``{namespace}name``) is a global element of the schemas: what a
        strict wildcard demands of the element it takes."""
        return tag in self._elements

    def validate(
        self,
        root: etree._Element,
        *,
        source: bytes | os.PathLike[str] | None = None,
        limit: int | None = None,
    ) -> list[XsdIssue]:
        """The schema's complaints about ``root``, the first ``limit`` of them, each located
        by a search of the tree (which a caller that lists a few need not pay for all).

        A document of more than :data:`_TREE_NODES_MAX` elements and attributes is validated
        while its ``source`` (what ``root`` was parsed from) is read again, if given: in
        linear time, its complaints without a path.
        """
        with self._lock:
            if source is not None and _COUNT_NODES(root) > _TREE_NODES_MAX:
                return self._validate_reading(source)[:limit]
            if self._schema.validate(root.getroottree()):
                return []
            paths = ElementPaths()
            return [
                XsdIssue(
                    line=e.line, path=_readable_path(root, e.path, paths), message=_plain(e.message)
                )
                for e in itertools.islice(self._schema.error_log, limit)
            ]

    def _validate_reading(self, source: bytes | os.PathLike[str]) -> list[XsdIssue]:
        reader = reread(source, schema=self._schema)
        try:
            for _event, element in reader:
                _forget(element)
        except etree.XMLSyntaxError:  # invalid: the complaints are in the reader's own log
            pass
        return [
            XsdIssue(line=e.line, path="", message=_plain(e.message))
            for e in reader.error_log
            if e.level >= etree.ErrorLevels.ERROR
        ]


# lxml records the path of the element of every schema complaint, with libxml2's
# xmlGetNodePath, which walks the element's preceding siblings: complaints times siblings, 9 s
# for 32,000 faulty siblings and hours for a 64 MB document of them. Up to this many elements
# and attributes that costs a fraction of a second, and the tree is validated, its complaints
# located by path; a larger document is validated while it is read again, as libxml2 parses it:
# in linear time, its complaints without a path or line.
_TREE_NODES_MAX = 10_000
_COUNT_NODES = etree.XPath("count(//*) + count(//@*)")


def _forget(element: etree._Element) -> None:
    """Drop an element read to its end, and its earlier siblings: the validator needs the
    parse, not the tree, so a large document costs no second tree."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _readable_path(root: etree._Element, xpath: str | None, paths: ElementPaths) -> str:
    # libxml2 reports default-namespace elements as "*" ("/*/*[3]"); find the element and name it.
    if not xpath:
        return ""
    # A path not found is not shown: libxml2 names a prefixed element by its prefix and name,
    # both the sender's text; the complaint's line tells where instead.
    try:
        found = root.getroottree().xpath(xpath)
    except etree.XPathError:
        return ""
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return paths.of(found[0])
    return ""


# The attribute names the KITH schemas declare (every xs:attribute name of the schema files
# formats.element_names lists), and XML Schema instance's, which libxml2 may name.
KNOWN_ATTRIBUTE_NAMES: frozenset[str] = frozenset(
    (
        "Algorithm", "COMPN", "DN", "ENC", "Encoding", "IC", "ICA", "Id", "MT", "MimeType",
        "NULL", "OT", "S", "Target", "Type", "U", "URI", "V",
        "nil", "noNamespaceSchemaLocation", "schemaLocation", "type",
    )
)  # fmt: skip
# libxml2 quotes the element (Element '{ns}Local') and the attribute (attribute 'Local') a
# complaint is about; a namespace may hold any character, so it is matched up to the '}' after
# which a name and the closing quote follow.
_QUOTED_NAME = re.compile(r"\b(element|attribute) '(?:\{(.*?)\})?([^'{}\s]*)'", re.I | re.S)
_KITH = "http://www.kith.no/xmlstds/"  # what follows it is left out, so may be anything
# the KITH and XML Schema instance namespaces elsewhere in a complaint ("Expected is ( {...}Id )")
_NOISE = re.compile(r"\{(?:" + re.escape(_KITH) + "|" + re.escape(NS_XSI) + r")[^{}]*\}")


def _plain(message: str) -> str:
    """libxml2's complaint, fit for the message log and an AppRec's text: a quoted element or
    attribute name the KITH schemas do not declare, or in a namespace not theirs, is the
    sender's own text (``<PATIENTNAME-Nordmann/>``, ``P01017012345="x"``) and is shown as
    ``*``; a known name is shown without its namespace, and a KITH namespace is left out
    elsewhere too (noise for a reader)."""
    return _NOISE.sub("", _QUOTED_NAME.sub(_shown_name, message))


def _shown_name(match: re.Match[str]) -> str:
    kind, ns, local = match.group(1), match.group(2), match.group(3)
    known = KNOWN_ELEMENT_NAMES if kind.lower() == "element" else KNOWN_ATTRIBUTE_NAMES
    in_known_namespace = ns is None or ns in (NS_XSI, NS_DSIG) or ns.startswith(_KITH)
    return f"{kind} '{local if local in known and in_known_namespace else '*'}'"


_CACHE: dict[Path, SchemaSet] = {}
_CACHE_LOCK = threading.Lock()


def schema_set(directory: Path) -> SchemaSet:
    """The compiled schemas of ``directory``, compiled on first use and cached."""
    key = directory.resolve()
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = SchemaSet(key)
            _CACHE[key] = cached
        return cached
