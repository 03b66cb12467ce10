"""Received messages the EPJ took and never answered raise an apprec-owed alert for their
HER-id, which follows how many are owed and is resolved when they are answered; received
AppRecs, answered, purged and young messages are not counted, and 0 hours turns it off."""

from __future__ import annotations

from engine_pair import Pair, notes_and_an_apprec_received, open_alerts_of

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.engine import inbox_watch, receipts
from meldingstjener.store.tables import AlertRow, MessageRow
from meldingstjener.store.uow import LogFilter


def owed_alerts(pair: Pair, *, open_only: bool = True) -> list[AlertRow]:
    return open_alerts_of(pair, "apprec-owed", open_only=open_only)


def _answer(pair: Pair, message: MessageRow) -> None:
    receipts.send_apprec(pair.hospital, message.id, status=1, errors=[], actor="epj:test")


def test_messages_taken_and_not_answered_raise_an_alert_until_answered(
    pair_with_hospital_database: Pair,
) -> None:
    pair = pair_with_hospital_database
    notes, apprec = notes_and_an_apprec_received(pair, 5)
    old, also_old, answered, purged, young = notes
    delivered_at = pair.clock()
    for message in (old, also_old, answered, purged, apprec):
        receipts.deliver(pair.hospital, message.id, actor="epj:test")
    _answer(pair, answered)  # answered: apprec-sent
    receipts.report_misaddressed(pair.hospital, purged.id, actor="epj:test", reason="ikke vår")
    statuses = {m.id: m.status for m in pair.inbound_messages(pair.hospital)}
    assert [statuses[m.id] for m in (old, answered, purged, young, apprec)] == [
        "delivered",
        "apprec-sent",
        "misaddressed-purged",
        "acknowledged",
        "delivered",  # an AppRec stays delivered: nobody answers it
    ]
    with pair.hospital.store.unit_of_work() as uow:
        inbox_watch.schedule_check(pair.hospital, uow)
        uow.commit()
    pair.run()
    assert owed_alerts(pair) == []  # delivered, but not long ago

    pair.clock.advance(hours=23)
    receipts.deliver(pair.hospital, young.id, actor="epj:test")
    pair.clock.advance(hours=1, minutes=1)
    pair.run()
    [alert] = owed_alerts(pair)
    assert alert.severity == "warning" and alert.count == 1
    assert alert.dedup_key == f"apprec-owed:{HOSPITAL_SERVICE_HER}"
    assert f"2 received message(s) for HER-id {HOSPITAL_SERVICE_HER}" in alert.summary
    assert f"the oldest delivered {delivered_at:%Y-%m-%d %H:%M} UTC" in alert.summary
    assert f"apprec_owed=true&her_id={HOSPITAL_SERVICE_HER}" in alert.summary
    assert f"log --apprec-owed --her-id {HOSPITAL_SERVICE_HER}" in alert.summary

    raised = alert.changed_at
    pair.clock.advance(minutes=5)
    pair.run()
    # the same news is counted, not told again (changed_at is what webhooks follow)
    assert [(a.count, a.changed_at) for a in owed_alerts(pair)] == [(2, raised)]

    pair.clock.advance(hours=23)  # the young one is owed too now: news, told
    pair.run()
    [alert] = owed_alerts(pair)
    assert "3 received message(s)" in alert.summary and alert.changed_at == pair.clock()

    _answer(pair, old)  # the oldest answered: another oldest, told
    pair.clock.advance(minutes=5)
    pair.run()
    [alert] = owed_alerts(pair)
    assert "2 received message(s)" in alert.summary and alert.changed_at == pair.clock()

    _answer(pair, also_old)
    _answer(pair, young)
    pair.clock.advance(minutes=5)
    pair.run()
    assert owed_alerts(pair) == []
    [resolved] = owed_alerts(pair, open_only=False)
    assert resolved.resolved_at == pair.clock()


def test_no_alert_when_turned_off(pair_with_hospital_database: Pair) -> None:
    """``[alerts] apprec_owed_hours = 0``: nothing is counted, and an alert open is resolved."""
    pair = pair_with_hospital_database
    [note], _ = notes_and_an_apprec_received(pair, 1)
    receipts.deliver(pair.hospital, note.id, actor="epj:test")
    pair.clock.advance(hours=25)
    assert inbox_watch.check_apprec_owed(pair.hospital) == {HOSPITAL_SERVICE_HER: 1}
    assert len(owed_alerts(pair)) == 1

    config = pair.hospital_site.config_path
    config.write_text(config.read_text() + "\n[alerts]\napprec_owed_hours = 0\n")
    turned_off = build_engine(load_settings(config), clock=pair.clock)
    try:
        pair.clock.advance(minutes=5)
        assert inbox_watch.check_apprec_owed(turned_off) == {}
    finally:
        turned_off.store.database.dispose()
    assert owed_alerts(pair) == []


def test_only_messages_delivered_within_the_look_back_are_counted_and_listed(
    pair_with_hospital_database: Pair,
) -> None:
    """``[alerts] apprec_owed_days`` (14): a message is counted for that long after its
    ``apprec_owed_hours`` (24), no longer: the first check of a store with a long history (an
    upgrade) counts only those delivered lately, the log's search lists the same, and one
    leaves the count as it ages out."""
    pair = pair_with_hospital_database
    ancient, recent, _ = notes_and_an_apprec_received(pair, 3)[0]
    receipts.deliver(pair.hospital, ancient.id, actor="epj:test")
    pair.clock.advance(days=10)
    receipts.deliver(pair.hospital, recent.id, actor="epj:test")
    pair.clock.advance(days=6)  # 16 days after the ancient one was delivered: 15 owed

    assert inbox_watch.check_apprec_owed(pair.hospital) == {HOSPITAL_SERVICE_HER: 1}
    [alert] = owed_alerts(pair)
    assert "1 received message(s)" in alert.summary
    assert "each counted for 14 days after that" in alert.summary
    assert _listed(pair) == [recent.id]  # what the alert counts

    pair.clock.advance(days=9, minutes=1)  # the recent one ages out too
    assert inbox_watch.check_apprec_owed(pair.hospital) == {}
    assert owed_alerts(pair) == [] and _listed(pair) == []
    # not answered: the alert says so, and how to find them
    [resolved] = owed_alerts(pair, open_only=False)
    assert resolved.resolved_at == pair.clock()
    assert "1 received message(s)" in resolved.summary  # what it said is kept
    assert (
        f"Resolved {pair.clock():%Y-%m-%d %H:%M} UTC without their AppRecs: 1 still "
        "unanswered, delivered more than 24 hours and 14 days ago"
    ) in resolved.summary
    assert f"meldingstjener log --status delivered --her-id {HOSPITAL_SERVICE_HER}" in (
        resolved.summary
    )


def test_an_alert_of_messages_answered_and_aged_out_counts_those_aged_out(
    pair_with_hospital_database: Pair,
) -> None:
    """Of two owed, one is answered and the other ages out unanswered: the resolve tells of
    the one; of two answered, it tells of none."""
    pair = pair_with_hospital_database
    first, second, third = notes_and_an_apprec_received(pair, 3)[0]
    receipts.deliver(pair.hospital, first.id, actor="epj:test")
    receipts.deliver(pair.hospital, second.id, actor="epj:test")
    pair.clock.advance(hours=25)
    assert inbox_watch.check_apprec_owed(pair.hospital) == {HOSPITAL_SERVICE_HER: 2}

    _answer(pair, first)
    pair.clock.advance(days=14)  # the second leaves the window between two checks
    assert inbox_watch.check_apprec_owed(pair.hospital) == {}
    [resolved] = owed_alerts(pair, open_only=False)
    assert "without their AppRecs: 1 still unanswered" in resolved.summary

    _answer(pair, second)  # late: and one answered in time says nothing
    receipts.deliver(pair.hospital, third.id, actor="epj:test")
    pair.clock.advance(hours=25)
    assert inbox_watch.check_apprec_owed(pair.hospital) == {HOSPITAL_SERVICE_HER: 1}
    _answer(pair, third)
    pair.clock.advance(minutes=5)
    assert inbox_watch.check_apprec_owed(pair.hospital) == {}
    [resolved] = owed_alerts(pair, open_only=False)
    assert resolved.resolved_at == pair.clock() and "Resolved" not in resolved.summary


def _listed(pair: Pair) -> list[str]:
    """What ``log --apprec-owed`` and ``GET /api/log?apprec_owed=true`` list now."""
    window = inbox_watch.apprec_owed_window(pair.hospital.policy, pair.clock())
    with pair.hospital.store.unit_of_work() as uow:
        found = uow.messages.search(LogFilter(apprec_owed=window), newest_first=True)
        return [message.id for message in found]
