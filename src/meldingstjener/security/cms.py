"""CMS for message payloads: the one module others import for encrypt/decrypt/sign/verify.

EnvelopedData lives in :mod:`cms_enveloped`, SignedData in :mod:`cms_signed`; this module adds
the combinations Helsenorge uses over AMQP (SignedData inside EnvelopedData) and re-exports the
public names.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from meldingstjener.security.cms_common import (
    DEFAULT_MAX_PLAINTEXT,
    CmsError,
    cms_der_from_any,
    gunzip_if_gzip,
)
from meldingstjener.security.cms_enveloped import DecryptionCandidate, decrypt, encrypt
from meldingstjener.security.cms_signed import VerifiedContent, sign, verify

__all__ = [
    "CmsError",
    "DecryptionCandidate",
    "VerifiedContent",
    "cms_der_from_any",
    "decrypt",
    "decrypt_and_verify",
    "encrypt",
    "sign",
    "sign_and_encrypt",
    "verify",
]


def sign_and_encrypt(
    data: bytes,
    signing_key: rsa.RSAPrivateKey,
    signing_certificate: x509.Certificate,
    recipient: x509.Certificate,
    *,
    compress: bool = False,
) -> bytes:
    """Sign ``data`` (attached SignedData) and encrypt the signed structure to ``recipient``."""
    return encrypt(sign(data, signing_key, signing_certificate), recipient, compress=compress)


def decrypt_and_verify(
    der: bytes,
    candidates: Sequence[DecryptionCandidate],
    *,
    expected_signer: x509.Certificate | None,
    allow_3des: bool = True,
    allow_sha1: bool = True,
    max_size: int = DEFAULT_MAX_PLAINTEXT,
) -> VerifiedContent:
    """Decrypt, then verify the SignedData inside; a gzipped signed content is gunzipped."""
    signed = decrypt(der, candidates, allow_3des=allow_3des, max_size=max_size)
    verified = verify(signed, expected_signer=expected_signer, allow_sha1=allow_sha1)
    content = gunzip_if_gzip(verified.content, max_size=max_size)
    if content is verified.content:
        return verified
    return VerifiedContent(content, verified.signer, verified.signing_time)
