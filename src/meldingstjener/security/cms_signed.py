"""CMS SignedData with attached content: sign what we send, verify what partners send.

We sign with SHA-256 and RSA PKCS#1 v1.5, identify the signer by IssuerAndSerialNumber, add
the signed attributes content-type, signing-time and message-digest, and include our
certificate. Verification accepts SHA-1/2 digests and RSA PKCS#1 v1.5 or PSS signatures, checks
every SignerInfo, and (when told) that the signer is the certificate the agreement or the
address register names for that party. Whether that certificate is still valid, trusted and
unrevoked is the job of :mod:`meldingstjener.security.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from asn1crypto import algos, core
from asn1crypto import cms as acms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from meldingstjener.security.certs import describe
from meldingstjener.security.cms_common import (
    CmsError,
    asn1_certificate,
    hash_by_name,
    identifies,
    issuer_and_serial,
    load_content_info,
)


@dataclass(frozen=True)
class VerifiedContent:
    """The content of a SignedData whose signature verified, and who signed it."""

    content: bytes
    signer: x509.Certificate
    signing_time: datetime | None


def sign(
    data: bytes,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    *,
    signing_time: datetime | None = None,
) -> bytes:
    """DER SignedData with ``data`` attached, signed by ``key`` (SHA-256, RSA PKCS#1 v1.5)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    when = (signing_time or datetime.now(UTC)).replace(microsecond=0)
    signed_attrs = acms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "signing_time", "values": [acms.Time({"utc_time": when})]},
            {"type": "message_digest", "values": [digest.finalize()]},
        ]
    )
    signature = key.sign(signed_attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
    signer_info = acms.SignerInfo(
        {
            "version": "v1",
            "sid": acms.SignerIdentifier({"issuer_and_serial_number": issuer_and_serial(cert)}),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }
    )
    signed = acms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "data", "content": data},
            "certificates": [acms.CertificateChoices({"certificate": asn1_certificate(cert)})],
            "signer_infos": [signer_info],
        }
    )
    return acms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def verify(
    der: bytes,
    *,
    expected_signer: x509.Certificate | None,
    allow_sha1: bool = True,
) -> VerifiedContent:
    """Check every signature of an attached SignedData and return its content and signer.

    ``expected_signer`` None means: trust the certificate embedded in the message (only for
    debugging; in message flow always pass the party's certificate).
    """
    signed = load_content_info(der, "signed_data")["content"]
    content = _encapsulated_content(signed)
    embedded = _embedded_certificates(signed)
    signer_infos = list(signed["signer_infos"])
    if not signer_infos:
        raise CmsError("the SignedData has no signer", code="signature-invalid")
    result: VerifiedContent | None = None
    for signer_info in signer_infos:
        signer = _signer_certificate(signer_info, embedded, expected_signer)
        signing_time = _verify_signer_info(signer_info, signer, content, signed, allow_sha1)
        result = result or VerifiedContent(content, signer, signing_time)
    assert result is not None
    return result


def _encapsulated_content(signed: acms.SignedData) -> bytes:
    encap = signed["encap_content_info"]
    if encap["content"].native is None:
        raise CmsError(
            "the SignedData has no attached content (detached signatures are not used here)",
            code="detached-content",
        )
    value = encap["content"]
    # For content types other than id-data asn1crypto keeps a parsable octet string; the bytes
    # signed are its contents either way.
    native = value.native
    return native if isinstance(native, bytes) else bytes(value.contents)


def _embedded_certificates(signed: acms.SignedData) -> list[x509.Certificate]:
    found = []
    for choice in signed["certificates"] or []:
        if choice.name == "certificate":
            try:
                found.append(x509.load_der_x509_certificate(choice.chosen.dump()))
            except ValueError:
                continue
    return found


def _signer_certificate(
    signer_info: acms.SignerInfo,
    embedded: list[x509.Certificate],
    expected: x509.Certificate | None,
) -> x509.Certificate:
    sid = signer_info["sid"]
    if expected is not None:
        if identifies(sid, expected):
            return expected
        named = next((cert for cert in embedded if identifies(sid, cert)), None)
        signer_text = describe(named) if named else "a certificate we do not have"
        raise CmsError(
            f"the message is signed by {signer_text}, not by the expected {describe(expected)}",
            code="signer-mismatch",
        )
    for cert in embedded:
        if identifies(sid, cert):
            return cert
    raise CmsError(
        "the signer's certificate is neither in the message nor given", code="signer-unknown"
    )


def _verify_signer_info(
    signer_info: acms.SignerInfo,
    signer: x509.Certificate,
    content: bytes,
    signed: acms.SignedData,
    allow_sha1: bool,
) -> datetime | None:
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name == "sha1" and not allow_sha1:
        raise CmsError("SHA-1 signatures are refused by policy", code="weak-algorithm-refused")
    digest_algorithm = hash_by_name(digest_name)
    digest = hashes.Hash(digest_algorithm)
    digest.update(content)
    content_digest = digest.finalize()

    signed_attrs = signer_info["signed_attrs"]
    signing_time = None
    if signed_attrs.native is None:
        to_verify, prehashed = content_digest, True
    else:
        message_digest = _single_value(signed_attrs, "message_digest")
        if message_digest is None:
            raise CmsError("the signed attributes lack message-digest", code="signature-invalid")
        if message_digest.native != content_digest:
            raise CmsError(
                "the content does not match the signed digest (the content was altered)",
                code="digest-mismatch",
            )
        content_type = _single_value(signed_attrs, "content_type")
        if content_type is not None and content_type.native != (
            signed["encap_content_info"]["content_type"].native
        ):
            raise CmsError("the signed content type does not match", code="signature-invalid")
        signed_at = _single_value(signed_attrs, "signing_time")
        if signed_at is not None:
            signing_time = signed_at.native
        # The signature covers the DER of the attributes as a SET OF, not the [0] tag.
        to_verify, prehashed = b"\x31" + signed_attrs.dump()[1:], False

    public_key = signer.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CmsError("only RSA signers are supported", code="unsupported-algorithm")
    scheme = _padding(signer_info["signature_algorithm"], digest_algorithm)
    algorithm: hashes.HashAlgorithm | Prehashed = (
        Prehashed(digest_algorithm) if prehashed else digest_algorithm
    )
    try:
        public_key.verify(signer_info["signature"].native, to_verify, scheme, algorithm)
    except InvalidSignature:
        raise CmsError(
            f"the signature by {describe(signer)} does not verify", code="signature-invalid"
        ) from None
    return signing_time


def _single_value(signed_attrs: acms.CMSAttributes, name: str) -> core.Asn1Value | None:
    """The value of the signed attribute ``name``, None when absent. RFC 5652 (11.1-11.3):
    such an attribute occurs once, with exactly one value; anything else is refused."""
    found = [attr["values"] for attr in signed_attrs if attr["type"].native == name]
    if not found:
        return None
    if len(found) > 1 or len(found[0]) != 1:
        raise CmsError(
            f"the signed attribute {name.replace('_', '-')} must occur once with one value",
            code="signature-invalid",
        )
    value: core.Asn1Value = found[0][0]
    return value


def _padding(
    signature_algorithm: core.Sequence, digest_algorithm: hashes.HashAlgorithm
) -> padding.AsymmetricPadding:
    try:
        kind = signature_algorithm.signature_algo
    except ValueError:
        kind = ""
    if kind == "rsassa_pkcs1v15":
        return padding.PKCS1v15()
    if kind == "rsassa_pss":
        params = signature_algorithm["parameters"]
        if not isinstance(params, algos.RSASSAPSSParams):
            raise CmsError("PSS without its parameters", code="unsupported-algorithm")
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1":
            raise CmsError(
                "PSS with a mask generator other than MGF1", code="unsupported-algorithm"
            )
        if not isinstance(mgf["parameters"], algos.DigestAlgorithm):
            # MGF1 without its hash: asn1crypto hands over Void, which has no ["algorithm"]
            raise CmsError("PSS's MGF1 names no hash algorithm", code="unsupported-algorithm")
        mgf_hash = hash_by_name(mgf["parameters"]["algorithm"].native)
        return padding.PSS(padding.MGF1(mgf_hash), params["salt_length"].native)
    name = signature_algorithm["algorithm"].native
    raise CmsError(f"signature algorithm {name} is not supported", code="unsupported-algorithm")
