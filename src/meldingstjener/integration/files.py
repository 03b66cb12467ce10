"""File steps for the folder integration that hold in folders an EPJ writes in.

The outbox, the inbox and ``sent/``/``failed/`` (by default inside the outbox) are the EPJ's:
any name in them may be a symbolic link, a pipe, or a file renamed over another at any moment.
So each step here is made relative to a folder opened once without following a link
(:func:`open_folder`); a file is created only where no name is (``O_EXCL``) and never through a
link (``O_NOFOLLOW``), under a name nobody can guess. A rename is made durable by syncing its
folder (POSIX needs the folder itself synced).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

COPY_PIECE = 1024 * 1024
FILE_MODE = 0o640  # files written for the EPJ: read by its group, by nobody else
MAX_NAME_BYTES = 255  # the longest file name most filesystems take


class UnsafeFolder(OSError):
    """A folder the integration would use is a symbolic link (or not the server's own): it
    is not used, since a link may point anywhere the server can read or write."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(errno.ELOOP, reason, str(path))
        self.path = path
        self.reason = reason


def open_folder(path: Path) -> int:
    """A descriptor of the folder ``path`` (the caller closes it), opened without following a
    symbolic link in its last part; :class:`UnsafeFolder` when that is a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except OSError as exc:
        # Linux answers a link opened with O_DIRECTORY | O_NOFOLLOW with ENOTDIR, not ELOOP
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            raise UnsafeFolder(path, "is a symbolic link") from None
        raise


def fsync_dir(directory: Path | int) -> None:
    """Make a rename in ``directory`` (a path or an open folder) durable."""
    if isinstance(directory, int):
        os.fsync(directory)
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temporary(
    folder: int, name: str, data: bytes | BinaryIO, *, mode: int = FILE_MODE
) -> str:
    """Write ``data`` for ``name`` in ``folder`` under a new temporary name beside it
    (``.<name>.<random>.tmp``, on disk when this returns) and return that name; :func:`publish`
    puts it in place, in a moment. ``data`` is bytes or an open file, copied in pieces.

    The name cannot be guessed, and the file is created only where nothing is and never
    through a link: a link the EPJ put at a temporary name is neither followed nor its target
    written. The file has ``mode`` exactly, whatever the process's umask."""
    temporary = temporary_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, mode, dir_fd=folder)
    try:
        os.fchmod(fd, mode)
        with open(fd, "wb", closefd=False) as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                shutil.copyfileobj(data, handle, COPY_PIECE)
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
    finally:
        os.close(fd)
    return temporary


def temporary_name(name: str) -> str:
    """A new name for a file written for ``name``: hidden (an EPJ passes over names that start
    with ``.``) and random (nobody can put a link there first)."""
    token = secrets.token_hex(8)
    temporary = f".{name}.{token}.tmp"
    if len(os.fsencode(temporary)) > MAX_NAME_BYTES:
        return f".{token}.tmp"  # a name near the limit: the random part alone
    return temporary


def publish(folder: int, temporary: str, name: str) -> None:
    """Rename a file :func:`write_temporary` wrote into place, durably. Whatever was at
    ``name`` is replaced, a link too (the link itself, never where it points)."""
    os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    fsync_dir(folder)


def write_atomically(
    folder: int, name: str, data: bytes | BinaryIO, *, mode: int = FILE_MODE
) -> None:
    """``name`` in ``folder`` appears whole or not at all, and survives a crash once this
    returns."""
    publish(folder, write_temporary(folder, name, data, mode=mode), name)


def move_durably(source: Path, target: Path) -> None:
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def free_name(directory: Path, name: str, tag: str) -> Path:
    """``directory/name`` or, when that is taken, ``name`` with ``tag`` (then ``tag-2``,
    ``tag-3`` …) before the suffix: a file moved there never replaces one already there."""
    target = directory / name
    stem, dot, suffix = name.rpartition(".")
    number = 1
    while target.exists():
        mark = tag if number == 1 else f"{tag}-{number}"
        target = directory / (f"{stem}.{mark}.{suffix}" if dot else f"{name}.{mark}")
        number += 1
    return target
