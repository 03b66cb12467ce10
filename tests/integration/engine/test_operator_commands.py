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
