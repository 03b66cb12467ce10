"""XML signatures: the ebXML envelope signature (HIS 1037) and the enveloped MsgHead signature.

Envelope: ds:Signature as the last child of SOAP:Header, rsa-sha256 over a SignedInfo with one
``URI=""`` Reference (enveloped-signature, the nextMSH XPath filter, C14N) and one Reference per
attachment, ``URI="cid:<content-id>"``, digesting the raw (transfer-decoded) attachment bytes.
We send rsa-sha256/sha256 and verify rsa-sha256, and rsa-sha1 where the policy allows.

The signature value and every digest are checked by xmlsec (python-xmlsec; attachments are
served to it through its I/O callbacks). The digests are also recomputed in
:mod:`xmldsig_refs`, which tells which Reference failed and refuses transform chains that could
make a signature cover less than it seems to.
"""

from __future__ import annotations

import base64
import functools
import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

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
    check_reference,
    ds,
)

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

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


# --- xmlsec I/O: cid: URIs resolve to the attachments of the message being processed --------

_lock = threading.Lock()
_attachments: Mapping[str, bytes] = {}
_callbacks_installed = False


def _match(_name: bytes) -> bool:
    # Claim every URI so xmlsec's default file/HTTP loaders never run on untrusted input.
    return True


def _open(name: bytes) -> io.BytesIO | None:
    text = name.decode("utf-8", "replace")
    if text.startswith("cid:") and text[4:].strip("<>") in _attachments:
        return io.BytesIO(_attachments[text[4:].strip("<>")])
    return None


def _read(context: io.BytesIO, buffer: memoryview) -> int:
    return context.readinto(buffer)


def _close(context: io.BytesIO) -> None:
    context.close()


def _install_callbacks() -> None:
    global _callbacks_installed
    if not _callbacks_installed:
        xmlsec.cleanup_callbacks()
        xmlsec.register_callbacks(_match, _open, _read, _close)
        _callbacks_installed = True


def _run_with_attachments(attachments: Mapping[str, bytes], action: Any) -> Any:
    # xmlsec's I/O callbacks are process-global, so one signature operation at a time.
    global _attachments
    with _lock:
        _install_callbacks()
        _attachments = attachments
        try:
            return action()
        finally:
            _attachments = {}


@functools.lru_cache(maxsize=256)
def _xmlsec_key(pem: bytes, key_format: int) -> xmlsec.Key:
    """Parse a key or certificate once. Parsing a PEM private key costs more than the RSA
    operation itself; the context takes its own copy of the key when assigned, so sharing the
    parsed key is safe (and it is only used under ``_lock``)."""
    return xmlsec.Key.from_memory(pem, key_format)


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
        _digest_fields(_reference(signed_info, f"cid:{content_id.strip('<>')}"))
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
    certificate_der = certificate.public_bytes(serialization.Encoding.DER)
    etree.SubElement(x509_data, ds("X509Certificate")).text = base64.b64encode(
        certificate_der
    ).decode("ascii")
    parent.append(signature)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    def sign() -> None:
        context = xmlsec.SignatureContext()
        context.key = _xmlsec_key(key_pem, xmlsec.constants.KeyDataFormatPem)
        context.sign(signature)

    try:
        _run_with_attachments(dict(attachments), sign)
    except xmlsec.Error as exc:
        parent.remove(signature)
        raise XmlSignatureError(f"signing failed in xmlsec: {exc}") from None


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
    attachments = {cid.strip("<>"): data for cid, data in attachments.items()}
    check = _verify(signature, attachments, certificate, allow_sha1, envelope_rules=True)
    if check.valid:
        covered = {
            ref.uri[4:].strip("<>") for ref in check.references if ref.uri.startswith("cid:")
        }
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
    references = [
        check_reference(reference, signature, attachments, allow_sha1=allow_sha1)
        for reference in signed_info.iterchildren(ds("Reference"))
    ]
    signer = certificate or _key_info_certificate(signature)
    partial = SignatureCheck(False, algorithm or method_uri, signer, references)

    problem = _structural_problem(signed_info, algorithm, allow_sha1, references, envelope_rules)
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
    if not _xmlsec_verifies(signature, attachments, signer):
        return _with_problem(
            partial, "the signature value does not verify with the signer's certificate"
        )
    return SignatureCheck(True, partial.signature_algorithm, signer, references)


def _structural_problem(
    signed_info: etree._Element,
    algorithm: str | None,
    allow_sha1: bool,
    references: list[ReferenceCheck],
    envelope_rules: bool,
) -> str | None:
    if algorithm is None:
        return "the signature method is not supported (RSA with SHA-1/2 expected)"
    if algorithm == "rsa-sha1" and not allow_sha1:
        return "rsa-sha1 signatures are refused by policy"
    c14n = signed_info.find(ds("CanonicalizationMethod"))
    if c14n is None or c14n.get("Algorithm") not in CANONICALISATIONS:
        return "the canonicalisation method is not supported"
    same_document = [ref for ref in references if ref.uri == ""]
    if len(same_document) != 1:
        return 'the signature must have exactly one Reference URI="" (the whole document)'
    if not envelope_rules and len(references) != 1:
        return "a MsgHead signature must have exactly one Reference"
    first_problem = next(
        (ref.problem for ref in references if ref.problem and not _is_digest_fail(ref)), None
    )
    return first_problem


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


def _xmlsec_verifies(
    signature: etree._Element, attachments: Mapping[str, bytes], signer: x509.Certificate
) -> bool:
    pem = signer.public_bytes(serialization.Encoding.PEM)

    def verify() -> bool:
        context = xmlsec.SignatureContext()
        context.key = _xmlsec_key(pem, xmlsec.constants.KeyDataFormatCertPem)
        try:
            context.verify(signature)
        except xmlsec.Error:
            return False
        return True

    return bool(_run_with_attachments(attachments, verify))
