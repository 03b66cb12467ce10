"""Plain dataclasses for CPPA 2.0 profiles (CPP) and agreements (CPA), as far as an MSH uses them.

A CPA names two parties; for each it lists roles, the actions it can send and receive (with the
package that says which schemas and versions the payload follows), delivery channels, transports
(SMTP ``mailto:``, HTTP, AMQP), reliability and certificates. A CPP is the same for one party.
Parsing lives in :mod:`meldingstjener.registry.cpa`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from meldingstjener.registry.certificates import PartyCertificate

MSGHEAD_NAMESPACE = "http://www.kith.no/xmlstds/msghead/2006-05-24"
EBXML_HEADER_NAMESPACE = "http://www.oasis-open.org/committees/ebxml-msg/schema"


class Direction(StrEnum):
    SEND = "send"
    RECEIVE = "receive"


class TransportKind(StrEnum):
    SMTP = "smtp"
    HTTP = "http"
    AMQP = "amqp"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class SchemaRef:
    """One ``NamespaceSupported``: the schema a payload part follows and its version."""

    namespace: str
    version: str | None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class ActionBinding:
    """One CanSend/CanReceive of a party: service + action, and what the payload looks like."""

    direction: Direction
    service: str
    action: str
    binding_id: str | None
    package_id: str | None
    channel_ids: tuple[str, ...]
    other_party_binding: str | None
    schemas: tuple[SchemaRef, ...]
    role: str | None = None
    process: str | None = None
    process_version: str | None = None
    service_type: str | None = None
    gzip: bool = False  # its package gzips the business document before it is encrypted

    @property
    def business_schema(self) -> SchemaRef | None:
        """The schema of the business document: not the ebXML header, and MsgHead only when
        nothing more specific is listed (MsgHead wraps the fagmelding that names the version)."""
        candidates = [s for s in self.schemas if s.namespace != EBXML_HEADER_NAMESPACE]
        specific = [s for s in candidates if s.namespace != MSGHEAD_NAMESPACE]
        chosen = specific or candidates
        return chosen[-1] if chosen else None

    @property
    def message_version(self) -> str | None:
        schema = self.business_schema
        return schema.version if schema else None


@dataclass(frozen=True, slots=True)
class ReliableMessaging:
    retries: int | None
    retry_interval: timedelta | None
    message_order: str | None = None


@dataclass(frozen=True, slots=True)
class DocExchange:
    """How messages on a channel are packaged, signed and retried (sender and receiver side)."""

    exchange_id: str
    sender_reliability: ReliableMessaging | None
    receiver_reliability: ReliableMessaging | None
    sender_persist_duration: timedelta | None
    receiver_persist_duration: timedelta | None
    signing_certificate_id: str | None = None
    hash_function: str | None = None
    signature_algorithm: str | None = None


@dataclass(frozen=True, slots=True)
class Transport:
    transport_id: str
    protocol: str  # as written: "SMTP", "HTTP", "AMQP"
    protocol_version: str | None
    endpoint: str | None
    transport_security: str | None = None

    @property
    def kind(self) -> TransportKind:
        try:
            return TransportKind(self.protocol.strip().lower())
        except ValueError:
            return TransportKind.OTHER

    @property
    def address(self) -> str | None:
        """The endpoint as the transport adapter wants it: an e-mail address without
        ``mailto:``/``mailto://``, a URL, or an AMQP queue address."""
        if self.endpoint is None:
            return None
        value = self.endpoint.strip()
        if value.lower().startswith("mailto:"):
            value = value[len("mailto:") :].lstrip("/")
        return value


@dataclass(frozen=True, slots=True)
class DeliveryChannel:
    channel_id: str
    transport: Transport | None
    doc_exchange: DocExchange | None
    sync_reply_mode: (
        str | None
    )  # none, signalsOnly, responseOnly, signalsAndResponse, mshSignalsOnly
    ack_requested: str | None  # always, never, perMessage
    ack_signature_requested: str | None
    duplicate_elimination: str | None


@dataclass(frozen=True, slots=True)
class PartyInfo:
    """One party of a CPA/CPP."""

    name: str | None
    party_ids: tuple[tuple[str, str], ...]  # (type, value), e.g. ("HER", "79768")
    roles: tuple[str, ...]
    bindings: tuple[ActionBinding, ...]
    channels: dict[str, DeliveryChannel] = field(default_factory=dict)
    certificates: dict[str, PartyCertificate] = field(default_factory=dict)
    default_channel_id: str | None = None
    encryption_certificate_id: str | None = None
    signing_certificate_id: str | None = None

    @property
    def her_id(self) -> str | None:
        for kind, value in self.party_ids:
            if kind.upper() == "HER":
                return value
        return None

    @property
    def organisation_number(self) -> str | None:
        for kind, value in self.party_ids:
            if kind.lower() in {"orgnummer", "enh"}:
                return value
        return None

    @property
    def can_send(self) -> tuple[ActionBinding, ...]:
        return tuple(b for b in self.bindings if b.direction is Direction.SEND)

    @property
    def can_receive(self) -> tuple[ActionBinding, ...]:
        return tuple(b for b in self.bindings if b.direction is Direction.RECEIVE)

    @property
    def default_channel(self) -> DeliveryChannel | None:
        if self.default_channel_id is None:
            return None
        return self.channels.get(self.default_channel_id)

    @property
    def signing_certificate(self) -> PartyCertificate | None:
        """The certificate the party signs with: the one its DocExchange names, else the one
        whose key usage says signing."""
        return self._certificate(self.signing_certificate_id, signing=True)

    @property
    def encryption_certificate(self) -> PartyCertificate | None:
        """The certificate we encrypt to: the ApplicationCertificateRef, else by key usage."""
        return self._certificate(self.encryption_certificate_id, signing=False)

    def _certificate(self, cert_id: str | None, *, signing: bool) -> PartyCertificate | None:
        def fits(cert: PartyCertificate) -> bool:
            return cert.for_signing if signing else cert.for_encryption

        named = self.certificates.get(cert_id) if cert_id else None
        dedicated = [
            c for c in self.certificates.values() if fits(c) and c.for_signing != c.for_encryption
        ]
        # Key usage wins over the reference: some CPAs name the encryption certificate as the
        # signing one (the Helsenorge sample does), and key usage is what peers enforce; a
        # dual-use certificate named for signing gives way to a dedicated signing one.
        give_way = signing and bool(dedicated) and named is not None and named.for_encryption
        if named is not None and (fits(named) or not named.key_usage) and not give_way:
            return named
        matching = dedicated or [c for c in self.certificates.values() if fits(c)]
        return matching[0] if matching else named


@dataclass(frozen=True, slots=True)
class CollaborationProtocol:
    """A parsed CPA (two parties) or CPP (one party)."""

    kind: str  # "cpa" or "cpp"
    protocol_id: str | None  # cpaid / cppid
    version: str | None
    status: str | None
    start: datetime | None
    end: datetime | None
    parties: tuple[PartyInfo, ...]

    def party(self, her_id: str) -> PartyInfo | None:
        wanted = str(her_id).strip()
        return next((p for p in self.parties if p.her_id == wanted), None)

    def counterparty(self, our_her_id: str) -> PartyInfo | None:
        wanted = str(our_her_id).strip()
        others = [p for p in self.parties if p.her_id != wanted]
        return others[0] if len(others) == 1 else None

    def in_force_at(self, moment: datetime) -> bool:
        if self.start is not None and moment < self.start:
            return False
        return not (self.end is not None and moment > self.end)
