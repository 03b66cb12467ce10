"""Communication parties (kommunikasjonsparter) as read from the address register.

A party is an organisation, a service under an organisation (service-based addressing) or a
person. The dataclass is plain and immutable so the store can persist it and the search index can
hold 100,000 of them; parsers for the register's formats live in ``ar_json`` and ``ar_soap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from meldingstjener.registry.certificates import PartyCertificate


class PartyType(StrEnum):
    ORGANISATION = "organisation"
    SERVICE = "service"
    PERSON = "person"


class QueueKind(StrEnum):
    """The AMQP queues every HER-id on the Tjenestebuss has (``{herId}_{kind}``)."""

    ASYNC = "async"
    SYNC = "sync"
    ERROR = "error"
    SYNCREPLY = "syncreply"
    DEAD_LETTER = "dl"


@dataclass(frozen=True, slots=True)
class CodedValue:
    """A value from a national code list, e.g. business type 103 in list 9040."""

    code: str
    text: str | None = None
    code_list: str | None = None  # OID / code list id, e.g. "9040"


@dataclass(frozen=True, slots=True)
class CommunicationParty:
    """One entry of the address register, with what the MSH needs to address and trust it."""

    her_id: str
    party_type: PartyType
    name: str
    display_name: str | None = None
    parent_her_id: str | None = None
    parent_name: str | None = None
    organisation_number: str | None = None
    parent_organisation_number: str | None = None
    business_types: tuple[CodedValue, ...] = ()
    service_types: tuple[CodedValue, ...] = ()
    edi_address: str | None = None
    amqp_queues: dict[str, str] = field(default_factory=dict)
    signing_certificate: PartyCertificate | None = None
    encryption_certificate: PartyCertificate | None = None
    certificate_ldap_url: str | None = None
    active: bool = True
    # The register's IsValidCommunicationParty: Type is Service or Person (NHN's model), so
    # false for every organisation; kept as read, never a reason not to send.
    valid: bool = True
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    municipality: str | None = None
    last_changed: datetime | None = None

    @property
    def signing_certificate_der(self) -> bytes | None:
        return self.signing_certificate.der if self.signing_certificate else None

    @property
    def encryption_certificate_der(self) -> bytes | None:
        return self.encryption_certificate.der if self.encryption_certificate else None

    @property
    def label(self) -> str:
        """What a recipient field shows: "Service (Parent)" or the display name."""
        own = self.display_name or self.name
        if self.parent_name and self.party_type is not PartyType.ORGANISATION:
            return f"{own} ({self.parent_name})"
        return own

    def queue(self, kind: QueueKind | str) -> str | None:
        return self.amqp_queues.get(str(kind))

    def in_validity_period(self, moment: datetime) -> bool:
        if self.valid_from is not None and moment < self.valid_from:
            return False
        return not (self.valid_to is not None and moment > self.valid_to)

    def usable_at(self, moment: datetime) -> bool:
        """Active and within its validity period (``valid`` says nothing of it)."""
        return self.active and self.in_validity_period(moment)


def queue_name(address: str) -> str:
    """The queue name of a register queue address: ``tb.test.nhn.no/Bus/8141703_async`` ->
    ``8141703_async``."""
    return address.rstrip("/").rsplit("/", 1)[-1]


def complete_queues(queues: dict[str, str]) -> dict[str, str]:
    """Fill in the queues the register leaves out, following the ``{herId}_{kind}`` pattern.

    The register publishes async/sync/error/syncreply but never the dead-letter queue; we derive
    every missing kind from a queue that is there, keeping its host/namespace prefix.
    """
    if not queues:
        return {}
    template_kind, template = next(iter(queues.items()))
    for kind in (QueueKind.ASYNC, QueueKind.SYNC, QueueKind.ERROR, QueueKind.SYNCREPLY):
        if kind.value in queues:
            template_kind, template = kind.value, queues[kind.value]
            break
    suffix = f"_{template_kind}"
    if not template.endswith(suffix):
        return dict(queues)  # an address we do not understand: keep what we were given
    stem = template[: -len(suffix)]
    completed = dict(queues)
    for kind in QueueKind:
        completed.setdefault(kind.value, f"{stem}_{kind.value}")
    return completed


def queues_for_her_id(her_id: str, prefix: str = "") -> dict[str, str]:
    """The queue set of a HER-id when the record only says that AMQP is enabled."""
    return {kind.value: f"{prefix}{her_id}_{kind.value}" for kind in QueueKind}
