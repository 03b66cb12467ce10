"""Folder integration whose folders are not there (a share not mounted or unmounted, a typo):
the server makes no folder the configuration names, nor its parents. Made on the local disk, the
inbox would take received messages, each marked delivered to the EPJ, that the EPJ never sees
(and hides under the share when it is mounted again). A missing inbox keeps its messages
waiting and says so in an alert.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from engine_pair import Pair

from meldingstjener.config import FolderSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.folder import FolderIntegration
from meldingstjener.integration.folder_checks import missing_folders
from meldingstjener.store.tables import AlertRow, MessageRow


def received(pair: Pair) -> MessageRow:
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    return row


def open_alerts(pair: Pair, kind: str, site: str = "hospital") -> list[AlertRow]:
    with getattr(pair, site).store.unit_of_work() as uow:
        return uow.alerts.list(open_only=True, kind=kind)


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("key", "settings"),
    [
        ("folder.inbox_dir", {"inbox_dir": "share/epj/inn"}),
        ("folder.outbox_dir", {"outbox_dir": "share/epj/ut"}),
        ("folder.sent_dir", {"outbox_dir": "ut", "sent_dir": "share/sendt"}),
        ("folder.failed_dir", {"outbox_dir": "ut", "failed_dir": "share/feilet"}),
    ],
)
def test_a_folder_that_is_not_there_at_start_is_named_and_not_made(
    pair: Pair, tmp_path: Path, key: str, settings: dict[str, str]
) -> None:
    (tmp_path / "ut").mkdir()
    folders = FolderSettings(**{name: tmp_path / path for name, path in settings.items()})
    [problem] = missing_folders(folders)
    assert problem.startswith(f"{key}: ") and " does not exist;" in problem
    integration = FolderIntegration(pair.hospital, folders)  # starts all the same
    for _ in range(3):
        integration.run_once()
    assert not (tmp_path / "share").exists()
    # in an outbox that is there, only the default one of sent/ and failed/ and its own folder
    made = {path.name for path in (tmp_path / "ut").iterdir()}
    assert made <= {"sent", "failed", ".meldingstjener"}


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_an_inbox_not_there_at_start_waits_for_it_with_an_alert(pair: Pair, tmp_path: Path) -> None:
    inbox = tmp_path / "share" / "epj" / "inn"  # a share mounted late at boot
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    row = received(pair)
    assert integration.inbox_once() == 0
    assert not (tmp_path / "share").exists()
    assert pair.message(pair.hospital, row.id).status == "acknowledged"  # not delivered
    [alert] = open_alerts(pair, "folder-unsafe")
    assert "does not exist" in alert.summary
    inbox.mkdir(parents=True)  # mounted
    assert integration.inbox_once() == 1
    assert pair.message(pair.hospital, row.id).status == "delivered"


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_a_file_in_place_of_the_inbox_at_start_is_named(pair: Pair, tmp_path: Path) -> None:
    inbox = tmp_path / "inn"
    inbox.write_bytes(b"")
    [problem] = missing_folders(FolderSettings(inbox_dir=inbox))
    assert problem.startswith("folder.inbox_dir: ") and " is not a folder;" in problem


def test_sent_and_failed_are_made_in_an_outbox_that_is_there(pair: Pair, tmp_path: Path) -> None:
    outbox = tmp_path / "ut"
    outbox.mkdir()
    FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox))
    assert sorted(p.name for p in outbox.iterdir()) == ["failed", "sent"]


def test_an_inbox_gone_while_serving_is_not_made_its_message_waits_and_an_alert_says_so(
    pair: Pair, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    inbox = share / "epj" / "inn"
    inbox.mkdir(parents=True)
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    shutil.rmtree(share)  # the share is unmounted
    row = received(pair)
    for _ in range(2):
        assert integration.inbox_once() == 0
    assert not share.exists()  # neither the inbox nor its parents made
    assert pair.message(pair.hospital, row.id).status == "acknowledged"  # not delivered
    [alert] = open_alerts(pair, "folder-unsafe")
    assert "inbox" in alert.summary and str(inbox) in alert.summary
    assert "does not exist" in alert.summary and "not delivered" in alert.summary
    assert alert.count == 1  # said once, not every round
    inbox.mkdir(parents=True)  # mounted again
    assert integration.inbox_once() == 1
    assert sorted(p.name for p in inbox.iterdir()) == [f"{row.id}.json", f"{row.id}.xml"]
    assert pair.message(pair.hospital, row.id).status == "delivered"
    assert open_alerts(pair, "folder-unsafe") == []


def test_a_file_in_place_of_the_inbox_is_not_written_and_an_alert_says_so(
    pair: Pair, tmp_path: Path
) -> None:
    inbox = tmp_path / "inn"
    inbox.mkdir()
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    inbox.rmdir()
    inbox.write_bytes(b"")
    row = received(pair)
    assert integration.inbox_once() == 0
    assert inbox.read_bytes() == b""
    assert pair.message(pair.hospital, row.id).status == "acknowledged"
    [alert] = open_alerts(pair, "folder-unsafe")
    assert "is not a folder" in alert.summary
    inbox.unlink()
    inbox.mkdir()
    assert integration.inbox_once() == 1
    assert pair.message(pair.hospital, row.id).status == "delivered"
    assert open_alerts(pair, "folder-unsafe") == []


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_an_outbox_gone_while_serving_is_not_made_again(pair: Pair, tmp_path: Path) -> None:
    share = tmp_path / "share"
    outbox = share / "ut"
    outbox.mkdir(parents=True)
    integration = FolderIntegration(pair.gp, FolderSettings(outbox_dir=outbox))
    shutil.rmtree(share)
    for _ in range(3):
        assert integration.run_once() == 0
    assert not share.exists()
    assert len(open_alerts(pair, "outbox-stuck", "gp")) == 1
