"""CMS EnvelopedData: encrypt to a partner's certificate and decrypt what partners send.

We send AES-256-CBC with RSA PKCS#1 v1.5 key transport, recipient identified by
IssuerAndSerialNumber (what every Norwegian MSH can read). We receive AES-128/192/256-CBC and
3DES-CBC, with the content key wrapped by RSA PKCS#1 v1.5 or RSA-OAEP. Single DES is never
accepted; 3DES only while the policy allows it (large senders still use it).

The structure is read and written with asn1crypto and the primitives come from cryptography,
because cryptography's own CMS decryptor supports neither 3DES nor OAEP.

Large payloads stream: :func:`encrypt_to` and :func:`decrypt_to` read their input in pieces and
write their output in pieces (the ASN.1 around the content is read and written by
:mod:`.ber`; only the small elements go through asn1crypto), so a 35 MB message is never held
whole, let alone twice. :func:`encrypt` and :func:`decrypt` are the same for bytes in memory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from asn1crypto import algos
from asn1crypto import cms as acms
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

from meldingstjener.security import ber
from meldingstjener.security.certs import describe
from meldingstjener.security.cms_common import (
    DEFAULT_MAX_PLAINTEXT,
    GZIP_MAGIC,
    NOT_ANOTHER_MEMBER,
    CmsError,
    all_zero,
    gzip_bytes,
    hash_by_name,
    identifies,
    issuer_and_serial,
)

DecryptionCandidate = tuple[rsa.RSAPrivateKey, x509.Certificate]

# content-encryption algorithm -> (key length in bytes, block size in bits)
_CIPHERS: dict[str, tuple[int, int]] = {
    "aes128_cbc": (16, 128),
    "aes192_cbc": (24, 128),
    "aes256_cbc": (32, 128),
    "tripledes_3key": (24, 64),
}
_WEAK = {"tripledes_3key", "des"}
# A payload is encrypted to its receiver (and at most a few more: a copy to the sender, a
# second certificate during a rollover). More recipients than this are refused unread: each
# one naming us costs a look-up, and an attempt with our RSA key once the signature verified.
MAX_RECIPIENTS = 16
CHUNK = 1024 * 1024


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class PlaintextSink(Protocol):
    """Where :func:`decrypt_to` writes; ``reset`` forgets a failed attempt's output."""

    def write(self, data: bytes, /) -> object: ...

    def reset(self) -> None: ...


class _MemorySink:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def reset(self) -> None:
        self.buffer = io.BytesIO()


def encrypt(data: bytes, recipient: x509.Certificate, *, compress: bool = False) -> bytes:
    """DER EnvelopedData of ``data`` (gzipped first when ``compress``) for ``recipient``."""
    plaintext = gzip_bytes(data) if compress else data
    out = io.BytesIO()
    encrypt_to(io.BytesIO(plaintext), len(plaintext), recipient, out)
    return out.getvalue()


def encrypt_to(source: BinaryIO, length: int, recipient: x509.Certificate, sink: Writable) -> int:
    """Write the DER EnvelopedData of the ``length`` bytes ``source`` holds to ``sink``, in
    pieces; return the number of bytes written. (Compress first, if wanted: the length of the
    content must be known before it is written.)"""
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CmsError(
            f"the recipient certificate {describe(recipient)} has no RSA key",
            code="unsupported-algorithm",
        )
    content_key, iv = os.urandom(32), os.urandom(16)
    recipients = recipient_infos(recipient, public_key.encrypt(content_key, padding.PKCS1v15()))
    ciphertext_length = (length // 16 + 1) * 16  # PKCS#7 always pads, 1 to 16 bytes
    prefix = enveloped_prefix(recipients, iv, ciphertext_length)
    sink.write(prefix)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    taken = written = 0
    while chunk := source.read(CHUNK):
        taken += len(chunk)
        out = encryptor.update(padder.update(chunk))
        written += len(out)
        sink.write(out)
    out = encryptor.update(padder.finalize()) + encryptor.finalize()
    written += len(out)
    sink.write(out)
    if taken != length or written != ciphertext_length:
        raise CmsError(f"the content was {taken} bytes, not {length} as announced")
    return len(prefix) + written


# The parts of an EnvelopedData that never change, encoded once (asn1crypto's encodings).
_ENVELOPED_DATA_TYPE = acms.ContentType("enveloped_data").dump()
_VERSION_0 = acms.CMSVersion("v0").dump()
_DATA_TYPE = acms.ContentType("data").dump()
_RSA_PKCS1 = acms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}).dump()
_AES256_CBC = algos.EncryptionAlgorithmId("aes256_cbc").dump()


def _der(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return ber.der_header(tag, len(body)) + body


@functools.lru_cache(maxsize=256)
def _recipient_id(recipient: x509.Certificate) -> bytes:
    """The IssuerAndSerialNumber of a recipient, encoded once per certificate."""
    return issuer_and_serial(recipient).dump()


def recipient_infos(recipient: x509.Certificate, encrypted_key: bytes) -> bytes:
    """The DER RecipientInfos with one KeyTransRecipientInfo (v0, issuer and serial, RSA
    PKCS#1 v1.5), written directly: building it as asn1crypto objects for every message cost
    more than the encryption."""
    ktri = _der(
        ber.SEQUENCE,
        _VERSION_0,
        _recipient_id(recipient),
        _RSA_PKCS1,
        _der(ber.OCTET_STRING, encrypted_key),
    )
    return _der(ber.SET, ktri)


def enveloped_prefix(recipients: bytes, iv: bytes, ciphertext_length: int) -> bytes:
    """Everything of a DER ContentInfo/EnvelopedData (AES-256-CBC) before the ciphertext: the
    bytes asn1crypto would write, with the lengths computed for content not yet encrypted."""
    outer_type = _ENVELOPED_DATA_TYPE
    version = _VERSION_0
    content_type = _DATA_TYPE
    algorithm = _der(ber.SEQUENCE, _AES256_CBC, _der(ber.OCTET_STRING, iv))
    content_head = ber.der_header(ber.CONTEXT_0_PRIMITIVE, ciphertext_length)
    eci_length = len(content_type) + len(algorithm) + len(content_head) + ciphertext_length
    eci_head = ber.der_header(ber.SEQUENCE, eci_length)
    enveloped_length = len(version) + len(recipients) + len(eci_head) + eci_length
    enveloped_head = ber.der_header(ber.SEQUENCE, enveloped_length)
    explicit_length = len(enveloped_head) + enveloped_length
    explicit_head = ber.der_header(ber.CONTEXT_0_CONSTRUCTED, explicit_length)
    outer_length = len(outer_type) + len(explicit_head) + explicit_length
    return b"".join(
        (
            ber.der_header(ber.SEQUENCE, outer_length),
            outer_type,
            explicit_head,
            enveloped_head,
            version,
            recipients,
            eci_head,
            content_type,
            algorithm,
            content_head,
        )
    )


def decrypt(
    der: bytes,
    candidates: Sequence[DecryptionCandidate],
    *,
    allow_3des: bool = True,
    gunzip: bool = True,
    max_size: int = DEFAULT_MAX_PLAINTEXT,
) -> bytes:
    """Plaintext of an EnvelopedData for one of our ``candidates`` (key, certificate) pairs.

    The recipient is chosen by IssuerAndSerialNumber (or subject key identifier). A gzipped
    plaintext is gunzipped unless ``gunzip`` is False.
    """
    sink = _MemorySink()
    decrypt_to(
        lambda: io.BytesIO(der),
        sink,
        candidates,
        allow_3des=allow_3des,
        gunzip=gunzip,
        max_size=max_size,
    )
    return sink.buffer.getvalue()


def decrypt_to(
    open_source: Callable[[], BinaryIO],
    sink: PlaintextSink,
    candidates: Sequence[DecryptionCandidate],
    *,
    allow_3des: bool = True,
    gunzip: bool = True,
    max_size: int = DEFAULT_MAX_PLAINTEXT,
) -> None:
    """:func:`decrypt` in pieces: ``open_source()`` gives a new reader of the DER (BER) each
    time it is called (once per recipient key tried; almost always once); the plaintext goes
    to ``sink``, which is reset after a failed attempt. Raises :class:`CmsError`."""
    stream: BinaryIO | None = open_source()
    try:
        assert stream is not None
        reader = ber.Reader(stream)
        envelope = _read_envelope(reader)
        algorithm = envelope.algorithm
        name = algorithm["algorithm"].native
        _check_content_algorithm(name, allow_3des)
        key_length, block_bits = _CIPHERS[name]
        if envelope.content is None:
            raise CmsError(
                "the EnvelopedData carries no encrypted content", code="detached-content"
            )
        matched = False
        for recipient_info in envelope.recipient_infos:
            if recipient_info.name != "ktri":
                continue
            ktri = recipient_info.chosen
            for key, cert in candidates:
                if not identifies(ktri["rid"], cert):
                    continue
                matched = True
                content_key = _unwrap_key(ktri, key, key_length)
                iv = _iv(algorithm, block_bits)
                if stream is None:  # another key: read the content again from its start
                    stream = open_source()
                    _skip(stream, envelope.content_offset)
                    reader = ber.Reader(stream)
                    content = reader.header()
                else:  # the first try goes on where reading the structure stopped
                    content = envelope.content
                output = _Plaintext(sink, block_bits, gunzip=gunzip, max_size=max_size)
                done = _decrypt_content(name, content_key, iv, reader, content, output)
                stream.close()
                stream = None
                if done:
                    if output.problem is not None:
                        raise output.problem
                    return
                sink.reset()
    finally:
        if stream is not None:
            stream.close()
    if not matched:
        raise CmsError(
            "the message is not encrypted to any of our encryption certificates "
            f"({', '.join(describe(cert) for _, cert in candidates) or 'none configured'})",
            code="recipient-not-found",
        )
    # One message for every failure after the recipient matched: telling a wrong key apart
    # from bad padding would give an attacker a decryption oracle.
    raise CmsError("the message could not be decrypted with our key", code="decryption-failed")


def wrapped_keys(
    open_source: Callable[[], BinaryIO], candidates: Sequence[DecryptionCandidate]
) -> frozenset[str]:
    """The wrapped content keys of an EnvelopedData that are addressed to one of our
    ``candidates``, each named by the SHA-256 (hex) of its encrypted form, read without
    unwrapping anything or touching the content. Raises :class:`CmsError` for input that is
    not a readable EnvelopedData.

    A receiver that lets a content key be used in one received message only leaves no padding
    oracle: whoever copies a captured payload into messages of its own, altering the content,
    could otherwise learn from each answer whether its CBC padding was right (refused as not
    decryptable, or decrypted to garbage), and so decrypt it block by block. One name per key
    is enough: an RSA ciphertext is taken only at the modulus's length and below its value
    (cryptography refuses any other), so a key wrapped for one of our keys has one form.
    """
    stream = open_source()
    try:
        # read on demand: what only decryption needs (the issuer names, the algorithm's
        # parameters) is not parsed here, and decryption checks the structure whole
        envelope = _read_envelope(ber.Reader(stream), whole=False)
        names: set[str] = set()
        for recipient_info in envelope.recipient_infos:
            if recipient_info.name != "ktri":
                continue
            ktri = recipient_info.chosen
            if any(identifies(ktri["rid"], cert) for _, cert in candidates):
                # the value, however encoded (BER may split an OCTET STRING into pieces)
                names.add(hashlib.sha256(ktri["encrypted_key"].native).hexdigest())
    except (ValueError, TypeError, KeyError):
        raise CmsError("the input is not a readable CMS structure", code="not-cms") from None
    finally:
        stream.close()
    return frozenset(names)


def _skip(stream: BinaryIO, count: int) -> None:
    while count > 0:
        piece = stream.read(min(count, CHUNK))
        if not piece:
            raise CmsError("the input is not a readable CMS structure", code="not-cms")
        count -= len(piece)


@dataclass(frozen=True)
class _Envelope:
    recipient_infos: acms.RecipientInfos
    algorithm: algos.EncryptionAlgorithm
    content: ber.Header | None  # the [0] encrypted content's header; None when detached
    content_offset: int  # where that header starts


def _read_envelope(reader: ber.Reader, *, whole: bool = True) -> _Envelope:
    """Read a ContentInfo/EnvelopedData up to the start of its encrypted content; ``whole``:
    parse its recipients and algorithm completely now (else as they are read)."""
    try:
        outer = _expect(reader.header(), ber.SEQUENCE)
        outer_start = reader.consumed
        content_type = acms.ContentType.load(reader.element()).native
        if content_type != "enveloped_data":
            raise CmsError(
                f"expected CMS enveloped data, got {content_type}",
                code="unexpected-content-type",
            )
        explicit = _expect(reader.next_in(outer, outer_start), ber.CONTEXT_0_CONSTRUCTED)
        explicit_start = reader.consumed
        enveloped = _expect(reader.next_in(explicit, explicit_start), ber.SEQUENCE)
        start = reader.consumed
        acms.CMSVersion.load(reader.element(_expect(reader.next_in(enveloped, start), 0x02)))
        following = reader.next_in(enveloped, start)
        if following is not None and following.tag == ber.CONTEXT_0_CONSTRUCTED:
            reader.element(following)  # originatorInfo: not used for key transport
            following = reader.next_in(enveloped, start)
        recipients = acms.RecipientInfos.load(reader.element(_expect(following, ber.SET)))
        if len(recipients) > MAX_RECIPIENTS:  # counts their headers only
            raise CmsError(
                f"the input is not a readable CMS structure (more than {MAX_RECIPIENTS} "
                "recipients)",
                code="not-cms",
            )
        if whole:
            _ = recipients.native  # parse it all now: a broken structure is "not CMS"
        eci = _expect(reader.next_in(enveloped, start), ber.SEQUENCE)
        eci_start = reader.consumed
        acms.ContentType.load(reader.element(_expect(reader.next_in(eci, eci_start), 0x06)))
        algorithm_tlv = reader.element(_expect(reader.next_in(eci, eci_start), ber.SEQUENCE))
        algorithm = algos.EncryptionAlgorithm.load(algorithm_tlv)
        if whole:
            _ = algorithm.native
        content_offset = reader.consumed
        content = reader.next_in(eci, eci_start)
    except (ValueError, TypeError, KeyError):
        raise CmsError("the input is not a readable CMS structure", code="not-cms") from None
    if content is not None and content.tag not in (
        ber.CONTEXT_0_PRIMITIVE,
        ber.CONTEXT_0_CONSTRUCTED,
    ):
        raise CmsError("the input is not a readable CMS structure", code="not-cms")
    return _Envelope(recipients, algorithm, content, content_offset)


def _expect(header: ber.Header | None, tag: int) -> ber.Header:
    if header is None or header.tag != tag:
        raise CmsError("the input is not a readable CMS structure", code="not-cms")
    return header


def _check_content_algorithm(name: str, allow_3des: bool) -> None:
    if name in _WEAK and (name == "des" or not allow_3des):
        raise CmsError(
            f"the message is encrypted with {name}, which the security policy refuses",
            code="weak-algorithm-refused",
        )
    if name not in _CIPHERS:
        raise CmsError(
            f"content encryption {name} is not supported (AES-CBC or 3DES-CBC expected)",
            code="unsupported-algorithm",
        )


def _unwrap_key(ktri: acms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey, key_length: int) -> bytes:
    algorithm = ktri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    encrypted_key = ktri["encrypted_key"].native
    if name == "rsaes_pkcs1v15":
        try:
            content_key = key.decrypt(encrypted_key, padding.PKCS1v15())
        except ValueError:
            content_key = b""
        # Bleichenbacher: on bad padding continue with a random key, so the failure shows up
        # only later, indistinguishable from a wrong key.
        return content_key if len(content_key) == key_length else os.urandom(key_length)
    if name == "rsaes_oaep":
        try:
            content_key = key.decrypt(encrypted_key, _oaep_padding(algorithm["parameters"]))
        except ValueError:
            content_key = b""
        return content_key if len(content_key) == key_length else os.urandom(key_length)
    raise CmsError(f"key transport {name} is not supported", code="unsupported-algorithm")


def _oaep_padding(params: algos.RSAESOAEPParams | None) -> padding.OAEP:
    if params is None or params.native is None:
        return padding.OAEP(padding.MGF1(hash_by_name("sha1")), hash_by_name("sha1"), None)
    digest = hash_by_name(params["hash_algorithm"]["algorithm"].native)
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise CmsError("OAEP with a mask generator other than MGF1", code="unsupported-algorithm")
    if not isinstance(mgf["parameters"], algos.DigestAlgorithm):
        # MGF1 without its hash: asn1crypto hands over Void, which has no ["algorithm"]
        raise CmsError("OAEP's MGF1 names no hash algorithm", code="unsupported-algorithm")
    mgf_hash = hash_by_name(mgf["parameters"]["algorithm"].native)
    label = params["p_source_algorithm"]["parameters"].native or None
    return padding.OAEP(padding.MGF1(mgf_hash), digest, label)


def _iv(algorithm: algos.EncryptionAlgorithm, block_bits: int) -> bytes:
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes) or len(iv) * 8 != block_bits:
        raise CmsError("the encryption parameters carry no valid IV", code="not-cms")
    return iv


def _decrypt_content(
    name: str,
    content_key: bytes,
    iv: bytes,
    reader: ber.Reader,
    content: ber.Header,
    output: _Plaintext,
) -> bool:
    """Decrypt the content into ``output``; False when the key or the padding was wrong."""
    cipher: CipherAlgorithm = (
        TripleDES(content_key) if name == "tripledes_3key" else algorithms.AES(content_key)
    )
    decryptor = Cipher(cipher, modes.CBC(iv)).decryptor()
    total = 0
    for chunk in reader.content_chunks(content):
        total += len(chunk)
        output.feed(decryptor.update(chunk))
    if total % len(iv):  # the IV is one block long
        return False
    output.feed(decryptor.finalize())
    return output.finish()


class _Plaintext:
    """Decrypted blocks -> PKCS#7 unpadding -> gunzip when the plaintext is gzip -> the sink.

    The padding is known to be right only at the end, so a gzip failure or an oversize output
    on the way is remembered (``problem``) and reported only if the padding then checks out:
    the same answer, in the same order, as decrypting everything first.
    """

    def __init__(self, sink: PlaintextSink, block_bits: int, *, gunzip: bool, max_size: int):
        self.sink = sink
        self.unpadder = sym_padding.PKCS7(block_bits).unpadder()
        self.gunzip = gunzip
        self.max_size = max_size
        self.head = b""
        self.mode: str | None = None  # "plain" or "gzip", known after two bytes
        self.inflater = zlib.decompressobj(wbits=31)
        self.after_member = b""  # bytes after a member's end, too few yet to tell what follows
        self.padding = False  # zero bytes followed the last member: only zeros may follow
        self.produced = 0
        self.problem: CmsError | None = None

    def feed(self, padded: bytes) -> None:
        self._out(self.unpadder.update(padded), final=False)

    def finish(self) -> bool:
        try:
            rest = self.unpadder.finalize()
        except ValueError:
            return False
        self._out(rest, final=True)
        if self.mode == "gzip" and self.problem is None and not self.inflater.eof:
            # zlib reports no error for a stream cut short: without this check a truncated
            # gzip member would pass as a shorter plaintext
            self.problem = CmsError("the decrypted content looks gzipped but is not valid gzip")
        if self.mode == "gzip" and self.problem is None and self.after_member:
            self.problem = CmsError(NOT_ANOTHER_MEMBER)
        return True

    def _out(self, data: bytes, *, final: bool) -> None:
        if self.mode is None:
            self.head += data
            if len(self.head) < len(GZIP_MAGIC) and not final:
                return
            self.mode = "gzip" if self.gunzip and self.head.startswith(GZIP_MAGIC) else "plain"
            data, self.head = self.head, b""
        if self.mode == "plain":
            if data:
                self.sink.write(data)
            return
        self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        # A gzip stream may hold several members, one after the other (gzip and Python's gzip
        # read them all): after the end of one, another must begin, or zero padding that ends
        # the stream (gzip and Python's gzip ignore it); anything else is refused.
        while data and self.problem is None:
            if self.inflater.eof:
                data = self.after_member + data
                if self.padding or data.startswith(b"\0"):
                    self.after_member = b""
                    self.padding = all_zero(data)
                    if not self.padding:
                        self.problem = CmsError(NOT_ANOTHER_MEMBER)
                    return
                if len(data) < len(GZIP_MAGIC):
                    self.after_member = data
                    return
                self.after_member = b""
                if not data.startswith(GZIP_MAGIC):
                    self.problem = CmsError(NOT_ANOTHER_MEMBER)
                    return
                self.inflater = zlib.decompressobj(wbits=31)
            try:
                out = self.inflater.decompress(data, CHUNK)
            except zlib.error:
                self.problem = CmsError("the decrypted content looks gzipped but is not valid gzip")
                return
            self.produced += len(out)
            if self.produced > self.max_size:
                self.problem = CmsError(
                    f"the gunzipped content exceeds {self.max_size} bytes", code="too-large"
                )
                return
            if out:
                self.sink.write(out)
            data = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail
