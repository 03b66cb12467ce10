"""Durable file steps for the folder integration: write-then-rename, fsync, move."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

COPY_PIECE = 1024 * 1024


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX needs the directory itself synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | BinaryIO) -> None:
    """``path`` appears whole or not at all, and survives a crash once this returns. ``data`` is
    bytes or an open file, copied in pieces (a large received document is never held whole)."""
    publish(write_temporary(path, data), path)


def write_temporary(path: Path, data: bytes | BinaryIO) -> Path:
    """Write ``data`` for ``path`` under a temporary name beside it (``.<name>.tmp``, on disk
    when this returns) and return that name; :func:`publish` puts it in place, in a moment."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        if isinstance(data, bytes):
            handle.write(data)
        else:
            shutil.copyfileobj(data, handle, COPY_PIECE)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary


def publish(temporary: Path, path: Path) -> None:
    """Rename a file :func:`write_temporary` wrote into place, durably."""
    os.replace(temporary, path)
    fsync_dir(path.parent)


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
