"""The folder integration's file steps: a rename that never replaces, in each of its ways
(``renameat2``, a hard link, a look and a rename), and a move to the next free name."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meldingstjener.integration import files


@pytest.fixture(params=["renameat2", "link", "look-then-rename"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way ``rename_no_replace`` may have to take on some filesystem."""
    if request.param != "renameat2":
        monkeypatch.setattr(files, "_renameat2", lambda: None)
    if request.param == "look-then-rename":

        def no_links(*args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EPERM, "hard links not allowed")

        monkeypatch.setattr(files.os, "link", no_links)
    return str(request.param)


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[tuple[Path, int, Path, int]]:
    source, target = tmp_path / "a", tmp_path / "b"
    source.mkdir()
    target.mkdir()
    opened = files.open_folder(source), files.open_folder(target)
    yield source, opened[0], target, opened[1]
    for fd in opened:
        os.close(fd)


def test_a_rename_never_replaces_a_file(way: str, folders: tuple[Path, int, Path, int]) -> None:
    source, source_fd, target, target_fd = folders
    (source / "x.xml").write_bytes(b"moved")
    (target / "x.xml").write_bytes(b"there first")
    with pytest.raises(FileExistsError):
        files.rename_no_replace(source_fd, "x.xml", target_fd, "x.xml")
    assert (target / "x.xml").read_bytes() == b"there first"
    assert (source / "x.xml").read_bytes() == b"moved"
    files.rename_no_replace(source_fd, "x.xml", target_fd, "y.xml")
    assert (target / "y.xml").read_bytes() == b"moved"
    assert not (source / "x.xml").exists()


def test_a_link_is_moved_as_itself(way: str, folders: tuple[Path, int, Path, int]) -> None:
    source, source_fd, target, target_fd = folders
    os.symlink("/etc/passwd", source / "link.xml")
    files.rename_no_replace(source_fd, "link.xml", target_fd, "link.xml")
    assert os.readlink(target / "link.xml") == "/etc/passwd"


def test_a_move_takes_the_next_free_name(folders: tuple[Path, int, Path, int]) -> None:
    source, source_fd, target, target_fd = folders
    for name in ("x.xml", "x.tag.xml"):
        (target / name).write_bytes(b"there first")
    (source / "x.xml").write_bytes(b"moved")
    assert files.move_to_free_name(source_fd, "x.xml", target_fd, "x.xml", "tag") == "x.tag-2.xml"
    assert (target / "x.tag-2.xml").read_bytes() == b"moved"
    assert [(target / n).read_bytes() for n in ("x.xml", "x.tag.xml")] == [b"there first"] * 2


def test_a_folder_that_is_a_link_is_not_opened(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(files.UnsafeFolder, match="symbolic link"):
        files.open_folder(tmp_path / "link")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        files.open_folder(tmp_path / "file")
