"""The MSH's own answers: the Acknowledgment (transport receipt) and the MessageError.

Both are envelopes of the ebMS service (``urn:oasis:names:tc:ebxml-msg:service``) addressed back
to the sender of the original: From = us, To = the original sender, same CPAId and
ConversationId, RefToMessageId = the original MessageId. Neither requests an acknowledgment
(ebMS 2.0 forbids acknowledging signals). The Acknowledgment repeats the ``ds:Reference``
digests of the signature it received, so the sender holds proof of what arrived
(non-repudiation of receipt); the caller signs the result like any other envelope.

Parsing a received signal is :func:`meldingstjener.ebxml.parse.parse_envelope`
(``acknowledgment`` / ``error_list``); matching it to what we sent is the engine's, and
:func:`compare_receipt_digests` is the one comparison of a received Acknowledgment's digests
with those of the message we signed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from meldingstjener.contentid import comparable_uri
from meldingstjener.ebxml.build import build_envelope
from meldingstjener.ebxml.codes import (
    ACTION_ACKNOWLEDGMENT,
    ACTION_MESSAGE_ERROR,
    DS_NS,
    EBMS_SERVICE,
    SOAP_NS,
    ErrorDetail,
    Severity,
)
from meldingstjener.ebxml.description import MshDescription
from meldingstjener.ebxml.parse import ds_references
from meldingstjener.ebxml.values import (
    AcknowledgmentInfo,
    Envelope,
    ErrorList,
    MessageHeader,
    Party,
    SignedReference,
)


@dataclass(frozen=True, slots=True)
class OriginalIds:
    """What a MessageError must know about a message that could not be fully read.

    ``message_id`` is None when even the MessageId was unreadable (then the error carries no
    RefToMessageId). ``receiver`` is the party the original was addressed to (us), if known.
    """

    sender: Party
    cpa_id: str
    conversation_id: str
    message_id: str | None = None
    receiver: Party | None = None

    @classmethod
    def of(cls, header: MessageHeader) -> OriginalIds:
        return cls(
            header.from_party,
            header.cpa_id,
            header.conversation_id,
            header.message_id,
            header.to_party,
        )


def signature_references(root: etree._Element) -> list[SignedReference]:
    """The ds:Reference URIs and digests of the envelope's signature (first ds:Signature in
    SOAP:Header); empty when the envelope is unsigned."""
    header = root.find(f"{{{SOAP_NS}}}Header")
    signature = None if header is None else header.find(f"{{{DS_NS}}}Signature")
    signed_info = None if signature is None else signature.find(f"{{{DS_NS}}}SignedInfo")
    if signed_info is None:
        return []
    return list(ds_references(signed_info))


@dataclass(frozen=True, slots=True)
class ReceiptDigests:
    """What a received Acknowledgment's ``ds:Reference`` elements say of the message we sent,
    by the URIs of our signature's references: ``contradicted``, a URI of ours whose digest,
    made with our digest method, has another value (the Acknowledgment is of something else);
    ``matched``, the URIs of ours carried with our digest; ``not_comparable``, URIs of ours
    whose digest was made with another method, or is empty (it proves nothing either way);
    ``not_ours``, URIs our signature does not have (as the Acknowledgment wrote them)."""

    contradicted: tuple[str, ...] = ()
    matched: tuple[str, ...] = ()
    not_ours: tuple[str, ...] = ()
    not_comparable: tuple[str, ...] = ()

    @property
    def proves_payload(self) -> bool:
        """Whether a part other than the envelope (``URI=""``) is proved: a ``cid:`` digest."""
        return any(uri != "" for uri in self.matched)


def compare_receipt_digests(
    sent: Sequence[SignedReference], acknowledged: Sequence[SignedReference]
) -> ReceiptDigests:
    """Compare the digests an Acknowledgment carries (``acknowledged``, its eb:Acknowledgment's
    ``ds:Reference`` elements) with the references of the SignedInfo we sent (``sent``,
    :func:`signature_references` of our envelope). A reference is matched by its URI, a
    ``cid:`` URL by the content-id it names (:func:`~meldingstjener.contentid.comparable_uri`:
    a receiver may write ``cid:<x>`` or percent-encode otherwise); URIs are reported as we
    signed them. ebMS 2.0 has the receiver copy the digests from the signature it received,
    but a receiver may compute them itself: only a digest made with our method can be
    compared, and only one whose value (whitespace aside, base64-decoded) differs contradicts
    what we signed. One made with another method, or empty, is not comparable: no proof that
    the message differs, nor that it arrived whole."""
    ours = {comparable_uri(reference.uri): reference for reference in sent}
    contradicted: list[str] = []
    matched: list[str] = []
    not_ours: list[str] = []
    not_comparable: list[str] = []
    for reference in acknowledged:
        mine = ours.get(comparable_uri(reference.uri))
        if mine is None:
            not_ours.append(reference.uri)
        elif reference.digest_method.strip() != mine.digest_method.strip() or not (
            _digest_bytes(reference.digest_value) and _digest_bytes(mine.digest_value)
        ):
            not_comparable.append(mine.uri)
        elif _digest_bytes(reference.digest_value) == _digest_bytes(mine.digest_value):
            matched.append(mine.uri)
        else:
            contradicted.append(mine.uri)
    return ReceiptDigests(
        tuple(contradicted), tuple(matched), tuple(not_ours), tuple(not_comparable)
    )


def _digest_bytes(value: str) -> bytes:
    """A ``ds:DigestValue`` as compared: its base64 decoded, whitespace aside; one that is no
    base64 as its text (compared as written)."""
    text = "".join(value.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode()


def _reply_header(
    original: OriginalIds,
    *,
    action: str,
    our_party: Party | None,
    message_id: str,
    timestamp: datetime,
    description: MshDescription | None,
) -> MessageHeader:
    sender = our_party or original.receiver
    if sender is None:
        raise ValueError("our party is unknown: pass our_party when the original had no To")
    return MessageHeader(
        from_party=sender,
        to_party=original.sender,
        cpa_id=original.cpa_id,
        conversation_id=original.conversation_id,
        service=EBMS_SERVICE,
        service_type=None,
        action=action,
        message_id=message_id,
        timestamp=timestamp,
        ref_to_message_id=original.message_id,
        description=description,
    )


def build_acknowledgment(
    original: Envelope | MessageHeader,
    *,
    references: Sequence[SignedReference | tuple[str, str, str]],
    message_id: str,
    timestamp: datetime,
    our_party: Party | None = None,
    received_at: datetime | None = None,
    description: MshDescription | None = None,
) -> etree._Element:
    """An unsigned Acknowledgment for ``original``.

    ``references`` are (uri, digest method, digest value) from the original's signature
    (:func:`signature_references`). ``our_party`` defaults to the original's To party;
    ``received_at`` (eb:Acknowledgment/eb:Timestamp, when the original arrived) defaults to
    ``timestamp``.
    """
    header = original.header if isinstance(original, Envelope) else original
    reply = _reply_header(
        OriginalIds.of(header),
        action=ACTION_ACKNOWLEDGMENT,
        our_party=our_party,
        message_id=message_id,
        timestamp=timestamp,
        description=description,
    )
    acknowledgment = AcknowledgmentInfo(
        timestamp=received_at or timestamp,
        ref_to_message_id=header.message_id,
        references=tuple(SignedReference(*reference) for reference in references),
    )
    return build_envelope(reply, ack_requested=False, acknowledgment=acknowledgment)


def highest_severity(errors: Sequence[ErrorDetail]) -> Severity:
    if any(error.severity is Severity.ERROR for error in errors):
        return Severity.ERROR
    return Severity.WARNING


def build_message_error(
    original: Envelope | MessageHeader | OriginalIds,
    errors: Sequence[ErrorDetail],
    *,
    message_id: str,
    timestamp: datetime,
    our_party: Party | None = None,
    description: MshDescription | None = None,
) -> etree._Element:
    """An unsigned MessageError about ``original`` listing ``errors`` (at least one)."""
    if not errors:
        raise ValueError("a MessageError needs at least one error")
    if isinstance(original, Envelope):
        ids = OriginalIds.of(original.header)
    elif isinstance(original, MessageHeader):
        ids = OriginalIds.of(original)
    else:
        ids = original
    reply = _reply_header(
        ids,
        action=ACTION_MESSAGE_ERROR,
        our_party=our_party,
        message_id=message_id,
        timestamp=timestamp,
        description=description,
    )
    error_list = ErrorList(highest_severity(errors), tuple(errors))
    return build_envelope(reply, ack_requested=False, error_list=error_list)
