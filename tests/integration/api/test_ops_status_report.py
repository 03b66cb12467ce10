"""The operator API tells what ``meldingstjener status --json`` tells (help-desk finding 10): the
timeline of a message answers the status document as the command line builds it (last error,
receipts with their AppRec codes, alerts, copies), and ``/api/log`` names the copy a message
was sent again as, and the message a copy is of. The timeline had the events alone, and the log
listed a resent original as a plain ``not-delivered``."""

from __future__ import annotations

import json

from api_sites import ApiPair
from test_ops_resend import _bearer, _not_delivered
from typer.testing import CliRunner

from meldingstjener.api.clients import add_client
from meldingstjener.cli import app
from meldingstjener.engine import receipts


def _status_json(api_pair: ApiPair, message_id: str) -> object:
    config = api_pair.pair.gp_site.config_path
    result = CliRunner().invoke(app, ["--config", str(config), "status", message_id, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_timeline_and_the_log_tell_what_status_does(api_pair: ApiPair) -> None:
    pair = api_pair.pair
    original_id = _not_delivered(api_pair)
    _, admin_key = add_client(pair.gp.store, "ops", ["admin"], [])
    http = api_pair.gp_http
    made = http.post(f"/api/messages/{original_id}/resend", headers=_bearer(admin_key))
    assert made.status_code == 201, made.text
    copy_id = made.json()["messageId"]
    pair.run()
    # the hospital's EPJ rejects the copy: its AppRec's codes are in the report, not its words
    [received] = [m for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]
    receipts.deliver(pair.hospital, received.id, actor="epj")
    receipts.send_apprec(
        pair.hospital, received.id, status=2, errors=[("E21", "Dr. X har sluttet")], actor="epj"
    )
    pair.run()

    for message_id in (original_id, copy_id):
        timeline = http.get(f"/api/messages/{message_id}/timeline", headers=_bearer(admin_key))
        assert timeline.status_code == 200, timeline.text
        report = timeline.json()["statusReport"]
        assert report == _status_json(api_pair, message_id)  # one builder, one answer
        assert timeline.json()["sentAgainAs"] == report["sent_again_as"]
        assert timeline.json()["copyOf"] == report["copy_of"]

    original = http.get(f"/api/messages/{original_id}/timeline", headers=_bearer(admin_key))
    report = original.json()["statusReport"]
    assert report["status"] == "not-delivered" and report["sent_again_as"] == copy_id
    assert report["last_error"]["code"] is not None
    assert [alert["kind"] for alert in report["alerts"]] == ["not-delivered"]
    copy = http.get(f"/api/messages/{copy_id}/timeline", headers=_bearer(admin_key)).json()
    report = copy["statusReport"]
    assert report["copy_of"] == original_id
    assert report["receivers"][0]["appRecStatus"] == "Rejected"
    [apprec] = [r for r in report["receipts"] if r["kind"] == "apprec"]
    assert apprec["error_codes"] == ["E21"] and "description" not in apprec
    assert "sluttet" not in json.dumps(copy)
    assert "apprec-rejected" in [alert["kind"] for alert in report["alerts"]]

    log = http.get("/api/log", headers=_bearer(admin_key))
    assert log.status_code == 200, log.text
    listed = {entry["message_id"]: entry for entry in log.json()}
    assert listed[original_id]["sent_again_as"] == copy_id
    assert listed[original_id]["copy_of"] is None
    assert listed[copy_id]["copy_of"] == original_id
    assert listed[copy_id]["sent_again_as"] is None
