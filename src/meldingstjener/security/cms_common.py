"""Pieces shared by CMS EnvelopedData and SignedData: the error type, reading CMS input in
the forms operators meet (DER, PEM, base64), gzip detection, hash and name helpers."""

from __future__ import annotations

import base64
import binascii
import re
import zlib

from asn1crypto import cms as acms
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meldingstjener.security.errors import SecurityError

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_PLAINTEXT = 512 * 1024 * 1024  # a 51.2 MB mail gunzips far below this

_PEM_BLOCK = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----(.+?)-----END [A-Z0-9 ]+-----", re.DOTALL)


class CmsError(SecurityError):
    """A CMS failure. Codes: not-cms, unexpected-content-type, recipient-not-found,
    decryption-failed, unsupported-algorithm, weak-algorithm-refused, signature-invalid,
    digest-mismatch, signer-unknown, signer-mismatch, detached-content, too-large."""

    code = "cms-error"


def cms_der_from_any(data: bytes) -> bytes:
    """DER (or BER) bytes of a CMS structure given as DER, PEM, or plain base64."""
    # Binary DER is taken exactly as given: its last bytes may well be "whitespace" values
    # (0x0b, 0x20, ...), and stripping them would corrupt the structure. Text forms never start
    # with 0x30 ('0' is not a base64 start of a CMS ContentInfo, which encodes as "MI...").
    if data[:1] == b"\x30":
        return bytes(data)
    stripped = data.strip()
    if stripped[:1] == b"\x30":  # DER after leading blank lines: only the front is trimmed
        return bytes(data.lstrip())
    pem = _PEM_BLOCK.search(stripped)
    body = pem.group(1) if pem else stripped
    try:
        decoded = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CmsError("the input is neither DER, PEM nor base64 CMS", code="not-cms") from None
    if decoded[:1] != b"\x30":
        raise CmsError("the decoded input is not a CMS structure", code="not-cms")
    return decoded


def load_content_info(der: bytes, expected: str) -> acms.ContentInfo:
    """Parse a ContentInfo and check its type ('enveloped_data' or 'signed_data')."""
    try:
        info = acms.ContentInfo.load(der)
        content_type = info["content_type"].native
        _ = info["content"].native if content_type == expected else None
    except (ValueError, TypeError, KeyError):
        raise CmsError("the input is not a readable CMS structure", code="not-cms") from None
    if content_type != expected:
        raise CmsError(
            f"expected CMS {expected.replace('_', ' ')}, got {content_type}",
            code="unexpected-content-type",
        )
    return info


NOT_ANOTHER_MEMBER = (
    "the decrypted content looks gzipped but is not valid gzip: "
    "bytes that are neither another gzip member nor zero padding follow the end of one"
)


def all_zero(data: bytes) -> bool:
    """Whether ``data`` is zero padding only (or nothing): gzip and Python's gzip ignore zero
    bytes after the last member, as some writers pad a stream to a block size."""
    return data.count(0) == len(data)


def gunzip_if_gzip(data: bytes, *, max_size: int = DEFAULT_MAX_PLAINTEXT) -> bytes:
    """Gunzip ``data`` when it starts with the gzip magic; refuse output beyond ``max_size``
    (a small compressed payload can expand enormously). Every member of a multi-member
    stream is read, as gzip and Python's gzip do, and zero bytes after the last one are padding,
    ignored as they ignore them; any other bytes after a member are refused."""
    if not data.startswith(GZIP_MAGIC):
        return data
    pieces: list[bytes] = []
    produced = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(rest, max_size + 1 - produced)
        except zlib.error:
            raise CmsError("the decrypted content looks gzipped but is not valid gzip") from None
        produced += len(out)
        if produced > max_size or inflater.unconsumed_tail:
            raise CmsError(f"the gunzipped content exceeds {max_size} bytes", code="too-large")
        if not inflater.eof:  # zlib takes a stream that just stops; a cut-off gzip is not valid
            raise CmsError("the decrypted content looks gzipped but is not valid gzip")
        pieces.append(out)
        rest = inflater.unused_data
        if all_zero(rest):
            return b"".join(pieces)
        if not rest.startswith(GZIP_MAGIC):
            raise CmsError(NOT_ANOTHER_MEMBER)


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def hash_by_name(name: str) -> hashes.HashAlgorithm:
    try:
        return HASHES[name]()
    except KeyError:
        raise CmsError(
            f"digest algorithm {name} is not supported", code="unsupported-algorithm"
        ) from None


def asn1_certificate(cert: x509.Certificate) -> ax509.Certificate:
    return ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def issuer_and_serial(cert: x509.Certificate) -> acms.IssuerAndSerialNumber:
    parsed = asn1_certificate(cert)
    return acms.IssuerAndSerialNumber(
        {"issuer": parsed.issuer, "serial_number": parsed.serial_number}
    )


def subject_key_identifier(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def identifies(
    rid: acms.RecipientIdentifier | acms.SignerIdentifier, cert: x509.Certificate
) -> bool:
    """Whether a recipient/signer identifier names ``cert`` (IssuerAndSerialNumber or SKI)."""
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        if ias["serial_number"].native != cert.serial_number:
            return False
        issuer_der = cert.issuer.public_bytes()
        return bool(
            ias["issuer"].dump() == issuer_der or ias["issuer"] == asn1_certificate(cert).issuer
        )
    if rid.name == "subject_key_identifier":
        return rid.chosen.native == subject_key_identifier(cert)
    return False
