"""Certificates of communication parties as the registry knows them.

The address register gives a thumbprint and validity (and, from its certificate endpoint, the DER
bytes); a CPP/CPA embeds the certificate itself. :class:`PartyCertificate` holds whatever is known,
so the store can keep it and the security layer can load the DER when it is there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtensionOID


class CertificateUnreadable(ValueError):
    """Bytes that are not a DER/base64 X.509 certificate."""

    code = "certificate-unreadable"


@dataclass(frozen=True, slots=True)
class PartyCertificate:
    """One certificate of a party. ``der`` is None when the source gave only metadata."""

    der: bytes | None
    thumbprint: str | None  # SHA-1 of the DER, upper-case hex (how the register writes it)
    not_before: datetime | None
    not_after: datetime | None
    subject: str | None = None
    issuer: str | None = None
    serial_number: int | None = None
    key_usage: frozenset[str] = frozenset()
    cert_id: str | None = None  # the certId inside a CPP/CPA

    @property
    def for_signing(self) -> bool:
        return bool(self.key_usage & {"digital_signature", "non_repudiation"})

    @property
    def for_encryption(self) -> bool:
        return bool(self.key_usage & {"key_encipherment", "data_encipherment"})

    def valid_at(self, moment: datetime) -> bool:
        """True when ``moment`` lies within the validity period (unknown bounds do not fail)."""
        if self.not_before is not None and moment < self.not_before:
            return False
        return not (self.not_after is not None and moment > self.not_after)


def register_thumbprint(der: bytes) -> str:
    """How the register names a certificate: the SHA-1 of its DER, upper-case hex (an
    identifier, not a security check)."""
    return hashlib.sha1(der).hexdigest().upper()


def certificate_from_der(
    der: bytes, *, cert_id: str | None = None, thumbprint: str | None = None
) -> PartyCertificate:
    """Read subject, issuer, serial, validity and key usage from DER bytes."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateUnreadable(f"not a DER X.509 certificate: {exc}") from None
    computed = register_thumbprint(der)
    if thumbprint is not None and thumbprint.strip().upper() != computed:
        raise CertificateUnreadable(
            f"certificate thumbprint {thumbprint.strip().upper()} does not match its bytes "
            f"({computed}); the record is inconsistent"
        )
    return PartyCertificate(
        der=der,
        thumbprint=computed,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial_number=cert.serial_number,
        key_usage=_key_usage(cert),
        cert_id=cert_id,
    )


def certificate_from_base64(
    text: str, *, cert_id: str | None = None, thumbprint: str | None = None
) -> PartyCertificate:
    """As :func:`certificate_from_der` for base64 text (whitespace and line breaks allowed)."""
    compact = "".join(text.split())
    try:
        der = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CertificateUnreadable("certificate is not valid base64") from None
    return certificate_from_der(der, cert_id=cert_id, thumbprint=thumbprint)


_USAGE_NAMES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def _key_usage(cert: x509.Certificate) -> frozenset[str]:
    try:
        usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return frozenset()
    assert isinstance(usage, x509.KeyUsage)
    names = {name for name in _USAGE_NAMES if getattr(usage, name)}
    # content_commitment is the RFC 5280 name for what Norwegian profiles call nonRepudiation.
    if "content_commitment" in names:
        names.add("non_repudiation")
    return frozenset(names)
