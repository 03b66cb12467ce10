"""Review of reading MIME from a file: a file that shrinks after it was opened ends a search
(and so gives a MimeProblem), where it used to make ``FileSource.find`` read for ever."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from meldingstjener.ebxml import EbxmlError, ErrorCode, mime, mime_source
from meldingstjener.ebxml.mime_source import FileSource

BOUNDARY = "----=_Part_0123456789abcdef0123456789abcdef"


@contextmanager
def _at_most(reads: int) -> Iterator[None]:
    """Fail the test, instead of hanging it, when a search reads more often than it can need."""
    real = os.pread
    count = 0

    def counted(fd: int, length: int, offset: int) -> bytes:
        nonlocal count
        count += 1
        if count > reads:
            raise AssertionError(f"more than {reads} reads: the search does not end")
        return real(fd, length, offset)

    with mock.patch.object(mime_source.os, "pread", counted):
        yield


def test_find_in_a_file_that_shrank_ends(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(b"a" * 20_000)
    with FileSource(path) as source:
        # cut a few bytes past the end of the first read (8 kB and the needle's overlap):
        # the next read then returns only the overlap, again and again
        os.truncate(path, mime_source._FIRST_LOOK + 8)
        with _at_most(1000):
            assert source.find(b"--" + BOUNDARY.encode()) == -1
            assert source.find(b"a", 8_000) == 8_000  # what is still there is still found


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_a_body_that_shrank_while_it_was_split_is_a_mime_problem(
    tmp_path: Path, keep: float
) -> None:
    payload = b"x" * 30_000
    body = (
        f"--{BOUNDARY}\r\nContent-ID: <env>\r\n\r\n<Envelope/>\r\n"
        f"--{BOUNDARY}\r\nContent-ID: <p>\r\nContent-Transfer-Encoding: binary\r\n\r\n".encode()
        + payload
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    path = tmp_path / "body"
    path.write_bytes(body)
    with FileSource(path) as source:
        os.truncate(path, int(len(body) * keep))
        with (
            mock.patch.object(mime_source, "CHUNK", 64),
            mock.patch.object(mime_source, "_FIRST_LOOK", 16),
            _at_most(10_000),
            pytest.raises(EbxmlError) as caught,
        ):
            mime._unpackage(f'multipart/related; boundary="{BOUNDARY}"', source, 0, None)
    assert caught.value.code == ErrorCode.MIME_PROBLEM
