"""Building blocks for the ebXML tests: a typical HIS 1037 header and envelope bytes."""

from __future__ import annotations

from datetime import UTC, datetime

from lxml import etree

from meldingstjener.ebxml import (
    ManifestReference,
    MessageHeader,
    MshDescription,
    Party,
    build_envelope,
    envelope_bytes,
)

SENDER = Party("8141253", "Behandler")
RECEIVER = Party("79768", "KontrollUtbetaler")
SENT_AT = datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)


def payload_header(**changes: object) -> MessageHeader:
    values: dict[str, object] = {
        "from_party": SENDER,
        "to_party": RECEIVER,
        "cpa_id": "nav:qass:35065",
        "conversation_id": "conv-1",
        "service": "BehandlerKrav",
        "service_type": "string",
        "action": "OppgjorsMelding",
        "message_id": "m-1@msh.example.no",
        "timestamp": SENT_AT,
        "description": MshDescription("meldingstjener", "0.1.0", "EPJ", "7.1"),
    }
    values.update(changes)
    return MessageHeader(**values)  # type: ignore[arg-type]


def payload_root(**changes: object) -> etree._Element:
    return build_envelope(
        payload_header(**changes), manifest=[ManifestReference.for_content_id("part-1@x")]
    )


def payload_bytes(**changes: object) -> bytes:
    return envelope_bytes(payload_root(**changes))
