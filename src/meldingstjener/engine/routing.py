"""How a business message is named in the ebXML envelope: Service, Action and Roles.

An agreement from a CPA or CPP names them: the binding the business document goes by (chosen
by :func:`meldingstjener.registry.agreements.choose_binding`, by the document's namespace)
gives Service, its type, Action and both Roles (:func:`names_of`), and its channel the
envelope's AckRequested, SyncReply and DuplicateElimination with the channel the message goes
by (:meth:`meldingstjener.engine.directory.Partner.route`, for submit and every send). NAV's
CPAs, for one, do not follow the convention below: a POM goes as Service ``BehandlerKrav``,
Action ``OppgjorsMelding``, roles ``Behandler``/``KontrollUtbetaler``.

Agreements without bindings (address-register terms, configured partners) follow the national
convention (seen in NHN's CPPs): Service ``S-<message type>`` with type "string", Action
``<message type>``, roles ``<message type>sender`` / ``<message type>receiver``. An AppRec
travels in the service of the message it answers, with Action ``APPREC`` and the roles reversed.
"""

from __future__ import annotations

from dataclasses import dataclass

from meldingstjener.registry.terms import AgreedMessage

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


def names_of(binding: AgreedMessage) -> EnvelopeNames:
    """Envelope names from an agreed binding; a role the agreement does not name (a CPP names
    only its own party's) follows the convention."""
    conventional = names_for(binding.message_type)
    return EnvelopeNames(
        service=binding.service or conventional.service,
        action=binding.message_type,
        from_role=binding.from_role or conventional.from_role,
        to_role=binding.to_role or conventional.to_role,
        service_type=binding.service_type or "string",
    )
