"""A bounce's alert ends with what settles the message's fate, and a bounce that comes after
that is an event only (the bounce itself is read in transport.bounce, tested with real mail in
tests/integration/mail)."""

from __future__ import annotations

from engine_pair import Pair, answer_with_error
from sqlalchemy import delete

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import receipts
from meldingstjener.engine.mail_bounces import record_bounce
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.store.tables import JobRow
from meldingstjener.transport.bounce import Bounce, BouncedRecipient


def _bounce_of(pair: Pair, message_id: str) -> Bounce:
    ebxml_id = pair.message(pair.gp, message_id).ebxml_message_id
    refused = BouncedRecipient("8200002@edi.example", "failed", "5.1.1")
    return Bounce(True, (refused,), ebxml_id, "8200002@edi.example")


def _open_kinds(pair: Pair) -> list[str]:
    with pair.gp.store.unit_of_work() as uow:
        return sorted(alert.kind for alert in uow.alerts.list(open_only=True))


def _bounce_events(pair: Pair, message_id: str) -> int:
    with pair.gp.store.unit_of_work() as uow:
        return sum(e.code == "mail-bounced" for e in uow.events.for_message(message_id))


def _bounced_while_retried(pair: Pair) -> str:
    """A message the receiver has not got (it is down), whose mail came back: its id."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert record_bounce(pair.gp, _bounce_of(pair, message_id))
    assert "mail-bounced" in _open_kinds(pair)
    return message_id


def test_a_message_given_up_ends_its_bounce_alert(pair: Pair) -> None:
    message_id = _bounced_while_retried(pair)
    for _ in range(10):
        pair.clock.advance(minutes=10)
        pair.run()
    assert pair.message(pair.gp, message_id).status == "not-delivered"
    assert "mail-bounced" not in _open_kinds(pair) and "not-delivered" in _open_kinds(pair)
    # a bounce of an earlier attempt arriving late: the message's log has it, no new alert
    assert record_bounce(pair.gp, _bounce_of(pair, message_id))
    assert "mail-bounced" not in _open_kinds(pair)
    assert _bounce_events(pair, message_id) == 2


def test_the_receivers_message_error_ends_a_bounce_alert(pair: Pair) -> None:
    # The receiver's MSH answered a later attempt: the message arrived (the MessageError has an
    # alert of its own), and a bounce of an earlier attempt is no longer the news.
    from meldingstjener.ebxml import ErrorCode, Severity
    from meldingstjener.ebxml.codes import ErrorDetail

    message_id = _bounced_while_retried(pair)
    answer_with_error(pair, message_id, ErrorDetail(ErrorCode.DELIVERY_FAILURE, Severity.ERROR))
    assert pair.message(pair.gp, message_id).status == "transport-error"
    assert "mail-bounced" not in _open_kinds(pair)
    assert record_bounce(pair.gp, _bounce_of(pair, message_id))  # late: an event only
    assert "mail-bounced" not in _open_kinds(pair)
    assert _bounce_events(pair, message_id) == 2


def test_the_receivers_apprec_ends_a_bounce_alert(pair: Pair) -> None:
    # The receiver has the message (an earlier attempt's mail bounced at a relay) and answers it
    # with an AppRec, its Acknowledgment lost: nothing is resent, and the alert saying that it
    # is sent again was left open for ever.
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    Worker(pair.gp, "gp").run_until_idle()
    with pair.hospital.store.unit_of_work() as uow:  # the Acknowledgment is lost
        uow.session.execute(delete(JobRow).where(JobRow.kind == "send-signal"))
        uow.commit()
    assert pair.message(pair.gp, message_id).status == "sent"
    assert record_bounce(pair.gp, _bounce_of(pair, message_id))
    assert "mail-bounced" in _open_kinds(pair)
    [received] = pair.inbound_messages(pair.hospital)
    receipts.send_apprec(pair.hospital, received.id, status=1, errors=[], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-ok"
    assert "mail-bounced" not in _open_kinds(pair)
    assert record_bounce(pair.gp, _bounce_of(pair, message_id))  # late: an event only
    assert "mail-bounced" not in _open_kinds(pair)
    assert _bounce_events(pair, message_id) == 2
