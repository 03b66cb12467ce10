"""Plain views of stored rows, shared by the command line and the API.

What a log line or a timeline shows of a message: ids, addressing, type and status — never
patient data, which lives only in the payload files.
"""

from __future__ import annotations

import re
from typing import Any

from meldingstjener.model.privacy import partner_code
from meldingstjener.store.tables import AlertRow, EventRow, MessageRow, ReceiptRow
from meldingstjener.store.uow import CONTENT_REMOVED


def message_summary(message: MessageRow | None) -> dict[str, Any]:
    """What the log shows of a message: ids, addressing, type and status; never patient data."""
    if message is None:
        return {}
    return {
        "message_id": message.id,
        "direction": message.direction,
        "status": message.status,
        "channel": message.channel,
        "msg_type": message.msg_type,
        "msg_type_version": message.msg_type_version,
        "msg_id": message.msg_id,
        "ebxml_message_id": message.ebxml_message_id,
        "conversation_id": message.ebxml_conversation_id,
        "cpa_id": message.cpa_id,
        "from_her_id": message.from_her_id,
        "to_her_id": message.to_her_id,
        "sender": {
            "organisation": message.sender_org_her_id,
            "service": message.sender_service_her_id,
            "person": message.sender_person_her_id,
        },
        "receiver": {
            "organisation": message.receiver_org_her_id,
            "service": message.receiver_service_her_id,
            "person": message.receiver_person_her_id,
        },
        "created_at": message.created_at.isoformat(),
    }


def content_dict(message: MessageRow, events: list[EventRow]) -> dict[str, Any]:
    """Whether the message's content (its business document, its wire form) is still stored,
    and, when retention removed it, when: the help desk is told so, not left to find that a
    file cannot be read. ``stored`` is false too for a message purged as misaddressed, and for
    one refused before its content could be read."""
    removed = next((event for event in events if event.code == CONTENT_REMOVED), None)
    return {
        "stored": message.payload_ref is not None or message.wire_ref is not None,
        "removed_at": removed.at.isoformat() if removed is not None else None,
        "removed_by": "retention" if removed is not None else None,
    }


def event_dict(event: EventRow) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "at": event.at.isoformat(),
        "kind": event.kind,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "actor": event.actor,
        "code": event.code,
        "detail": event.detail,
        "ebxml_message_id": event.ebxml_message_id,
    }


def receipt_dict(receipt: ReceiptRow, *, texts: bool = False) -> dict[str, Any]:
    """A transport receipt, ebXML error or AppRec as the log shows it: its error codes, each as
    :func:`partner_code` shows it, and with ``texts`` also the words of its errors and its
    description, as stored. Those are an EPJ's or a partner's own (an AppRec's Error DN, a
    MessageError's description), masked of national identity numbers but free to name the
    patient: an operator asks for them."""
    errors = receipt.error_codes or []
    shown: dict[str, Any] = {
        "kind": receipt.kind,
        "direction": receipt.direction,
        "at": receipt.at.isoformat(),
        "ebxml_message_id": receipt.ebxml_message_id,
        "apprec_status": receipt.apprec_status,
        "error_codes": [_error_code(error) for error in errors] or None,
    }
    if texts:
        shown["error_codes"] = receipt.error_codes
        shown["description"] = receipt.description
    return shown


# an AppRec's Error V (E21) or an ebXML errorCode (SecurityFailure, a partner's NHN:QueueFull)
_CODE_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]*")


def _error_code(error: object) -> str:
    code = error.get("code") if isinstance(error, dict) else None
    return partner_code(code if isinstance(code, str) else None, _CODE_SHAPE)


def alert_dict(alert: AlertRow) -> dict[str, Any]:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "severity": alert.severity,
        "summary": alert.summary,
        "message_id": alert.message_id,
        "partner_her_id": alert.partner_her_id,
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
        "count": alert.count,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "resolved_by": alert.resolved_by,
        "resolution_note": alert.resolution_note,
    }
