"""Reading a MIME body that lives in a file, without holding it in memory.

A large received message is spooled to a file (see ``store.payloads.Spool``). The MIME reader in
:mod:`.mime` finds parts with ``find``/``startswith``/slices on its input; :class:`FileSource`
offers those on a file with ``pread``, so the same reader splits a file without loading it (an
mmap would do too, but every page it touches counts in the process's resident memory).

Payload parts of a file-backed message stay in the file as :class:`FilePart` ranges and are
decoded as they are read. :class:`Base64Decoder` decodes base64 in pieces exactly as one
``binascii.a2b_base64`` call over the whole text would, including its forgiving rules (characters
outside the alphabet are skipped; a complete padding ends the data).
"""

from __future__ import annotations

import binascii
import io
import os
import weakref
from collections.abc import Iterator
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
_FIRST_LOOK = 8 * 1024  # most searches end in the first few kB (header lines, boundaries)

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_ALPHABET + b"=")))


class ByteSource(Protocol):
    """What the MIME reader needs of its input: ``bytes`` has it, and so has :class:`FileSource`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> bytes: ...

    def find(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...

    def startswith(self, prefix: bytes, start: int = ..., /) -> bool: ...


class FileSource:
    """Read-only random access to a file, with the few ``bytes`` methods the reader uses.

    Reads use ``pread`` on one descriptor, so the parts of a message can share it from any
    thread; it is closed when the last user lets go of it (the file may be renamed or unlinked
    meanwhile: an open descriptor still reads it).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._closer = weakref.finalize(self, os.close, self._fd)

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        length = max(0, min(length, self._size - offset))
        data = os.pread(self._fd, length, offset)
        while len(data) < length:  # pread may return less than asked for
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, step = index.indices(self._size)
        if step != 1:
            raise ValueError("only contiguous slices of a file are supported")
        return self.read(start, stop - start) if stop > start else b""

    def find(self, sub: bytes, start: int = 0, end: int | None = None, /) -> int:
        start, end, _ = slice(start, end).indices(self._size)
        overlap = max(len(sub) - 1, 0)
        pos, block = start, _FIRST_LOOK
        while pos < end:
            # each read repeats the last len(sub) - 1 bytes of the one before: a match may
            # straddle two reads
            wanted = min(block + overlap, end - pos)
            data = self.read(pos, wanted)
            hit = data.find(sub)
            if hit >= 0:
                return pos + hit
            if pos + len(data) >= end or len(data) < wanted:
                # a short read: the file shrank since it was opened. Searching on would read
                # the same few bytes again and again, for ever.
                return -1
            pos += len(data) - overlap
            block = min(block * 4, CHUNK)
        return -1

    def startswith(self, prefix: bytes, start: int = 0, /) -> bool:
        return self.read(start, len(prefix)) == prefix


class Base64Decoder:
    """Incremental base64 decoding with exactly the result of one non-strict ``a2b_base64``.

    Feed the encoded text in pieces of any size; call :meth:`finish` at the end. Raises
    :class:`binascii.Error` where ``a2b_base64`` would (data that does not end on a whole group).
    """

    def __init__(self) -> None:
        self._pending = b""  # alphabet characters of an unfinished group of four (0-3)
        self._pads = 0  # '=' counted towards a padding, as the C decoder counts them
        self.done = False  # a complete padding was seen: everything after it is ignored
        self.produced = 0

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        clean = chunk.translate(None, _NOT_BASE64)
        if b"=" not in clean:
            if clean:
                self._pads = 0
            return self._whole_groups(self._pending + clean)
        pieces: list[bytes] = []
        position = len(self._pending) % 4
        segments = clean.split(b"=")
        for index, segment in enumerate(segments):
            pieces.append(segment)
            position = (position + len(segment)) % 4
            if segment:
                self._pads = 0  # only '=' with nothing but skipped characters between count
            if index == len(segments) - 1:
                break  # the text after the last '='
            if position >= 2:
                self._pads += 1
                if position + self._pads >= 4:
                    self.done = True
                    break
        text = self._pending + b"".join(pieces)
        if not self.done:
            return self._whole_groups(text)
        # a complete padding: decode what is there, the open group padded as it was sent
        self._pending = b""
        cut = len(text) - len(text) % 4
        tail = text[cut:]
        return binascii.a2b_base64(text[:cut]) + (
            binascii.a2b_base64(tail + b"=" * (4 - len(tail))) if tail else b""
        )

    def _whole_groups(self, text: bytes) -> bytes:
        cut = len(text) - len(text) % 4
        self._pending = text[cut:]
        out = binascii.a2b_base64(text[:cut]) if cut else b""
        self.produced += len(out)
        return out

    def finish(self) -> None:
        if not self._pending or self.done:
            return
        if len(self._pending) == 1:  # the decoder's own words, so both paths read the same
            raise binascii.Error(
                "Invalid base64-encoded string: number of data characters "
                f"({self.produced // 3 * 4 + 1}) cannot be 1 more than a multiple of 4"
            )
        raise binascii.Error("Incorrect padding")


class FilePart:
    """A MIME part's body left in the file: ``start``..``end`` of ``source``, in a transfer
    encoding that is decoded as it is read (``binary`` for 7bit/8bit/binary, or ``base64``)."""

    def __init__(self, source: FileSource, start: int, end: int, encoding: str, size: int) -> None:
        self.source = source
        self.start = start
        self.end = end
        self.encoding = encoding
        self.size = size  # decoded size

    def chunks(self) -> Iterator[bytes]:
        """The decoded bytes in pieces of about 1 MiB."""
        decoder = Base64Decoder() if self.encoding == "base64" else None
        pos = self.start
        while pos < self.end:
            raw = self.source.read(pos, min(CHUNK, self.end - pos))
            if not raw:
                raise EOFError(f"{self.source.path} is shorter than when it was read")
            pos += len(raw)
            data = raw if decoder is None else decoder.feed(raw)
            if data:
                yield data
        if decoder is not None:
            decoder.finish()

    def open(self) -> BinaryIO:
        return ChunkReader(self.chunks())  # type: ignore[return-value]

    def read_all(self) -> bytes:
        """The decoded part as one bytes object (its size, without a second full copy)."""
        if self.encoding != "base64":
            return self.source.read(self.start, self.end - self.start)
        out = io.BytesIO()
        for piece in self.chunks():
            out.write(piece)
        return out.getvalue()  # hands over BytesIO's buffer (trimmed in place), not a copy


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte strings."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._offset >= len(self._buffer):
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buffer, self._offset = nxt, 0
        count = min(len(buffer), len(self._buffer) - self._offset)
        buffer[:count] = self._buffer[self._offset : self._offset + count]
        self._offset += count
        return count

    def read(self, size: int = -1) -> bytes:
        # whole pieces when they fit: no copy through a preallocated buffer
        if self._offset >= len(self._buffer):
            nxt = next(self._chunks, None)
            if nxt is None:
                return b""
            self._buffer, self._offset = nxt, 0
        if size < 0:
            rest = [self._buffer[self._offset :], *self._chunks]
            self._buffer, self._offset = b"", 0
            return b"".join(rest)
        end = min(len(self._buffer), self._offset + size)
        whole = self._offset == 0 and end == len(self._buffer)
        piece = self._buffer if whole else self._buffer[self._offset : end]
        self._offset = end
        return piece

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def validate_base64_range(source: FileSource, start: int, end: int) -> int:
    """Decode ``start``..``end`` of ``source`` without keeping the result; return its size.

    Raises :class:`binascii.Error` for text ``a2b_base64`` refuses.
    """
    decoder = Base64Decoder()
    size = 0
    pos = start
    while pos < end and not decoder.done:
        raw = source.read(pos, min(CHUNK, end - pos))
        if not raw:
            break
        pos += len(raw)
        size += len(decoder.feed(raw))
    decoder.finish()
    return size
