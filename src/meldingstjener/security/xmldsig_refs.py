"""Reading a ds:Signature: the octets each Reference digests, and SignedInfo canonicalised.

One implementation of the transform chain serves both directions: signing computes each
DigestValue with :func:`reference_digest`, verifying recomputes it with :func:`check_reference`
(which also tells operators *which* reference failed: the envelope or an attachment).
``cid:`` references digest the raw attachment bytes; ``URI=""`` applies the transforms we accept
(enveloped-signature, the HIS 1037 XPath that drops nextMSH-targeted elements, C14N).

Only that narrow set is accepted. An arbitrary XPath filter could make a signature cover
nothing at all, so any other expression is refused rather than evaluated.

:func:`canonical_signed_info` gives the bytes the SignatureValue is computed over: SignedInfo
canonicalised per its CanonicalizationMethod as a subset of the document it sits in, so the
namespaces (and, for inclusive C14N, the xml:* attributes) it inherits from its ancestors count.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass

from lxml import etree

from meldingstjener.contentid import content_id_of_url, is_cid_url

DS = "http://www.w3.org/2000/09/xmldsig#"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"
SOAP_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"

ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
XPATH = "http://www.w3.org/TR/1999/REC-xpath-19991116"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_COMMENTS = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
EXC_C14N_COMMENTS = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"
CANONICALISATIONS = {C14N, C14N_COMMENTS, EXC_C14N, EXC_C14N_COMMENTS}

_ACTOR = f"{{{SOAP}}}actor"
_NEXT = (NEXT_MSH, SOAP_NEXT)

# The expression HIS 1037 (after ebMS 2.0 section 4.1.3) prescribes; the prefix may vary.
XPATH_EXPRESSION = (
    'not(ancestor-or-self::node()[@{p}:actor="' + NEXT_MSH + '"] | '
    'ancestor-or-self::node()[@{p}:actor="' + SOAP_NEXT + '"])'
)

DIGESTS = {
    "http://www.w3.org/2000/09/xmldsig#sha1": "sha1",
    "http://www.w3.org/2001/04/xmlenc#sha256": "sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384": "sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512": "sha512",
}
SIGNATURE_METHODS = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": "rsa-sha1",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": "rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": "rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": "rsa-sha512",
}


class ReferenceProblem(ValueError):
    """A Reference we refuse to evaluate (unknown URI form, transform or algorithm)."""


@dataclass(frozen=True)
class ReferenceCheck:
    """One ds:Reference: its URI, digest algorithm (short name) and whether it matched."""

    uri: str
    digest_algorithm: str
    matched: bool
    problem: str | None = None


def ds(name: str) -> str:
    return f"{{{DS}}}{name}"


def check_reference(
    reference: etree._Element,
    signature: etree._Element,
    attachments: Mapping[str, bytes],
    *,
    allow_sha1: bool,
) -> ReferenceCheck:
    """Recompute one Reference's digest and compare it with its DigestValue."""
    uri = reference.get("URI")
    digest_name = _digest_name(reference)
    try:
        actual = reference_digest(reference, signature, attachments, allow_sha1=allow_sha1)
        expected = _digest_value(reference)
    except ReferenceProblem as exc:
        return ReferenceCheck(uri or "", digest_name, False, str(exc))
    assert uri is not None  # reference_digest refuses a Reference without URI
    if actual != expected:
        return ReferenceCheck(uri, digest_name, False, "digest does not match (content altered)")
    return ReferenceCheck(uri, digest_name, True)


def reference_digest(
    reference: etree._Element,
    signature: etree._Element,
    attachments: Mapping[str, bytes],
    *,
    allow_sha1: bool,
) -> bytes:
    """The digest a Reference's DigestValue must hold, over what it covers now.

    Signing writes this value; verifying compares it. Raises :class:`ReferenceProblem` for a
    Reference outside the narrow forms we accept.
    """
    uri = reference.get("URI")
    digest_method = reference.find(ds("DigestMethod"))
    algorithm_uri = digest_method.get("Algorithm", "") if digest_method is not None else ""
    if uri is None:
        raise ReferenceProblem("a Reference without URI is not supported")
    if algorithm_uri not in DIGESTS:
        raise ReferenceProblem(f"digest algorithm {algorithm_uri!r} is not supported")
    if DIGESTS[algorithm_uri] == "sha1" and not allow_sha1:
        raise ReferenceProblem("SHA-1 digests are refused by policy")
    _digest_value(reference)  # a malformed DigestValue is reported before anything else
    if uri == "":
        data = same_document_octets(signature, _transforms(reference))
    elif is_cid_url(uri):
        if _transforms(reference):
            raise ReferenceProblem("transforms on an attachment reference are not supported")
        content_id = content_id_of_url(uri)
        if content_id is None:
            raise ReferenceProblem("the cid: reference names no content-id")
        if content_id not in attachments:
            raise ReferenceProblem("the referenced attachment is not in the message")
        data = attachments[content_id]
    else:
        raise ReferenceProblem('only URI="" and cid: references are accepted')
    return hashlib.new(DIGESTS[algorithm_uri], data).digest()


def _digest_name(reference: etree._Element) -> str:
    digest_method = reference.find(ds("DigestMethod"))
    algorithm_uri = digest_method.get("Algorithm", "") if digest_method is not None else ""
    return DIGESTS.get(algorithm_uri, algorithm_uri or "none")


def _digest_value(reference: etree._Element) -> bytes:
    node = reference.find(ds("DigestValue"))
    try:
        return base64.b64decode("".join((node.text or "").split()) if node is not None else "")
    except (binascii.Error, ValueError):
        raise ReferenceProblem("the DigestValue is not base64") from None


def _transforms(reference: etree._Element) -> list[etree._Element]:
    container = reference.find(ds("Transforms"))
    return [] if container is None else list(container.iterchildren(ds("Transform")))


def same_document_octets(signature: etree._Element, transforms: list[etree._Element]) -> bytes:
    """The octets a URI="" reference digests, for the transform chains we accept."""
    # The whole document is copied, not just its root element: processing instructions
    # before or after the root belong to the URI="" node-set too.
    copy_tree = deepcopy(signature.getroottree())
    copy_root = copy_tree.getroot()
    copy_signature = _follow(copy_root, _index_path(signature))
    canonical: tuple[bool, list[str] | None] | None = None
    for transform in transforms:
        algorithm = transform.get("Algorithm", "")
        if canonical is not None:
            raise ReferenceProblem("a transform after canonicalisation is not supported")
        if algorithm == ENVELOPED:
            _drop(copy_signature)
        elif algorithm == XPATH:
            _check_xpath(transform)
            # What the accepted expression leaves out: every element whose SOAP:actor is
            # nextMSH or next, with all it contains (found without an XPath engine, which
            # would first compile the expression on every call).
            for element in [e for e in copy_root.iter(etree.Element) if e.get(_ACTOR) in _NEXT]:
                _drop(element)
        elif algorithm in CANONICALISATIONS:
            canonical = (algorithm.startswith(EXC_C14N), _inclusive_prefixes(transform))
        else:
            raise ReferenceProblem(f"transform {algorithm!r} is not supported")
    exclusive, prefixes = canonical or (False, None)
    # A same-document reference selects the document without comments (XMLDSig 4.3.3.3),
    # whatever the C14N variant named in the chain.
    if exclusive and prefixes and _DEFAULT_TOKEN in prefixes:
        return canonical_document(copy_tree, prefixes)
    try:
        return etree.tostring(
            copy_tree,
            method="c14n",
            exclusive=exclusive,
            with_comments=False,
            inclusive_ns_prefixes=prefixes,
        )
    except etree.LxmlError as exc:
        # libxml2 refuses what C14N 1.0 cannot render, a relative namespace URI for one
        # (xmlns:x="relative/uri"): the sender's document, so an invalid signature, not a crash.
        raise ReferenceProblem(f"the document cannot be canonicalised: {exc}") from None


def canonical_signed_info(signed_info: etree._Element) -> bytes:
    """SignedInfo canonicalised per its own CanonicalizationMethod, where it sits.

    The node-set is SignedInfo's subtree inside its document (XMLDSig 4.3.1), so for inclusive
    C14N every namespace in scope from its ancestors is rendered on SignedInfo, and so are the
    xml:* attributes it inherits. libxml2 through lxml gets such a subset wrong when a default
    namespace is declared above the subtree (it writes xmlns="" inside: .NET-style
    ``<Signature xmlns="...xmldsig#">``) and cannot pass ``#default`` in a PrefixList, so
    SignedInfo is written by :func:`canonical_subtree` (small: a dozen elements).
    """
    method = signed_info.find(ds("CanonicalizationMethod"))
    algorithm = method.get("Algorithm", "") if method is not None else ""
    if method is None or algorithm not in CANONICALISATIONS:
        raise ReferenceProblem("the canonicalisation method is not supported")
    exclusive = algorithm.startswith(EXC_C14N)
    return canonical_subtree(
        signed_info,
        exclusive=exclusive,
        with_comments=algorithm.endswith("#WithComments"),
        prefixes=_inclusive_prefixes(method) if exclusive else None,
    )


def _index_path(element: etree._Element) -> list[int]:
    path = []
    parent = element.getparent()
    while parent is not None:
        path.append(parent.index(element))
        element, parent = parent, parent.getparent()
    return path[::-1]


def _follow(root: etree._Element, path: list[int]) -> etree._Element:
    element = root
    for index in path:
        element = element[index]
    return element


def _check_xpath(transform: etree._Element) -> None:
    node = transform.find(ds("XPath"))
    if node is None:
        raise ReferenceProblem("the XPath transform has no expression")
    prefixes = [prefix for prefix, ns in node.nsmap.items() if ns == SOAP and prefix]
    text = re.sub(r"\s+", " ", node.text or "").strip()
    wanted = {re.sub(r"\s+", " ", XPATH_EXPRESSION.format(p=prefix)) for prefix in prefixes}
    if text not in wanted:
        raise ReferenceProblem("only the ebXML nextMSH XPath filter is accepted")


def _inclusive_prefixes(transform: etree._Element) -> list[str] | None:
    node = transform.find("{http://www.w3.org/2001/10/xml-exc-c14n#}InclusiveNamespaces")
    if node is None:
        return None
    return (node.get("PrefixList") or "").split()


def _drop(element: etree._Element) -> None:
    """Remove ``element`` but keep the text that follows it (lxml keeps it in ``tail``)."""
    parent = element.getparent()
    if parent is None:
        raise ReferenceProblem("the signature cannot be the document element")
    tail = element.tail or ""
    previous = element.getprevious()
    if previous is not None:
        previous.tail = (previous.tail or "") + tail
    else:
        parent.text = (parent.text or "") + tail
    parent.remove(element)


# --- a small C14N writer for what libxml2 (through lxml) cannot express ------------------------

XML_NS = "http://www.w3.org/XML/1998/namespace"
_DEFAULT_TOKEN = "#default"  # the default namespace in an InclusiveNamespaces PrefixList


def _inherited_xml_attributes(element: etree._Element) -> dict[str, str]:
    """xml:* attributes inclusive C14N copies onto a subset's apex from its ancestors (C14N 1.0
    section 2.4): the nearest ancestor's value, unless the apex has the attribute itself."""
    found: dict[str, str] = {}
    for ancestor in element.iterancestors():
        for name, value in ancestor.attrib.items():
            if name.startswith(f"{{{XML_NS}}}") and name not in found:
                found[name] = value
    return {name: value for name, value in found.items() if name not in element.attrib}


def canonical_subtree(
    apex: etree._Element,
    *,
    exclusive: bool,
    with_comments: bool,
    prefixes: list[str] | None = None,
) -> bytes:
    """C14N 1.0 (inclusive or exclusive) of the subtree of ``apex`` as a document subset."""
    writer = _Canonicaliser(exclusive, with_comments, prefixes)
    inherited = {} if exclusive else _inherited_xml_attributes(apex)
    writer.element(apex, {}, inherited)
    return "".join(writer.out).encode("utf-8")


def canonical_document(tree: etree._ElementTree, prefixes: list[str] | None) -> bytes:
    """Exclusive C14N, without comments, of a whole document (a URI="" reference)."""
    writer = _Canonicaliser(True, False, prefixes)
    root = tree.getroot()
    for node in reversed(list(root.itersiblings(preceding=True))):
        if isinstance(node, etree._ProcessingInstruction):
            writer.out.extend((_processing_instruction(node), "\n"))
    writer.element(root, {}, {})
    for node in root.itersiblings():
        if isinstance(node, etree._ProcessingInstruction):
            writer.out.extend(("\n", _processing_instruction(node)))
    return "".join(writer.out).encode("utf-8")


class _Canonicaliser:
    """Writes elements the C14N way: sorted namespace declarations and attributes, escaped
    text, empty elements as start and end tag.

    ``rendered`` maps a prefix (None for the default namespace) to the URI the output
    ancestors put in force for it; for inclusive C14N that is simply the parent's in-scope
    namespaces, for exclusive C14N only what was actually declared.
    """

    def __init__(self, exclusive: bool, with_comments: bool, prefixes: list[str] | None) -> None:
        self.exclusive = exclusive
        self.with_comments = with_comments
        self.included = {None if p == _DEFAULT_TOKEN else p for p in prefixes or ()}
        self.out: list[str] = []

    def element(
        self, element: etree._Element, rendered: dict[str | None, str], inherited: dict[str, str]
    ) -> None:
        out = self.out
        scope: dict[str | None, str] = element.nsmap
        name = _qualified_name(element)
        attributes = _attributes(element)
        if inherited:
            attributes.extend(
                (XML_NS, key[len(XML_NS) + 2 :], "xml:" + key[len(XML_NS) + 2 :], value)
                for key, value in inherited.items()
            )
        if self.exclusive:
            declarations = self._exclusive_declarations(element, attributes, scope, rendered)
            scope = {**rendered, **declarations}
        else:
            declarations = _inclusive_declarations(scope, rendered)
        out.append("<" + name)
        if declarations:
            # The default namespace sorts first: its local name is empty.
            for prefix, uri in sorted(declarations.items(), key=lambda item: item[0] or ""):
                out.append(f' xmlns:{prefix}="' if prefix else ' xmlns="')
                out.append(_escape_attribute(uri) + '"')
        if len(attributes) > 1:
            attributes.sort()  # by namespace URI, then local name: unqualified ones first
        for _uri, _local, qualified, value in attributes:
            out.append(f' {qualified}="{_escape_attribute(value)}"')
        out.append(">")
        text = element.text
        if text:
            out.append(_escape_text(text))
        for child in element:
            if isinstance(child.tag, str):
                self.element(child, scope, {})
            else:
                self._other(child)
            tail = child.tail
            if tail:
                out.append(_escape_text(tail))
        out.append(f"</{name}>")

    def _other(self, node: etree._Element) -> None:
        if isinstance(node, etree._Comment):
            if self.with_comments:
                self.out.append(f"<!--{node.text or ''}-->")
        elif isinstance(node, etree._ProcessingInstruction):
            self.out.append(_processing_instruction(node))
        else:
            raise ReferenceProblem("entity references cannot be canonicalised here")

    def _exclusive_declarations(
        self,
        element: etree._Element,
        attributes: list[tuple[str, str, str, str]],
        scope: dict[str | None, str],
        rendered: dict[str | None, str],
    ) -> dict[str | None, str]:
        # Exclusive C14N: what the element visibly uses, plus the PrefixList ones in scope.
        used: set[str | None] = {element.prefix}
        used.update(q.split(":")[0] for uri, _l, q, _v in attributes if uri and uri != XML_NS)
        used.update(prefix for prefix in self.included if prefix in scope)
        declarations = {}
        for prefix in used:
            uri = scope.get(prefix, "")
            # An empty default namespace (xmlns="") is only written to undo a non-empty one.
            if rendered.get(prefix, "") != uri:
                declarations[prefix] = uri
        return declarations


def _inclusive_declarations(
    scope: dict[str | None, str], rendered: dict[str | None, str]
) -> dict[str | None, str]:
    """Inclusive C14N: every in-scope namespace the parent in the output does not already have
    with the same value (all of them on the apex). lxml reports an undeclared default namespace
    (xmlns="") as ``None: ""``; it is written only to undo a non-empty one."""
    if scope == rendered:
        return {}
    return {
        prefix: uri
        for prefix, uri in scope.items()
        if rendered.get(prefix, "" if prefix is None else None) != uri
    }


def _qualified_name(element: etree._Element) -> str:
    local = element.tag.rpartition("}")[2]
    return f"{element.prefix}:{local}" if element.prefix else local


def _attributes(element: etree._Element) -> list[tuple[str, str, str, str]]:
    """(namespace URI, local name, qualified name, value) per attribute."""
    result = []
    for key, value in element.items():
        if key[0] != "{":
            result.append(("", key, key, value))
            continue
        uri, _, local = key[1:].partition("}")
        result.append((uri, local, f"{_attribute_prefix(element, uri, key)}:{local}", value))
    return result


def _attribute_prefix(element: etree._Element, uri: str, key: str) -> str:
    if uri == XML_NS:
        return "xml"
    prefixes = [prefix for prefix, bound in element.nsmap.items() if bound == uri and prefix]
    if len(prefixes) == 1:
        return prefixes[0]
    # Several prefixes for one URI: lxml does not say which the attribute was written with,
    # XPath's name() does.
    names = element.xpath("@*")
    index = next(i for i, attr in enumerate(names, 1) if attr.attrname == key)
    return str(element.xpath(f"name(@*[{index}])")).partition(":")[0]


def _processing_instruction(node: etree._ProcessingInstruction) -> str:
    data = node.text or ""
    return f"<?{node.target} {data}?>" if data else f"<?{node.target}?>"


_TEXT_SPECIAL = re.compile(r"[&<>\r]")
_ATTRIBUTE_SPECIAL = re.compile(r'[&<"\t\n\r]')


def _escape_text(text: str) -> str:
    if not _TEXT_SPECIAL.search(text):
        return text
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#xD;")
    )


def _escape_attribute(value: str) -> str:
    if not _ATTRIBUTE_SPECIAL.search(value):
        return value
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace('"', "&quot;")
        .replace("\t", "&#x9;")
        .replace("\n", "&#xA;")
        .replace("\r", "&#xD;")
    )
