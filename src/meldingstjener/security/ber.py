"""Just enough BER/DER to walk a CMS structure from a stream and write one in pieces.

asn1crypto reads a structure from bytes held whole, and copies the content it parses. For an
EnvelopedData of 35 MB that means the ciphertext two or three times in memory. Here the small
elements around the content (recipients, algorithm) are read one TLV at a time and handed to
asn1crypto, while the encrypted content is streamed in pieces: primitive (DER), or constructed
of OCTET STRING segments with definite or indefinite lengths (BER, as ``openssl cms`` writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from meldingstjener.security.cms_common import CmsError

CHUNK = 1024 * 1024
MAX_ELEMENT = 16 * 1024 * 1024  # recipients, algorithms: a few kB; anything above is not CMS
MAX_DEPTH = 32  # nesting of indefinite lengths and of constructed OCTET STRING segments
# Segments of a constructed OCTET STRING: encoders write them 1000 bytes or more each; millions
# of empty ones (legal BER, two bytes each) cost a second of CPU per 2 MB and carry nothing.
SEGMENT_BYTES = 512  # at most one segment per this many content bytes ...
SEGMENT_ALLOWANCE = 1024  # ... plus these

# tags (the first identifier octet)
SEQUENCE = 0x30
SET = 0x31
OCTET_STRING = 0x04
OCTET_STRING_CONSTRUCTED = 0x24
CONTEXT_0_PRIMITIVE = 0x80
CONTEXT_0_CONSTRUCTED = 0xA0


def _not_cms(why: str) -> CmsError:
    return CmsError(f"the input is not a readable CMS structure ({why})", code="not-cms")


@dataclass(frozen=True, slots=True)
class Header:
    """An element's identifier and length octets. ``length`` is None for indefinite length."""

    tag: int
    length: int | None
    raw: bytes

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    @property
    def end_of_contents(self) -> bool:
        return self.tag == 0 and self.length == 0


class Reader:
    """Reads TLVs from a binary stream and counts the bytes it consumed."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.consumed = 0

    def _exactly(self, count: int) -> bytes:
        data = self.stream.read(count)
        while len(data) < count:
            more = self.stream.read(count - len(data))
            if not more:
                raise _not_cms("it ends too early")
            data += more
        self.consumed += count
        return data

    def header(self) -> Header:
        first = self._exactly(1)
        if first[0] & 0x1F == 0x1F:
            raise _not_cms("high tag numbers do not occur in CMS")
        size_octet = self._exactly(1)
        size = size_octet[0]
        if size < 0x80:
            return Header(first[0], size, first + size_octet)
        if size == 0x80:
            if not first[0] & 0x20:
                raise _not_cms("an indefinite length on a primitive element")
            return Header(first[0], None, first + size_octet)
        count = size & 0x7F
        if count > 8:
            raise _not_cms("an implausible length")
        octets = self._exactly(count)
        return Header(first[0], int.from_bytes(octets, "big"), first + size_octet + octets)

    def element(self, header: Header | None = None, depth: int = 0) -> bytes:
        """One whole small element (header included) as bytes, for asn1crypto to read."""
        header = header or self.header()
        if header.length is not None:
            if header.length > MAX_ELEMENT:
                raise _not_cms("an implausibly large element")
            return header.raw + self._exactly(header.length)
        # each indefinite length inside another costs a level of recursion here: a few bytes of
        # "30 80" repeated must be refused as not CMS, not end in a RecursionError
        if depth >= MAX_DEPTH:
            raise _not_cms("indefinite lengths nested too deeply")
        # one growing buffer: a list of many tiny bytes objects costs many times their size
        whole = bytearray(header.raw)
        while True:
            inner = self.header()
            if inner.end_of_contents:
                whole += inner.raw
                return bytes(whole)
            whole += self.element(inner, depth + 1)
            if len(whole) > MAX_ELEMENT:
                raise _not_cms("an implausibly large element")

    def content_chunks(self, header: Header) -> Iterator[bytes]:
        """The octets of an OCTET STRING (or [0] IMPLICIT one) in pieces, primitive or not.

        A constructed one may have no more than ``SEGMENT_ALLOWANCE`` segments plus one per
        ``SEGMENT_BYTES`` of content so far."""
        counts = [0, 0]  # segments, content bytes
        for piece in self._segments(header, 0, counts):
            counts[1] += len(piece)
            yield piece

    def _segments(self, header: Header, depth: int, counts: list[int]) -> Iterator[bytes]:
        if not header.constructed:
            assert header.length is not None  # primitive elements have definite lengths
            left = header.length
            while left:
                piece = self._exactly(min(CHUNK, left))
                left -= len(piece)
                yield piece
            return
        if depth >= MAX_DEPTH:
            raise _not_cms("octet string segments nested too deeply")
        end = None if header.length is None else self.consumed + header.length
        while end is None or self.consumed < end:
            inner = self.header()
            if inner.end_of_contents and end is None:
                return
            if inner.tag not in (OCTET_STRING, OCTET_STRING_CONSTRUCTED):
                raise _not_cms("a segment of the content is not an OCTET STRING")
            counts[0] += 1
            if counts[0] > SEGMENT_ALLOWANCE + counts[1] // SEGMENT_BYTES:
                raise _not_cms("the content is split into implausibly many segments")
            yield from self._segments(inner, depth + 1, counts)
        if self.consumed != end:
            raise _not_cms("a segment runs past the end of the content")

    def next_in(self, parent: Header, started: int) -> Header | None:
        """The next child of a constructed element whose contents began at ``started``, or
        None after its last child (definite length: counted; indefinite: end-of-contents)."""
        if parent.length is not None:
            if self.consumed > started + parent.length:
                raise _not_cms("an element runs past the end of its parent")
            if self.consumed == started + parent.length:
                return None
            return self.header()
        child = self.header()
        return None if child.end_of_contents else child


def der_header(tag: int, length: int) -> bytes:
    """Identifier and definite length octets (DER: the shortest form)."""
    if length < 0x80:
        return bytes((tag, length))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets
