"""XML signatures: the ebXML envelope signature (HIS 1037) and the enveloped MsgHead signature.

Envelope: ds:Signature as the last child of SOAP:Header, rsa-sha256 over a SignedInfo with one
``URI=""`` Reference (enveloped-signature, the nextMSH XPath filter, C14N) and one Reference per
attachment, ``URI="cid:<content-id>"``, digesting the raw (transfer-decoded) attachment bytes.
We send rsa-sha256/sha256 and verify rsa-sha256/384/512, and rsa-sha1 where the policy allows.

Both directions share one implementation of the Reference transforms and of SignedInfo
canonicalisation (:mod:`xmldsig_refs`): signing writes the digests it computes, verifying
recomputes them (and can tell which Reference failed). The RSA PKCS#1 v1.5 operation over the
canonical SignedInfo is done with ``cryptography``. xmlsec is not used here: it evaluated the
XPath filter node by node, which was half the cost of every signature, and the digests were
computed twice. Interoperability with xmlsec (python-xmlsec and the xmlsec1 tool) is proven by
tests in both directions.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from meldingstjener.contentid import cid_url, content_id_of_url
from meldingstjener.contentid import content_id as normal_content_id
from meldingstjener.security.certs import CertificateLoadError, certificate_from_bytes
from meldingstjener.security.errors import SecurityError
from meldingstjener.security.xmldsig_refs import (
    C14N,
    CANONICALISATIONS,
    DS,
    ENVELOPED,
    NEXT_MSH,
    SIGNATURE_METHODS,
    SOAP,
    SOAP_NEXT,
    XPATH,
    ReferenceCheck,
    ReferenceProblem,
    canonical_signed_info,
    check_reference,
    ds,
    reference_digest,
)

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

# The hash inside each signature method we accept (short names from SIGNATURE_METHODS).
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "rsa-sha1": hashes.SHA1,
    "rsa-sha256": hashes.SHA256,
    "rsa-sha384": hashes.SHA384,
    "rsa-sha512": hashes.SHA512,
}

__all__ = [
    "ReferenceCheck",
    "SignatureCheck",
    "XmlSignatureError",
    "sign_ebxml_envelope",
    "sign_msghead",
    "verify_ebxml_envelope",
    "verify_msghead",
]


class XmlSignatureError(SecurityError):
    """Signing failed (not a verification result: those are :class:`SignatureCheck`)."""

    code = "xml-signature-error"


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of verifying one ds:Signature. ``valid`` only when the signature value
    verified with the signer's key and every Reference matched."""

    valid: bool
    signature_algorithm: str | None = None
    signer_certificate: x509.Certificate | None = None
    references: list[ReferenceCheck] = field(default_factory=list)
    problem: str | None = None


# --- building signatures ----------------------------------------------------------------------


def sign_ebxml_envelope(
    envelope: etree._Element,
    attachments: Mapping[str, bytes],
    key: rsa.RSAPrivateKey,
    certificate: x509.Certificate,
) -> None:
    """Sign the ebXML envelope in place: ds:Signature becomes the last child of SOAP:Header."""
    header = envelope.find(f"{{{SOAP}}}Header")
    if header is None:
        raise XmlSignatureError("the envelope has no SOAP:Header", code="envelope-invalid")
    bare = {_signed_content_id(cid): data for cid, data in attachments.items()}
    if len(bare) != len(attachments):
        raise XmlSignatureError("two attachments have one content-id")
    attachments = bare
    signature, signed_info = _signature_skeleton()
    reference = _reference(signed_info, "")
    transforms = etree.SubElement(reference, ds("Transforms"))
    etree.SubElement(transforms, ds("Transform"), Algorithm=ENVELOPED)
    xpath_transform = etree.SubElement(transforms, ds("Transform"), Algorithm=XPATH)
    # lxml drops a namespace declaration whose URI is already in scope when the signature is
    # appended, so the expression uses the prefix the envelope itself binds to SOAP.
    prefix = next((p for p, uri in header.nsmap.items() if uri == SOAP and p), None)
    if prefix is None:
        raise XmlSignatureError(
            "the envelope must bind the SOAP namespace to a prefix", code="envelope-invalid"
        )
    xpath = etree.SubElement(xpath_transform, ds("XPath"))
    xpath.text = (
        f'not(ancestor-or-self::node()[@{prefix}:actor="{NEXT_MSH}"] | '
        f'ancestor-or-self::node()[@{prefix}:actor="{SOAP_NEXT}"])'
    )
    etree.SubElement(transforms, ds("Transform"), Algorithm=C14N)
    _digest_fields(reference)
    for content_id in attachments:
        _digest_fields(_reference(signed_info, cid_url(content_id)))
    _finish_and_sign(header, signature, attachments, key, certificate)


def sign_msghead(root: etree._Element, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    """Add an enveloped signature as the last element of MsgHead (KITH style)."""
    signature, signed_info = _signature_skeleton()
    reference = _reference(signed_info, "")
    transforms = etree.SubElement(reference, ds("Transforms"))
    etree.SubElement(transforms, ds("Transform"), Algorithm=ENVELOPED)
    _digest_fields(reference)
    _finish_and_sign(root, signature, {}, key, cert)


def _signature_skeleton() -> tuple[etree._Element, etree._Element]:
    signature = etree.Element(ds("Signature"), nsmap={"ds": DS})
    signed_info = etree.SubElement(signature, ds("SignedInfo"))
    etree.SubElement(signed_info, ds("CanonicalizationMethod"), Algorithm=C14N)
    etree.SubElement(signed_info, ds("SignatureMethod"), Algorithm=RSA_SHA256)
    return signature, signed_info


def _reference(signed_info: etree._Element, uri: str) -> etree._Element:
    return etree.SubElement(signed_info, ds("Reference"), URI=uri)


def _signed_content_id(value: str) -> str:
    bare = normal_content_id(value)
    if bare is None:
        raise XmlSignatureError(f"not a content-id: {value[:60]!r}")
    return bare


def _digest_fields(reference: etree._Element) -> None:
    etree.SubElement(reference, ds("DigestMethod"), Algorithm=SHA256)
    etree.SubElement(reference, ds("DigestValue"))


def _finish_and_sign(
    parent: etree._Element,
    signature: etree._Element,
    attachments: Mapping[str, bytes],
    key: rsa.RSAPrivateKey,
    certificate: x509.Certificate,
) -> None:
    etree.SubElement(signature, ds("SignatureValue"))
    key_info = etree.SubElement(signature, ds("KeyInfo"))
    x509_data = etree.SubElement(key_info, ds("X509Data"))
    etree.SubElement(x509_data, ds("X509Certificate")).text = _certificate_text(certificate)
    # Digests and SignedInfo are computed where the signature sits: the URI="" reference
    # covers the document around it, and SignedInfo inherits the namespaces in scope there.
    parent.append(signature)
    try:
        _compute(signature, attachments, key)
    except (ReferenceProblem, ValueError, TypeError) as exc:
        parent.remove(signature)
        raise XmlSignatureError(f"signing failed: {exc}") from None


def _compute(
    signature: etree._Element, attachments: Mapping[str, bytes], key: rsa.RSAPrivateKey
) -> None:
    """Fill in every DigestValue, then the SignatureValue over the canonical SignedInfo."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the signing key is not an RSA key")
    signed_info = signature[0]
    for reference in signed_info.iterchildren(ds("Reference")):
        digest = reference_digest(reference, signature, attachments, allow_sha1=True)
        _child(reference, "DigestValue").text = _base64(digest)
    method = _child(signed_info, "SignatureMethod").get("Algorithm", "")
    value = key.sign(
        canonical_signed_info(signed_info),
        padding.PKCS1v15(),
        _HASHES[SIGNATURE_METHODS[method]](),
    )
    _child(signature, "SignatureValue").text = _base64(value)


def _child(parent: etree._Element, name: str) -> etree._Element:
    node = parent.find(ds(name))
    assert node is not None, f"the signature template has a ds:{name}"
    return node


def _base64(data: bytes) -> str:
    """Base64 in lines of 64 characters, as xmlsec writes it (the output stays the same)."""
    text = base64.b64encode(data).decode("ascii")
    return "\n".join(text[i : i + 64] for i in range(0, len(text), 64))


@functools.lru_cache(maxsize=64)
def _certificate_text(certificate: x509.Certificate) -> str:
    """The KeyInfo form of a certificate: base64 DER on one line. Cached: a server signs with
    one certificate (two around a key rollover), and the encoding is the same every time."""
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")


# --- verifying -----------------------------------------------------------------------------


def verify_ebxml_envelope(
    envelope: etree._Element,
    attachments: Mapping[str, bytes],
    *,
    certificate: x509.Certificate | None = None,
    allow_sha1: bool = True,
) -> SignatureCheck:
    """Verify the envelope signature against the attachments as received.

    ``attachments`` maps content-id (without ``cid:`` and ``<>``) to the transfer-decoded bytes
    of every MIME part except the envelope; each must be covered by a Reference.
    ``certificate`` is the sender's signing certificate from the agreement or the address
    register; without it the certificate in KeyInfo is used (check it separately).
    """
    header = envelope.find(f"{{{SOAP}}}Header")
    signature = header.find(ds("Signature")) if header is not None else None
    if signature is None:
        return SignatureCheck(False, problem="the envelope has no ds:Signature in SOAP:Header")
    # Each key read as the MIME reader reads a Content-ID (bare ones stay as they are), and two
    # that name one content-id refused: were "<x>" and "x" (or "<<x>>" and "<x>") one key,
    # the bytes checked would not be those of the part the manifest's cid:x picks.
    bare: dict[str, bytes] = {}
    for cid, data in attachments.items():
        key = normal_content_id(cid)
        if key is None or key in bare:
            return SignatureCheck(
                False, problem=f"the attachments do not have one content-id each: {cid[:60]!r}"
            )
        bare[key] = data
    attachments = bare
    check = _verify(signature, attachments, certificate, allow_sha1, envelope_rules=True)
    if check.valid:
        covered = {content_id_of_url(ref.uri) for ref in check.references}
        missing = sorted(set(attachments) - covered)
        if missing:
            return _with_problem(
                check, f"attachment(s) not covered by the signature: {', '.join(missing)}"
            )
    return check


def verify_msghead(
    root: etree._Element,
    certificate: x509.Certificate | None = None,
    *,
    allow_sha1: bool = True,
) -> SignatureCheck:
    """Verify the enveloped signature that is the last element of MsgHead."""
    children = [child for child in root if isinstance(child.tag, str)]
    signature = children[-1] if children and children[-1].tag == ds("Signature") else None
    if signature is None:
        return SignatureCheck(False, problem="MsgHead has no ds:Signature as its last element")
    return _verify(signature, {}, certificate, allow_sha1, envelope_rules=False)


def _with_problem(check: SignatureCheck, problem: str) -> SignatureCheck:
    return SignatureCheck(
        False, check.signature_algorithm, check.signer_certificate, check.references, problem
    )


def _verify(
    signature: etree._Element,
    attachments: Mapping[str, bytes],
    certificate: x509.Certificate | None,
    allow_sha1: bool,
    *,
    envelope_rules: bool,
) -> SignatureCheck:
    signed_info = signature.find(ds("SignedInfo"))
    if signed_info is None:
        return SignatureCheck(False, problem="ds:Signature has no SignedInfo")
    method = signed_info.find(ds("SignatureMethod"))
    method_uri = method.get("Algorithm", "") if method is not None else ""
    algorithm = SIGNATURE_METHODS.get(method_uri)
    signer = certificate or _key_info_certificate(signature)
    # What needs no digest is checked before any is computed: each digest hashes a whole
    # attachment or copies and canonicalises the whole document, and SignedInfo is the
    # sender's to fill (a reference repeated thousands of times cost seconds per copy).
    reference_elements = list(signed_info.iterchildren(ds("Reference")))
    problem = _layout_problem(signature, signed_info) or _reference_set_problem(
        reference_elements, envelope_rules
    )
    if problem is not None:
        return SignatureCheck(False, algorithm or method_uri, signer, [], problem)
    references = [
        check_reference(reference, signature, attachments, allow_sha1=allow_sha1)
        for reference in reference_elements
    ]
    partial = SignatureCheck(False, algorithm or method_uri, signer, references)

    problem = _structural_problem(signed_info, algorithm, allow_sha1, references)
    if problem is None and signer is None:
        problem = "no certificate: none in KeyInfo and none given"
    if problem is not None:
        return _with_problem(partial, problem)
    assert signer is not None
    if not isinstance(signer.public_key(), rsa.RSAPublicKey):
        return _with_problem(partial, "the signer's certificate has no RSA key")
    failed = [ref for ref in references if not ref.matched]
    if failed:
        names = ", ".join(ref.uri or '""' for ref in failed)
        return _with_problem(partial, f"reference(s) did not match: {names}")
    assert algorithm is not None  # _structural_problem refused an unknown method
    if not _signature_value_verifies(signature, signed_info, signer, algorithm):
        return _with_problem(
            partial, "the signature value does not verify with the signer's certificate"
        )
    return SignatureCheck(True, partial.signature_algorithm, signer, references)


def _structural_problem(
    signed_info: etree._Element,
    algorithm: str | None,
    allow_sha1: bool,
    references: list[ReferenceCheck],
) -> str | None:
    if algorithm is None:
        return "the signature method is not supported (RSA with SHA-1/2 expected)"
    if algorithm == "rsa-sha1" and not allow_sha1:
        return "rsa-sha1 signatures are refused by policy"
    c14n = signed_info.find(ds("CanonicalizationMethod"))
    if c14n is None or c14n.get("Algorithm") not in CANONICALISATIONS:
        return "the canonicalisation method is not supported"
    first_problem = next(
        (ref.problem for ref in references if ref.problem and not _is_digest_fail(ref)), None
    )
    return first_problem


def _reference_set_problem(references: list[etree._Element], envelope_rules: bool) -> str | None:
    """One URI="" Reference, and no URI twice: at most one digest per attachment and one of
    the document, whatever SignedInfo lists."""
    uris = [reference.get("URI") for reference in references]
    if uris.count("") != 1:
        return 'the signature must have exactly one Reference URI="" (the whole document)'
    if not envelope_rules and len(references) != 1:
        return "a MsgHead signature must have exactly one Reference"
    seen: set[str] = set()
    for uri in uris:
        # cid:<a>, cid:a, CID:a and cid:%61 name one attachment: compared as check_reference
        # looks it up.
        named = content_id_of_url(uri) if uri else None
        key = "cid:" + named if named is not None else uri
        if key is not None and key in seen:
            return f"the signature has more than one Reference URI={uri!r}"
        if key is not None:
            seen.add(key)
    return None


def _is_digest_fail(ref: ReferenceCheck) -> bool:
    return ref.problem is not None and ref.problem.startswith("digest does not match")


def _key_info_certificate(signature: etree._Element) -> x509.Certificate | None:
    node = signature.find(f"{ds('KeyInfo')}/{ds('X509Data')}/{ds('X509Certificate')}")
    if node is None or not node.text:
        return None
    try:
        return certificate_from_bytes(base64.b64decode("".join(node.text.split())))
    except (CertificateLoadError, ValueError):
        return None


# The element children XMLDSig (section 4) allows, in order; xmlsec refused anything else, and
# so do we: an unexpected element is never silently ignored.
_LAYOUTS = {
    "Signature": re.compile(r"SignedInfo SignatureValue( KeyInfo)?( Object)*"),
    "SignedInfo": re.compile(r"CanonicalizationMethod SignatureMethod( Reference)+"),
    "Reference": re.compile(r"(Transforms )?DigestMethod DigestValue"),
    "Transforms": re.compile(r"Transform( Transform)*"),
}


def _layout_problem(signature: etree._Element, signed_info: etree._Element) -> str | None:
    elements = [signature, signed_info]
    for reference in signed_info.iterchildren(ds("Reference")):
        elements.append(reference)
        elements.extend(reference.iterchildren(ds("Transforms")))
    for element in elements:
        name = str(element.tag)[len(DS) + 2 :]
        if not _LAYOUTS[name].fullmatch(_child_names(element)):
            return f"ds:{name} does not have the children XMLDSig prescribes"
    return None


def _child_names(element: etree._Element) -> str:
    prefix = f"{{{DS}}}"
    return " ".join(
        child.tag[len(prefix) :] if child.tag.startswith(prefix) else "?"
        for child in element
        if isinstance(child.tag, str)
    )


def _signature_value_verifies(
    signature: etree._Element,
    signed_info: etree._Element,
    signer: x509.Certificate,
    algorithm: str,
) -> bool:
    """The SignatureValue checked with the signer's RSA key over SignedInfo, canonicalised
    per its CanonicalizationMethod."""
    public_key = signer.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    node = signature.find(ds("SignatureValue"))
    try:
        value = base64.b64decode("".join((node.text or "").split()) if node is not None else "")
        public_key.verify(
            value, canonical_signed_info(signed_info), padding.PKCS1v15(), _HASHES[algorithm]()
        )
    except (InvalidSignature, ReferenceProblem, binascii.Error, ValueError):
        return False
    return True
