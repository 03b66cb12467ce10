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

from meldingstjener.config import ConfigError, FolderSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.folder import FolderIntegration
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
def test_a_folder_that_is_not_there_at_start_is_a_configuration_error_and_not_made(
    pair: Pair, tmp_path: Path, key: str, settings: dict[str, str]
) -> None:
    (tmp_path / "ut").mkdir()
    folders = FolderSettings(**{name: tmp_path / path for name, path in settings.items()})
    with pytest.raises(ConfigError, match=rf"^{key}: .* does not exist;"):
        FolderIntegration(pair.hospital, folders)
    assert not (tmp_path / "share").exists()
    assert list((tmp_path / "ut").iterdir()) == []


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_a_file_in_place_of_the_inbox_at_start_is_a_configuration_error(
    pair: Pair, tmp_path: Path
) -> None:
    inbox = tmp_path / "inn"
    inbox.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^folder.inbox_dir: .* is not a folder;"):
        FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))


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
