"""A development PKI, so the demo and the tests run without real enterprise certificates.

``init_pki`` creates (or reuses) a CA with its CRL, and per HER-id a signing and an
encryption certificate shaped like Norwegian enterprise certificates: organisation number in
the subject (organizationIdentifier "NTRNO-<number>" as Buypass writes it, and serialNumber as
older certificates do), separate key usages. ``revoke`` re-issues the CRL with one more entry.

Files in the directory: ca.pem, ca.key, crl.pem, and per HER-id {her}-sign.pem/.key/.p12 and
{her}-enc.pem/.key/.p12; the PKCS#12 password is in p12-password.txt. Private keys are written
unencrypted with mode 0600: this is a development PKI, never for production.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meldingstjener.security.certs import load_certificate
from meldingstjener.security.errors import SecurityError
from meldingstjener.security.keystore import KeyPair, KeySource, load_key_pair

KEY_SIZE = 2048
PASSWORD_FILE = "p12-password.txt"


class DevPkiError(SecurityError):
    code = "devpki-error"


@dataclass(frozen=True)
class DevParty:
    """One HER-id's development keys."""

    her_id: str
    organisation_number: str
    signing: KeyPair
    encryption: KeyPair


@dataclass(frozen=True)
class DevPki:
    directory: Path
    ca: KeyPair
    parties: dict[str, DevParty]

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self.ca.certificate

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(self.crl_path.read_bytes())


def organisation_number_for(her_id: str) -> str:
    """A made-up but checksum-valid 9-digit organisation number derived from a HER-id."""
    base = 90_000_000 + int(her_id) % 10_000_000
    while True:
        digits = [int(d) for d in f"{base:08d}"]
        remainder = sum(w * d for w, d in zip((3, 2, 7, 6, 5, 4, 3, 2), digits, strict=True)) % 11
        check = 0 if remainder == 0 else 11 - remainder
        if check != 10:  # mod-11 numbers with check digit 10 are not issued
            return f"{base:08d}{check}"
        base += 1


def init_pki(
    directory: Path,
    her_ids: Sequence[str],
    *,
    organisation_numbers: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
    valid_days: int = 825,
) -> DevPki:
    """Create (or extend) a development PKI in ``directory`` for ``her_ids``.

    An existing CA is reused and existing party files are kept, so running it again with one
    more HER-id adds only that party.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for her_id in her_ids:
        if not her_id.isdigit():
            raise DevPkiError(f"HER-id {her_id!r} is not a number", code="invalid-her-id")
    password_file = directory / PASSWORD_FILE
    if not password_file.exists():
        _write_secret(password_file, secrets.token_urlsafe(18).encode() + b"\n")
    ca = _load_or_create_ca(directory)
    if not (directory / "crl.pem").exists():
        _write_crl(directory, ca, [])
    for her_id in her_ids:
        if (directory / f"{her_id}-enc.pem").exists():
            continue
        org = (organisation_numbers or {}).get(her_id) or organisation_number_for(her_id)
        name = (names or {}).get(her_id) or f"DEV PARTY {her_id}"
        for role in ("sign", "enc"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
            cert = _issue(ca, key, name, org, role, crl_url, ocsp_url, valid_days)
            _write_pair(directory, f"{her_id}-{role}", KeyPair(key, cert, (ca.certificate,)))
    return load_pki(directory)


def load_pki(directory: Path) -> DevPki:
    ca = load_key_pair(KeySource.pem(directory / "ca.key", directory / "ca.pem"), made_here=True)
    parties = {}
    for enc_cert in sorted(directory.glob("*-enc.pem")):
        her_id = enc_cert.name.removesuffix("-enc.pem")
        parties[her_id] = load_dev_party(directory, her_id)
    return DevPki(directory, ca, parties)


def load_dev_party(directory: Path, her_id: str) -> DevParty:
    """The signing and encryption key pairs of ``her_id`` in a development PKI."""
    pairs = {}
    for role, usage in (("sign", "signing"), ("enc", "encryption")):
        source = KeySource.pem(
            directory / f"{her_id}-{role}.key", directory / f"{her_id}-{role}.pem"
        )
        pairs[role] = load_key_pair(source, usage=usage, made_here=True)  # type: ignore[arg-type]
    from meldingstjener.security.certs import organisation_number

    org = organisation_number(pairs["sign"].certificate) or ""
    return DevParty(her_id, org, pairs["sign"], pairs["enc"])


def revoke(
    directory: Path,
    certificate: x509.Certificate | Path,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
    when: datetime | None = None,
) -> x509.CertificateRevocationList:
    """Add ``certificate`` to the CRL in ``directory`` and write the re-signed CRL."""
    cert = load_certificate(certificate) if isinstance(certificate, Path) else certificate
    ca = load_key_pair(KeySource.pem(directory / "ca.key", directory / "ca.pem"), made_here=True)
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise DevPkiError(
            "the certificate was not issued by this development CA", code="not-issued-here"
        ) from None
    old = x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())
    entries = [entry for entry in old if entry.serial_number != cert.serial_number]
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(when or datetime.now(UTC))
        .add_extension(x509.CRLReason(reason), critical=False)
        .build()
    )
    return _write_crl(directory, ca, [*entries, entry])


def _load_or_create_ca(directory: Path) -> KeyPair:
    if (directory / "ca.pem").exists():
        return load_key_pair(KeySource.pem(directory / "ca.key", directory / "ca.pem"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NO"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meldingstjener Development"),
            # A random suffix keeps two development CAs apart (issuer names must differ).
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Meldingstjener Development CA {secrets.token_hex(3)}"
            ),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(key, cert)
    _write_secret(directory / "ca.key", _key_pem(key))
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pair


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _party_usage(role: str) -> x509.KeyUsage:
    signing = role == "sign"
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=signing,
        key_encipherment=not signing,
        data_encipherment=not signing,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def party_name(name: str, organisation_number: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NO"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, f"NTRNO-{organisation_number}"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, organisation_number),
        ]
    )


def issue_certificate(
    ca: KeyPair,
    public_key: rsa.RSAPublicKey,
    subject: x509.Name,
    usage: x509.KeyUsage,
    *,
    not_before: datetime,
    not_after: datetime,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
    extended_usage: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    """Issue an end-entity certificate from ``ca`` (tests use it for odd certificates:
    expired, not yet valid, wrong usage)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if extended_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_usage)), critical=False)
    if crl_url:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url:
        access = x509.AccessDescription(
            x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _issue(
    ca: KeyPair,
    key: rsa.RSAPrivateKey,
    name: str,
    org: str,
    role: str,
    crl_url: str | None,
    ocsp_url: str | None,
    valid_days: int,
) -> x509.Certificate:
    now = datetime.now(UTC)
    return issue_certificate(
        ca,
        key.public_key(),
        party_name(name, org),
        _party_usage(role),
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(days=valid_days),
        crl_url=crl_url,
        ocsp_url=ocsp_url,
        extended_usage=[ExtendedKeyUsageOID.EMAIL_PROTECTION] if role == "enc" else (),
    )


def _write_crl(
    directory: Path, ca: KeyPair, entries: Sequence[x509.RevokedCertificate]
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=30))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca.key, hashes.SHA256())
    (directory / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return crl


def _write_pair(directory: Path, stem: str, pair: KeyPair) -> None:
    password = (directory / PASSWORD_FILE).read_bytes().splitlines()[0]
    _write_secret(directory / f"{stem}.key", _key_pem(pair.key))
    (directory / f"{stem}.pem").write_bytes(
        pair.certificate.public_bytes(serialization.Encoding.PEM)
    )
    p12 = pkcs12.serialize_key_and_certificates(
        stem.encode(),
        pair.key,
        pair.certificate,
        list(pair.chain),
        serialization.BestAvailableEncryption(password),
    )
    _write_secret(directory / f"{stem}.p12", p12)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_secret(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


__all__ = [
    "DevParty",
    "DevPki",
    "init_pki",
    "issue_certificate",
    "load_dev_party",
    "load_pki",
    "organisation_number_for",
    "party_name",
    "revoke",
]
