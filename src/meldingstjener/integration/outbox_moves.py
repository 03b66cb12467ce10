"""Moving a file out of the folder outbox, provably the one that was read.

A rename moves whatever is at a name when it runs. The EPJ may rename a new file onto the name of
one being submitted (schema validation takes seconds): a plain rename to ``sent/`` put that new
one there, never sent. So a file leaves the outbox in two steps. First it is renamed into a new
subfolder of the server's own folder in the outbox (``.meldingstjener/``; the outbox's listing
passes over names that start with ``.``), where nobody else renames anything, and looked at
there: it goes on to ``sent/`` or ``failed/`` only when it is the file read, the same inode (not
used again for another file while the server holds the file open) with the same size and time,
or, when only those changed, the same content as was sent (a touch, an antivirus scan or an SMB
client setting the time on close changes the time alone: put back, the file would be taken as a
new one and sent again). Anything else is put back in the outbox under its name, never
replacing a file there (see ``files.rename_no_replace``), to be taken by a later round.

The processes serving one outbox take turns (``flock`` on a file in the own folder) for these
steps and for :func:`put_back_leftovers`, which each round starts with. So what the own folder
holds outside a turn was left by a process that died in one; it is put back in the outbox, where
the round finds it again and the file's row tells what was done with it (a rename keeps a file's
inode and time, so its key is the same). A file whose name is taken again in the outbox waits in
the own folder until the name is free, and never replaces the file there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
from pathlib import Path
from stat import S_IFMT

from meldingstjener.integration.files import (
    UnsafeFolder,
    flock,
    fsync_dir,
    lstat_at,
    move_to_free_name,
    open_folder,
    rename_no_replace,
)

log = logging.getLogger(__name__)

OWN_FOLDER = ".meldingstjener"  # the server's own folder in the outbox
LOCK_NAME = "turn.lock"  # in the own folder: the processes' turns
_HASH_PIECE = 1024 * 1024  # a file's content is hashed this much at a time
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RoundFolders:
    """The folders one outbox round works in, each opened when first needed (never through a
    link: see ``files.open_folder``) and closed when the round ends. A folder that cannot be
    opened fails each step that needs it (a file stuck, not the round)."""

    def __init__(self, outbox: Path, sent: Path, failed: Path) -> None:
        self.paths = {"sent": sent, "failed": failed}
        self.outbox_path = outbox
        self.outbox = open_folder(outbox)  # the round's listing fails without it
        self._opened: dict[str, int] = {}

    def sent(self) -> int:
        return self._folder("sent")

    def failed(self) -> int:
        return self._folder("failed")

    def own(self) -> int:
        """The own folder, made when missing (only the server's user may look in it)."""
        if "own" not in self._opened:
            with contextlib.suppress(FileExistsError):
                os.mkdir(OWN_FOLDER, 0o700, dir_fd=self.outbox)
            try:
                self._opened["own"] = os.open(OWN_FOLDER, _FOLDER_FLAGS, dir_fd=self.outbox)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    path = self.outbox_path / OWN_FOLDER
                    raise UnsafeFolder(path, "is a symbolic link or not a folder") from None
                raise
        return self._opened["own"]

    def _folder(self, which: str) -> int:
        if which not in self._opened:
            self._opened[which] = open_folder(self.paths[which])
        return self._opened[which]

    def close(self) -> None:
        for fd in [self.outbox, *self._opened.values()]:
            os.close(fd)
        self._opened.clear()


def move_out(
    folders: RoundFolders,
    name: str,
    read: os.stat_result,
    target: int,
    wanted: str,
    tag: str,
    *,
    content_sha256: str | None = None,
) -> str | None:
    """Move the outbox file ``name`` to the open folder ``target``, under ``wanted`` or else
    the next free name of ``files.names_for(name, tag)``, provided it is the file ``read``
    (its status when it was read, taken from the descriptor the caller still holds; see
    :func:`_is_the_file_read` for ``content_sha256``, the SHA-256 of what was read). The name
    it got; None when it was not moved: gone (another process moved it), or another file was
    at its name (left in the outbox)."""
    own = folders.own()
    with _turn(own):
        holder = secrets.token_hex(8)
        os.mkdir(holder, 0o700, dir_fd=own)
        hold = os.open(holder, _FOLDER_FLAGS, dir_fd=own)
        try:
            try:
                os.rename(name, name, src_dir_fd=folders.outbox, dst_dir_fd=hold)
            except FileNotFoundError:
                return None
            if not _is_the_file_read(hold, name, read, content_sha256):
                log.warning(
                    "folder outbox: another file was put under the name of the one read before "
                    "it was moved; the other file stays in the outbox, taken in a later round"
                )
                _put_back(hold, folders.outbox, name)
                return None
            try:
                got = move_to_free_name(hold, name, target, wanted, tag)
            except BaseException:
                _put_back(hold, folders.outbox, name)  # (what stays, the next turn puts back)
                raise
            fsync_dir(target)
            fsync_dir(folders.outbox)
            return got
        finally:
            os.close(hold)
            with contextlib.suppress(OSError):  # not empty: put back by a later turn
                os.rmdir(holder, dir_fd=own)


def put_back_leftovers(folders: RoundFolders) -> None:
    """Put what a process that died in its turn left in the own folder back in the outbox."""
    own = folders.own()
    with _turn(own):
        for holder in os.listdir(own):
            if holder == LOCK_NAME:
                continue
            try:
                hold = os.open(holder, _FOLDER_FLAGS, dir_fd=own)
            except OSError:
                continue  # not one of our subfolders
            try:
                for name in os.listdir(hold):
                    _put_back(hold, folders.outbox, name)
            finally:
                os.close(hold)
            with contextlib.suppress(OSError):  # not empty: the name is taken in the outbox
                os.rmdir(holder, dir_fd=own)


def same_file(seen: os.stat_result, read: os.stat_result) -> bool:
    """Whether ``seen`` is the file ``read``, unchanged: inode, type, size and time."""
    return _identity(seen) == _identity(read)


def _is_the_file_read(
    hold: int, name: str, read: os.stat_result, content_sha256: str | None
) -> bool:
    """Whether the file ``name`` in the open folder ``hold`` is the file ``read``: the same
    (:func:`same_file`), or, given ``content_sha256``, the same inode and type whose time alone
    changed since it was read, still holding the content read.

    The inode cannot be another file's while the caller holds this one open, so such a file was
    touched (an antivirus scan, an SMB client setting the time as it closes the file): the file
    read and sent. Put back, its key (which holds its time) would be new to the next round, and
    the same content sent twice. Its content written over since is another message."""
    seen = lstat_at(hold, name)
    if same_file(seen, read):
        return True
    if content_sha256 is None or _identity(seen)[:3] != _identity(read)[:3]:
        return False
    if seen.st_size != read.st_size:
        return False  # written to: other content, whatever its hash
    return _sha256_at(hold, name) == content_sha256


def _sha256_at(folder: int, name: str) -> str:
    """The SHA-256 (hex) of the file ``name`` in the open ``folder``, read in pieces (never
    through a link, never waiting on a pipe: see ``folder._take_entry``)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    digest = hashlib.sha256()
    with open(os.open(name, flags, dir_fd=folder), "rb") as handle:
        while piece := handle.read(_HASH_PIECE):
            digest.update(piece)
    return digest.hexdigest()


def _identity(status: os.stat_result) -> tuple[int, int, int, int, int]:
    return (
        status.st_dev,
        status.st_ino,
        S_IFMT(status.st_mode),
        status.st_size,
        status.st_mtime_ns,
    )


def _put_back(hold: int, outbox: int, name: str) -> None:
    """Put ``name`` back in the outbox under its name unless a file is there: then it waits."""
    try:
        rename_no_replace(hold, name, outbox, name)
    except FileExistsError:
        try:
            both = _same_inode(lstat_at(hold, name), lstat_at(outbox, name))
        except FileNotFoundError:
            both = False  # the name was freed meanwhile: put back by the next turn
        if both:
            os.unlink(name, dir_fd=hold)  # in both (a link and a crash): the outbox has it
            return
        log.warning(
            "folder outbox: a file waits in the server's own folder until its name in the "
            "outbox is free (another file of that name is there)"
        )
        return
    fsync_dir(outbox)


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _turn(own: int) -> contextlib.AbstractContextManager[None]:
    """This process's turn among those serving the outbox: the lock file in the own folder."""
    return flock(LOCK_NAME, dir_fd=own)
