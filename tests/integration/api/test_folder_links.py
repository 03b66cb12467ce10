"""Folder integration in folders the EPJ writes: a symbolic link, a pipe or a file put where the
server writes or reads is never followed, opened to block, or written through.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_pair import Pair
from pydantic import ValidationError

from meldingstjener.config import FolderSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.folder import FolderIntegration
from meldingstjener.store.tables import AlertRow, MessageRow
from meldingstjener.store.uow import LogFilter


@pytest.fixture(autouse=True)
def epj_folders(tmp_path: Path) -> None:
    """The EPJ's outbox and inbox the tests use: they exist, as the server requires (it makes
    no folder the configuration names)."""
    (tmp_path / "ut").mkdir()
    (tmp_path / "inn").mkdir()


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


def drop(outbox: Path, name: str, data: bytes) -> None:
    """As an EPJ does it: write under a temporary name, then rename."""
    temporary = outbox / f".{name}.partial"
    temporary.write_bytes(data)
    os.replace(temporary, outbox / name)


def outbound(pair: Pair) -> list[MessageRow]:
    with pair.gp.store.unit_of_work() as uow:
        return uow.messages.search(LogFilter(direction="out", limit=100))


def open_alerts(pair: Pair, kind: str, site: str = "gp") -> list[AlertRow]:
    with getattr(pair, site).store.unit_of_work() as uow:
        return uow.alerts.list(open_only=True, kind=kind)


@pytest.mark.parametrize("which", ["sent", "failed", "outbox"])
def test_an_outbox_folder_that_is_a_link_is_not_used(
    pair: Pair, tmp_path: Path, which: str
) -> None:
    # sent/ and failed/ are inside the outbox, where the EPJ writes: a link put in place of one
    # would have the server move files (and write .error.txt) wherever it points. Nothing is
    # sent or moved until the folder is one again, and the operator is told at once.
    real = tmp_path / "ut"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outbox = real
    if which == "outbox":  # the configured outbox is a link to the real one
        outbox = tmp_path / "link-to-ut"
        (real / "sent").mkdir(parents=True)
        os.symlink(real, outbox)
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    if which != "outbox":
        (real / which).rmdir()
        os.symlink(elsewhere, real / which)
    placed = real
    drop(placed, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Lenke"))
    drop(placed, "b.xml", b"<MsgHead>not a message")
    for _ in range(2):
        assert integration.outbox_once() == 0
    assert outbound(pair) == [] and list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in placed.glob("*.xml")) == ["a.xml", "b.xml"]
    [unsafe] = open_alerts(pair, "folder-unsafe")
    assert "symbolic link" in unsafe.summary and unsafe.count == 1
    assert str(outbox if which == "outbox" else real / which) in unsafe.summary
    assert open_alerts(pair, "outbox-refused") == []
    if which == "outbox":
        outbox.unlink()
        os.replace(real, outbox)
    else:
        (real / which).unlink()
        (real / which).mkdir()
    later = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    later.outbox_once()  # another process, or one started since: the alert ends
    assert open_alerts(pair, "folder-unsafe") == []
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert len(outbound(pair)) == 1


def test_an_inbox_that_is_a_link_is_not_written(pair: Pair, tmp_path: Path) -> None:
    row = received(pair)
    inbox = tmp_path / "inn"
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    inbox.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, inbox)
    assert integration.inbox_once() == 0
    assert list(elsewhere.iterdir()) == []
    assert pair.message(pair.hospital, row.id).status == "acknowledged"
    [unsafe] = open_alerts(pair, "folder-unsafe", "hospital")
    assert "inbox" in unsafe.summary and "symbolic link" in unsafe.summary
    inbox.unlink()
    inbox.mkdir()
    assert integration.inbox_once() == 1
    assert pair.message(pair.hospital, row.id).status == "delivered"
    assert open_alerts(pair, "folder-unsafe", "hospital") == []


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_a_dangling_link_in_place_of_a_folder_does_not_stop_the_start(
    pair: Pair, tmp_path: Path
) -> None:
    outbox = tmp_path / "ut"
    os.symlink(tmp_path / "nowhere", outbox / "sent")
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    assert integration.outbox_once() == 0
    assert open_alerts(pair, "folder-unsafe")


def test_a_link_in_the_outbox_is_refused_and_nothing_read_through_it(
    pair: Pair, tmp_path: Path
) -> None:
    # A link named like a message: the server would read (and send) any file it may read.
    # It is moved to failed/ as the link it is, beside its explanation; nothing is sent.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    elsewhere = tmp_path / "not-the-outbox"
    elsewhere.mkdir()
    target = elsewhere / "someone-elses.xml"
    target.write_bytes(dialog_note(pair.gp_site, pair.hospital_site, "UTENFOR"))
    os.symlink(target, outbox / "link.xml")
    os.symlink("/etc/passwd", outbox / "passwd.xml")
    os.symlink(tmp_path / "nothing-here.xml", outbox / "dangling.xml")
    assert integration.outbox_once() == 3
    assert outbound(pair) == []
    failed = outbox / "failed"
    for name in ("link.xml", "passwd.xml", "dangling.xml"):
        assert (failed / name).is_symlink()
        explanation = (failed / f"{name}.error.txt").read_text()
        assert "not-a-file" in explanation and "a symbolic link" in explanation
    assert list((outbox / "sent").iterdir()) == []
    assert target.read_bytes().count(b"UTENFOR") == 1  # left as it was
    assert len(open_alerts(pair, "outbox-refused")) == 3


def test_a_named_pipe_in_the_outbox_is_refused_without_waiting(pair: Pair, tmp_path: Path) -> None:
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    os.mkfifo(outbox / "pipe.xml")
    drop(outbox, "b.xml", dialog_note(pair.gp_site, pair.hospital_site, "b"))
    assert_done_within(integration.run_once, seconds=30)
    assert stat.S_ISFIFO((outbox / "failed" / "pipe.xml").lstat().st_mode)
    assert "a named pipe" in (outbox / "failed" / "pipe.xml.error.txt").read_text()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["b.xml"]


def test_a_pipe_renamed_over_a_file_once_listed_does_not_stop_the_folder(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listed as a file, a pipe by the time it is opened: an open that waits for a writer would
    # stop the outbox and the inbox for ever. The pipe is refused in the next round.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "a"))
    real_settled = integration._settled

    def then_a_pipe(name: str, status: os.stat_result) -> bool:
        os.mkfifo(outbox / ".fifo")
        os.replace(outbox / ".fifo", outbox / name)  # as the EPJ side might, by rename
        return real_settled(name, status)

    monkeypatch.setattr(integration, "_settled", then_a_pipe)
    try:
        assert_done_within(integration.run_once, seconds=30)
    finally:
        _release_a_waiting_reader(outbox / "a.xml")
    monkeypatch.undo()
    assert outbound(pair) == []
    integration.run_once()
    assert stat.S_ISFIFO((outbox / "failed" / "a.xml").lstat().st_mode)
    assert outbound(pair) == []


def assert_done_within(work: Callable[[], object], *, seconds: float) -> None:
    runner = threading.Thread(target=work, daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), "the folder round waits (on a pipe?)"


def _release_a_waiting_reader(pipe: Path) -> None:
    """Open a pipe for writing, and close it: a reader stuck in open() goes on (a failed
    test must not leave a thread waiting for ever)."""
    with contextlib.suppress(OSError):  # no reader waits, or no pipe there
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
