"""The HIS 1037 ebXML envelope as typed values (what :mod:`.build` writes and :mod:`.parse` reads).

HIS 1037 profiles ebMS 2.0: a SOAP 1.1 envelope whose header carries ``eb:MessageHeader``
(From/To with ``PartyId type="HER"`` and Role, CPAId, ConversationId, Service, Action,
MessageData, DuplicateElimination, Description), ``eb:AckRequested``, ``eb:SyncReply`` and, on
signals, ``eb:Acknowledgment`` or ``eb:ErrorList``; the body holds ``eb:Manifest`` with one
``cid:`` reference per payload. The signature (``ds:Signature``, last in the header) is added
by the security layer after building.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from meldingstjener.contentid import cid_url, content_id_of_url
from meldingstjener.contentid import content_id as normal_content_id
from meldingstjener.ebxml.codes import (
    ACTION_ACKNOWLEDGMENT,
    ACTION_MESSAGE_ERROR,
    EBMS_SERVICE,
    PARTY_TYPE_HER,
    ErrorDetail,
    Severity,
)
from meldingstjener.ebxml.description import MshDescription


@dataclass(frozen=True, slots=True)
class Party:
    """A From or To party: its HER-id, its role in the CPA, and the PartyId type.

    ``party_type`` is ``HER`` in HIS 1037. When a peer sends no HER PartyId the first PartyId
    is kept with its own type, so a signal from a sloppy peer can still be read and matched.
    ``other_ids`` keeps further PartyIds (NAV adds ``ENH``, the organisation number) as
    (type, value) pairs.
    """

    her_id: str
    role: str | None = None
    party_type: str = PARTY_TYPE_HER
    other_ids: tuple[tuple[str | None, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """eb:MessageHeader: who, under which agreement, what, and the message's identity."""

    from_party: Party
    to_party: Party
    cpa_id: str
    conversation_id: str
    service: str
    service_type: str | None  # None: the service is a URI (ebMS 2.0 3.1.5)
    action: str
    message_id: str
    timestamp: datetime
    ref_to_message_id: str | None = None
    time_to_live: datetime | None = None
    description: MshDescription | None = None

    @property
    def is_signal(self) -> bool:
        """True for the MSH's own messages (Acknowledgment, MessageError, Ping, ...)."""
        return self.service == EBMS_SERVICE


@dataclass(frozen=True, slots=True)
class ManifestReference:
    """One eb:Manifest/eb:Reference. ``content_id`` is the cid without ``cid:`` and ``<>``,
    percent-decoded (RFC 2392); None when the href is not a ``cid:`` URL."""

    href: str
    content_id: str | None = None
    description: str | None = None

    @classmethod
    def for_content_id(cls, content_id: str, description: str | None = None) -> ManifestReference:
        bare = normal_content_id(content_id)
        if bare is None:
            raise ValueError(f"not a content-id: {content_id[:60]!r}")
        return cls(cid_url(bare), bare, description)


def content_id_from_href(href: str) -> str | None:
    """The content-id a ``cid:`` URL points at (RFC 2392: percent-encoded), else None (also
    when what it names is no content-id: see :mod:`meldingstjener.contentid`)."""
    return content_id_of_url(href)


class SignedReference(NamedTuple):
    """A ds:Reference: the URI signed, its digest method URI and base64 digest value."""

    uri: str
    digest_method: str
    digest_value: str


@dataclass(frozen=True, slots=True)
class AcknowledgmentInfo:
    """eb:Acknowledgment: when the acknowledged message was received, which one, and the
    digests the receiver saw (non-repudiation of receipt)."""

    timestamp: datetime
    ref_to_message_id: str
    references: tuple[SignedReference, ...] = ()
    from_party: Party | None = None


@dataclass(frozen=True, slots=True)
class ErrorList:
    """eb:ErrorList: the worst severity and each error."""

    highest_severity: Severity
    errors: tuple[ErrorDetail, ...]


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything an ebXML envelope says, as values."""

    header: MessageHeader
    ack_requested: bool = False
    ack_signed: bool = False
    sync_reply: bool = False
    duplicate_elimination: bool = False
    manifest: tuple[ManifestReference, ...] = ()
    acknowledgment: AcknowledgmentInfo | None = None
    error_list: ErrorList | None = None
    signature_present: bool = False
    extra_header_elements: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_acknowledgment(self) -> bool:
        return self.header.is_signal and self.header.action == ACTION_ACKNOWLEDGMENT

    @property
    def is_message_error(self) -> bool:
        return self.header.is_signal and self.header.action == ACTION_MESSAGE_ERROR
