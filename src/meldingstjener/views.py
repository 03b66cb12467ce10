"""Plain views of stored rows, shared by the command line and the API.

What a log line or a timeline shows of a message: ids, addressing, type and status — never
patient data, which lives only in the payload files.
"""

from __future__ import annotations

from typing import Any

from meldingstjener.store.tables import EventRow, MessageRow


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
