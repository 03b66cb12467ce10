"""How the bytes of a message move through the engine: through files, in pieces.

A 35 MB fagmelding must not be held whole several times over. Received: the payload part is
decrypted (and gunzipped) straight into a spool in the payload store, which the validator then
parses from the file and which becomes the stored payload by a rename. Sent: the payload is
encrypted from its file into a spool, the envelope is signed over that ciphertext, and the MIME
message is written piece by piece into another spool, which becomes the stored wire form.

What must be in memory at once is what the libraries need whole: the XML tree while the
fagmelding is validated, and the ciphertext while xmlsec signs or verifies the envelope (it
reads attachments from bytes).
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
from meldingstjener.security.xmldsig import sign_ebxml_envelope
from meldingstjener.store.payloads import CHUNK, PayloadSource, Spool, source_size

PAYLOAD_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data"


def decrypt_payload(ctx: EngineContext, part: Attachment) -> Spool:
    """The plaintext of a received payload part, in a spool of the payload store.

    Raises :class:`~meldingstjener.security.errors.SecurityError`; the spool is then gone.
    """
    spool = ctx.store.payloads.spool()
    try:
        cms_enveloped.decrypt_to(
            part.open, spool, ctx.keys.decryption_candidates, allow_3des=ctx.policy.allow_3des
        )
    except BaseException:
        spool.discard()
        raise
    return spool


def seal(
    ctx: EngineContext,
    payload: PayloadSource,
    recipient: x509.Certificate,
    envelope: etree._Element,
    content_id: str,
    *,
    transfer_encoding: TransferEncoding,
) -> tuple[Spool, str]:
    """Encrypt ``payload`` to ``recipient``, sign ``envelope`` over the ciphertext and write
    the MIME message: (the wire form in a spool, its Content-Type)."""
    with _encrypted(ctx, payload, recipient) as encrypted:
        ciphertext = encrypted.read_bytes()  # xmlsec digests attachments from bytes
        sign_ebxml_envelope(
            envelope, {content_id: ciphertext}, ctx.keys.signing_key, ctx.keys.signing_certificate
        )
        del ciphertext
        wire = ctx.store.payloads.spool()
        try:
            sink = _Batched(wire)
            content_type = write_package(
                sink,
                envelope_bytes(envelope),
                [Attachment.from_file(content_id, PAYLOAD_CONTENT_TYPE, encrypted)],
                transfer_encoding=transfer_encoding,
            )
            sink.flush()
        except BaseException:
            wire.discard()
            raise
    return wire, content_type


@contextmanager
def _encrypted(
    ctx: EngineContext, payload: PayloadSource, recipient: x509.Certificate
) -> Iterator[Spool]:
    """The EnvelopedData of ``payload`` in a temporary spool (gone when the block ends)."""
    with ctx.store.payloads.spool() as encrypted:
        if ctx.policy.compress_payloads:
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
