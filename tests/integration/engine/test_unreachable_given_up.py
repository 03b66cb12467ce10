"""A ``partner-unreachable`` alert ends with the last message waiting for the partner: once that
one is given up (``not-delivered``, its own alert), nothing is kept and resent any more, so the
alert is resolved, saying why; while another message to the partner waits, it stays open. The
GP office's store on SQLite and PostgreSQL (the pair retries every 10 minutes, three times)."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from engine_pair import Pair
from sqlalchemy import delete

from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.transmit import ACK_TIMEOUT, _give_up
from meldingstjener.store.tables import AlertRow, JobRow

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


def _two_notes_retrying(pair: Pair) -> tuple[str, str]:
    pair.network.down.add(pair.hospital_site.endpoint)
    first, second = _send_a_note(pair), _send_a_note(pair)
    pair.run()
    assert {pair.message(pair.gp, m).status for m in (first, second)} == {"retrying"}
    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is None
    return first, second


def _give_up_and_commit(pair: Pair, message_id: str) -> None:
    with pair.gp.store.unit_of_work() as uow:
        row = uow.messages.get(message_id, for_update=True)
        assert row is not None
        _give_up(uow, row, "Sykehuset", "test", pair.clock())
        uow.commit()


def _mark_sent(pair: Pair, message_id: str, *, ack_requested: bool) -> None:
    """Put ``message_id`` in ``sent`` as transmit leaves it: with its ``ack-timeout`` job when
    the send asked for an Acknowledgment, without one when it did not (ackRequested never)."""
    with pair.gp.store.unit_of_work() as uow:
        row = uow.messages.get(message_id, for_update=True)
        assert row is not None
        uow.messages.set_status(row, "sent", actor="test")
        uow.session.execute(delete(JobRow).where(JobRow.message_id == message_id))
        if ack_requested:
            due = pair.clock() + timedelta(minutes=10)
            uow.jobs.schedule(ACK_TIMEOUT, due, message_id=message_id)
        uow.commit()


def test_a_message_waiting_for_its_acknowledgment_keeps_the_alert_open(
    pair_with_gp_database: Pair,
) -> None:
    """A message sent and not acknowledged yet is resent when the Acknowledgment does not
    come: the partner's alert is not resolved while it waits."""
    pair = pair_with_gp_database
    first, second = _two_notes_retrying(pair)
    _mark_sent(pair, second, ack_requested=True)

    _give_up_and_commit(pair, first)

    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is None


def test_a_message_sent_without_ack_requested_does_not_keep_the_alert_open(
    pair_with_gp_database: Pair,
) -> None:
    """Sent without AckRequested (a CPA's ackRequested never), a message stays ``sent`` for
    good and is never resent: it does not keep the partner's alert open after a give-up."""
    pair = pair_with_gp_database
    first, second = _two_notes_retrying(pair)
    _mark_sent(pair, second, ack_requested=False)

    _give_up_and_commit(pair, first)

    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is not None
    assert f"the last one ({first}) was given up" in alert.summary


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_alert_is_resolved_when_the_last_two_messages_are_given_up_at_once(
    pair_with_gp_database: Pair, database_url: str
) -> None:
    """Each give-up, uncommitted, sees the other message still retrying: the second to commit
    must read after the first's commit (SQLite's units of work are serial already)."""
    pair = pair_with_gp_database
    first, second = _two_notes_retrying(pair)
    with pair.gp.store.unit_of_work() as uow:
        row = uow.messages.get(first, for_update=True)
        assert row is not None
        _give_up(uow, row, "Sykehuset", "test", pair.clock())
        other = threading.Thread(target=_give_up_and_commit, args=(pair, second))
        other.start()
        _wait_until_waiting_or_ended(database_url, other)
        uow.commit()
    other.join(60)
    assert not other.is_alive()

    assert {pair.message(pair.gp, m).status for m in (first, second)} == {"not-delivered"}
    [alert] = _alerts(pair, UNREACHABLE)
    assert alert.resolved_at is not None
    assert "was given up" in alert.summary


def _wait_until_waiting_or_ended(database_url: str, thread: threading.Thread) -> None:
    """Until another session of the database waits on a lock, or ``thread`` ended."""
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as watcher:
        while thread.is_alive():
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting is not None and waiting[0] >= 1:
                return
            threading.Event().wait(0.01)  # a poll of another process's state, not a delay
