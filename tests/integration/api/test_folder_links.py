"""Folder integration in folders the EPJ writes: a symbolic link, a pipe or a file put where the
server writes or reads is never followed, opened to block, or written through.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_pair import Pair
from pydantic import ValidationError

from meldingstjener.config import FolderSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.folder import FolderIntegration
from meldingstjener.store.tables import MessageRow


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which a file created 0o666 would be 0o644."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def received(pair: Pair) -> MessageRow:
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    return row


def test_a_link_in_the_inbox_is_never_written_through(
    pair: Pair, tmp_path: Path, umask_022: None
) -> None:
    # An EPJ (or anyone who may write the inbox) puts links at the names the server writes:
    # the temporary names of earlier versions and the final one. The file a link points to
    # must stay as it was, and the inbox get files of its own, readable by the group only.
    row = received(pair)
    inbox = tmp_path / "inn"
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    victim = tmp_path / "server-owned.conf"
    victim.write_text("important=1\n")
    for name in (f".{row.id}.xml.tmp", f".{row.id}.json.tmp", f"{row.id}.xml"):
        os.symlink(victim, inbox / name)
    assert integration.inbox_once() == 1
    assert victim.read_text() == "important=1\n"
    document = inbox / f"{row.id}.xml"
    assert not document.is_symlink()
    assert document.read_bytes() == pair.hospital.store.payloads.read_bytes(str(row.payload_ref))
    for written in (document, inbox / f"{row.id}.json"):
        assert stat.S_IMODE(written.lstat().st_mode) == 0o640
    assert pair.message(pair.hospital, row.id).status == "delivered"


def test_a_link_at_the_temporary_name_stops_the_write_and_is_not_followed(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the random part of a temporary name guessed, the link there is still not followed:
    # the file is created only where no name is. The message is written in a later round.
    from meldingstjener.integration import files

    row = received(pair)
    inbox = tmp_path / "inn"
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    victim = tmp_path / "server-owned.conf"
    victim.write_text("important=1\n")
    monkeypatch.setattr(files.secrets, "token_hex", lambda size: "0" * 2 * size)
    os.symlink(victim, inbox / f".{row.id}.json.{'0' * 16}.tmp")
    integration.inbox_once()
    assert victim.read_text() == "important=1\n"
    assert pair.message(pair.hospital, row.id).status == "acknowledged"
    assert not (inbox / f"{row.id}.json").exists()
    monkeypatch.undo()
    integration.inbox_once()
    assert pair.message(pair.hospital, row.id).status == "delivered"
    assert victim.read_text() == "important=1\n"


def test_temporary_files_a_crash_left_are_swept_and_nothing_else(
    pair: Pair, tmp_path: Path
) -> None:
    inbox = tmp_path / "inn"
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    victim = tmp_path / "server-owned.conf"
    victim.write_text("important=1\n")
    message = "0b6e1f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    stale = [f".{message}.xml.{'ab' * 8}.tmp", f".{message}.json.tmp"]
    (inbox / stale[0]).write_bytes(b"half a document")
    os.symlink(victim, inbox / stale[1])
    fresh = f".{message}.xml.{'cd' * 8}.tmp"  # another process may be writing it now
    (inbox / fresh).write_bytes(b"being written")
    epj_own = ".epj-notes.tmp"
    (inbox / epj_own).write_bytes(b"not ours")
    two_hours_ago = time.time() - 7200
    for name in [*stale, epj_own]:
        os.utime(inbox / name, (two_hours_ago, two_hours_ago), follow_symlinks=False)
    integration.inbox_once()
    assert sorted(p.name for p in inbox.iterdir()) == sorted([fresh, epj_own])
    assert victim.read_text() == "important=1\n"


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_the_mode_of_the_files_is_the_configured_one(
    pair: Pair, tmp_path: Path, umask_022: None
) -> None:
    row = received(pair)
    inbox = tmp_path / "inn"
    settings = FolderSettings(inbox_dir=inbox, file_mode=0o600)
    FolderIntegration(pair.hospital, settings).inbox_once()
    assert stat.S_IMODE((inbox / f"{row.id}.xml").stat().st_mode) == 0o600
    with pytest.raises(ValidationError, match="others write"):
        FolderSettings(inbox_dir=inbox, file_mode=0o646)
