"""What may be sent to a counterparty, and how: the summary an agreement source yields.

Three sources can say it, in falling order of authority: a CPA between us and them, their CPP,
or their address-register entry. Whichever was used is recorded in ``source`` so an operator can
see why a message went where it went. The address register knows channels and certificates but
not message types, so terms from it allow any message type (``any_message_type``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from meldingstjener.registry.certificates import PartyCertificate
from meldingstjener.registry.parties import CommunicationParty, QueueKind
from meldingstjener.registry.versions import sort_versions


class TermsSource(StrEnum):
    CPA = "cpa"
    CPP = "cpp"
    AR = "ar"
    MANUAL = "manual"
    # ``[[partners]]`` in the configuration: its terms are written again at every start, its
    # state is the operator's (see ``engine.directory.sync_configured_partners``)
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class ChannelTerms:
    """How to deliver: transport, endpoint and the reliability settings that go with it.

    ``ack_requested`` and ``duplicate_elimination`` keep the CPPA vocabulary (always, never,
    perMessage) so no meaning is lost on the way to the envelope builder.
    """

    channel_id: str | None
    transport: str | None  # "smtp", "http", "amqp"
    endpoint: str | None  # e-mail address, URL or AMQP queue address
    retries: int | None = None
    retry_interval: timedelta | None = None
    persist_duration: timedelta | None = None
    ack_requested: str | None = None
    duplicate_elimination: str | None = None
    sync_reply_mode: str | None = None


@dataclass(frozen=True, slots=True)
class AgreedMessage:
    """One message type the receiving side accepts, in which versions, on which channel: an
    agreed binding, all the envelope of such a message needs.

    ``message_type`` is the ebXML Action (for Helsenorge equal to the MsgHead type, for NAV
    not: a POM goes as Action ``OppgjorsMelding``). ``from_role`` is the Role of the sending
    side's CollaborationRole, ``to_role`` the receiving side's (None when the source does not
    say: a CPP names only its own party's roles). ``namespaces`` are the package's
    NamespaceSupported (the ebXML header's left out), by which a business document is matched
    to its binding; ``namespace`` is the most specific of them (the business schema).
    ``channel`` is the receiving side's DeliveryChannel for this action. ``gzip``: the
    receiving side's package gzips the business document before it is encrypted (an
    Encapsulation of ``application/x-gzip``, as NAV's behandlerkrav packages).
    """

    message_type: str
    service: str | None
    versions: tuple[str, ...]
    namespace: str | None = None
    channel: ChannelTerms | None = None
    service_type: str | None = None
    from_role: str | None = None
    to_role: str | None = None
    namespaces: tuple[str, ...] = ()
    gzip: bool = False


@dataclass(frozen=True, slots=True)
class AgreementTerms:
    source: TermsSource
    our_her_id: str | None
    counterparty_her_id: str
    counterparty_name: str | None
    cpa_id: str | None
    status: str | None
    valid_from: datetime | None
    valid_to: datetime | None
    outbound: tuple[AgreedMessage, ...]
    inbound: tuple[AgreedMessage, ...]
    default_channel: ChannelTerms | None
    signing_certificate: PartyCertificate | None = None
    encryption_certificate: PartyCertificate | None = None
    any_message_type: bool = False
    notes: tuple[str, ...] = ()  # why better sources were passed over

    def message_types(self) -> dict[str, tuple[str, ...]]:
        """Outbound message type -> versions the counterparty accepts (newest first)."""
        collected: dict[str, set[str]] = {}
        for message in self.outbound:
            collected.setdefault(message.message_type, set()).update(message.versions)
        return {kind: sort_versions(versions) for kind, versions in collected.items()}

    def outbound_for(self, message_type: str) -> tuple[AgreedMessage, ...]:
        return tuple(m for m in self.outbound if m.message_type == message_type)


# NHN's own MSH resends after 12 h when neither receipt nor error came, at most 5 times (about
# 72 h); with no CPA this is the best statement of what the network expects.
AR_DEFAULT_RETRIES = 5
AR_DEFAULT_RETRY_INTERVAL = timedelta(hours=12)
AR_DEFAULT_PERSIST_DURATION = timedelta(hours=72)


def terms_from_ar(party: CommunicationParty, our_her_id: str | None = None) -> AgreementTerms:
    """Terms from an address-register entry: AMQP when the party has queues, else ebXML over
    SMTP to its EDI address. Message types are not restricted (the register does not say)."""
    async_queue = party.queue(QueueKind.ASYNC)
    if async_queue:
        channel = ChannelTerms(
            channel_id=None,
            transport="amqp",
            endpoint=async_queue,
            ack_requested="never",  # AMQP delivery is confirmed by the broker, not by ebXML
            duplicate_elimination="always",
            sync_reply_mode="none",
        )
    elif party.edi_address:
        channel = ChannelTerms(
            channel_id=None,
            transport="smtp",
            endpoint=party.edi_address,
            retries=AR_DEFAULT_RETRIES,
            retry_interval=AR_DEFAULT_RETRY_INTERVAL,
            persist_duration=AR_DEFAULT_PERSIST_DURATION,
            ack_requested="always",
            duplicate_elimination="always",
            sync_reply_mode="none",
        )
    else:
        channel = None
    return AgreementTerms(
        source=TermsSource.AR,
        our_her_id=our_her_id,
        counterparty_her_id=party.her_id,
        counterparty_name=party.display_name or party.name,
        cpa_id=None,
        status=None,
        valid_from=party.valid_from,
        valid_to=party.valid_to,
        outbound=(),
        inbound=(),
        default_channel=channel,
        signing_certificate=party.signing_certificate,
        encryption_certificate=party.encryption_certificate,
        any_message_type=True,
    )
