"""Received messages the EPJ does not take raise an inbox-waiting alert for their HER-id, which
follows how many wait and is resolved when none do."""

from __future__ import annotations

from engine_pair import Pair, notes_and_an_apprec_received, open_alerts_of

from meldingstjener.devsites import HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.engine import inbox_watch, receipts
from meldingstjener.engine.outbound import submit
from meldingstjener.store.tables import AlertRow


def inbox_alerts(pair: Pair, *, open_only: bool = True) -> list[AlertRow]:
    return open_alerts_of(pair, "inbox-waiting", open_only=open_only)


def test_messages_the_epj_does_not_take_raise_an_alert_until_taken(pair: Pair) -> None:
    # and an AppRec for the hospital, which the EPJ need not fetch
    notes, apprec = notes_and_an_apprec_received(pair, 2)
    received = [*notes, apprec]
    assert len(received) == 3
    assert all(m.status == "acknowledged" for m in received)

    with pair.hospital.store.unit_of_work() as uow:
        inbox_watch.schedule_check(pair.hospital, uow)
        uow.commit()
    pair.run()
    assert inbox_alerts(pair) == []  # waiting, but not for long yet
    pair.clock.advance(minutes=61)
    pair.run()
    [alert] = inbox_alerts(pair)
    assert alert.severity == "error" and alert.count == 1
    assert f"2 received message(s) for HER-id {HOSPITAL_SERVICE_HER}" in alert.summary

    raised = alert.changed_at
    pair.clock.advance(minutes=5)
    pair.run()
    # the same news is counted, not told again (changed_at is what webhooks follow)
    assert [(a.count, a.changed_at) for a in inbox_alerts(pair)] == [(2, raised)]

    receipts.deliver(pair.hospital, notes[0].id, actor="epj:test")
    pair.clock.advance(minutes=5)
    pair.run()
    [alert] = inbox_alerts(pair)
    assert alert.count == 3 and "1 received message(s)" in alert.summary
    assert alert.changed_at == pair.clock()  # fewer wait: news, told

    receipts.deliver(pair.hospital, notes[1].id, actor="epj:test")
    pair.clock.advance(minutes=5)
    pair.run()
    assert inbox_alerts(pair) == []
    [resolved] = inbox_alerts(pair, open_only=False)
    assert resolved.resolved_at is not None


def test_the_inbox_alert_is_followed_among_many_other_alerts(pair: Pair) -> None:
    from datetime import timedelta

    from meldingstjener.engine.alerts import AlertKind, raise_alert

    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Henvisning"), actor="t")
    pair.run()
    [note] = pair.inbound_messages(pair.hospital)
    with pair.hospital.store.unit_of_work() as uow:
        inbox_watch.schedule_check(pair.hospital, uow)
        uow.commit()
    pair.clock.advance(minutes=61)
    pair.run()
    [alert] = inbox_alerts(pair)
    raised = (alert.count, alert.changed_at)
    assert raised[0] == 1
    with pair.hospital.store.unit_of_work() as uow:  # more, and newer, than a page of alerts
        later = pair.clock() + timedelta(minutes=1)
        for number in range(1_001):
            raise_alert(uow, AlertKind.PARTNER_UNREACHABLE, "x", at=later, key=str(number))
        uow.commit()
    pair.clock.advance(minutes=5)
    pair.run()
    # still known: counted, not told again
    assert [(a.count, a.changed_at) for a in inbox_alerts(pair)] == [(2, raised[1])]
    receipts.deliver(pair.hospital, note.id, actor="epj:test")
    pair.clock.advance(minutes=5)
    pair.run()
    assert inbox_alerts(pair) == []
