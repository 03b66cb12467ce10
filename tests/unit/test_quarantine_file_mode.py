"""A mail put aside in the quarantine folder holds a message whole, as the payload directory
does: its file is the server user's alone (0600), whatever the umask; a file a crash left
half-written is made anew, not kept with the mode it had."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from meldingstjener.engine import mail_channel
from meldingstjener.store.payloads import FILE_MODE


@pytest.fixture
def open_umask() -> Iterator[None]:
    before = os.umask(0o022)  # the usual default: files 0644, readable by every user
    yield
    os.umask(before)


@pytest.mark.usefixtures("open_umask")
def test_a_quarantined_mail_is_private(tmp_path: Path) -> None:
    path = tmp_path / "quarantine" / "mail.eml"
    path.parent.mkdir()
    left = path.with_suffix(".tmp")
    left.write_bytes(b"half a mail")
    left.chmod(0o644)
    mail_channel._write_durably(path, io.BytesIO(b"Subject: x\r\n\r\nbody"))
    assert path.read_bytes() == b"Subject: x\r\n\r\nbody"
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    assert not left.exists()
