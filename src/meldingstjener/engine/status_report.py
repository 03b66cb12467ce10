"""A message's end-to-end status, as ``meldingstjener status --json`` prints it and the operator
API's timeline (``GET /api/messages/{id}/timeline``, ``statusReport``) answers it: one builder,
so that the help desk's two ways in tell the same (the API told less: no last error, receipts,
alerts or AppRec codes).

Its receipts' error words (an EPJ's or a partner's, which may name the patient) are in it only
when asked for (``texts``, the CLI's ``--texts``; never in the API). The engine's receipts and
transmit modules (the outbound pipeline's packages) are imported by :func:`status_document`
alone: ``show`` takes :func:`answers_sent` and :func:`receipt_document` without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meldingstjener.engine.copies import links
from meldingstjener.model import Direction
from meldingstjener.store.tables import AlertRow, MessageRow, ReceiptRow
from meldingstjener.store.uow import UnitOfWork
from meldingstjener.views import alert_dict, receipt_dict


@dataclass(frozen=True)
class AnswerSent:
    """An answer of ours to a received message (AppRec, dialog-avvik), as its receipt names
    it, and what became of it: given up, it leaves the received message ``apprec-sent`` while
    the sender never had it."""

    receipt_id: int
    kind: str
    message: MessageRow
    open_alerts: list[AlertRow]

    def line(self) -> str:
        """E.g. ``AppRec 93ab... not-delivered (alert 3)``."""
        alerts = ", ".join(str(alert.id) for alert in self.open_alerts)
        return f"{_ANSWER_NAMES.get(self.kind, self.kind)} {self.message.id} " + (
            f"{self.message.status}" + (f" (alert {alerts})" if alerts else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message.id,
            "status": self.message.status,
            "open_alerts": [alert.id for alert in self.open_alerts],
        }


_ANSWER_NAMES = {"apprec": "AppRec"}


def answers_sent(uow: UnitOfWork, message_id: str) -> list[AnswerSent]:
    """Our answers to the received message ``message_id``: each out receipt naming the message
    that carried it by its eb:MessageId (recorded when it is sent; not by versions before)."""
    answers = []
    for receipt in uow.receipts.for_message(message_id):
        if receipt.direction != "out" or receipt.ebxml_message_id is None:
            continue
        sent = uow.messages.by_ebxml_id(Direction.OUTBOUND, receipt.ebxml_message_id)
        if sent is not None:
            alerts = [a for a in uow.alerts.for_message(sent.id) if a.resolved_at is None]
            answers.append(AnswerSent(receipt.id, receipt.kind, sent, alerts))
    return answers


def receipt_document(
    receipt: ReceiptRow, answers: list[AnswerSent], *, texts: bool
) -> dict[str, Any]:
    """A receipt as ``show --json`` and ``status --json`` print it, with the answer it was sent
    as, if any (``answer``: its message id, status and open alerts)."""
    document = receipt_dict(receipt, texts=texts)
    for answer in answers:
        if answer.receipt_id == receipt.id:
            document["answer"] = answer.as_dict()
    return document


def status_document(
    uow: UnitOfWork, message: MessageRow, *, texts: bool
) -> tuple[dict[str, Any], list[AlertRow]]:
    """One message's status document (``status --json``) and its alerts, every one of them."""
    from meldingstjener.engine.receipts import API_APPREC_STATUS, transport_delivery_state
    from meldingstjener.engine.signals import signal_deliveries

    receipts = uow.receipts.for_message(message.id)
    answers = answers_sent(uow, message.id)
    alerts = uow.alerts.for_message(message.id)
    # what became of our Acknowledgment or MessageError: recorded when it was queued, which
    # is not its delivery
    deliveries = signal_deliveries(uow, message.id, receipts)
    documents = []
    for receipt in receipts:
        shown = receipt_document(receipt, answers, texts=texts)
        if receipt.id in deliveries:
            shown["delivery"] = deliveries[receipt.id].as_dict()
        documents.append(shown)
    document: dict[str, Any] = {
        "message_id": message.id,
        "direction": message.direction,
        "status": message.status,
        "msg_type": message.msg_type,
        "from_her_id": message.from_her_id,
        "to_her_id": message.to_her_id,
        "last_error": {"code": message.last_error_code, "text": message.last_error_text},
        "receipts": documents,
        "alerts": [alert_dict(a) for a in alerts],
    }
    document.update(links(uow, message))  # sent_again_as, copy_of: as show tells them
    if message.direction == "out":
        document["receivers"] = [
            {
                "receiverHerId": message.to_her_id,
                "transportDeliveryState": transport_delivery_state(message.status),
                "appRecStatus": API_APPREC_STATUS.get(message.status),
            }
        ]
        document.update(_next_check(uow, message))
    return document, alerts


def _next_check(uow: UnitOfWork, message: MessageRow) -> dict[str, Any]:
    """When a message waiting to be sent again is next sent or checked (``next_check_at``),
    and what holds it (``held``: its code, since when, and why), or None of each.

    A hold is told once in the message's events while its cause lasts, its first note kept
    with the time of its first check; the message's last error may be older still (a failed
    send before the hold, its next attempt long passed): the next check is the message's
    ``next_attempt_at``, which each check moves."""
    from meldingstjener.engine.transmit import HOLDS, hold_reason
    from meldingstjener.model import OutboundStatus

    if message.status != OutboundStatus.RETRYING.value or message.next_attempt_at is None:
        return {"next_check_at": None, "held": None}
    latest = uow.events.latest(message.id)
    held = None
    if latest is not None and latest.code in HOLDS:
        held = {
            "code": latest.code,
            "since": latest.at.isoformat(),
            "reason": hold_reason(latest.detail or ""),
        }
    return {"next_check_at": message.next_attempt_at.isoformat(), "held": held}
