"""Folder integration while the payload share is away (its marker gone under a running serve):
outbox files wait in the outbox, not counted towards ``outbox-stuck``, and received messages
wait for the inbox, with no line per file or message (the ``store-failing`` period tells the
outage once); both go on once the marker is back."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from engine_pair import Pair

from meldingstjener.config import FolderSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.instances import Heartbeat
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.folder import STUCK_AFTER, FolderIntegration
from meldingstjener.store.identity import claim_payload_directory, marker_path


def _open_alert_kinds(pair: Pair) -> list[str]:
    with pair.hospital.store.unit_of_work() as uow:
        return sorted(alert.kind for alert in uow.alerts.list(open_only=True))


def test_the_folders_wait_for_a_lost_payload_share_without_failing(
    pair: Pair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = pair.hospital
    known = claim_payload_directory(ctx.store)  # as serve does at its start
    outbox, inbox = tmp_path / "ut", tmp_path / "inn"
    outbox.mkdir()
    inbox.mkdir()
    settings = FolderSettings(outbox_dir=outbox, inbox_dir=inbox, settle_seconds=0)
    integration = FolderIntegration(ctx, settings)
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    [received] = pair.inbound_messages(ctx)
    assert received.status == "acknowledged"

    heart = Heartbeat(ctx, ctx.instance)
    heart.beat(started=True)
    marker = marker_path(ctx.store.payloads.root)
    marker.unlink()  # the share unmounted
    heart.beat()
    (outbox / ".a.xml.partial").write_bytes(dialog_note(pair.hospital_site, pair.gp_site, "Ut"))
    os.replace(outbox / ".a.xml.partial", outbox / "a.xml")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="meldingstjener"):
        for _ in range(STUCK_AFTER + 2):
            integration.run_once()
    said = [r for r in caplog.records if r.name.startswith("meldingstjener.integration")]
    assert said == []  # nothing per file or message: the store-failing period told it
    assert _open_alert_kinds(pair) == ["store-failing"]  # no outbox-stuck
    assert [path.name for path in outbox.iterdir() if path.is_file()] == ["a.xml"]
    assert list(inbox.iterdir()) == []
    assert pair.message(ctx, received.id).status == "acknowledged"

    marker.write_text(f"{known}\n", encoding="ascii")  # the share mounted again
    heart.beat()
    integration.run_once()
    assert pair.message(ctx, received.id).status == "delivered"
    assert sorted(path.name for path in inbox.iterdir()) == [
        f"{received.id}.json",
        f"{received.id}.xml",
    ]
    assert [path.name for path in (outbox / "sent").iterdir()] == ["a.xml"]
    assert _open_alert_kinds(pair) == []
