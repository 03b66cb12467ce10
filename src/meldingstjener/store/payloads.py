"""The payload store: message bodies as files, written in streaming fashion and made durable.

A 35 MB payload is never held whole in memory here: ``put`` copies from a stream in 1 MiB chunks,
hashing as it goes. A file is written to a temporary name, fsynced, renamed into place and its
directory fsynced, so a reference stored in the database always points at a complete file.
Orphans (a file written, then a crash before the database commit) are harmless and can be swept.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PayloadRef:
    key: str
    size: int
    sha256: str


class PayloadNotFound(FileNotFoundError):
    """The payload was purged or never stored."""


class PayloadStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key.isalnum() or len(key) < 8:
            raise ValueError(f"not a payload key: {key!r}")
        return self.root / key[:2] / key

    def put(self, source: bytes | BinaryIO | Iterable[bytes]) -> PayloadRef:
        """Store ``source`` durably and return its reference."""
        key = secrets.token_hex(16)
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{key}.tmp")
        digest = hashlib.sha256()
        size = 0
        with temporary.open("wb") as handle:
            for chunk in _chunks(source):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        _fsync_dir(final.parent)
        return PayloadRef(key=key, size=size, sha256=digest.hexdigest())

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise PayloadNotFound(f"payload {key} is not in the store (purged?)") from None

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def path(self, key: str) -> Path:
        """The file's path, for zero-copy senders (sendfile) and streaming readers."""
        return self._path(key)

    def delete(self, key: str) -> bool:
        """Purge a payload (misaddressed messages). True when a file was removed."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self._path(key).parent)
        return True


def _chunks(source: bytes | BinaryIO | Iterable[bytes]) -> Iterable[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])
        return
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        reader: BinaryIO = source  # type: ignore[assignment]
        while chunk := reader.read(CHUNK):
            yield chunk
        return
    yield from source


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
