"""The payload store: message bodies as files, written in streaming fashion and made durable.

A 35 MB payload is never held whole in memory here: ``put`` copies from a stream in 1 MiB chunks,
hashing as it goes. A file is written to a temporary name, fsynced, renamed into place and its
directory fsynced, so a reference stored in the database always points at a complete file.
Orphans (a file written, then a crash before the database commit) are swept by
:mod:`meldingstjener.store.orphans`.

A :class:`Spool` is a payload written piece by piece *before* it is known whether it will be
kept: a received body as it streams in, a decrypted plaintext, a packaged wire form. It lives
under its final directory with a temporary name, so keeping it (``put(spool)``) is a rename, not
a copy, and dropping it removes the file. A spool that is neither kept nor discarded removes its
file when it is garbage-collected, so an exception on the way never leaves a temporary behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

CHUNK = 1024 * 1024
# The files hold decrypted business messages (a patient's health information): the server's
# user alone reads them, whatever the umask (it only takes rights away). Made so, not changed
# afterwards: a file or directory an earlier version made keeps its mode (README).
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700

# What the engine passes around as a business message or wire form: bytes in memory, or a file
# (a path, or a Spool, which is a path too).
PayloadSource = bytes | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class PayloadRef:
    key: str
    size: int
    sha256: str


class PayloadNotFound(FileNotFoundError):
    """The payload was purged or never stored."""


class Spool(os.PathLike[str]):
    """A payload file being written; becomes a stored payload by :meth:`PayloadStore.put`.

    Writes are unbuffered, so the file (``os.fspath(spool)``) always holds everything written:
    readers may open it at any time. The size and SHA-256 are kept as it is written.
    """

    def __init__(self, store: PayloadStore, key: str, final: Path) -> None:
        self.store = store
        self.key = key
        self._final = final
        self._temporary = final.with_name(f".{key}.tmp")
        make_durable_dir(final.parent)
        self._file = open(  # noqa: SIM115 (closed on commit)
            self._temporary, "xb", buffering=0, opener=private_file
        )
        self._digest = hashlib.sha256()
        self.size = 0
        self._ref: PayloadRef | None = None
        self._finalizer = weakref.finalize(self, _drop, self._file, self._temporary)

    def __fspath__(self) -> str:
        return str(self._final if self._ref is not None else self._temporary)

    def __repr__(self) -> str:
        return f"Spool({self.key!r}, {self.size} bytes, {'kept' if self._ref else 'open'})"

    @property
    def committed(self) -> bool:
        return self._ref is not None

    @property
    def sha256(self) -> str:
        """The SHA-256 (hex) of what was written so far."""
        return self._digest.hexdigest()

    @property
    def ref(self) -> PayloadRef | None:
        """The stored payload's reference once kept."""
        return self._ref

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._ref is not None or self._file.closed:
            raise ValueError("the spool is closed")
        view = memoryview(data)
        written = 0
        while written < len(view):  # a raw write may take less than it was given
            written += self._file.write(view[written:]) or 0
        self._digest.update(view)
        self.size += written
        return written

    def write_from(self, source: BinaryIO) -> None:
        """Append everything ``source`` still has, in chunks."""
        while chunk := source.read(CHUNK):
            self.write(chunk)

    def reset(self) -> None:
        """Forget everything written so far (a decryption attempt with the wrong key)."""
        self._file.seek(0)
        self._file.truncate()
        self._digest = hashlib.sha256()
        self.size = 0

    def open(self) -> BinaryIO:
        """A new reader of what was written (also after the spool was kept)."""
        return open(os.fspath(self), "rb")

    def read_bytes(self) -> bytes:
        """Everything written, as one bytes object (one allocation of exactly its size)."""
        with self.open() as handle:
            return handle.read()

    def commit(self) -> PayloadRef:
        """Make the file durable under its final name and return its reference."""
        if self._ref is not None:
            raise ValueError("the spool was already kept")
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temporary, self._final)
        self._finalizer.detach()
        _fsync_dir(self._final.parent)
        self._ref = PayloadRef(key=self.key, size=self.size, sha256=self._digest.hexdigest())
        return self._ref

    def discard(self) -> None:
        """Remove the temporary file (nothing happens once the spool was kept)."""
        if self._ref is None:
            self._finalizer()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.discard()


def private_file(path: str, flags: int) -> int:
    """``open``'s opener: a new file with ``FILE_MODE``, not the umask's (often 0644). For
    every file holding a message's content: the payloads', and the mail quarantine's."""
    return os.open(path, flags, FILE_MODE)


def _drop(handle: io.FileIO, path: Path) -> None:
    handle.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file found in the store: a kept payload (``key``), or a spool never kept."""

    path: Path
    size: int
    modified: float  # seconds since the epoch, as the file system keeps it
    key: str | None  # None: an unfinished spool's temporary file

    @property
    def temporary(self) -> bool:
        return self.key is None


class PayloadStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _is_key(key):
            raise ValueError(f"not a payload key: {key!r}")
        return self.root / key[:2] / key

    def spool(self) -> Spool:
        """A new payload to write piece by piece; keep it with :meth:`put`, else discard it."""
        key = secrets.token_hex(16)
        return Spool(self, key, self._path(key))

    def put(self, source: bytes | BinaryIO | Iterable[bytes] | os.PathLike[str]) -> PayloadRef:
        """Store ``source`` durably and return its reference.

        A :class:`Spool` of this store that was not kept yet is kept as it is (a rename); any
        other file or stream is copied in chunks.
        """
        if isinstance(source, Spool) and source.store is self and not source.committed:
            return source.commit()
        with self.spool() as spool:
            if isinstance(source, os.PathLike):
                with open(source, "rb") as handle:
                    spool.write_from(handle)
            else:
                for chunk in _chunks(source):
                    spool.write(chunk)
            return spool.commit()

    def put_all(
        self, *sources: bytes | BinaryIO | Iterable[bytes] | os.PathLike[str]
    ) -> list[PayloadRef]:
        """:meth:`put` each of ``sources``: all or none. When one cannot be stored (a full
        disk), those stored before it are removed again: nothing refers to them yet, and one
        may be a decrypted business message, which must not wait on disk for the orphan sweep
        (a day), one more copy for each resend of its sender."""
        stored: list[PayloadRef] = []
        try:
            for source in sources:
                stored.append(self.put(source))
        except BaseException:
            self.discard(*stored)
            raise
        return stored

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

    def discard(self, *refs: PayloadRef) -> None:
        """Remove files stored for a unit of work that did not commit: a unique key refused it,
        or it was given up before its commit (their keys are random: nothing else refers to
        them). Never after a commit that failed otherwise: it may have gone through after all."""
        for ref in refs:
            self.delete(ref.key)

    def delete(self, key: str) -> bool:
        """Purge a payload (misaddressed messages). True when a file was removed."""
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self._path(key).parent)
        return True

    def files(
        self, *, modified_before: float, modified_since: float | None = None
    ) -> Iterator[StoredFile]:
        """Kept payloads and spool temporaries last written in ``[modified_since,
        modified_before)``, directory by directory (nothing else in the tree is touched)."""
        for directory in sorted(self.root.iterdir()):
            if len(directory.name) != 2 or not directory.is_dir():
                continue
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    temporary = name.startswith(".") and name.endswith(".tmp")
                    key = name[1:-4] if temporary else name
                    if not _is_key(key) or not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                    if stat.st_mtime >= modified_before or (
                        modified_since is not None and stat.st_mtime < modified_since
                    ):
                        continue
                    yield StoredFile(
                        Path(entry.path), stat.st_size, stat.st_mtime, None if temporary else key
                    )

    def remove(self, found: StoredFile) -> bool:
        """Remove a file :meth:`files` found. True when it was there to remove."""
        if found.key is not None:
            return self.delete(found.key)
        try:
            found.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _is_key(name: str) -> bool:
    return name.isalnum() and len(name) >= 8


def source_size(source: PayloadSource) -> int:
    """The size in bytes of a payload in memory or in a file."""
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    if isinstance(source, Spool):
        return source.size
    return os.stat(source).st_size


def source_sha256(source: PayloadSource) -> str:
    """The SHA-256 (hex) of a payload in memory or in a file, as the store records it."""
    if isinstance(source, Spool):
        return source.sha256
    digest = hashlib.sha256()
    if isinstance(source, bytes | bytearray | memoryview):
        digest.update(source)
    else:
        with open(source, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


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


def make_durable_dir(directory: Path) -> None:
    """Create ``directory`` if needed, with its entry in the parent made durable: the files'
    own fsyncs do not cover the new folder's name, which a power cut could otherwise lose."""
    if directory.is_dir():
        return
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    _fsync_dir(directory.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
