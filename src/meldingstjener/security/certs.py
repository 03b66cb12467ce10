"""Reading certificates and asking them the questions the rest of the layer needs.

Loading from PEM or DER, key usage per purpose (signing or encryption), the Norwegian
organisation number in an enterprise certificate's subject, and a short label for logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from meldingstjener.security.errors import SecurityError

Usage = Literal["signing", "encryption"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
# The whole value: "NTRNO-" and 9 digits (organizationIdentifier) or 9 digits (serialNumber).
# A longer run of digits is something else (a person certificate's PID, a national identity
# number), never an organisation number.
_ORG_NUMBER = re.compile(r"(?:NTRNO-)?(\d{9})")


class CertificateLoadError(SecurityError):
    """A file or byte string that holds no readable X.509 certificate."""

    code = "certificate-unreadable"


def certificates_from_bytes(data: bytes) -> list[x509.Certificate]:
    """All certificates in ``data``: one or more PEM blocks, or a single DER certificate."""
    blocks = _PEM_CERT.findall(data)
    try:
        if blocks:
            return [x509.load_pem_x509_certificate(block) for block in blocks]
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertificateLoadError("the data is not an X.509 certificate (PEM or DER)") from None


def certificate_from_bytes(data: bytes) -> x509.Certificate:
    """The first certificate in ``data`` (PEM or DER)."""
    return certificates_from_bytes(data)[0]


def load_certificate(path: Path) -> x509.Certificate:
    """Read one certificate from a PEM or DER file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateLoadError(f"cannot read certificate file {path}: {exc.strerror}") from None
    try:
        return certificate_from_bytes(data)
    except CertificateLoadError:
        raise CertificateLoadError(f"{path} holds no X.509 certificate (PEM or DER)") from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Read every certificate from a PEM bundle (or one DER certificate)."""
    try:
        return certificates_from_bytes(path.read_bytes())
    except OSError as exc:
        raise CertificateLoadError(f"cannot read certificate file {path}: {exc.strerror}") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def usage_allowed(cert: x509.Certificate, usage: Usage) -> bool:
    """Whether the key usage extension permits ``usage``.

    Norwegian enterprise certificates come in pairs: the signing one has nonRepudiation
    (sometimes with digitalSignature), the encryption one keyEncipherment. A certificate
    without the extension is unrestricted (RFC 5280 4.2.1.3).
    """
    ku = key_usage(cert)
    if ku is None:
        return True
    if usage == "signing":
        return bool(ku.content_commitment or ku.digital_signature)
    return bool(ku.key_encipherment)


def organisation_number(cert: x509.Certificate) -> str | None:
    """The 9-digit organisation number from the subject, if the certificate carries one.

    Buypass and Commfides put it in organizationIdentifier ("NTRNO-<number>") or, in older
    certificates, in serialNumber.
    """
    for oid in (NameOID.ORGANIZATION_IDENTIFIER, NameOID.SERIAL_NUMBER):
        for attribute in cert.subject.get_attributes_for_oid(oid):
            value = attribute.value if isinstance(attribute.value, str) else ""
            match = _ORG_NUMBER.fullmatch(value.strip())
            if match:
                return match.group(1)
    return None


def describe(cert: x509.Certificate) -> str:
    """A short label for logs and messages: subject CN/O and serial number (no personal data:
    enterprise certificates name organisations)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) or (
        cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    )
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return f"'{name}' (serial {cert.serial_number:x})"


def same_certificate(a: x509.Certificate, b: x509.Certificate) -> bool:
    # cryptography compares the DER encodings: the same answer as comparing fingerprints,
    # without hashing both certificates on every check of every message
    return a == b
