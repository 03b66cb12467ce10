"""Small helpers shared by the readers and builders: namespaces, coded values, element access.

KITH messages carry coded values as attributes on an empty element (``<Type V="EPIKRISE"
DN="Epikrise"/>``): ``V`` the code, ``DN`` its display name, ``S`` the code list OID and
``OT`` original text. :class:`Coded` holds one of those.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from meldingstjener.formats.element_names import KNOWN_ELEMENT_NAMES
from meldingstjener.formats.errors import MarkupInValue

NS_MSGHEAD = "http://www.kith.no/xmlstds/msghead/2006-05-24"
NS_APPREC_10 = "http://www.kith.no/xmlstds/apprec/2004-11-21"
NS_APPREC_11 = "http://www.kith.no/xmlstds/apprec/2012-02-15"
NS_DIALOG_10 = "http://www.kith.no/xmlstds/dialog/2006-10-11"
NS_DIALOG_11 = "http://www.kith.no/xmlstds/dialog/2013-01-23"
NS_FK1 = "http://www.kith.no/xmlstds/felleskomponent1"
NS_BASE64 = "http://www.kith.no/xmlstds/base64container"
NS_DSIG = "http://www.w3.org/2000/09/xmldsig#"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"

OID_PREFIX = "2.16.578.1.12.4.1.1."

_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*")
_XS_DATE_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.[0-9]+)?"
    r"(?:Z|[+-](?P<zh>[0-9]{2}):(?P<zm>[0-9]{2}))?"
)
_TEXT_SLICE = 1024 * 1024  # characters looked at at a time when checking a long text
_XS_SPACE = " \t\r\n"  # XML Schema's whitespace; str.split() also takes others
_XS_WHITESPACE = re.compile(r"[ \t\r\n]+")


@dataclass(frozen=True, slots=True)
class Coded:
    """A coded value: ``v`` the code, ``dn`` display name, ``s`` code list OID, ``ot`` text."""

    v: str | None = None
    dn: str | None = None
    s: str | None = None
    ot: str | None = None


def qname(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


# what a name lxml does not take as an element name is read as: a parser in recovery, or one
# that keeps an unbound prefix, leaves such names (``<a:b:c/>``) in the tree, and the name is
# the message's own text, not a name of any schema
INVALID_NAME = "*"


def local_name(element: etree._Element) -> str:
    """The element's name without its namespace; :data:`INVALID_NAME` for a name that is not
    a valid XML name (never an exception, whose text would quote it)."""
    try:
        return etree.QName(element).localname
    except ValueError:
        return INVALID_NAME


def namespace(element: etree._Element) -> str | None:
    """The element's namespace, or None; also for an element whose name is not valid."""
    tag = element.tag
    if not isinstance(tag, str) or not tag.startswith("{"):
        return None
    return tag[1:].partition("}")[0]


# iterchildren(tag) rather than find(tag): the same first match, without ElementPath's parsing
# of the tag as a path, in half the time. Every field of every message is read through these.
def child(parent: etree._Element | None, ns: str, local: str) -> etree._Element | None:
    if parent is None:
        return None
    return next(parent.iterchildren(qname(ns, local)), None)


def children(parent: etree._Element | None, ns: str, local: str) -> list[etree._Element]:
    if parent is None:
        return []
    return list(parent.iterchildren(qname(ns, local)))


def plain_text(element: etree._Element) -> str | None:
    """The text of an element that holds text only, or None when it holds anything besides
    text: a comment, a processing instruction, an element.

    The one rule for value elements, here and in the ebXML envelope: ``element.text`` stops at
    the first comment or processing instruction, while XPath ``string()``, XSD validation and
    canonicalisation (which drops comments) see the text around it joined. ``<Id>1123<!---->74
    </Id>`` would be read as 1123 and checked, signed or shown as 112374; refusing it leaves
    one reading. CDATA sections are text (the parser merges them) and pass.
    """
    if len(element):  # any child node: element, comment, processing instruction
        return None
    return element.text or ""


def text(parent: etree._Element | None, ns: str, local: str) -> str | None:
    """The stripped text of a child element, or None when the child is absent; a child that
    holds a comment or markup besides its text raises :class:`MarkupInValue` (see
    :func:`plain_text`)."""
    element = child(parent, ns, local)
    if element is None:
        return None
    value = plain_text(element)
    if value is None:
        raise MarkupInValue(
            f"{local} holds a comment or markup where only text is allowed",
            path=path_of(element),
        )
    return value.strip()


def is_xs_date_time(value: str) -> bool:
    """Whether ``value`` is an xs:dateTime a schema validator accepts, within the years 1 to
    9999 (stricter than ``datetime.fromisoformat``, which also takes a date alone or a space
    for the T). Leading and trailing whitespace is allowed, as the schema collapses it."""
    found = _XS_DATE_TIME.fullmatch(value.strip(_XS_SPACE))
    if found is None:
        return False
    try:
        datetime.fromisoformat(f"{found['date']}T{found['time']}")
    except ValueError:  # month 13, February 30, hour 24, year 0
        return False
    if found["zh"] is None:
        return True
    hours, minutes = int(found["zh"]), int(found["zm"])
    return minutes < 60 and (hours, minutes) <= (14, 0)


def all_text(element: etree._Element | None) -> str | None:
    """All text below an element (anyType content such as TekstNotatInnhold may hold markup)."""
    if element is None:
        return None
    return "".join(element.itertext())


def coded(parent: etree._Element | None, ns: str, local: str) -> Coded | None:
    element = child(parent, ns, local)
    return None if element is None else coded_of(element)


def collapsed(value: str | None) -> str | None:
    """``value`` as XML Schema reads a value whose whitespace is collapsed (xs:token, and
    every type but xs:string): runs of space, tab, CR and LF as one space, none at either end.
    Only those four: a no-break space is a character of the value to the validator, and so
    here too."""
    if value is None:
        return None
    return _XS_WHITESPACE.sub(" ", value.strip(_XS_SPACE))


def v_of(element: etree._Element) -> str | None:
    """Attribute V as the schema reads it (see :func:`collapsed`): the one reading of a code.

    V is xs:token in the KITH coded types (CV, CS), and a date, URI, number or boolean
    elsewhere, all collapsed: ``V=" HER"`` passes the XSD as ``HER``. Read raw, a HER-id
    with it was no HER-id, and a MsgInfo/Type ``" DIALOG_NOTAT"`` no code."""
    return collapsed(element.get("V"))


def coded_of(element: etree._Element) -> Coded:
    """The coded value of ``element``: V and S (an xs:token OID) collapsed as the schema
    reads them; DN and OT (xs:string) as they are."""
    return Coded(
        v=v_of(element), dn=element.get("DN"), s=collapsed(element.get("S")), ot=element.get("OT")
    )


def add(parent: etree._Element, ns: str, local: str, value: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, qname(ns, local))
    if value is not None:
        element.text = value
    return element


def add_opt(parent: etree._Element, ns: str, local: str, value: str | None) -> None:
    if value is not None:
        add(parent, ns, local, value)


def add_coded(
    parent: etree._Element, ns: str, local: str, value: Coded | None, *, with_s: bool = True
) -> None:
    """Append ``value`` as a coded element; CS types (``with_s=False``) carry only V and DN."""
    if value is None:
        return
    element = add(parent, ns, local)
    if value.v is not None:
        element.set("V", value.v)
    if value.dn is not None:
        element.set("DN", value.dn)
    if with_s and value.s is not None:
        element.set("S", value.s)
    if with_s and value.ot is not None:
        element.set("OT", value.ot)


def path_of(element: etree._Element) -> str:
    """A readable path such as ``/MsgHead/MsgInfo/Sender/Organisation[1]`` (no namespaces); an
    element whose name the KITH schemas do not declare is ``*[n]``, its position among its
    parent's elements."""
    return ElementPaths().of(element)


class ElementPaths:
    """Readable paths (see :func:`path_of`) of many elements of one tree, at a cost linear in
    the tree: each parent's children are numbered once, on the first path through it, where
    numbering them again for every path cost a document of 16,000 flagged siblings minutes.

    The numbers are kept by element, so one instance serves one tree while it is unchanged.
    """

    def __init__(self) -> None:
        # lxml hands out the same element object for a node while one is referenced, as the
        # keys here are: so the children numbered are found again by identity.
        self._labels: dict[etree._Element, str] = {}

    def of(self, element: etree._Element) -> str:
        parts: list[str] = []
        current: etree._Element | None = element
        while current is not None:
            parent = current.getparent()
            label = self._labels.get(current)
            if label is None:
                label = _shown_name(current) if parent is None else self._number(parent, current)
            parts.append(label)
            current = parent
        return "/" + "/".join(reversed(parts))

    def _number(self, parent: etree._Element, wanted: etree._Element) -> str:
        """Label every element child of ``parent``: its name, with its position among the
        children of its name when there are several; a name no schema we know declares as
        ``*`` and its position among all the element children. Returns ``wanted``'s label."""
        siblings = [c for c in parent if isinstance(c.tag, str)]
        totals: dict[str, int] = {}
        for sibling in siblings:
            totals[sibling.tag] = totals.get(sibling.tag, 0) + 1
        seen: dict[str, int] = {}
        for position, sibling in enumerate(siblings, 1):
            name = _shown_name(sibling)
            if name == INVALID_NAME:
                self._labels[sibling] = f"{INVALID_NAME}[{position}]"
                continue
            if totals[sibling.tag] > 1:
                seen[sibling.tag] = seen.get(sibling.tag, 0) + 1
                name = f"{name}[{seen[sibling.tag]}]"
            self._labels[sibling] = name
        return self._labels[wanted]


def _shown_name(element: etree._Element) -> str:
    """The element's name as a path shows it: a name of the KITH schemas as it is, any other
    (the sender's own text, which may name the patient) as :data:`INVALID_NAME`."""
    name = local_name(element)
    return name if name in KNOWN_ELEMENT_NAMES else INVALID_NAME


def elements(root: etree._Element) -> Iterator[etree._Element]:
    """Every element below ``root`` (comments and processing instructions skipped)."""
    for element in root.iter():
        if isinstance(element.tag, str):
            yield element


def to_bytes(root: etree._Element) -> bytes:
    """UTF-8 XML with declaration, as every builder returns."""
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def own_text(element: etree._Element) -> Iterator[str]:
    """The element's own text nodes in order (what XPath ``text()`` selects): its text and the
    tails of its children, never the text inside them. Yielded one by one, not joined."""
    if element.text:
        yield element.text
    for node in element:
        if node.tail:
            yield node.tail


def is_base64_text(pieces: Iterable[str]) -> bool:
    """Whether the text made of ``pieces``, whitespace removed, is what
    ``base64.b64decode(text, validate=True)`` accepts: only the base64 alphabet, at most two
    ``=`` and only at the end, whole groups of four.

    Checked in slices and without decoding, so a 35 MB attachment costs no second copy of its
    text and no decoded bytes.
    """
    count = pads = 0
    for piece in pieces:
        for start in range(0, len(piece), _TEXT_SLICE):
            part = "".join(piece[start : start + _TEXT_SLICE].split())
            if not part:
                continue
            if pads and part.strip("="):
                return False  # data after padding
            body = part.rstrip("=")
            if not body.isascii() or not _BASE64_BODY.fullmatch(body):
                return False
            count += len(body)
            pads += len(part) - len(body)
    if not count:
        return not pads  # empty is fine; padding alone is not
    group = count % 4
    if not pads or group == 0:
        return group == 0  # padding after whole groups is skipped by the decoder
    return group >= 2 and pads == 4 - group  # one padding that completes the group exactly
