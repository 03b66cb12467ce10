"""Operator commands over a real store: alerts, alerts ack and resolve, status; and the certificate
check."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from engine_pair import Pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.certificates import check_certificates
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.resend import Operator, resend


def cli(pair: Pair, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), *args])
    return result.exit_code, result.output


def test_status_alerts_and_ack(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    for _ in range(6):
        pair.run()
        pair.clock.advance(minutes=11)
    code, output = cli(pair, "status", message_id, "--json")
    assert code == 0, output
    status = json.loads(output)
    assert status["status"] == "not-delivered"
    assert status["receivers"] == [
        {"receiverHerId": "8200002", "transportDeliveryState": "Rejected", "appRecStatus": None}
    ]
    assert {a["kind"] for a in status["alerts"]} == {"not-delivered"}

    code, output = cli(pair, "alerts", "--open", "--json")
    alerts = [json.loads(line) for line in output.splitlines()]
    # the partner's unreachable alert was resolved with the give-up: nothing waits for it
    assert code == 0 and {a["kind"] for a in alerts} == {"not-delivered"}
    [not_delivered] = [a for a in alerts if a["kind"] == "not-delivered"]
    code, output = cli(pair, "alerts", "ack", str(not_delivered["id"]), "--by", "kari")
    assert code == 0 and "kari" in output
    code, output = cli(pair, "alerts", "--json")
    [acked] = [
        json.loads(x) for x in output.splitlines() if json.loads(x)["kind"] == "not-delivered"
    ]
    assert acked["acknowledged_by"] == "kari"
    assert cli(pair, "alerts", "ack", "99999")[0] == 1
    code, output = cli(pair, "alerts", "resolve", str(not_delivered["id"]))
    assert code == 0 and "resolved" in output
    code, output = cli(pair, "alerts", "--open", "--json")
    assert "not-delivered" not in {json.loads(line)["kind"] for line in output.splitlines()}
    assert cli(pair, "alerts", "resolve", "99999")[0] == 1
    assert cli(pair, "status", "no-such-message")[0] == 1
    code, output = cli(pair, "status", message_id)
    assert code == 0 and "not-delivered" in output


def test_certificates_expiring_within_30_days_raise_alerts(pair: Pair) -> None:
    assert check_certificates(pair.gp) == 0  # development certificates are valid for 825 days
    expiry = pair.gp.keys.signing_certificate.not_valid_after_utc
    pair.clock.now = expiry - timedelta(days=10)
    assert check_certificates(pair.gp) >= 3  # ours and the hospital's, all from the same run
    with pair.gp.store.unit_of_work() as uow:
        kinds = {a.kind for a in uow.alerts.list(open_only=True)}
    assert kinds == {"certificate-expiring"}
    pair.clock.now = expiry + timedelta(days=1)
    check_certificates(pair.gp)
    with pair.gp.store.unit_of_work() as uow:
        kinds = {a.kind for a in uow.alerts.list(open_only=True)}
    assert "certificate-invalid" in kinds


def test_status_says_a_partner_never_reached_in_words_and_the_alerts_are_logged_once(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meldingstjener.store.alert_log")
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    for _ in range(6):  # every attempt fails, until the agreement's retries run out
        pair.run()
        pair.clock.advance(minutes=11)
    code, output = cli(pair, "status", message_id)
    assert code == 0, output
    assert "transport given up: the partner never acknowledged it" in output
    assert "(EDI 2.0: Rejected)" in output and "transport Rejected" not in output
    assert "last error: not-delivered given up after" in output  # why it is in this state
    # the journal: each alert once, when raised; not at every failed attempt; and the
    # partner's resolved when its last waiting message was given up
    told = [(r.levelno, r.getMessage()) for r in caplog.records if "alert_log" in r.name]
    kinds = [(level, line.split()[2], line.split()[3]) for level, line in told]
    assert kinds == [
        (logging.WARNING, "partner-unreachable", "raised"),
        (logging.ERROR, "not-delivered", "raised"),
        (logging.INFO, "partner-unreachable", "resolved"),
    ], told
    assert all("x" not in line.split(": ", 1)[0] for _, line in told)


def test_status_shows_an_error_of_a_resend_acknowledged_since_as_history(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    code, output = cli(pair, "status", message_id)
    assert "transport not acknowledged yet, being sent again" in output
    assert "last error:" in output and "next attempt" in output  # it means something now
    pair.network.down.clear()
    pair.clock.advance(minutes=11)
    pair.run()
    code, output = cli(pair, "status", message_id)
    assert code == 0 and "transport acknowledged by the partner (EDI 2.0: " in output, output
    assert "last error:" not in output
    assert "history, before it was transport-acknowledged:" in output


def test_an_alert_resolved_with_a_note_shows_it_until_it_opens_again(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    code, output = cli(pair, "alerts", "--open", "--json")
    [unreachable] = [json.loads(line) for line in output.splitlines()]
    number = str(unreachable["id"])
    assert cli(pair, "alerts", "resolve", number, "--note", "x" * 501)[0] == 2  # bounded
    # bounded after masking: a national identity number in it counts as [redacted-id]
    masked_long = "fnr 01017012345 " + "x" * 484
    assert cli(pair, "alerts", "resolve", number, "--note", masked_long)[0] == 2
    assert cli(pair, "alerts", "--open", "--json")[1].strip(), "it stays open"
    code, output = cli(
        pair, "alerts", "resolve", number, "--by", "kari", "--note", "firewall opened, NHN-1234"
    )
    assert code == 0, output
    code, output = cli(pair, "alerts", "--json")
    [resolved] = [json.loads(line) for line in output.splitlines()]
    assert resolved["resolution_note"] == "firewall opened, NHN-1234"
    code, output = cli(pair, "alerts")  # the summary's cell, wrapped: its words
    assert code == 0 and {"note:", "NHN-1234]"} <= set(output.split()), output
    # resolved already: another note is not kept, and the command says so
    code, output = cli(pair, "alerts", "resolve", number, "--note", "called them")
    assert code == 1 and "the note was not kept" in output, output
    code, output = cli(pair, "alerts", "resolve", number, "--note", "firewall opened, NHN-1234")
    assert code == 0 and "resolved already" in output, output  # the same note: a repeat
    pair.clock.advance(minutes=11)
    pair.run()  # unreachable again: a new incident, without the old one's note
    code, output = cli(pair, "alerts", "--open", "--json")
    [again] = [json.loads(line) for line in output.splitlines()]
    assert (again["id"], again["resolution_note"], again["count"]) == (unreachable["id"], None, 1)
    assert message_id


def _suspend_the_agreement(pair: Pair, state: str = "suspended") -> None:
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.state = state
        uow.commit()


def test_status_shows_a_held_messages_next_check_not_its_old_errors(pair: Pair) -> None:
    """A send failed (its last error names a next attempt), then the agreement was suspended:
    held, told once in its events with the time of its first check. ``status`` tells the hold
    and the next check each check moves, and the failure as history."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.network.down.clear()
    _suspend_the_agreement(pair)
    pair.clock.advance(minutes=11)
    pair.run()
    held_since = pair.clock()
    pair.clock.advance(minutes=11)
    pair.run()  # checked again: no new note, the next check moved
    row = pair.message(pair.gp, message_id)
    assert row.status == "retrying" and row.last_error_code == "connect-failed"
    assert row.next_attempt_at is not None and row.next_attempt_at > pair.clock()

    code, output = cli(pair, "status", message_id)
    assert code == 0, output
    assert f"next check: {row.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC" in output
    assert f"held since {held_since:%Y-%m-%d %H:%M:%S} UTC: agreement-suspended" in output
    assert "history, before it was held: connect-failed" in output
    assert "last error:" not in output  # its next attempt passed long ago
    assert "checked again" not in output  # the first check's time, passed too

    code, output = cli(pair, "status", message_id, "--json")
    status = json.loads(output)
    assert status["next_check_at"] == row.next_attempt_at.isoformat()
    assert status["held"]["code"] == "agreement-suspended"
    assert status["held"]["since"] == held_since.isoformat()


def test_status_shows_a_retrying_messages_next_attempt_as_its_next_check(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.next_attempt_at is not None
    code, output = cli(pair, "status", message_id)
    assert code == 0 and "last error: connect-failed" in output, output
    assert f"next check: {row.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC" in output
    assert "held since" not in output
    status = json.loads(cli(pair, "status", message_id, "--json")[1])
    assert (status["next_check_at"], status["held"]) == (row.next_attempt_at.isoformat(), None)


def test_status_links_a_message_sent_again_and_its_copy(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    original = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    for _ in range(6):
        pair.run()
        pair.clock.advance(minutes=11)
    assert pair.message(pair.gp, original).status == "not-delivered"
    pair.network.down.clear()
    copy = resend(pair.gp, original, operator=Operator("cli", "kari")).copy_id

    code, output = cli(pair, "status", original)
    assert code == 0 and f"sent again as: {copy}" in output, output
    code, output = cli(pair, "status", copy)
    assert code == 0 and f"a new copy of: {original}" in output, output
    status = json.loads(cli(pair, "status", original, "--json")[1])
    assert (status["sent_again_as"], status["copy_of"]) == (copy, None)
    status = json.loads(cli(pair, "status", copy, "--json")[1])
    assert (status["sent_again_as"], status["copy_of"]) == (None, original)
