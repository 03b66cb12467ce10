"""Folder integration: outbox files are sent exactly once and moved, refused ones explained in
failed/, received messages appear in the inbox with a sidecar; kill -9 at any step loses nothing
and doubles nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import BinaryIO

import pytest
from api_sites import ApiPair
from engine_pair import Pair
from sqlalchemy import select, update

from meldingstjener.config import FolderSettings, RetentionSettings
from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.engine import retention
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import Attachment, Coded, Dialogmelding, Notat, build_dialogmelding
from meldingstjener.integration.folder import FolderIntegration
from meldingstjener.store.payloads import PayloadStore, Spool
from meldingstjener.store.tables import AgreementRow, AlertRow, FolderFileRow, MessageRow
from meldingstjener.store.uow import LogFilter

CHILD = Path(__file__).with_name("folder_child.py")
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def epj_folders(tmp_path: Path) -> None:
    """The EPJ's outbox and inbox the tests use: they exist, as the server requires (it makes
    no folder the configuration names)."""
    (tmp_path / "ut").mkdir()
    (tmp_path / "inn").mkdir()


def drop(outbox: Path, name: str, data: bytes) -> None:
    """As an EPJ does it: write under a temporary name, then rename."""
    temporary = outbox / f".{name}.partial"
    temporary.write_bytes(data)
    os.replace(temporary, outbox / name)


def outbound(pair: Pair) -> list[MessageRow]:
    with pair.gp.store.unit_of_work() as uow:
        return uow.messages.search(LogFilter(direction="out", limit=100_000))


def test_outbox_sends_and_explains_refusals(pair: Pair, tmp_path: Path) -> None:
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    note = dialog_note(pair.gp_site, pair.hospital_site, "Fra mappa")
    drop(outbox, "a.xml", note)
    drop(outbox, "broken.xml", b"<MsgHead>not a message")
    (outbox / ".c.xml.partial").write_bytes(b"half writ")
    assert integration.outbox_once() == 2
    assert sorted(p.name for p in (outbox / "sent").iterdir()) == ["a.xml"]
    assert sorted(p.name for p in (outbox / "failed").iterdir()) == [
        "broken.xml",
        "broken.xml.error.txt",
    ]
    explanation = (outbox / "failed" / "broken.xml.error.txt").read_text()
    assert "was not sent" in explanation and "invalid-message" in explanation
    assert (outbox / ".c.xml.partial").exists()  # not yet renamed: not ours to take
    [message] = outbound(pair)
    assert message.client_id and message.client_id.startswith("folder:")
    assert integration.outbox_once() == 0


def test_same_content_dropped_again_is_sent_again(pair: Pair, tmp_path: Path) -> None:
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    note = dialog_note(pair.gp_site, pair.hospital_site, "To ganger med vilje")
    drop(outbox, "n.xml", note)
    integration.outbox_once()
    drop(outbox, "n.xml", note)
    integration.outbox_once()
    assert len(outbound(pair)) == 2
    assert len(list((outbox / "sent").iterdir())) == 2


def test_a_file_sent_that_left_the_outbox_by_hand_is_not_taken_for_a_later_drop(
    pair: Pair, tmp_path: Path
) -> None:
    # Sent, but sent/ is not a folder (a share mounted wrong): the file cannot be moved out,
    # and the operator takes it out by hand. A later drop of the same name and content is a
    # new message the EPJ means to send, not that file whose time or inode changed: it is sent.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    note = dialog_note(pair.gp_site, pair.hospital_site, "Tatt ut for hand")
    (outbox / "sent").rmdir()
    (outbox / "sent").write_bytes(b"")
    drop(outbox, "n.xml", note)
    integration.outbox_once()
    assert len(outbound(pair)) == 1 and (outbox / "n.xml").exists()
    (outbox / "n.xml").unlink()  # the operator's hand
    (outbox / "sent").unlink()
    (outbox / "sent").mkdir()
    integration.outbox_once()  # finds it gone
    drop(outbox, "n.xml", note)
    integration.outbox_once()
    assert len(outbound(pair)) == 2
    assert [p.name for p in (outbox / "sent").iterdir()] == ["n.xml"]


def test_retention_keeps_the_row_of_a_file_still_in_the_outbox_after_its_message_went(
    pair: Pair, tmp_path: Path
) -> None:
    # Two files sent and acknowledged; one moved to sent/, one left in the outbox (sent/ not
    # usable). 100 days on, retention deletes both messages and the moved file's row, not the
    # other's: that row is all that says the file was sent, and the round that can move it at
    # last moves it, not sending it again.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "moved.xml", dialog_note(pair.gp_site, pair.hospital_site, "Flyttet ut"))
    integration.outbox_once()
    (outbox / "sent").rename(outbox / "sent.mended")
    (outbox / "sent").write_bytes(b"")
    drop(outbox, "left.xml", dialog_note(pair.gp_site, pair.hospital_site, "Blir liggende"))
    integration.outbox_once()
    assert (outbox / "left.xml").exists() and len(outbound(pair)) == 2
    pair.run()
    assert {message.status for message in outbound(pair)} == {"transport-acknowledged"}
    pair.clock.advance(days=100)

    rules = RetentionSettings(payload_days=0, message_days=30)
    report = retention.run(pair.gp.store, rules, now=pair.clock())

    assert (report.messages_deleted, report.folder_files) == (2, 1)
    with pair.gp.store.unit_of_work() as uow:
        [kept] = uow.session.scalars(select(FolderFileRow))
    assert kept.moved_at is None and kept.outcome == "sent"
    (outbox / "sent").unlink()
    (outbox / "sent.mended").rename(outbox / "sent")
    integration.outbox_once()
    assert outbound(pair) == []  # not sent again
    assert sorted(path.name for path in (outbox / "sent").iterdir()) == ["left.xml", "moved.xml"]


def test_a_file_that_never_left_another_outbox_sharing_the_store_is_not_this_ones(
    pair: Pair, tmp_path: Path
) -> None:
    # Two outboxes on one store (two EPJs). A file sent from one, not moved out of it yet, is
    # neither found gone by the other's rounds nor taken for a file of its name and content
    # dropped in the other; and after a restart, with its time changed, it is still known in
    # its own outbox as the file sent.
    outbox, other = tmp_path / "ut", tmp_path / "ut2"
    other.mkdir()
    settings = FolderSettings(outbox_dir=outbox, settle_seconds=0)
    integration = FolderIntegration(pair.gp, settings)
    elsewhere = FolderIntegration(pair.gp, FolderSettings(outbox_dir=other, settle_seconds=0))
    note = dialog_note(pair.gp_site, pair.hospital_site, "To mapper")
    (outbox / "sent").rmdir()
    (outbox / "sent").write_bytes(b"")
    drop(outbox, "n.xml", note)
    integration.outbox_once()
    assert len(outbound(pair)) == 1
    elsewhere.outbox_once()  # the other outbox, empty: the file is not gone from its own
    drop(other, "n.xml", note)
    elsewhere.outbox_once()
    assert len(outbound(pair)) == 2  # sent from the other outbox: its own message
    assert [p.name for p in (other / "sent").iterdir()] == ["n.xml"]
    (outbox / "sent").unlink()
    (outbox / "sent").mkdir()
    status = (outbox / "n.xml").stat()
    os.utime(outbox / "n.xml", ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    FolderIntegration(pair.gp, settings).outbox_once()  # a restart
    assert len(outbound(pair)) == 2  # the first outbox's file was not sent again
    assert [p.name for p in (outbox / "sent").iterdir()] == ["n.xml"]


def test_two_processes_on_one_outbox_send_a_file_once(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process A has claimed the file and is submitting it when process B's round finds it
    # claimed but not sent, and sees no message of it yet (A has not committed). B submits too:
    # the file's key, used as idempotency key, lets only one message through.
    outbox = tmp_path / "ut"
    first = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    second = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "En gang"))

    def died_before_marking(*args: object, **kwargs: object) -> None:
        raise SystemExit("process A stops here")

    with monkeypatch.context() as patched:
        patched.setattr(FolderIntegration, "_mark", died_before_marking)
        with pytest.raises(SystemExit):
            first.outbox_once()
    assert len(outbound(pair)) == 1
    # B did not see A's message (the race): it submits the same file again
    monkeypatch.setattr(FolderIntegration, "_submitted_before", lambda self, key: None)
    assert second.outbox_once() == 1
    assert len(outbound(pair)) == 1
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]


def test_inbox_gets_each_message_with_its_sidecar(pair: Pair, tmp_path: Path) -> None:
    inbox = tmp_path / "inn"
    sent = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    assert integration.inbox_once() == 1
    [received] = pair.inbound_messages(pair.hospital)
    assert sorted(p.name for p in inbox.iterdir()) == [f"{received.id}.json", f"{received.id}.xml"]
    sidecar = json.loads((inbox / f"{received.id}.json").read_text())
    assert sidecar["senderHerId"] == pair.gp_site.address_her_id
    assert sidecar["messageType"] == "DIALOG_NOTAT"
    assert "Til mappa" not in (inbox / f"{received.id}.json").read_text()
    assert pair.message(pair.hospital, received.id).status == "delivered"
    assert integration.inbox_once() == 0
    assert sent


def test_a_file_name_that_is_not_utf8_is_sent_like_any_other(pair: Pair, tmp_path: Path) -> None:
    # Windows-1252 names from an older EPJ: "ærlig.xml" as the byte 0xE6. Its name once broke the
    # key and, with it, every round of the outbox.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    outbox.mkdir(parents=True, exist_ok=True)
    odd = os.fsdecode(b"\xe6rlig.xml")
    (outbox / odd).write_bytes(dialog_note(pair.gp_site, pair.hospital_site, "ærlig"))
    drop(outbox, "b.xml", dialog_note(pair.gp_site, pair.hospital_site, "b"))
    assert integration.outbox_once() == 2
    assert sorted(os.fsencode(p.name) for p in (outbox / "sent").iterdir()) == [
        b"b.xml",
        b"\xe6rlig.xml",
    ]
    assert len(outbound(pair)) == 2


def test_one_file_that_fails_holds_up_neither_the_others_nor_the_inbox(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fault nobody foresaw (here injected into the submit of one file) is logged, the file
    # stays for the next round, and the rest of the round goes on. The log does not name the
    # file (an EPJ may name it by the patient): a traceback of the error would.
    from meldingstjener.integration import folder

    real_submit = folder.submit

    def submit_failing_once(ctx: object, data: object, **kwargs: object) -> str:
        if b"Uventet" in Path(os.fspath(data)).read_bytes():  # type: ignore[call-overload]
            raise RuntimeError(f"unforeseen in {tmp_path / 'ut' / 'a.xml'}")
        return real_submit(ctx, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(folder, "submit", submit_failing_once)
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    outbox, inbox = tmp_path / "ut", tmp_path / "inn"
    integration = FolderIntegration(
        pair.hospital, FolderSettings(outbox_dir=outbox, inbox_dir=inbox, settle_seconds=0)
    )
    drop(outbox, "a.xml", dialog_note(pair.hospital_site, pair.gp_site, "Uventet"))
    drop(outbox, "b.xml", dialog_note(pair.hospital_site, pair.gp_site, "b"))
    integration.run_once()
    assert "a file not taken (RuntimeError)" in caplog.text
    assert "a.xml" not in caplog.text
    assert (outbox / "a.xml").exists()  # kept for the next round
    assert sorted(p.name for p in (outbox / "sent").iterdir()) == ["b.xml"]
    [received] = pair.inbound_messages(pair.hospital)
    assert pair.message(pair.hospital, received.id).status == "delivered"
    monkeypatch.setattr(folder, "submit", real_submit)
    integration.run_once()
    assert sorted(p.name for p in (outbox / "sent").iterdir()) == ["a.xml", "b.xml"]


def test_a_message_written_but_not_marked_delivered_is_marked_next_round(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round dies between writing the files and marking the message delivered. The next
    # round marks it (so its AppRec can follow) without writing the files again: the EPJ may
    # have taken them already.
    from meldingstjener.integration import folder

    inbox = tmp_path / "inn"
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))

    def dies(*_: object, **__: object) -> None:
        raise RuntimeError("the database went away")

    real_deliver = folder.receipts.deliver
    monkeypatch.setattr(folder.receipts, "deliver", dies)
    integration.inbox_once()
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"
    for written in inbox.iterdir():
        written.unlink()  # the EPJ took the files
    monkeypatch.setattr(folder.receipts, "deliver", real_deliver)
    integration.inbox_once()
    assert pair.message(pair.hospital, received.id).status == "delivered"
    assert list(inbox.iterdir()) == []


def test_a_large_message_reaches_the_inbox_without_being_held_whole(
    pair: Pair, tmp_path: Path
) -> None:
    note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="Skannet journal")
    document = build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Attachment(data=os.urandom(6 * MiB), mime_type="application/pdf"),),
    )
    submit(pair.gp, document, actor="test")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    inbox = tmp_path / "inn"
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    tracemalloc.start()
    try:
        integration.write_inbox(received)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (inbox / f"{received.id}.xml").read_bytes() == document
    # pieces of 1 MiB and the reader's buffer, not the document
    assert peak < len(document) // 3, f"{peak} bytes allocated at the peak for {len(document)}"


def _run_child_until_killed(config: Path, outbox: str, inbox: str, point: str, call: int) -> None:
    child = subprocess.run(
        [sys.executable, str(CHILD), str(config), outbox, inbox, point, str(call)],
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr.decode(errors="replace")[-3000:]


def _run_until(config: Path, outbox: str, inbox: str, done: object) -> None:
    """Run a healthy child until ``done()`` holds, then stop it."""
    log = config.parent / "folder-child.log"
    with log.open("wb") as output:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(config), outbox, inbox, "none", "0"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, "the folder integration did not finish"
            assert child.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()


def all_in_sent(outbox: Path, count: int) -> bool:
    """Whether the files m0.xml .. m<count-1>.xml are in sent/ (an empty outbox is not enough:
    the last file may be in the server's own folder, on its way)."""
    sent = outbox / "sent"
    return sent.is_dir() and {f"m{n}.xml" for n in range(count)} <= set(os.listdir(sent))


@pytest.mark.parametrize("point", ["after-submit", "before-move", "in-own-folder"])
def test_outbox_survives_kill_9(pair: Pair, tmp_path: Path, point: str) -> None:
    outbox = tmp_path / "ut"
    for number in range(6):
        note = dialog_note(pair.gp_site, pair.hospital_site, f"Melding {number}")
        drop(outbox, f"m{number}.xml", note)
    config = pair.gp_site.config_path
    _run_child_until_killed(config, str(outbox), "-", point, 3)  # at the third file
    left = sorted(p.name for p in outbox.glob("*.xml"))
    assert 0 < len(left) < 6
    _run_until(config, str(outbox), "-", lambda: all_in_sent(outbox, 6))

    messages = outbound(pair)
    assert len(messages) == 6  # nothing lost, nothing doubled
    assert len({m.payload_sha256 for m in messages}) == 6
    assert sorted(p.name for p in (outbox / "sent").iterdir()) == [f"m{n}.xml" for n in range(6)]


@pytest.mark.parametrize(("point", "change"), [("after-submit", "time"), ("before-move", "inode")])
def test_a_file_changed_while_the_server_is_down_after_its_submit_is_sent_once(
    pair: Pair, tmp_path: Path, point: str, change: str
) -> None:
    # Killed after the third file's submit committed, before that file left the outbox. While
    # the server is down, the files' time is set anew (an antivirus scan, an SMB client setting
    # it on close) or they get new inodes (a share remounted with noserverino): the file is
    # still the one sent, not a new message.
    outbox = tmp_path / "ut"
    for number in range(4):
        drop(outbox, f"m{number}.xml", dialog_note(pair.gp_site, pair.hospital_site, f"M {number}"))
    config = pair.gp_site.config_path
    _run_child_until_killed(config, str(outbox), "-", point, 3)
    assert len(outbound(pair)) == 3
    for left in outbox.glob("*.xml"):
        status = left.stat()
        if change == "time":
            os.utime(left, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
        else:
            drop(outbox, left.name, left.read_bytes())
            os.utime(left, ns=(status.st_atime_ns, status.st_mtime_ns))
            assert left.stat().st_ino != status.st_ino
    _run_until(config, str(outbox), "-", lambda: all_in_sent(outbox, 4))

    messages = outbound(pair)
    assert len(messages) == 4  # the third not sent again
    assert len({m.payload_sha256 for m in messages}) == 4
    assert sorted(p.name for p in (outbox / "sent").iterdir()) == [f"m{n}.xml" for n in range(4)]


def test_inbox_survives_kill_9(pair: Pair, tmp_path: Path) -> None:
    inbox = tmp_path / "inn"
    for number in range(4):
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, f"Inn {number}"), actor="t")
    pair.run()
    config = pair.hospital_site.config_path
    _run_child_until_killed(config, "-", str(inbox), "after-inbox-write", 2)

    def all_recorded() -> bool:
        if len(list(inbox.glob("*.xml"))) < 4:
            return False  # look at the files first: cheaper, and no lock taken in the store
        with pair.hospital.store.unit_of_work() as uow:
            rows = list(uow.session.scalars(select(FolderFileRow)))
        return len(rows) == 4 and all(
            pair.message(pair.hospital, r.key).status == "delivered" for r in rows
        )

    _run_until(config, "-", str(inbox), all_recorded)
    received = pair.inbound_messages(pair.hospital)
    expected = sorted([f"{m.id}.xml" for m in received] + [f"{m.id}.json" for m in received])
    assert sorted(p.name for p in inbox.iterdir()) == expected  # no temporary files left over
    for message in received:
        assert (
            inbox / f"{message.id}.xml"
        ).read_bytes() == pair.hospital.store.payloads.read_bytes(str(message.payload_ref))


def test_inbox_files_the_epj_took_before_a_crash_was_recorded_are_not_written_again(
    pair: Pair, tmp_path: Path
) -> None:
    # Killed when the second message's files are in place, before that is recorded; the EPJ
    # imports what it finds (moves it away) before the server is back: the restart must not
    # write the second message's files again (the EPJ would import it twice).
    inbox, imported = tmp_path / "inn", tmp_path / "importert"
    imported.mkdir()
    for number in range(4):
        submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, f"Inn {number}"), actor="t")
    pair.run()
    config = pair.hospital_site.config_path
    _run_child_until_killed(config, "-", str(inbox), "after-inbox-write", 2)
    for found in inbox.glob("*-*.*"):  # the EPJ's import: its files, not the temporaries
        if not found.name.startswith("."):
            os.replace(found, imported / found.name)
    assert len(list(imported.glob("*.xml"))) == 2

    def all_delivered() -> bool:
        return all(m.status == "delivered" for m in pair.inbound_messages(pair.hospital))

    _run_until(config, "-", str(inbox), all_delivered)
    received = pair.inbound_messages(pair.hospital)
    names = sorted(p.name for p in [*inbox.iterdir(), *imported.iterdir()])
    assert names == sorted([f"{m.id}.xml" for m in received] + [f"{m.id}.json" for m in received])


def _staged_then_killed(
    pair: Pair, inbox: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> MessageRow:
    """A note received by the hospital, its inbox files staged (written under temporary names
    and recorded so) when the process dies, before they are renamed into place."""
    from meldingstjener.integration import folder

    class Killed(BaseException):
        pass

    def killed(*_: object, **__: object) -> None:
        raise Killed()

    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, text), actor="t")
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    with monkeypatch.context() as patched:
        patched.setattr(folder, "publish", killed)
        with pytest.raises(Killed):
            FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox)).inbox_once()
    return received


def test_inbox_files_staged_before_a_long_outage_are_put_in_place(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process dies when the files are written under their temporary names and recorded as
    # such, before they are renamed into place; the server is back a day later. The sweep of
    # temporaries a crash left must not take these: they are the message's files.
    inbox = tmp_path / "inn"
    received = _staged_then_killed(pair, inbox, "Etter helga", monkeypatch)
    temporaries = list(inbox.iterdir())
    assert len(temporaries) == 2 and all(t.name.endswith(".tmp") for t in temporaries)
    a_day_ago = time.time() - 86400
    for temporary in temporaries:
        os.utime(temporary, (a_day_ago, a_day_ago))
    FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox)).inbox_once()
    assert sorted(p.name for p in inbox.iterdir()) == [f"{received.id}.json", f"{received.id}.xml"]
    assert (inbox / f"{received.id}.xml").read_bytes() == pair.hospital.store.payloads.read_bytes(
        str(received.payload_ref)
    )
    assert pair.message(pair.hospital, received.id).status == "delivered"


def test_a_staging_row_that_names_no_temporaries_is_written_anew(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Staged, then the row lost the temporaries' names (an earlier migration 0020 going down
    # and up again kept the row, not its staged_as): nothing can be put in place, and the
    # message is written anew instead of waiting, acknowledged, for ever.
    inbox = tmp_path / "inn"
    received = _staged_then_killed(pair, inbox, "Ned og opp", monkeypatch)
    with pair.hospital.store.unit_of_work() as uow:
        uow.session.execute(update(FolderFileRow).values(staged_as=None))
        uow.commit()
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    for _ in range(2):  # the row let go, then the message written
        integration.inbox_once()
    assert (inbox / f"{received.id}.xml").read_bytes() == pair.hospital.store.payloads.read_bytes(
        str(received.payload_ref)
    )
    assert (inbox / f"{received.id}.json").exists()
    assert pair.message(pair.hospital, received.id).status == "delivered"


def test_start_integrations_runs_the_folder_until_stopped(pair: Pair, tmp_path: Path) -> None:
    import threading

    from meldingstjener.config import load_settings
    from meldingstjener.integration import start_integrations

    outbox = tmp_path / "ut"
    settings = load_settings(
        pair.gp_site.config_path,
        folder={"outbox_dir": str(outbox), "poll_interval_seconds": 0.05},
        webhooks={"poll_interval_seconds": 0.05},
    )
    stop = threading.Event()
    threads = start_integrations(pair.gp, settings, stop)
    assert sorted(t.name for t in threads) == ["folder", "webhooks"]
    try:
        drop(outbox, "x.xml", dialog_note(pair.gp_site, pair.hospital_site, "Tråd"))
        deadline = time.monotonic() + 30
        while not (outbox / "sent" / "x.xml").exists():
            assert time.monotonic() < deadline, "the folder thread did not send the file"
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(outbound(pair)) == 1


def test_two_processes_on_one_inbox_write_a_message_once(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process B has read the list of messages to write when process A writes them, records
    # them and marks them delivered, and the EPJ takes the files. B must not write them again.
    inbox = tmp_path / "inn"
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "En gang"), actor="t")
    pair.run()
    first = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    second = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    real_write = FolderIntegration.write_inbox

    def first_gets_there_first(self: FolderIntegration, row: MessageRow) -> None:
        if self is second:
            assert first.inbox_once() == 1
            for written in inbox.iterdir():
                written.unlink()  # the EPJ took the files
        real_write(self, row)

    monkeypatch.setattr(FolderIntegration, "write_inbox", first_gets_there_first)
    assert second.inbox_once() == 1
    assert list(inbox.iterdir()) == []
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "delivered"


def test_refused_files_of_one_name_never_replace_each_other(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meldingstjener.integration import folder

    monkeypatch.setattr(folder, "MAX_PAYLOAD_BYTES", 10)  # each drop is refused as too large
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    for number in range(3):
        drop(outbox, "big.xml", f"<drop{number}>more than ten bytes</drop{number}>".encode())
        integration.outbox_once()
    failed = outbox / "failed"
    kept = sorted(p.read_bytes() for p in failed.glob("*.xml"))
    assert [content[:7] for content in kept] == [b"<drop0>", b"<drop1>", b"<drop2>"]
    assert len(list(failed.glob("*.error.txt"))) == 3


def test_while_inbox_files_are_written_the_store_serves_others(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An inbox on a slow network share must not stall the server: on SQLite every unit of
    # work of the process waited for the files while the write held the store's one writer.
    import threading

    from meldingstjener.integration import folder

    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Sakte deling"), actor="t")
    pair.run()
    served: list[bool] = []
    real_write = folder.write_temporary

    def slow_share(folder: int, name: str, data: object, **kwargs: int) -> str:
        if not served:

            def other_work() -> None:
                with pair.hospital.store.unit_of_work() as uow:
                    uow.state.set("probe", "another thread's write")
                    uow.commit()

            other = threading.Thread(target=other_work)
            others.append(other)
            other.start()
            other.join(timeout=20)  # a bound: it either gets through or waits on this write
            served.append(not other.is_alive())
        return real_write(folder, name, data, **kwargs)  # type: ignore[arg-type]

    others: list[threading.Thread] = []
    monkeypatch.setattr(folder, "write_temporary", slow_share)
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=tmp_path / "inn"))
    assert integration.inbox_once() == 1
    for other in others:
        other.join()
    assert served == [True]
    [received] = pair.inbound_messages(pair.hospital)
    assert pair.message(pair.hospital, received.id).status == "delivered"


@pytest.mark.parametrize("pair", ["postgresql"], indirect=True)
def test_on_postgresql_a_second_process_waits_for_the_first_ones_write(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The overlap the row lock is for: the second process reaches the message while the first
    # is writing its files. It must wait (seen in pg_stat_activity), then write nothing.
    import threading

    from sqlalchemy import text

    from meldingstjener.integration import folder

    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Samtidig"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    inbox = tmp_path / "inn"
    first = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    second = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    writing, go_on = threading.Event(), threading.Event()
    writers: list[str] = []
    real_write = folder.write_temporary

    def held_write(folder: int, name: str, data: object, **kwargs: int) -> str:
        writers.append(threading.current_thread().name)
        if threading.current_thread().name == "first" and name.endswith(".json"):
            writing.set()
            assert go_on.wait(60)
        return real_write(folder, name, data, **kwargs)  # type: ignore[arg-type]

    def waiting_on_a_lock() -> int:
        with pair.hospital.store.unit_of_work() as uow:
            return int(
                uow.session.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
            )

    monkeypatch.setattr(folder, "write_temporary", held_write)
    a = threading.Thread(target=first.write_inbox, args=(row,), name="first")
    b = threading.Thread(target=second.write_inbox, args=(row,), name="second")
    a.start()
    try:
        assert writing.wait(60)
        b.start()
        deadline = time.monotonic() + 60
        while waiting_on_a_lock() == 0:  # polling another session's state: nothing to wait on
            assert time.monotonic() < deadline, "the second process did not wait"
            time.sleep(0.02)
    finally:
        go_on.set()
        a.join(timeout=60)
        if b.ident is not None:  # started
            b.join(timeout=60)
    assert writers == ["first", "first"]  # the sidecar and the document, once
    assert pair.message(pair.hospital, row.id).status == "delivered"


def open_alerts(pair: Pair, kind: str, site: str = "gp") -> list[AlertRow]:
    with getattr(pair, site).store.unit_of_work() as uow:
        return uow.alerts.list(open_only=True, kind=kind)


def set_agreements(pair: Pair, state: str) -> None:
    with pair.gp.store.unit_of_work() as uow:
        for agreement in uow.session.scalars(select(AgreementRow)):
            agreement.state = state
        uow.commit()


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_refused_file_raises_an_alert_that_names_no_file(pair: Pair, tmp_path: Path) -> None:
    # An EPJ that does not watch failed/ must not leave a refused message unseen.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "Kari Nordmann.xml", b"<MsgHead>not a message")
    (outbox / "a folder.xml").mkdir()  # not a file: passed over without a word
    integration.outbox_once()
    [alert] = open_alerts(pair, "outbox-refused")
    assert "invalid-message" in alert.summary and "failed/" in alert.summary
    assert "Kari" not in alert.summary
    explanation = (outbox / "failed" / "Kari Nordmann.xml.error.txt").read_text()
    assert explanation.split("File key ")[1][:12] in alert.summary  # the operator finds it
    with pair.gp.store.unit_of_work() as uow:
        [row] = uow.session.scalars(select(FolderFileRow))
    assert "Kari" not in row.file_name  # the store keeps a digest of the name, not the name


def held_file(
    pair: Pair, outbox: Path, text: str, **settings: int
) -> tuple[FolderIntegration, Ticks]:
    """An outbox whose ``a.xml`` is held: its agreement suspended, one round run."""
    ticks = Ticks()
    integration = FolderIntegration(
        pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0, **settings), monotonic=ticks
    )
    set_agreements(pair, "suspended")
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, text))
    integration.outbox_once()
    return integration, ticks


def test_a_file_refused_for_its_receivers_setup_waits_in_the_outbox_and_goes_when_mended(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The EPJ sends to a partner whose agreement is not active yet: the operator is told at
    # once and activates it; the file goes within a minute, nobody drops it again.
    outbox = tmp_path / "ut"
    integration, ticks = held_file(pair, outbox, "Venter")
    assert (outbox / "a.xml").exists()
    assert list((outbox / "failed").iterdir()) == []
    [held] = open_alerts(pair, "outbox-held")
    assert "agreement-not-active" in held.summary and "60 minutes" in held.summary
    ticks.now += 30
    spooled: list[object] = []
    with monkeypatch.context() as patched:
        real_spool = PayloadStore.spool
        patched.setattr(PayloadStore, "spool", lambda self: spooled.append(1) or real_spool(self))
        integration.outbox_once()  # not due again yet: neither read, tried nor counted
    assert spooled == []
    assert open_alerts(pair, "outbox-held")[0].count == 1
    set_agreements(pair, "active")
    ticks.now += 31
    integration.outbox_once()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert len(outbound(pair)) == 1
    assert open_alerts(pair, "outbox-held") == []
    assert open_alerts(pair, "outbox-refused") == []


def test_a_file_for_a_receiver_the_register_has_inactive_waits_until_it_is_active(
    pair: Pair, tmp_path: Path
) -> None:
    # A refusal by the register's state is about the receiver's setup: held and said at once,
    # sent when a sync has the party active again; never sent while it is inactive.
    outbox = tmp_path / "ut"
    ticks = Ticks()
    integration = FolderIntegration(
        pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0), monotonic=ticks
    )
    set_receiver_active(pair, False)
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Inaktiv"))
    integration.outbox_once()
    assert (outbox / "a.xml").exists() and outbound(pair) == []
    [held] = open_alerts(pair, "outbox-held")
    assert "receiver-inactive" in held.summary and "inactive in the address register" in (
        held.summary
    )
    set_receiver_active(pair, True)
    ticks.now += 61
    integration.outbox_once()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert len(outbound(pair)) == 1 and open_alerts(pair, "outbox-held") == []


def set_receiver_active(pair: Pair, active: bool) -> None:
    with pair.gp.store.unit_of_work() as uow:
        receiver = uow.parties.get(HOSPITAL_SERVICE_HER)
        assert receiver is not None
        receiver.active = active
        uow.commit()


def test_a_held_file_is_refused_when_its_hold_runs_out(pair: Pair, tmp_path: Path) -> None:
    outbox = tmp_path / "ut"
    integration, ticks = held_file(pair, outbox, "For lenge", hold_minutes=30)
    assert open_alerts(pair, "outbox-held")
    pair.clock.advance(minutes=29)
    ticks.now += 29 * 60
    integration.outbox_once()
    assert (outbox / "a.xml").exists()
    pair.clock.advance(minutes=1)
    ticks.now += 60
    integration.outbox_once()
    assert sorted(p.name for p in (outbox / "failed").iterdir()) == ["a.xml", "a.xml.error.txt"]
    assert open_alerts(pair, "outbox-held") == []
    [refused] = open_alerts(pair, "outbox-refused")
    assert "agreement-not-active" in refused.summary
    assert outbound(pair) == []


def test_a_message_refusal_is_not_held(pair: Pair, tmp_path: Path) -> None:
    # Only the receiver's setup can change; a message that addresses a HER-id that is not ours
    # as sender is refused at once.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "a.xml", dialog_note(pair.hospital_site, pair.gp_site, "Feil avsender"))
    integration.outbox_once()
    assert (outbox / "failed" / "a.xml").exists()
    [refused] = open_alerts(pair, "outbox-refused")
    assert "inconsistent-addressing" in refused.summary
    assert open_alerts(pair, "outbox-held") == []


def test_a_file_written_in_place_is_taken_once_it_has_settled(pair: Pair, tmp_path: Path) -> None:
    # An EPJ that writes the file under its final name: half a file must not be refused.
    outbox = tmp_path / "ut"
    ticks = Ticks()
    integration = FolderIntegration(
        pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=5), monotonic=ticks
    )
    note = dialog_note(pair.gp_site, pair.hospital_site, "Skrives sakte")
    target = outbox / "a.xml"
    target.write_bytes(note[:100])
    integration.outbox_once()
    ticks.now += 4
    with target.open("ab") as handle:
        handle.write(note[100:200])
    integration.outbox_once()
    ticks.now += 4  # 8 s since first seen, 4 s since it changed
    integration.outbox_once()
    with target.open("ab") as handle:
        handle.write(note[200:])
    ticks.now += 6
    integration.outbox_once()  # changed again: seen anew
    assert target.exists() and list((outbox / "failed").iterdir()) == []
    ticks.now += 5
    integration.outbox_once()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert len(outbound(pair)) == 1


def test_a_file_written_to_while_it_is_read_is_taken_in_a_later_round(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    note = dialog_note(pair.gp_site, pair.hospital_site, "Midt i")
    target = outbox / "a.xml"
    target.write_bytes(note[:100])
    real_write_from = Spool.write_from

    def the_epj_writes_on(self: Spool, source: BinaryIO) -> None:
        real_write_from(self, source)
        with target.open("ab") as handle:
            handle.write(note[100:])

    with monkeypatch.context() as patched:
        patched.setattr(Spool, "write_from", the_epj_writes_on)
        integration.outbox_once()
    assert target.exists() and list((outbox / "failed").iterdir()) == []
    integration.outbox_once()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert len(outbound(pair)) == 1


def test_a_file_that_cannot_be_moved_raises_outbox_stuck_until_it_goes(
    pair: Pair, tmp_path: Path
) -> None:
    # sent/ is not a directory (a share mounted wrong): the file is sent once, cannot leave the
    # outbox, and every round fails. After three rounds the operator is told; the alert ends
    # when the file has gone, also for a process started after it was raised.
    outbox = tmp_path / "ut"
    settings = FolderSettings(outbox_dir=outbox, settle_seconds=0)
    integration = FolderIntegration(pair.gp, settings)
    meanwhile = FolderIntegration(pair.gp, settings)  # another process, not run yet
    (outbox / "sent").rmdir()
    (outbox / "sent").write_bytes(b"")
    drop(outbox, "Ola Nordmann.xml", dialog_note(pair.gp_site, pair.hospital_site, "Fast"))
    for _ in range(2):
        integration.outbox_once()
    assert open_alerts(pair, "outbox-stuck") == []
    integration.outbox_once()
    [stuck] = open_alerts(pair, "outbox-stuck")
    assert "Ola" not in stuck.summary and "3 rounds" in stuck.summary
    integration.outbox_once()
    assert open_alerts(pair, "outbox-stuck")[0].count == 1  # raised once, not every round
    assert len(outbound(pair)) == 1
    meanwhile.outbox_once()  # a process whose own rounds just began: still stuck
    assert len(open_alerts(pair, "outbox-stuck")) == 1
    (outbox / "sent").unlink()
    (outbox / "sent").mkdir()
    later = FolderIntegration(pair.gp, settings)
    later.outbox_once()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["Ola Nordmann.xml"]
    assert open_alerts(pair, "outbox-stuck") == []
    assert len(outbound(pair)) == 1


def test_a_missing_sent_folder_is_no_file_taken_away(pair: Pair, tmp_path: Path) -> None:
    # sent/ removed by someone: the move fails with "no such file" while the file is still
    # there; that is a stuck file, not one another process took.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    (outbox / "sent").rmdir()
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Borte"))
    for _ in range(3):
        integration.outbox_once()
    assert open_alerts(pair, "outbox-stuck")
    assert len(outbound(pair)) == 1


def test_an_outbox_folder_that_cannot_be_listed_raises_outbox_stuck(
    pair: Pair, tmp_path: Path
) -> None:
    # The share is not mounted: every round fails before any file is seen.
    outbox = tmp_path / "share" / "ut"
    for folder in (outbox, tmp_path / "sent", tmp_path / "failed"):
        folder.mkdir(parents=True)
    settings = FolderSettings(
        outbox_dir=outbox,
        sent_dir=tmp_path / "sent",
        failed_dir=tmp_path / "failed",
        settle_seconds=0,
    )
    integration = FolderIntegration(pair.gp, settings)
    outbox.rmdir()
    for _ in range(3):
        assert integration.outbox_once() == 0
    [stuck] = open_alerts(pair, "outbox-stuck")
    assert "could not be listed" in stuck.summary
    outbox.mkdir()
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Tilbake"))
    integration.outbox_once()
    assert open_alerts(pair, "outbox-stuck") == []
    assert len(outbound(pair)) == 1


def test_an_own_folder_that_cannot_be_made_sends_nothing_and_raises_outbox_stuck(
    pair: Pair, tmp_path: Path
) -> None:
    # A file named .meldingstjener in the outbox: no file could be moved out of the outbox,
    # yet every file was sent, and then stayed in the outbox (sent) until it was stuck.
    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    (outbox / ".meldingstjener").write_bytes(b"not a folder")
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Venter"))
    for _ in range(3):
        assert integration.outbox_once() == 0
    assert outbound(pair) == []
    assert (outbox / "a.xml").exists()
    [stuck] = open_alerts(pair, "outbox-stuck")
    assert "own folder" in stuck.summary and ".meldingstjener" in stuck.summary
    (outbox / ".meldingstjener").unlink()
    assert integration.outbox_once() == 1
    assert len(outbound(pair)) == 1
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert open_alerts(pair, "outbox-stuck") == []


def test_a_held_file_removed_or_written_again_is_held_no_more(pair: Pair, tmp_path: Path) -> None:
    outbox = tmp_path / "ut"
    integration, ticks = held_file(pair, outbox, "Første")
    [first] = open_alerts(pair, "outbox-held")
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Andre"))  # rewritten
    ticks.now += 61
    integration.outbox_once()
    [second] = open_alerts(pair, "outbox-held")
    assert second.dedup_key != first.dedup_key  # the first file's alert ended with it
    (outbox / "a.xml").unlink()  # the operator took it away
    integration.outbox_once()
    assert open_alerts(pair, "outbox-held") == []


def test_a_refusal_whose_alert_could_not_be_stored_is_refused_and_alerted_again(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refusal's outcome and its alert commit together: a failure between them left the
    # file marked failed and the refusal never told.
    from meldingstjener.integration import folder

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "a.xml", b"<MsgHead>not a message")
    real_raise = folder.raise_alert

    def database_gone(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(folder, "raise_alert", database_gone)
    integration.outbox_once()
    assert (outbox / "a.xml").exists()
    monkeypatch.setattr(folder, "raise_alert", real_raise)
    integration.outbox_once()
    assert (outbox / "failed" / "a.xml").exists()
    assert len(open_alerts(pair, "outbox-refused")) == 1


def test_a_stuck_file_resolved_by_hand_is_alerted_again_while_it_stays_stuck(
    pair: Pair, tmp_path: Path
) -> None:
    from meldingstjener.integration.folder import STUCK_REREAD_ROUNDS

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    (outbox / "sent").rmdir()
    (outbox / "sent").write_bytes(b"")
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Fast"))
    for _ in range(3):
        integration.outbox_once()
    [stuck] = open_alerts(pair, "outbox-stuck")
    with pair.gp.store.unit_of_work() as uow:
        uow.alerts.close(stuck.id, by="kari")
        uow.commit()
    for _ in range(STUCK_REREAD_ROUNDS):
        integration.outbox_once()
    [again] = open_alerts(pair, "outbox-stuck")
    assert again.id == stuck.id and again.acknowledged_by is None


def test_a_held_file_written_again_and_sent_ends_the_first_ones_alert(
    pair: Pair, tmp_path: Path
) -> None:
    outbox = tmp_path / "ut"
    integration, _ = held_file(pair, outbox, "Første")
    assert len(open_alerts(pair, "outbox-held")) == 1
    set_agreements(pair, "active")
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Andre"))
    integration.outbox_once()  # the new version goes at once
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert open_alerts(pair, "outbox-held") == []


def test_a_refusal_for_good_yields_to_a_send_that_went_through(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the end of a hold, process B's submit goes through while process A was refused: A must
    # not move the file to failed/ saying nothing was sent (the EPJ would send it again).
    from meldingstjener.engine.errors import SubmitRejected
    from meldingstjener.integration import folder

    outbox = tmp_path / "ut"
    first = FolderIntegration(
        pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0, hold_minutes=0)
    )
    second = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    drop(outbox, "a.xml", dialog_note(pair.gp_site, pair.hospital_site, "Samtidig"))

    def died_before_marking(*args: object, **kwargs: object) -> str:
        raise SystemExit("process B stops here")

    with monkeypatch.context() as patched:
        patched.setattr(FolderIntegration, "_mark", died_before_marking)
        with pytest.raises(SystemExit):
            second.outbox_once()
    [message] = outbound(pair)
    with pair.gp.store.unit_of_work() as uow:
        [row] = uow.session.scalars(select(FolderFileRow))
    assert row.outcome == "pending"

    def refused_for_good(*args: object, **kwargs: object) -> str:
        raise SubmitRejected("agreement-not-active", "refused")

    with monkeypatch.context() as patched:  # A's verdict, not seeing B's message (the race)
        patched.setattr(FolderIntegration, "_submitted_before", lambda self, key: None)
        patched.setattr(folder, "submit", refused_for_good)
        first.outbox_once()
    assert (outbox / "a.xml").exists()
    assert not (outbox / "failed" / "a.xml").exists()
    assert list((outbox / "failed").iterdir()) == []
    assert open_alerts(pair, "outbox-refused") == []
    first.outbox_once()
    assert [p.name for p in (outbox / "sent").iterdir()] == ["a.xml"]
    assert [m.id for m in outbound(pair)] == [message.id]


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_on_sqlite_a_message_read_through_the_api_meanwhile_gets_no_inbox_files(
    api_pair: ApiPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inbox has found the message still to be written when the EPJ fetches it through the
    # API and marks it read, before the inbox writes its files: they must not appear (the EPJ
    # would take the message twice).
    pair = api_pair.pair
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "To kanaler"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    payloads = pair.hospital.store.payloads
    real_open = payloads.open
    marked: list[int] = []

    def read_through_the_api_first(*args: object, **kwargs: object) -> object:
        # the inbox opens the stored document to write it out: the store is free again (the
        # inbox asked it in a unit of work of its own) and the API gets there first
        if not marked:
            headers = {"Authorization": f"Bearer {api_pair.hospital_key}"}
            marked.append(
                api_pair.hospital_http.put(
                    f"/Messages/{row.id}/read/{HOSPITAL_SERVICE_HER}", headers=headers
                ).status_code
            )
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(payloads, "open", read_through_the_api_first)
    inbox = tmp_path / "inn"
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    integration.inbox_once()
    assert marked == [204]
    assert list(inbox.iterdir()) == []  # neither the files nor their temporary names
    assert pair.message(pair.hospital, row.id).status == "delivered"
    with pair.hospital.store.unit_of_work() as uow:
        assert list(uow.session.scalars(select(FolderFileRow))) == []


def sent_contents(pair: Pair) -> dict[str, bytes]:
    """What each outbound message carried, by the SHA-256 of its business message."""
    return {
        str(m.payload_sha256): pair.gp.store.payloads.read_bytes(str(m.payload_ref))
        for m in outbound(pair)
    }


def assert_every_file_in_sent_was_sent(pair: Pair, sent: Path) -> None:
    contents = sent_contents(pair)
    for moved in sent.iterdir():
        digest = hashlib.sha256(moved.read_bytes()).hexdigest()
        assert digest in contents, f"sent/{moved.name} was never sent"


def test_a_file_renamed_onto_the_name_of_one_being_sent_is_not_moved_unsent(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The EPJ drops its next message under the same name while the first is submitted (schema
    # validation takes seconds). The file at the name is now the second: it must not be moved
    # to sent/ (it was never sent) but stay in the outbox and go in a later round.
    from meldingstjener.integration import folder

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    first = dialog_note(pair.gp_site, pair.hospital_site, "FØRSTE")
    second = dialog_note(pair.gp_site, pair.hospital_site, "ANDRE")
    drop(outbox, "pasient.xml", first)
    real_submit = folder.submit

    def the_epj_drops_the_next(*args: object, **kwargs: object) -> str:
        message_id = real_submit(*args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(folder, "submit", real_submit)
        drop(outbox, "pasient.xml", second)
        return message_id

    monkeypatch.setattr(folder, "submit", the_epj_drops_the_next)
    integration.outbox_once()
    assert (outbox / "pasient.xml").read_bytes() == second
    assert list((outbox / "sent").iterdir()) == []  # the one sent was replaced by the EPJ
    integration.outbox_once()
    assert sorted(sent_contents(pair).values()) == sorted([first, second])
    assert [p.read_bytes() for p in (outbox / "sent").iterdir()] == [second]
    assert_every_file_in_sent_was_sent(pair, outbox / "sent")
    assert not (outbox / "pasient.xml").exists()


def test_a_file_renamed_onto_the_name_of_one_being_refused_is_not_moved_to_failed(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meldingstjener.engine.errors import SubmitRejected
    from meldingstjener.integration import folder

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    second = dialog_note(pair.gp_site, pair.hospital_site, "ANDRE")
    drop(outbox, "pasient.xml", b"<MsgHead>not a message")
    real_submit = folder.submit

    def the_epj_drops_the_next(*args: object, **kwargs: object) -> str:
        monkeypatch.setattr(folder, "submit", real_submit)
        try:
            return real_submit(*args, **kwargs)  # type: ignore[arg-type]
        except SubmitRejected:
            drop(outbox, "pasient.xml", second)
            raise

    monkeypatch.setattr(folder, "submit", the_epj_drops_the_next)
    integration.outbox_once()
    failed = outbox / "failed"
    assert [p.name for p in failed.iterdir()] == ["pasient.xml.error.txt"]  # of the refused one
    assert (outbox / "pasient.xml").read_bytes() == second
    integration.outbox_once()
    assert list(sent_contents(pair).values()) == [second]
    assert [p.read_bytes() for p in (outbox / "sent").iterdir()] == [second]
    assert [p.name for p in failed.iterdir()] == ["pasient.xml.error.txt"]


def test_a_file_put_back_while_its_name_is_taken_again_waits_and_is_sent(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file found at the name is not the one read, and by the time it is to go back the EPJ
    # has dropped a third under that name: neither replaces the other, and each is sent.
    from meldingstjener.integration import folder, outbox_moves

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    notes = [dialog_note(pair.gp_site, pair.hospital_site, f"Nummer {n}") for n in range(3)]
    drop(outbox, "pasient.xml", notes[0])
    real_submit, real_same_file = folder.submit, outbox_moves.same_file

    def the_second(*args: object, **kwargs: object) -> str:
        monkeypatch.setattr(folder, "submit", real_submit)
        message_id = real_submit(*args, **kwargs)  # type: ignore[arg-type]
        drop(outbox, "pasient.xml", notes[1])
        return message_id

    def the_third(seen: os.stat_result, read: os.stat_result) -> bool:
        monkeypatch.setattr(outbox_moves, "same_file", real_same_file)
        drop(outbox, "pasient.xml", notes[2])  # the name is free: the second is being moved
        return real_same_file(seen, read)

    monkeypatch.setattr(folder, "submit", the_second)
    monkeypatch.setattr(outbox_moves, "same_file", the_third)
    integration.outbox_once()
    assert (outbox / "pasient.xml").read_bytes() == notes[2]
    for _ in range(3):
        integration.outbox_once()
    assert sorted(sent_contents(pair).values()) == sorted(notes)
    assert sorted(p.read_bytes() for p in (outbox / "sent").iterdir()) == sorted(notes[1:])
    assert_every_file_in_sent_was_sent(pair, outbox / "sent")
    assert not list(outbox.glob("*.xml"))
    assert [p.name for p in (outbox / ".meldingstjener").iterdir()] == ["turn.lock"]


def test_a_file_whose_time_alone_changes_while_it_is_sent_is_moved_to_sent_once(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An antivirus scan, a touch or an SMB client setting the time as it closes the file
    # changes its time alone while it is submitted. It was put back in the outbox, and its key
    # (which holds its time) was new to the next round: the same content was sent twice.
    from meldingstjener.integration import folder

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    note = dialog_note(pair.gp_site, pair.hospital_site, "Rørt, ikke endret")
    drop(outbox, "pasient.xml", note)
    real_submit = folder.submit

    def touched_meanwhile(*args: object, **kwargs: object) -> str:
        monkeypatch.setattr(folder, "submit", real_submit)
        message_id = real_submit(*args, **kwargs)  # type: ignore[arg-type]
        later = time.time_ns() + 5_000_000_000
        os.utime(outbox / "pasient.xml", ns=(later, later))
        return message_id

    monkeypatch.setattr(folder, "submit", touched_meanwhile)
    integration.outbox_once()
    integration.outbox_once()
    assert len(outbound(pair)) == 1  # one message, not the same content twice
    assert [p.read_bytes() for p in (outbox / "sent").iterdir()] == [note]
    assert not (outbox / "pasient.xml").exists()


def test_a_file_written_over_in_place_while_it_is_sent_stays_and_is_sent_as_it_is_now(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same inode with other content (of the same size): not what was sent, so it is not
    # moved to sent/ as if it were; it stays and the next round sends what it holds now.
    from meldingstjener.integration import folder

    outbox = tmp_path / "ut"
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox, settle_seconds=0))
    first = dialog_note(pair.gp_site, pair.hospital_site, "FORSTE")
    second = dialog_note(pair.gp_site, pair.hospital_site, "ANDRE!")
    assert len(first) == len(second)
    drop(outbox, "pasient.xml", first)
    real_submit = folder.submit

    def written_over_meanwhile(*args: object, **kwargs: object) -> str:
        monkeypatch.setattr(folder, "submit", real_submit)
        message_id = real_submit(*args, **kwargs)  # type: ignore[arg-type]
        status = os.stat(outbox / "pasient.xml")
        with open(outbox / "pasient.xml", "r+b") as handle:  # in place: the same inode
            handle.write(second)
        os.utime(outbox / "pasient.xml", ns=(status.st_atime_ns, status.st_mtime_ns + 1000))
        return message_id

    monkeypatch.setattr(folder, "submit", written_over_meanwhile)
    integration.outbox_once()
    assert (outbox / "pasient.xml").read_bytes() == second
    assert list((outbox / "sent").iterdir()) == []
    integration.outbox_once()
    assert len(outbound(pair)) == 2
    assert sorted(sent_contents(pair).values()) == sorted([first, second])
    assert [p.read_bytes() for p in (outbox / "sent").iterdir()] == [second]


def hospital_outbound(pair: Pair) -> list[MessageRow]:
    with pair.hospital.store.unit_of_work() as uow:
        return uow.messages.search(LogFilter(direction="out", limit=100))


def test_as_her_ids_bounds_what_the_outbox_sends_as(pair: Pair, tmp_path: Path) -> None:
    # The folder acts for the hospital's organisation only ([folder] as_her_ids); another EPJ
    # serves its service (through the API). A file sent as the service is refused at once:
    # the folder's EPJ must not send in the other's name.
    outbox = tmp_path / "ut"
    settings = FolderSettings(outbox_dir=outbox, settle_seconds=0, as_her_ids=[HOSPITAL_HER])
    integration = FolderIntegration(pair.hospital, settings)
    assert pair.hospital_site.address_her_id == HOSPITAL_SERVICE_HER
    drop(outbox, "a.xml", dialog_note(pair.hospital_site, pair.gp_site, "Som tjenesten"))
    integration.outbox_once()
    assert hospital_outbound(pair) == []
    assert sorted(p.name for p in (outbox / "failed").iterdir()) == ["a.xml", "a.xml.error.txt"]
    explanation = (outbox / "failed" / "a.xml.error.txt").read_text()
    assert "not-allowed" in explanation and HOSPITAL_SERVICE_HER in explanation
    assert "as_her_ids" in explanation
    [refused] = open_alerts(pair, "outbox-refused", "hospital")
    assert "not-allowed" in refused.summary
    # the folder of the service sends as the service
    other = tmp_path / "ut2"
    other.mkdir()
    served = FolderSettings(outbox_dir=other, settle_seconds=0, as_her_ids=[HOSPITAL_SERVICE_HER])
    service_folder = FolderIntegration(pair.hospital, served)
    drop(other, "a.xml", dialog_note(pair.hospital_site, pair.gp_site, "Som tjenesten"))
    service_folder.outbox_once()
    assert [m.from_her_id for m in hospital_outbound(pair)] == [HOSPITAL_SERVICE_HER]


def test_an_apprec_from_the_outbox_answers_only_a_message_the_folder_acts_for(
    pair: Pair, tmp_path: Path
) -> None:
    # The folder acts for the hospital's organisation only; a message was sent to its service
    # (another EPJ's). An AppRec dropped as the organisation, answering it, matches it (the one
    # message of that MsgId from the GP) but is refused: the message would leave the other
    # EPJ's inbox, and the GP hear "rejected".
    import dataclasses

    from meldingstjener.formats import AppRecError, AppRecStatus, build_apprec, read_msghead

    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til tjenesten"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    assert row.to_her_id == HOSPITAL_SERVICE_HER
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(row.payload_ref)))
    receiver = original.msg_info.receiver
    without_service = dataclasses.replace(
        receiver, organisation=dataclasses.replace(receiver.organisation, organisation=None)
    )
    as_the_organisation = dataclasses.replace(
        original, msg_info=dataclasses.replace(original.msg_info, receiver=without_service)
    )
    document = build_apprec(
        as_the_organisation,
        status=AppRecStatus.REJECTED,
        errors=[AppRecError.of("X99", "ikke vår")],
        version="1.0",
    )
    outbox = tmp_path / "ut"
    settings = FolderSettings(outbox_dir=outbox, settle_seconds=0, as_her_ids=[HOSPITAL_HER])
    integration = FolderIntegration(pair.hospital, settings)
    drop(outbox, "apprec.xml", document)
    integration.outbox_once()
    assert hospital_outbound(pair) == []
    assert pair.message(pair.hospital, row.id).status == row.status
    explanation = (outbox / "failed" / "apprec.xml.error.txt").read_text()
    assert "not-allowed" in explanation and HOSPITAL_SERVICE_HER in explanation
