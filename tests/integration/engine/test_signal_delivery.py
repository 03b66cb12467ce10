"""Our Acknowledgments and MessageErrors on their way back: the receiving side's `status` tells
what became of each (sent in the response, queued, delivered, failing and why), and the
`signal-undelivered` alert comes once one has failed for ten minutes, whichever send of it
failed first (a duplicate of the message does not start the count again)."""

from __future__ import annotations

import json
from pathlib import Path

from engine_pair import Pair, make_pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine import signals
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.store.tables import AlertRow
from meldingstjener.transport.base import Delivery


def _status(pair: Pair, message_id: str, *options: str) -> str:
    result = CliRunner().invoke(
        app, ["--config", str(pair.hospital_site.config_path), "status", message_id, *options]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _delivery(pair: Pair, message_id: str) -> dict[str, object]:
    document = json.loads(_status(pair, message_id, "--json"))
    [signal] = [r for r in document["receipts"] if r["kind"] == "acknowledgment"]
    assert signal["direction"] == "out"
    return dict(signal["delivery"])


def _undelivered(pair: Pair) -> list[AlertRow]:
    with pair.hospital.store.unit_of_work() as uow:
        return [a for a in uow.alerts.list(open_only=True) if a.kind == "signal-undelivered"]


def _received_with_ack_failing(pair: Pair) -> tuple[str, str]:
    """A note the GP sent and the hospital stored, whose Acknowledgment cannot reach the GP:
    (the GP's id, the hospital's). The hospital's first send of it has not run yet."""
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.network.down.add(pair.gp_site.endpoint)
    Worker(pair.gp, "gp").run_until_idle()  # the hospital stores it and queues its signal
    [received] = pair.inbound_messages(pair.hospital)
    return message_id, received.id


def _run_hospital_until(pair: Pair, minutes: float) -> None:
    """Run the hospital's due work, moving the clock 20 s at a time, for ``minutes``."""
    hospital = Worker(pair.hospital, "hospital")
    for _ in range(int(minutes * 3)):
        hospital.run_until_idle()
        pair.clock.advance(seconds=20)
    hospital.run_until_idle()


def _duplicate(pair: Pair, message_id: str) -> None:
    """The GP's MSH sends its message again as it is (its resend for a missing signal)."""
    row = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.path(str(row.wire_ref))
    pair.network.send(Delivery(pair.hospital_site.endpoint, str(row.wire_content_type), wire))


def test_a_signal_failing_for_ten_minutes_alerts_then_not_after_twelve_attempts(
    pair: Pair,
) -> None:
    _, received = _received_with_ack_failing(pair)
    _run_hospital_until(pair, minutes=9.5)
    assert _undelivered(pair) == []
    _run_hospital_until(pair, minutes=1)
    [alert] = _undelivered(pair)
    assert alert.message_id == received
    assert "has not been delivered since" in alert.summary and "connect-failed" in alert.summary
    with pair.hospital.store.unit_of_work() as uow:
        attempts = [e for e in uow.events.for_message(received) if e.kind == "attempt"]
    assert len(attempts) < signals.SIGNAL_ATTEMPTS  # the tries go on after the alert
    changed_at = alert.changed_at
    _run_hospital_until(pair, minutes=20)  # failing on: counted, not told again
    [alert] = _undelivered(pair)
    assert alert.changed_at == changed_at and alert.count > 1


def test_a_duplicate_does_not_start_the_signal_s_count_again(pair: Pair) -> None:
    message_id, received = _received_with_ack_failing(pair)
    _run_hospital_until(pair, minutes=6)
    _duplicate(pair, message_id)  # a second send of our Acknowledgment, a job of its own
    _run_hospital_until(pair, minutes=3.5)
    assert _undelivered(pair) == []
    _run_hospital_until(pair, minutes=1)
    [alert] = _undelivered(pair)
    assert alert.message_id == received
    # the first failure is the one the alert counts from, and status tells it
    delivery = _delivery(pair, received)
    assert delivery["state"] == "failing"
    assert str(delivery["failing_since"]) in alert.summary.replace(" UTC", "+00:00").replace(
        " ", "T"
    )


def test_status_tells_a_failing_signal_then_its_delivery(pair: Pair) -> None:
    _, received = _received_with_ack_failing(pair)
    assert _delivery(pair, received)["state"] == "queued"
    _run_hospital_until(pair, minutes=1)
    delivery = _delivery(pair, received)
    assert delivery["state"] == "failing"
    assert delivery["failed_attempts"] >= 2  # type: ignore[operator]
    assert delivery["last_error"] == {
        "code": "connect-failed",
        "text": f"cannot reach {pair.gp_site.endpoint}",
    }
    assert delivery["next_attempt_at"] is not None
    text = _status(pair, received)
    assert "out acknowledgment: NOT delivered yet, failing since" in text
    assert "last error connect-failed" in text

    pair.network.down.clear()
    _run_hospital_until(pair, minutes=11)
    delivery = _delivery(pair, received)
    assert delivery["state"] == "delivered" and delivery["at"] is not None
    assert "out acknowledgment: delivered" in _status(pair, received)
    assert _undelivered(pair) == []


def test_status_tells_a_signal_given_up(pair: Pair) -> None:
    _, received = _received_with_ack_failing(pair)
    hospital = Worker(pair.hospital, "hospital")
    for _ in range(signals.SIGNAL_ATTEMPTS + 1):
        hospital.run_until_idle()
        pair.clock.advance(seconds=3600)
    delivery = _delivery(pair, received)
    assert delivery["state"] == "undelivered"
    assert delivery["failed_attempts"] == signals.SIGNAL_ATTEMPTS
    assert "out acknowledgment: NOT delivered, given up" in _status(pair, received)
    [alert] = _undelivered(pair)
    assert "could not be delivered" in alert.summary and "no more are made" in alert.summary


def test_status_tells_a_signal_sent_in_the_response(tmp_path: Path) -> None:
    # SyncReply: the Acknowledgment went back in the HTTP response, nothing more to send
    sync = make_pair(tmp_path, sync_reply=True)
    try:
        submit(sync.gp, dialog_note(sync.gp_site, sync.hospital_site, "x"), actor="t")
        sync.run()
        [received] = sync.inbound_messages(sync.hospital)
        assert _delivery(sync, received.id)["state"] == "inline"
        assert "out acknowledgment: sent in the HTTP response" in _status(sync, received.id)
    finally:
        sync.gp.store.database.dispose()
        sync.hospital.store.database.dispose()
