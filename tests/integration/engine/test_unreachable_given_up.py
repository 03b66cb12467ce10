"""A ``partner-unreachable`` alert ends with the last message waiting for the partner: once that
one is given up (``not-delivered``, its own alert), nothing is kept and resent any more, so the
alert is resolved, saying why; while another message to the partner waits, it stays open. The
GP office's store on SQLite and PostgreSQL (the pair retries every 10 minutes, three times)."""

from __future__ import annotations

from engine_pair import Pair

from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.store.tables import AlertRow

UNREACHABLE = "partner-unreachable"


def _alerts(pair: Pair, kind: str) -> list[AlertRow]:
    with pair.gp.store.unit_of_work() as uow:
        return [a for a in uow.alerts.list() if a.kind == kind]


def _send_a_note(pair: Pair) -> str:
    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    return submit(pair.gp, note, actor="test")


def _ten_minutes_on(pair: Pair, times: int) -> None:
    for _ in range(times):
        pair.clock.advance(minutes=10)
        pair.run()


def test_the_unreachable_alert_is_resolved_when_the_last_message_waiting_is_given_up(
    pair_with_gp_database: Pair,
) -> None:
    pair = pair_with_gp_database
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = _send_a_note(pair)
    pair.run()
    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is None

    _ten_minutes_on(pair, 4)

    assert pair.message(pair.gp, message_id).status == "not-delivered"
    [given_up] = _alerts(pair, "not-delivered")
    assert given_up.resolved_at is None  # the one to act on
    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at == given_up.first_seen  # with the give-up
    assert pair.hospital_site.endpoint in alert.summary  # what it said is kept
    assert f"the last one ({message_id}) was given up" in alert.summary
    assert "not-delivered alert" in alert.summary


def test_the_unreachable_alert_stays_open_while_another_message_waits_for_the_partner(
    pair_with_gp_database: Pair,
) -> None:
    pair = pair_with_gp_database
    pair.network.down.add(pair.hospital_site.endpoint)
    first = _send_a_note(pair)
    pair.run()
    _ten_minutes_on(pair, 2)
    second = _send_a_note(pair)  # 20 minutes later: it waits longer
    pair.run()

    _ten_minutes_on(pair, 2)

    assert pair.message(pair.gp, first).status == "not-delivered"
    assert pair.message(pair.gp, second).status == "retrying"
    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is None

    _ten_minutes_on(pair, 2)

    assert pair.message(pair.gp, second).status == "not-delivered"
    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is not None
    assert f"the last one ({second}) was given up" in alert.summary
