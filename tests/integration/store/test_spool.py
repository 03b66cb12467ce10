"""Spools: a payload written piece by piece, kept by a rename or gone without a trace."""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import pytest

from meldingstjener.store.payloads import PayloadStore, Spool, source_size


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_a_kept_spool_is_the_stored_payload_without_a_copy(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    spool = payloads.spool()
    spool.write(b"<MsgHead>")
    spool.write(memoryview(b"</MsgHead>"))
    inode = os.stat(spool).st_ino
    ref = payloads.put(spool)
    assert ref.key == spool.key and spool.committed and spool.ref == ref
    assert ref.size == 19 and ref.sha256 == hashlib.sha256(b"<MsgHead></MsgHead>").hexdigest()
    assert payloads.read_bytes(ref.key) == b"<MsgHead></MsgHead>"
    assert payloads.path(ref.key).stat().st_ino == inode  # renamed, not copied
    assert _files(tmp_path) == [ref.key]


def test_putting_a_kept_spool_again_makes_an_independent_copy(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    with payloads.spool() as spool:
        spool.write(b"abc")
        first = payloads.put(spool)
        second = payloads.put(spool)
    assert first.key != second.key and payloads.read_bytes(second.key) == b"abc"
    payloads.delete(first.key)
    assert payloads.read_bytes(second.key) == b"abc"


def test_a_discarded_or_forgotten_spool_leaves_no_file(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    with payloads.spool() as spool:
        spool.write(b"x" * 10)
        assert os.path.exists(spool)
    assert _files(tmp_path) == []
    forgotten = payloads.spool()
    forgotten.write(b"y")
    del forgotten
    gc.collect()
    assert _files(tmp_path) == []


def test_reset_forgets_what_was_written(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    spool = payloads.spool()
    spool.write(b"garbage from a wrong key")
    spool.reset()
    spool.write(b"plain")
    assert spool.read_bytes() == b"plain" and spool.size == 5
    assert payloads.put(spool).sha256 == hashlib.sha256(b"plain").hexdigest()


def test_readers_see_everything_written_so_far(tmp_path: Path) -> None:
    spool = PayloadStore(tmp_path).spool()
    spool.write(b"one")
    with spool.open() as reader:
        assert reader.read() == b"one"
    assert source_size(spool) == 3 and source_size(b"four") == 4


def test_a_spool_cannot_be_written_after_it_was_kept(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    spool = payloads.spool()
    payloads.put(spool)
    with pytest.raises(ValueError):
        spool.write(b"late")
    with pytest.raises(ValueError):
        spool.commit()


def test_a_file_path_is_copied_in(tmp_path: Path) -> None:
    outside = tmp_path / "outside.xml"
    outside.write_bytes(b"<a/>" * 1000)
    payloads = PayloadStore(tmp_path / "store")
    ref = payloads.put(outside)
    assert payloads.read_bytes(ref.key) == outside.read_bytes() and outside.exists()
    assert isinstance(payloads.spool(), Spool)
