"""The payload store writes durably, streams large bodies, and purges."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path

import pytest

from meldingstjener.store.payloads import PayloadNotFound, PayloadStore


def test_put_read_delete(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    ref = payloads.put(b"<MsgHead/>")
    assert ref.size == 10 and ref.sha256 == hashlib.sha256(b"<MsgHead/>").hexdigest()
    assert payloads.read_bytes(ref.key) == b"<MsgHead/>"
    assert payloads.delete(ref.key) is True
    assert payloads.delete(ref.key) is False
    with pytest.raises(PayloadNotFound):
        payloads.open(ref.key)


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    payloads = PayloadStore(tmp_path)
    payloads.put(io.BytesIO(b"x" * 3_000_000))
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert len(names) == 1 and not names[0].startswith(".")


class _Generated(io.RawIOBase):
    """35 MB of bytes produced on demand, so the test itself holds none of them."""

    def __init__(self, size: int) -> None:
        self.remaining = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.remaining)
        buffer[:n] = b"A" * n
        self.remaining -= n
        return n


def test_a_35_mb_payload_is_streamed_not_held(tmp_path: Path) -> None:
    size = 35 * 1024 * 1024
    payloads = PayloadStore(tmp_path)
    tracemalloc.start()
    try:
        ref = payloads.put(io.BufferedReader(_Generated(size)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.size == size
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while storing {size}"


def test_a_new_folder_is_made_durable_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The new folder's own entry must reach the disk too (its parent is fsynced); an existing
    # folder costs no fsync. (What a power cut would do cannot be shown here; the calls can.)
    from meldingstjener.store import payloads

    synced: list[Path] = []
    monkeypatch.setattr(payloads, "_fsync_dir", lambda directory: synced.append(directory))
    payloads.make_durable_dir(tmp_path / "quarantine")
    payloads.make_durable_dir(tmp_path / "quarantine")
    assert (tmp_path / "quarantine").is_dir() and synced == [tmp_path]
