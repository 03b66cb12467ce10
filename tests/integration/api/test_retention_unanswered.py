"""Retention of received messages the EPJ takes and never answers with an AppRec, through the
EPJ's own ways of taking them (the API's unread listing and mark-read, the inbox folder), between
two real servers on SQLite and PostgreSQL: one still waiting for the EPJ keeps its content
however old; one it took loses its content after ``payload_days`` (its row after
``message_days``), judged by when it was taken, as an answered one is by when it was answered.
"""

from __future__ import annotations

import base64
from pathlib import Path

from api_sites import ApiPair
from engine_pair import Pair

from meldingstjener.config import FolderSettings, RetentionSettings
from meldingstjener.devsites import HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.engine import retention
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.folder import FolderIntegration

CONTENT_ONLY = RetentionSettings(payload_days=90)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_through_the_api_a_message_keeps_its_content_until_the_epj_has_had_it_long_enough(
    api_pair: ApiPair,
) -> None:
    pair = api_pair.pair
    http = api_pair.hospital_http
    epj = _bearer(api_pair.hospital_key)
    for text in ("Lest og aldri besvart", "Ikke hentet"):
        assert api_pair.post_note(text).status_code == 201
    pair.run()
    listed = http.get("/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER}, headers=epj)
    taken, waiting = (message["id"] for message in listed.json())
    read = http.put(f"/Messages/{taken}/read/{HOSPITAL_SERVICE_HER}", headers=epj)
    assert read.status_code == 204, read.text
    assert pair.message(pair.hospital, taken).status == "delivered"

    pair.clock.advance(days=400)
    report = retention.run(pair.hospital.store, CONTENT_ONLY, now=pair.clock())

    assert report.contents_removed == 1
    gone = http.get(f"/Messages/{taken}/business-document", headers=epj)
    assert gone.status_code == 404 and gone.json()["code"] == "not-found"
    # never marked read: still listed, its document whole, 400 days on
    listed = http.get("/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER}, headers=epj)
    assert [message["id"] for message in listed.json()] == [waiting]
    document = http.get(f"/Messages/{waiting}/business-document", headers=epj)
    assert document.status_code == 200
    assert b"Ikke hentet" in base64.b64decode(document.json()["businessDocument"])
    # taken now: its days start now
    assert http.put(f"/Messages/{waiting}/read/{HOSPITAL_SERVICE_HER}", headers=epj).is_success
    assert retention.run(pair.hospital.store, CONTENT_ONLY, now=pair.clock()).contents_removed == 0
    assert pair.message(pair.hospital, waiting).payload_ref is not None


def test_through_the_inbox_folder_a_message_is_written_before_its_content_goes(
    pair: Pair, tmp_path: Path
) -> None:
    inbox = tmp_path / "inn"
    inbox.mkdir()
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Til mappa"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    rules = RetentionSettings(payload_days=90, message_days=90)

    pair.clock.advance(days=400)  # the inbox folder not read all that time (a share away)
    counted = retention.run(pair.hospital.store, rules, now=pair.clock(), dry_run=True)
    assert (counted.contents_removed, counted.messages_deleted) == (0, 0)
    integration = FolderIntegration(pair.hospital, FolderSettings(inbox_dir=inbox))
    assert integration.inbox_once() == 1
    written = (inbox / f"{row.id}.xml").read_bytes()
    assert written == pair.hospital.store.payloads.read_bytes(str(row.payload_ref))
    assert pair.message(pair.hospital, row.id).status == "delivered"
    assert retention.run(pair.hospital.store, rules, now=pair.clock()).contents_removed == 0

    pair.clock.advance(days=91)  # never answered
    report = retention.run(pair.hospital.store, CONTENT_ONLY, now=pair.clock())

    assert report.contents_removed == 1
    emptied = pair.message(pair.hospital, row.id)
    assert emptied.payload_ref is None and emptied.status == "delivered"
    assert (inbox / f"{row.id}.xml").read_bytes() == written  # the EPJ's copy is its own
    assert integration.inbox_once() == 0  # nothing to write again
    assert retention.run(pair.hospital.store, rules, now=pair.clock()).messages_deleted == 1
