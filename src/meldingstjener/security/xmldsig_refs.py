"""Reading a ds:Signature and recomputing its Reference digests ourselves.

xmlsec gives one yes/no for a whole signature; operators need to know *which* reference
failed (the envelope or an attachment). So each Reference is recomputed here: ``cid:``
references over the raw attachment bytes, ``URI=""`` by applying the transforms we accept
(enveloped-signature, the HIS 1037 XPath that drops nextMSH-targeted elements, C14N).

Only that narrow set is accepted. An arbitrary XPath filter could make a signature cover
nothing at all, so any other expression is refused rather than evaluated.
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
    digest_method = reference.find(ds("DigestMethod"))
    algorithm_uri = digest_method.get("Algorithm", "") if digest_method is not None else ""
    digest_name = DIGESTS.get(algorithm_uri, algorithm_uri or "none")
    try:
        if uri is None:
            raise ReferenceProblem("a Reference without URI is not supported")
        if algorithm_uri not in DIGESTS:
            raise ReferenceProblem(f"digest algorithm {algorithm_uri!r} is not supported")
        if digest_name == "sha1" and not allow_sha1:
            raise ReferenceProblem("SHA-1 digests are refused by policy")
        expected = _digest_value(reference)
        transforms = _transforms(reference)
        if uri == "":
            data = same_document_octets(signature, transforms)
        elif uri.startswith("cid:"):
            if transforms:
                raise ReferenceProblem("transforms on an attachment reference are not supported")
            content_id = uri[4:].strip("<>")
            if content_id not in attachments:
                raise ReferenceProblem("the referenced attachment is not in the message")
            data = attachments[content_id]
        else:
            raise ReferenceProblem('only URI="" and cid: references are accepted')
    except ReferenceProblem as exc:
        return ReferenceCheck(uri or "", digest_name, False, str(exc))
    actual = hashlib.new(digest_name, data).digest()
    if actual != expected:
        return ReferenceCheck(uri, digest_name, False, "digest does not match (content altered)")
    return ReferenceCheck(uri, digest_name, True)


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
    tree = signature.getroottree()
    copy_root = deepcopy(tree.getroot())
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
            for element in copy_root.xpath(
                "//*[@s:actor=$a or @s:actor=$b]", namespaces={"s": SOAP}, a=NEXT_MSH, b=SOAP_NEXT
            ):
                _drop(element)
        elif algorithm in CANONICALISATIONS:
            canonical = (algorithm.startswith(EXC_C14N), _inclusive_prefixes(transform))
        else:
            raise ReferenceProblem(f"transform {algorithm!r} is not supported")
    exclusive, prefixes = canonical or (False, None)
    # A same-document reference selects the document without comments (XMLDSig 4.3.3.3).
    return etree.tostring(
        copy_root,
        method="c14n",
        exclusive=exclusive,
        with_comments=False,
        inclusive_ns_prefixes=prefixes,
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
