"""How the bytes of a message move through the engine: through files, in pieces.

A 35 MB fagmelding must not be held whole several times over. Received: a large payload part
is decrypted (and gunzipped) straight into a spool in the payload store, which the validator then
parses from the file and which becomes the stored payload by a rename. Sent: the payload is
encrypted from its file into a temporary spool, the envelope is signed over that ciphertext, and
the MIME message is written piece by piece into another spool, which becomes the stored wire
form. (A payload of up to ``IN_MEMORY`` bytes, nearly every message, is encrypted in memory: no
temporary file on the hot path.)

What must be in memory at once is what the libraries need whole: the XML tree while the
fagmelding is validated, and the ciphertext while the envelope signature is made or checked
(the signature code digests attachments from bytes; that is not the peak, validation is).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from cryptography import x509
from lxml import etree

from meldingstjener.ebxml import envelope_bytes
from meldingstjener.ebxml.mime import Attachment, TransferEncoding, write_package
from meldingstjener.engine.context import EngineContext
from meldingstjener.security import cms_enveloped
from meldingstjener.security.errors import SecurityError
from meldingstjener.security.xmldsig import sign_ebxml_envelope
from meldingstjener.store.payloads import CHUNK, PayloadSource, Spool, source_size

PAYLOAD_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data"
IN_MEMORY = 1024 * 1024  # payloads up to this size are sealed in memory


def decrypt_payload(ctx: EngineContext, part: Attachment) -> bytes | Spool:
    """The plaintext of a received payload part: bytes for a small part held in memory (as
    before, nothing to gain from a file), else a spool of the payload store written in pieces.

    A gzipped payload may inflate to no more than the business message may be
    (``formats.max_xml_bytes``, which the XML parser holds it to next): a small part must not
    become hundreds of MiB in memory before being refused (code ``too-large``).

    Raises :class:`~meldingstjener.security.errors.SecurityError`; a spool is then gone.
    """
    keys, allow_3des, max_size = (
        ctx.keys.decryption_candidates,
        ctx.policy.allow_3des,
        ctx.policy.max_xml_bytes,
    )
    if not part.in_file and part.size <= IN_MEMORY:
        return cms_enveloped.decrypt(part.data, keys, allow_3des=allow_3des, max_size=max_size)
    spool = ctx.store.payloads.spool()
    try:
        cms_enveloped.decrypt_to(part.open, spool, keys, allow_3des=allow_3des, max_size=max_size)
    except BaseException:
        spool.discard()
        raise
    return spool


def wrapped_keys(ctx: EngineContext, part: Attachment) -> frozenset[str]:
    """The names of the content keys of a received payload part that are wrapped for our keys
    (see :func:`~meldingstjener.security.cms_enveloped.wrapped_keys`): none for a part that is
    not readable CMS, whose decryption then says what is wrong with it."""
    try:
        return cms_enveloped.wrapped_keys(part.open, ctx.keys.decryption_candidates)
    except SecurityError:
        return frozenset()


def read_all(payload: PayloadSource) -> bytes:
    """A payload as bytes (for the rare caller that needs it whole)."""
    if isinstance(payload, bytes):
        return payload
    with open(payload, "rb") as handle:
        return handle.read()


def seal(
    ctx: EngineContext,
    payload: PayloadSource,
    recipient: x509.Certificate,
    envelope: etree._Element,
    content_id: str,
    *,
    transfer_encoding: TransferEncoding,
    gzip: bool = False,
) -> tuple[Spool, str]:
    """Encrypt ``payload`` to ``recipient``, sign ``envelope`` over the ciphertext and write
    the MIME message: (the wire form in a spool, its Content-Type).

    The payload is gzipped before it is encrypted when ``gzip`` (the agreed binding's package
    says so) or ``security.compress_payloads`` is set.

    Up to ``IN_MEMORY`` bytes this happens in memory (the common small message pays for no
    temporary file); above, the ciphertext goes through a temporary spool.
    """
    compress = gzip or ctx.policy.compress_payloads
    if source_size(payload) <= IN_MEMORY:
        plaintext = read_all(payload)
        ciphertext = cms_enveloped.encrypt(plaintext, recipient, compress=compress)
        part = Attachment(content_id, PAYLOAD_CONTENT_TYPE, ciphertext)
        return _signed_package(ctx, envelope, part, transfer_encoding)
    with _encrypted(ctx, payload, recipient, compress) as encrypted:
        part = Attachment.from_file(content_id, PAYLOAD_CONTENT_TYPE, encrypted)
        return _signed_package(ctx, envelope, part, transfer_encoding)


def _signed_package(
    ctx: EngineContext,
    envelope: etree._Element,
    part: Attachment,
    transfer_encoding: TransferEncoding,
) -> tuple[Spool, str]:
    ciphertext = part.data  # the signature digests bytes; a part in a file is read for it
    sign_ebxml_envelope(
        envelope, {part.content_id: ciphertext}, ctx.keys.signing_key, ctx.keys.signing_certificate
    )
    del ciphertext  # gone before the package is written (which streams a part in a file)
    wire = ctx.store.payloads.spool()
    try:
        sink = _Batched(wire)
        content_type = write_package(
            sink, envelope_bytes(envelope), [part], transfer_encoding=transfer_encoding
        )
        sink.flush()
    except BaseException:
        wire.discard()
        raise
    return wire, content_type


@contextmanager
def _encrypted(
    ctx: EngineContext, payload: PayloadSource, recipient: x509.Certificate, compress: bool
) -> Iterator[Spool]:
    """The EnvelopedData of ``payload`` (gzipped first when ``compress``) in a temporary spool
    (gone when the block ends)."""
    with ctx.store.payloads.spool() as encrypted:
        if compress:
            with ctx.store.payloads.spool() as compressed:
                with _reader(payload) as source:
                    _gzip(source, compressed)
                with compressed.open() as source:
                    cms_enveloped.encrypt_to(source, compressed.size, recipient, encrypted)
        else:
            with _reader(payload) as source:
                cms_enveloped.encrypt_to(source, source_size(payload), recipient, encrypted)
        yield encrypted


def _reader(payload: PayloadSource) -> BinaryIO:
    if isinstance(payload, bytes | bytearray | memoryview):
        return io.BytesIO(payload)
    return open(payload, "rb")


def _gzip(source: BinaryIO, sink: Spool) -> None:
    # the same stream as cms_common.gzip_bytes, made in pieces
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    while chunk := source.read(CHUNK):
        sink.write(compressor.compress(chunk))
    sink.write(compressor.flush())


class _Batched:
    """Collects the many small writes of MIME headers and base64 lines into ~1 MiB writes."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.pending: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)
        if self.size >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.spool.write(b"".join(self.pending))
            self.pending, self.size = [], 0
