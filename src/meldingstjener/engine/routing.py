"""How a business message is named in the ebXML envelope: Service, Action and Roles.

The national convention (seen in NHN's CPPs): Service ``S-<message type>`` with type "string",
Action ``<message type>``, roles ``<message type>sender`` / ``<message type>receiver``. An AppRec
travels in the service of the message it answers, with Action ``APPREC`` and the roles reversed.
"""

from __future__ import annotations

from dataclasses import dataclass

APPREC = "APPREC"


@dataclass(frozen=True)
class EnvelopeNames:
    service: str
    action: str
    from_role: str
    to_role: str
    service_type: str = "string"


def names_for(msg_type: str | None, *, answered_type: str | None = None) -> EnvelopeNames:
    """Envelope names for ``msg_type``; for an AppRec pass the type of the message it answers."""
    if msg_type == APPREC:
        base = answered_type or APPREC
        return EnvelopeNames(f"S-{base}", APPREC, f"{base}receiver", f"{base}sender")
    base = msg_type or "UNKNOWN"
    return EnvelopeNames(f"S-{base}", base, f"{base}sender", f"{base}receiver")
