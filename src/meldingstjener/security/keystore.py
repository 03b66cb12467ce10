"""The organisation's own keys: a signing pair, an encryption pair and an optional old one.

Norwegian enterprise certificates come as two certificates with separate keys: one for
signing (key usage nonRepudiation) and one for encryption (keyEncipherment). During a
certificate rollover, partners may still encrypt to the previous encryption certificate for a
while, so the previous decryption key can be kept as a second candidate.

Keys are read from PKCS#12 or from PEM key + certificate files. Passwords come from a file or
an environment variable, never from a command-line argument (visible in process lists and
shell history).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from meldingstjener.security.certs import (
    CertificateLoadError,
    Usage,
    certificates_from_bytes,
    describe,
    usage_allowed,
)
from meldingstjener.security.errors import SecurityError


class KeyStoreError(SecurityError):
    """Base of key store failures."""

    code = "keystore-error"


class KeyFileMissing(KeyStoreError):
    code = "key-missing"


class PasswordMissing(KeyStoreError):
    code = "password-missing"


class WrongPassword(KeyStoreError):
    code = "wrong-password"


class KeyUnreadable(KeyStoreError):
    code = "key-unreadable"


class UnsupportedKeyType(KeyStoreError):
    code = "unsupported-key-type"


class KeyCertificateMismatch(KeyStoreError):
    code = "key-certificate-mismatch"


class WrongKeyUsage(KeyStoreError):
    code = "wrong-key-usage"


@dataclass(frozen=True)
class KeySource:
    """Where one key and its certificate live, and where its password comes from.

    ``cert_path`` is None for a PKCS#12 file (the certificate is inside it). At most one of
    ``password_file`` (first line of the file, without the line end) and ``password_env``
    (name of an environment variable) is given; neither means an unencrypted key.
    """

    key_path: Path
    cert_path: Path | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @classmethod
    def pkcs12(
        cls, path: Path, *, password_file: Path | None = None, password_env: str | None = None
    ) -> KeySource:
        return cls(Path(path), None, password_file, password_env)

    @classmethod
    def pem(
        cls,
        key_path: Path,
        cert_path: Path,
        *,
        password_file: Path | None = None,
        password_env: str | None = None,
    ) -> KeySource:
        return cls(Path(key_path), Path(cert_path), password_file, password_env)

    def password(self) -> bytes | None:
        """The password bytes, or None when the source names no password."""
        if self.password_file is not None and self.password_env is not None:
            raise PasswordMissing("give the key password by a file or by a variable, not both")
        if self.password_file is not None:
            try:
                text = self.password_file.read_bytes()
            except OSError as exc:
                raise PasswordMissing(
                    f"cannot read the password file {self.password_file}: {exc.strerror}"
                ) from None
            return text.splitlines()[0] if text.strip() else b""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise PasswordMissing(
                    f"the environment variable {self.password_env} (key password) is not set"
                )
            return value.encode("utf-8")
        return None


@dataclass(frozen=True)
class KeyPair:
    """A private key, its certificate, and any chain certificates that came with it."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


def load_key_pair(
    source: KeySource, *, usage: Usage | None = None, made_here: bool = False
) -> KeyPair:
    """Load one key pair; check that key and certificate belong together and, when ``usage``
    is given, that the certificate's key usage permits it.

    ``made_here``: a PEM key this program generated itself (the development PKI) skips
    OpenSSL's consistency check of an RSA private key (its primes), which costs about 40 ms a
    key; a key from anywhere else is always checked."""
    data = _read(source.key_path, "key")
    password = source.password()
    if source.cert_path is None and not _looks_like_pem(data):
        pair = _from_pkcs12(data, password, source.key_path)
    else:
        if source.cert_path is None and b"CERTIFICATE-----" not in data:
            # a PEM key named where a PKCS#12 file belongs: its certificate is elsewhere, and
            # whatever the key itself says next (no password needed, a wrong one) points away
            raise KeyUnreadable(
                f"{source.key_path} is a PEM key, not a PKCS#12 file: give it as a PEM key "
                "with its certificate (*_key and *_cert)"
            )
        pair = _from_pem(data, password, source, made_here=made_here)
    _check_match(pair, source.key_path)
    if usage is not None and not usage_allowed(pair.certificate, usage):
        wanted = "nonRepudiation/digitalSignature" if usage == "signing" else "keyEncipherment"
        raise WrongKeyUsage(
            f"the certificate {describe(pair.certificate)} from {source.key_path} cannot be "
            f"used for {usage}: its key usage lacks {wanted}"
        )
    return pair


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileMissing(f"the {what} file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileMissing(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _looks_like_pem(data: bytes) -> bool:
    return b"-----BEGIN" in data[:4096]


def _looks_like_pkcs12(data: bytes) -> bool:
    """Whether ``data`` is whole and begins as a PKCS#12 file does (a DER SEQUENCE whose
    version is 3). OpenSSL says "invalid password or PKCS12 data" alike for a file locked with
    another password and for one that is cut short or is something else; this tells them
    apart. An indefinite length (BER, from some older tools) is taken as it comes."""
    if len(data) < 5 or data[0] != 0x30:
        return False
    if data[1] == 0x80:  # indefinite length: no total to compare
        return data[2:5] == b"\x02\x01\x03"
    if data[1] < 0x80:
        header, length = 2, data[1]
    else:
        count = data[1] & 0x7F
        header, length = 2 + count, int.from_bytes(data[2 : 2 + count], "big")
    return len(data) >= header + length and data[header : header + 3] == b"\x02\x01\x03"


def _from_pkcs12(data: bytes, password: bytes | None, path: Path) -> KeyPair:
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as exc:
        text = str(exc).lower()
        locked = "password" in text or "mac" in text or "decrypt" in text
        if locked and _looks_like_pkcs12(data):
            if password is None:
                raise PasswordMissing(
                    f"the PKCS#12 file {path} is locked with a password; a password is needed "
                    "(from a file or an environment variable)"
                ) from None
            raise WrongPassword(f"wrong password for the PKCS#12 file {path}") from None
        raise KeyUnreadable(f"{path} is not a readable PKCS#12 file") from None
    if key is None:
        raise KeyFileMissing(f"the PKCS#12 file {path} holds no private key")
    if cert is None:
        raise KeyFileMissing(f"the PKCS#12 file {path} holds no certificate for its key")
    return KeyPair(_rsa(key, path), cert, tuple(extra))


def _from_pem(
    data: bytes, password: bytes | None, source: KeySource, *, made_here: bool = False
) -> KeyPair:
    path = source.key_path
    if b"PRIVATE KEY-----" not in data:
        raise KeyFileMissing(f"{path} holds no PEM private key")
    try:
        key = serialization.load_pem_private_key(
            data, password or None, unsafe_skip_rsa_key_validation=made_here
        )
    except TypeError:
        # cryptography says TypeError when a password is missing or given for a plain key.
        if password:
            raise KeyUnreadable(f"the key in {path} is not encrypted; give no password") from None
        raise PasswordMissing(f"the key in {path} is encrypted; a password is needed") from None
    except ValueError:
        if password:
            raise WrongPassword(f"wrong password for the key in {path}") from None
        raise KeyUnreadable(f"{path} holds no readable private key") from None
    cert_data = data if source.cert_path is None else _read(source.cert_path, "certificate")
    try:
        certs = certificates_from_bytes(cert_data)
    except CertificateLoadError:
        where = source.cert_path or path
        raise KeyFileMissing(f"{where} holds no certificate for the key in {path}") from None
    return KeyPair(_rsa(key, path), certs[0], tuple(certs[1:]))


def _rsa(key: object, path: Path) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UnsupportedKeyType(
            f"the key in {path} is not an RSA key; enterprise certificates use RSA"
        )
    return key


def _check_match(pair: KeyPair, path: Path) -> None:
    cert_key = pair.certificate.public_key()
    if (
        not isinstance(cert_key, rsa.RSAPublicKey)
        or cert_key.public_numbers() != pair.key.public_key().public_numbers()
    ):
        raise KeyCertificateMismatch(
            f"the private key in {path} does not belong to the certificate "
            f"{describe(pair.certificate)}"
        )


@dataclass(frozen=True)
class KeyStore:
    """The organisation's signing and encryption keys, plus an optional previous decryption
    key kept during certificate rollover."""

    signing: KeyPair
    encryption: KeyPair
    previous_encryption: KeyPair | None = None

    @classmethod
    def load(
        cls,
        signing: KeySource,
        encryption: KeySource,
        previous_encryption: KeySource | None = None,
    ) -> KeyStore:
        previous = None
        if previous_encryption is not None:
            previous = load_key_pair(previous_encryption, usage="encryption")
        return cls(
            signing=load_key_pair(signing, usage="signing"),
            encryption=load_key_pair(encryption, usage="encryption"),
            previous_encryption=previous,
        )

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        return self.signing.key

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self.signing.certificate

    @property
    def encryption_key(self) -> rsa.RSAPrivateKey:
        return self.encryption.key

    @property
    def encryption_certificate(self) -> x509.Certificate:
        return self.encryption.certificate

    @property
    def decryption_candidates(self) -> list[tuple[rsa.RSAPrivateKey, x509.Certificate]]:
        """Current encryption pair first, then the previous one (if any)."""
        pairs = [(self.encryption.key, self.encryption.certificate)]
        if self.previous_encryption is not None:
            pairs.append((self.previous_encryption.key, self.previous_encryption.certificate))
        return pairs
