"""File steps for the folder integration that hold in folders an EPJ writes in.

The outbox, the inbox and ``sent/``/``failed/`` (by default inside the outbox) are the EPJ's:
any name in them may be a symbolic link, a pipe, or a file renamed over another at any moment.
So each step here is made relative to a folder opened once without following a link
(:func:`open_folder`); a file is created only where no name is (``O_EXCL``) and never through a
link (``O_NOFOLLOW``), under a name nobody can guess; and a rename replaces nothing unless that
is its purpose (:func:`rename_no_replace`). A rename is made durable by syncing its folder
(POSIX needs the folder itself synced).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

COPY_PIECE = 1024 * 1024
FILE_MODE = 0o640  # files written for the EPJ: read by its group, by nobody else
MAX_NAME_BYTES = 255  # the longest file name most filesystems take
_RENAME_NOREPLACE = 1  # renameat2's flag (linux/fs.h)


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


@contextlib.contextmanager
def flock(path: str | Path, *, dir_fd: int | None = None) -> Iterator[None]:
    """Hold ``flock`` on the lock file ``path`` (relative to the open folder ``dir_fd`` when
    given), made when missing; never through a link. The kernel lets go when the process
    dies, so a turn held by a process that died is never waited for."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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


def lstat_at(folder: int, name: str) -> os.stat_result:
    """The status of ``name`` in ``folder`` itself (a link's own, not its target's)."""
    return os.stat(name, dir_fd=folder, follow_symlinks=False)


def exists_at(folder: int, name: str) -> bool:
    try:
        lstat_at(folder, name)
    except FileNotFoundError:
        return False
    return True


def rename_no_replace(source: int, name: str, target: int, new_name: str) -> None:
    """Rename ``name`` in the folder ``source`` to ``new_name`` in ``target``, unless that
    name is taken: then :class:`FileExistsError`, and nothing moved.

    ``renameat2(RENAME_NOREPLACE)`` where the kernel and the filesystem have it (ext4, XFS,
    Btrfs, tmpfs): one atomic step. Else a hard link and an unlink, which also never replace
    (a crash between them leaves the file under both names; the callers bear that). Where a
    link is not allowed either (an SMB share; a file of the EPJ's that the server may not
    write, under ``fs.protected_hardlinks``), the name is looked at first and then renamed: a
    file the EPJ puts there in that instant would be replaced."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        done = renameat2(source, os.fsencode(name), target, os.fsencode(new_name))
        if done == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), new_name)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), name)
    try:
        os.link(name, new_name, src_dir_fd=source, dst_dir_fd=target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if exists_at(target, new_name):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), new_name) from None
        os.rename(name, new_name, src_dir_fd=source, dst_dir_fd=target)
        return
    os.unlink(name, dir_fd=source)


@functools.cache
def _renameat2() -> Callable[[int, bytes, int, bytes], int] | None:
    """The C library's ``renameat2`` with ``RENAME_NOREPLACE``, or None (not Linux, an old
    glibc)."""
    try:
        raw = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    raw.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    raw.restype = ctypes.c_int

    def renameat2(source: int, name: bytes, target: int, new_name: bytes) -> int:
        return int(raw(source, name, target, new_name, _RENAME_NOREPLACE))

    return renameat2


def names_for(name: str, tag: str) -> Iterator[str]:
    """``name``, then ``name`` with ``tag`` (then ``tag-2``, ``tag-3`` …) before the suffix:
    the names a file may take in a folder where one of its name may be already."""
    yield name
    stem, dot, suffix = name.rpartition(".")
    number = 1
    while True:
        mark = tag if number == 1 else f"{tag}-{number}"
        yield f"{stem}.{mark}.{suffix}" if dot else f"{name}.{mark}"
        number += 1


def free_name(folder: int, name: str, tag: str) -> str:
    """The first of :func:`names_for` not taken in ``folder`` now."""
    return next(candidate for candidate in names_for(name, tag) if not exists_at(folder, candidate))


def move_to_free_name(source: int, name: str, target: int, wanted: str, tag: str) -> str:
    """Move ``name`` to ``wanted`` in ``target`` or, when that is taken, to the next of
    :func:`names_for`; never replacing a file there. Returns the name it got."""
    others = (candidate for candidate in names_for(name, tag) if candidate != wanted)
    for candidate in itertools.chain([wanted], others):
        try:
            rename_no_replace(source, name, target, candidate)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable: names_for never ends")  # pragma: no cover
