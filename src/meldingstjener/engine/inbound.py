"""The inbound pipeline: from received bytes to a durably stored message and its Acknowledgment.

parse MIME and envelope -> signals go to :mod:`.signals` -> verify the signature with the sender's
registered certificate (or, for a while after a rollover, the one it replaced) -> check the
manifest -> check that To is ours -> duplicate check (a repeated eb:MessageId is not processed
again; its original signal is sent again) -> check that the payload's content key was not used
by another message (no padding oracle) -> decrypt -> read the fagmelding and check its HER-ids
against the envelope -> store payload, message and the signed Acknowledgment in one commit ->
only then is the Acknowledgment released (in the HTTP response for SyncReply, else by a
``send-signal`` job). Every failure becomes the right ebXML MessageError to the sender and an
event in the log, but one that is ours and passes: whether the sender's signing certificate is
revoked could not be found out (``revocation_policy = "hard"``, its CA's CRL and OCSP away from
us) raises :class:`InboundDeferred`, which ``POST /ebms`` answers 503 for the sender to send
again, as when the store is away; our ``revocation-unknown`` alert says so, not a refusal of the
sender.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from lxml import etree
from sqlalchemy.exc import IntegrityError

from meldingstjener.contentid import content_id_of_url
from meldingstjener.ebxml import (
    Attachment,
    EbxmlError,
    Envelope,
    ErrorCode,
    ErrorDetail,
    MessageHeader,
    MimeMessage,
    OriginalIds,
    Party,
    Severity,
    check_manifest,
    parse_envelope,
    unpackage,
    unpackage_envelope,
)
from meldingstjener.ebxml.codes import ACTION_MESSAGE_ERROR, PARTY_TYPE_HER, cid_location
from meldingstjener.ebxml.parse import readable_header
from meldingstjener.engine import ebms_alerts, payload_io, receipts, recovery, signals
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import PartnerUnknown, SigningCertificates, cpa_id_for
from meldingstjener.engine.fagmelding import Fagmelding, inspect
from meldingstjener.engine.trust import InboundDeferred, verify_sender
from meldingstjener.formats.xmlparse import XmlError, parse_xml
from meldingstjener.model import Direction, InboundStatus
from meldingstjener.model.privacy import redact
from meldingstjener.security.errors import SecurityError
from meldingstjener.store.payloads import PayloadRef, PayloadSource
from meldingstjener.store.tables import MessageRow, ReceiptRow
from meldingstjener.store.uow import EventKind, UnitOfWork, content_keys_used, sender_actor

log = logging.getLogger(__name__)

# The payload is for a recipient and readable, and was signed by its sender (the signature is
# checked first): the certificate it was encrypted to is not one we hold the key of, or our key
# does not open it. The sender holds a stale copy of ours, or our side's certificates are out of
# step (ours renewed in the register before its key was installed here: then every sender's
# messages fail the same way) until someone acts.
_OUR_KEY_FAILED = frozenset({"recipient-not-found", "decryption-failed"})


@dataclass(frozen=True)
class InboundReply:
    """What the channel should answer right away: a signal (SyncReply or fallback) or nothing."""

    content_type: str | None = None
    body: bytes | None = None


class InboundRefused(Exception):
    """Input so broken that no ebXML answer can be addressed (no readable MessageHeader), or,
    on a channel other than HTTP, a message refused before its signature verified (there is no
    response to answer it in): the mail intake quarantines the mail.

    The HTTP endpoint answers 400 with ``detail``; the event is already in the log.
    ``sender``: the HER-id the envelope names as its From, when that much could be read (not
    verified: it tells the operator whose refusals these may be).
    """

    def __init__(self, code: str, detail: str, sender: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.sender = sender


class _Reject(Exception):
    """A refusal: ``error`` goes back to the sender; ``logged`` is what we store and log of it;
    ``reason``, a fixed text of ours, is what the alert says of it.

    They differ when the sender's text quotes its own message (the XML parser names elements,
    attributes and entities of the fagmelding, which may be patient data): the sender may read
    that about its own message, our log and receipts keep codes only. And the alert, which
    webhooks pass on, quotes nothing a sender chose (a PartyId of another type is any text)."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        location: str | None = None,
        *,
        reason: str,
        logged: str = "",
        our_key: str | None = None,
        verified: bool = True,
    ) -> None:
        super().__init__(detail)
        self.error = ErrorDetail(code, Severity.ERROR, location, detail)
        self.reason = reason
        self.logged = logged or detail
        self.our_key = our_key  # the CMS code when our keys failed to decrypt (not the sender)
        # False when the signature did not verify with the sender's certificate or could not be
        # checked: the From and MessageId are then anybody's to write (see _refuse_unverified)
        self.verified = verified


def receive(
    ctx: EngineContext,
    content_type: str,
    body: PayloadSource,
    *,
    channel: str = "http",
    before_commit: Callable[[], None] | None = None,
) -> InboundReply:
    """Take one received ebXML message (bytes, or a spooled file that is then kept as the wire
    form without a copy). Returns what to answer synchronously, if anything.

    ``before_commit`` is called just before the message (or its refusal) is committed with the
    signal it answers: what it raises rolls the receive back, nothing stored (``POST /ebms``
    gave up waiting at a stop and answered 503: the events would say the signal was offered in
    a response that was never given)."""
    root: etree._Element | None = None
    try:
        mime = unpackage(content_type, body)
        root = parse_xml(mime.envelope_xml, max_bytes=ctx.policy.max_xml_bytes)
        envelope = parse_envelope(root)
    except (EbxmlError, XmlError) as exc:
        if isinstance(exc, EbxmlError) and exc.code is ErrorCode.MIME_PROBLEM and root is None:
            answered = _mime_problem(ctx, content_type, body, exc, channel)
            if answered is not None:
                return answered
        if isinstance(exc, EbxmlError) and exc.code is ErrorCode.NOT_SUPPORTED and root is not None:
            answered = _not_supported(ctx, root, exc, channel)
            if answered is not None:
                return answered
        code = str(exc.code) if isinstance(exc, EbxmlError) else "OtherXml"
        with ctx.store.unit_of_work() as uow:
            uow.events.record(
                None,
                EventKind.ERROR,
                actor=channel,
                code=code,
                detail=f"unreadable ebXML message refused: {exc}",
            )
            uow.commit()
        raise InboundRefused(
            code, f"unreadable ebXML message: {exc}", ebms_alerts.sender_named_by(root)
        ) from None

    if envelope.header.is_signal:
        signals.handle_incoming(ctx, envelope, root, channel=channel)
        return InboundReply()
    return _receive_message(ctx, mime, envelope, root, body, channel, before_commit)


def _mime_problem(
    ctx: EngineContext, content_type: str, body: PayloadSource, exc: EbxmlError, channel: str
) -> InboundReply | None:
    """A MIME defect outside a readable envelope (a payload part's transfer encoding or base64,
    a part without Content-ID): the sender is told by a MessageError MimeProblem. Every part is
    covered by the signature, so it cannot be checked: a refusal not verified, answered only in
    the HTTP response. None when there is no envelope to answer, or one not to answer with a
    MessageError (:func:`_may_answer_with_error`), or the message came by mail (whose
    refusals without an answer are quarantined whole for the operator)."""
    if channel != "http":
        return None
    try:
        root = parse_xml(unpackage_envelope(content_type, body), max_bytes=ctx.policy.max_xml_bytes)
    except (EbxmlError, XmlError):
        return None
    try:
        envelope = parse_envelope(root)
    except (EbxmlError, XmlError):  # not taken whole (a signal's): its MessageHeader is told
        header = readable_header(root)
        if header is None:
            return None
        envelope = Envelope(header=header)
    if not _may_answer_with_error(envelope.header):
        return None
    reject = _Reject(
        ErrorCode.MIME_PROBLEM,
        exc.message,
        exc.location,
        reason="its MIME parts could not be read",
        verified=False,
    )
    return _refuse_read_envelope(ctx, envelope, reject, channel)


def _not_supported(
    ctx: EngineContext, root: etree._Element, exc: EbxmlError, channel: str
) -> InboundReply | None:
    """An envelope refused for what this server does not implement (an eb:version other than
    2.0, a header block with mustUnderstand it does not know, an ebMS service action other
    than Acknowledgment and MessageError: Ping, StatusRequest), whose MessageHeader could be
    read: the sender is told by a MessageError NotSupported about its MessageId. It was not
    parsed whole, so its signature is not checked: a refusal not verified, answered only in
    the HTTP response, as :func:`_mime_problem`'s. None when there is no MessageHeader to
    answer, by mail (quarantined whole, as unreadable), or for a MessageError
    (:func:`_may_answer_with_error`)."""
    if channel != "http":
        return None
    header = readable_header(root)
    if header is None or not _may_answer_with_error(header):
        return None
    reject = _Reject(
        ErrorCode.NOT_SUPPORTED,
        exc.message,
        exc.location,
        reason="its envelope uses what this server does not support",
        verified=False,
    )
    return _refuse_read_envelope(ctx, Envelope(header=header), reject, channel)


def _may_answer_with_error(header: MessageHeader) -> bool:
    """Whether an envelope refused before it was checked may be answered with a MessageError:
    any but a MessageError (ebMS 2.0 reports no error about an error: two MSHs would answer
    each other's for ever). An Acknowledgment or a signal action we do not know is answered,
    as a business message is: its sender learns why it was not taken. The one rule of
    :func:`_mime_problem` and :func:`_not_supported`."""
    return not (header.is_signal and header.action == ACTION_MESSAGE_ERROR)


def _refuse_read_envelope(
    ctx: EngineContext, envelope: Envelope, reject: _Reject, channel: str
) -> InboundReply:
    """Refuse a message whose envelope was read but not checked: by its sender's certificates
    when its From is a HER-id (for the alert), answered as :func:`_refuse_unverified`."""
    header = envelope.header
    certificates = SigningCertificates(None)
    if _party_without_her_id(header) is None:
        with ctx.store.unit_of_work() as uow:
            certificates = ctx.directory.signing_certificates(uow, header.from_party.her_id)
    return _refuse_unverified(ctx, envelope, reject, channel, certificates)


def _receive_message(
    ctx: EngineContext,
    mime: MimeMessage,
    envelope: Envelope,
    root: etree._Element,
    body: PayloadSource,
    channel: str,
    before_commit: Callable[[], None] | None,
) -> InboundReply:
    header = envelope.header
    sender = header.from_party.her_id
    without_her_id = _party_without_her_id(header)
    if without_her_id is not None:
        # no certificate is looked up by it, nor a signature checked with it: nothing stored
        return _refuse_unverified(ctx, envelope, without_her_id, channel, SigningCertificates(None))
    with ctx.store.unit_of_work() as uow:
        duplicate = uow.messages.by_ebxml_id(Direction.INBOUND, header.message_id)
        certificates = ctx.directory.signing_certificates(uow, sender)
    if duplicate is not None:
        return _duplicate(ctx, mime, envelope, root, certificates, duplicate, channel)
    try:
        keys = _check(ctx, mime, envelope, root, certificates, channel)
    except _Reject as reject:
        if not reject.verified:
            return _refuse_unverified(ctx, envelope, reject, channel, certificates)
        return _refuse(
            ctx,
            mime,
            envelope,
            root,
            certificates,
            body,
            reject,
            channel,
            before_commit=before_commit,
        )
    try:
        message, plain = _open_payload(ctx, mime, envelope)
    except _Reject as reject:
        # the payload's keys were used: another message may not use them again
        return _refuse(
            ctx, mime, envelope, root, certificates, body, reject, channel, keys, before_commit
        )

    # ebMS 2.0: an Acknowledgment only when the sender asked for one (eb:AckRequested); a CPA
    # whose ackRequested is never (NAV's EgenandelForesporsel) has its sender wait for none
    ack = signals.build_ack(ctx, envelope, root) if envelope.ack_requested else None
    payload_ref, wire_ref, *acked = ctx.store.payloads.put_all(
        plain, body, *(() if ack is None else (ack.body,))
    )
    ack_ref = acked[0] if acked else None
    files = (payload_ref, wire_ref, *acked)
    now = ctx.clock()
    row = _envelope_row(ctx, envelope, channel, wire_ref.key)
    for column, value in message.row_fields().items():
        setattr(row, column, value)
    row.payload_ref = payload_ref.key
    row.payload_size = payload_ref.size
    row.payload_sha256 = payload_ref.sha256
    row.wire_content_type = mime.headers.get("content-type")
    reply_inline = envelope.sync_reply
    verdict = receipts.judge(ctx, message, header.to_party.her_id)
    committing = False
    try:
        with ctx.store.unit_of_work() as uow:
            uow.messages.add(
                row, actor=sender_actor(channel, sender), detail=f"received from {sender}", at=now
            )
            _note_cpa_not_agreed(ctx, uow, row.id, header, at=now)
            if message.report.problems:
                uow.events.record(
                    row.id,
                    EventKind.NOTE,
                    actor="validator",
                    code="validation",
                    detail=f"{len(message.report.problems)} validation finding(s): "
                    + "; ".join(f"{p.code} at {p.path}" for p in message.report.problems[:5]),
                    at=now,
                )
            route = None
            reply_inline = False
            stored = "stored durably; no Acknowledgment, none was asked for (no AckRequested)"
            if ack is not None:
                route = _reply_endpoint(ctx, uow, sender, header.to_party.her_id)
                reply_inline = _inline(channel, envelope.sync_reply, route)
                stored = "stored durably; Acknowledgment " + (
                    "offered in the response"
                    if reply_inline
                    else "queued"
                    if route is not None
                    else "stored, with no way back to the sender"
                )
            if verdict is None:
                uow.messages.set_status(
                    row, InboundStatus.ACKNOWLEDGED.value, actor="msh", detail=stored, at=now
                )
            else:  # received, never acknowledged to the EPJ: the verdict job moves it on
                codes = ", ".join(code for code, _ in verdict.errors)
                judged = (
                    f"the server's checks failed ({codes}): it goes to the EPJ with an alert, "
                    "no AppRec of the server's"
                    if verdict.status is InboundStatus.ACKNOWLEDGED
                    else f"the server rejects it ({codes}), its AppRec follows"
                )
                uow.events.record(
                    row.id,
                    EventKind.NOTE,
                    actor="msh",
                    code=verdict.errors[0][0],
                    detail=f"{stored}; {judged}",
                    at=now,
                )
                receipts.schedule_verdict(ctx, uow, row.id, verdict)
            if ack is not None and ack_ref is not None:
                _record_signal(ctx, uow, ack, ack_ref, "acknowledgment", row, route, reply_inline)
            # after the receipt, which wrote the message row (in one INSERT with its status)
            uow.content_keys.record(keys, row.id, at=now)
            if message.msg_type == receipts.APPREC:
                receipts.apply_incoming_apprec(ctx, uow, row, message)
            # a reply to a message of ours sent without AckRequested, after its AppRec deadline;
            # not one the server rejects or purges (its verdict job does: the EPJ never has it)
            if verdict is None or verdict.status is InboundStatus.ACKNOWLEDGED:
                receipts.resolve_replied_to(uow, row, at=now)
            # A message from this sender, decrypted with our key, is stored: refusals of its
            # messages, our key's failure on them and this process's store's are over (no
            # statement unless an alert is open).
            ctx.recovery.went_through(
                uow, (recovery.sender(sender), recovery.store(ctx.instance)), at=now
            )
            if before_commit is not None:
                before_commit()
            committing = True
            uow.commit()
    except IntegrityError:
        # The same message arrived twice at once; the other request stored it first. Nothing
        # refers to this request's files (their keys are random): the decrypted content must
        # not stay on disk.
        # the decrypted content must not stay on disk; the wire form goes once the conflict is
        # answered (a spooled body is that file: a refusal stores a copy of it)
        ctx.store.payloads.discard(payload_ref, *acked)
        try:
            return _after_conflict(ctx, mime, envelope, root, certificates, body, channel)
        finally:
            ctx.store.payloads.discard(wire_ref)
    except BaseException:
        _discard_unless_committing(ctx, committing, *files)
        raise
    ctx.notify_workers(uow)
    if reply_inline and ack is not None:
        return InboundReply(ack.content_type, ack.body)
    return InboundReply()


def _note_cpa_not_agreed(
    ctx: EngineContext, uow: UnitOfWork, message_id: str, header: MessageHeader, *, at: datetime
) -> None:
    """A note on a received message whose CPAId is not the id of an agreement of ours with its
    sender, for the help desk. Not a refusal: a well-formed, correctly signed message may not
    be refused with an ebXML error (the Directorate's rule), and agreements without a CPA
    (register terms, ``[[partners]]``) have only the id both sides make up
    (:func:`~meldingstjener.engine.directory.cpa_id_for` of one HER-id of each side, which a
    sender may make of our organisation's or a service's): any of those passes. The partner
    cache is compared first; the store is read only when neither matches."""
    sender = header.from_party.her_id
    try:
        partner = ctx.directory.partner(uow, sender, our_her_id=header.to_party.her_id)
    except PartnerUnknown:
        partner = None
    if partner is not None and partner.cpa_id == header.cpa_id:
        return
    parties = {sender} | (
        {partner.organisation_her_id} if partner and partner.organisation_her_id else set()
    )
    if header.cpa_id in {
        cpa_id_for(ours, theirs) for ours in ctx.own_her_ids for theirs in parties
    }:
        return
    agreed = sorted(
        {
            row.cpa_id or cpa_id_for(row.our_her_id, row.counterparty_her_id)
            for row in uow.agreements.for_counterparties(parties)
            if row.our_her_id in ctx.own_her_ids
        }
    )
    if header.cpa_id in agreed:
        return
    shown = header.cpa_id if len(header.cpa_id) <= 60 else header.cpa_id[:57] + "..."
    ours = f"ours is {', '.join(agreed)}" if agreed else "we have no agreement with it"
    uow.events.record(
        message_id,
        EventKind.NOTE,
        actor="msh",
        code="cpa-not-agreed",
        detail=f"its CPAId {redact(shown)!r} is not the id of an agreement of ours with "
        f"{sender} ({ours}); taken all the same (a well-formed, signed message is not "
        "refused for it)",
        at=at,
    )


def _party_without_her_id(header: MessageHeader) -> _Reject | None:
    """HIS 1037: a business message's From and To each name a PartyId of type HER. A PartyId
    of another type (any text) is no HER-id to look a certificate up by, check a signature
    with, store, or send signals to."""
    for name, party in (("From", header.from_party), ("To", header.to_party)):
        if _her_id(party) is None:
            return _Reject(
                ErrorCode.VALUE_NOT_RECOGNIZED,
                f"the {name} has no PartyId of type HER (HIS 1037 requires one)",
                f"eb:MessageHeader/eb:{name}/eb:PartyId",
                reason=f"its {name} has no PartyId of type HER",
                verified=False,
            )
    return None


def _payload_part(mime: MimeMessage, envelope: Envelope) -> Attachment | None:
    """The encrypted payload: the part the manifest names first; None when there is none."""
    if not envelope.manifest:
        return None
    return mime.attachments.get(str(envelope.manifest[0].content_id))


def _after_conflict(
    ctx: EngineContext,
    mime: MimeMessage,
    envelope: Envelope,
    root: etree._Element,
    certificates: SigningCertificates,
    body: PayloadSource,
    channel: str,
) -> InboundReply:
    """Storing the message (or its refusal) met a row stored meanwhile by another request: one
    with the same eb:MessageId, judged as a later repeat would be (its sender's, and signed by
    it, or refused without that message's signal), or one that used its payload's key."""
    with ctx.store.unit_of_work() as uow:
        duplicate = uow.messages.by_ebxml_id(Direction.INBOUND, envelope.header.message_id)
    if duplicate is not None:
        return _duplicate(ctx, mime, envelope, root, certificates, duplicate, channel)
    used = _key_used_before(_payload_location(_payload_part(mime, envelope)))
    return _refuse(ctx, mime, envelope, root, certificates, body, used, channel)


def _payload_location(part: Attachment | None) -> str | None:
    """The eb:location of an error in the payload: its part's ``cid:`` URL."""
    return None if part is None else cid_location(part.content_id)


def _key_used_before(location: str | None) -> _Reject:
    # The same answer whatever the content would have decrypted to (see
    # cms_enveloped.wrapped_keys), and no word of which message used the key.
    return _Reject(
        ErrorCode.SECURITY_FAILURE,
        "the payload's content-encryption key was used in another message before: a payload "
        "is accepted in one message only (encrypt each message with a new key)",
        location,
        reason="its payload's content key was used in another message before (a copied payload)",
    )


def _check(
    ctx: EngineContext,
    mime: MimeMessage,
    envelope: Envelope,
    root: etree._Element,
    certificates: SigningCertificates,
    channel: str,
) -> frozenset[str]:
    """What is checked before the payload is opened: signature, TimeToLive, manifest, and that
    the payload's content key has not been used before. Returns the names of the payload's
    content keys wrapped for our keys (to be recorded with the message that uses them)."""
    header = envelope.header
    signed = _verify_signature(ctx, mime, envelope, root, certificates, channel)
    expires = header.time_to_live
    if expires is not None and ctx.clock() > expires:
        # ebMS 2.0: a message whose TimeToLive has passed is not delivered (its sender has given
        # up on it, or will have, and may have sent the content another way)
        raise _Reject(
            ErrorCode.TIME_TO_LIVE_EXPIRED,
            f"the message's TimeToLive ({expires:%Y-%m-%dT%H:%M:%SZ}) has passed",
            "eb:MessageHeader/eb:MessageData/eb:TimeToLive",
            reason="its TimeToLive had passed",
        )
    try:
        check_manifest(envelope, frozenset(mime.attachments))
    except EbxmlError as exc:
        raise _Reject(
            exc.code, str(exc), exc.location, reason="its manifest and parts disagree"
        ) from None
    payload = _payload_part(mime, envelope)
    if payload is None:
        raise _Reject(
            ErrorCode.MIME_PROBLEM, "no payload part", "eb:Manifest", reason="no payload part"
        )
    if signed.get(payload.content_id) is not payload:
        # the part the payload is read from must be the very part whose digest matched
        raise _Reject(
            ErrorCode.SECURITY_FAILURE,
            "the payload part is not covered by the signature",
            "eb:Manifest",
            reason="its payload part is not covered by its signature",
        )
    # Read only now that the payload is the signer's: anybody could otherwise send a payload of
    # thousands of recipients naming our certificate (issuer and serial are public) and have
    # each read and looked up before the signature failed (35,000 cost 3 s).
    keys = payload_io.wrapped_keys(ctx, payload)
    with ctx.store.database.reading() as connection:  # one SELECT, no transaction around it
        used = content_keys_used(connection, keys)
    if used:
        raise _key_used_before(_payload_location(payload))
    return keys


def _open_payload(
    ctx: EngineContext, mime: MimeMessage, envelope: Envelope
) -> tuple[Fagmelding, PayloadSource]:
    """Decrypt the payload, read the fagmelding, and check that it is ours and that its
    HER-ids agree with the envelope's."""
    header = envelope.header
    sender = header.from_party.her_id
    to = header.to_party.her_id
    not_ours = _Reject(
        ErrorCode.VALUE_NOT_RECOGNIZED,
        f"the receiver {to} is not served by this message server",
        "eb:MessageHeader/eb:To/eb:PartyId",
        reason="its receiver is not served here",
    )
    encrypted = _payload_part(mime, envelope)
    assert encrypted is not None  # _check refused a message without one
    try:
        plain = payload_io.decrypt_payload(ctx, encrypted)
    except SecurityError as exc:
        if to not in ctx.own_her_ids:
            raise not_ours from None
        raise _Reject(
            ErrorCode.SECURITY_FAILURE,
            f"the payload could not be decrypted: {exc}",
            _payload_location(encrypted),
            reason="its payload could not be decrypted",
            our_key=exc.code if exc.code in _OUR_KEY_FAILED else None,
        ) from None
    message = inspect(plain, ctx.policy.schema_dir, max_bytes=ctx.policy.max_xml_bytes)
    report = message.report
    # a MsgHead or AppRec our reader cannot read (a version we do not support, no MsgId, no
    # GenDate) cannot be answered by an AppRec either: refused here, never acknowledged
    unread = (report.format == "MsgHead" and report.msghead is None) or (
        report.format == "AppRec" and report.apprec is None
    )
    if not report.well_formed or report.format is None or unread:
        if to not in ctx.own_her_ids:
            raise not_ours
        problems = message.report.problems[:3]
        # Codes and paths only, never a problem's text: the MessageError is signed, not
        # encrypted, and the text may quote the fagmelding (a version's value, the parser's
        # fragment of a line). A path names an element only when it is a schema's name.
        raise _Reject(
            ErrorCode.OTHER_XML,
            "the business message cannot be interpreted: "
            + "; ".join(f"{p.code} at {p.path}" if p.path else p.code for p in problems),
            _payload_location(encrypted),
            reason="its business message cannot be read",
            logged="the business message cannot be interpreted ("
            + ", ".join(p.code for p in problems)
            + ")",
        )
    # A service HER-id we do not have, under our own organisation, is a misaddressed message
    # (accepted, purged and answered with AppRec E21 by receipts.judge); anything else not ours
    # is refused here.
    if to not in ctx.own_her_ids and str(message.receiver.organisation) not in ctx.own_her_ids:
        raise not_ours
    in_message_from = {str(h) for h in (message.sender.organisation, message.sender.service) if h}
    in_message_to = {str(h) for h in (message.receiver.organisation, message.receiver.service) if h}
    if sender not in in_message_from or to not in in_message_to | message.copy_receivers:
        said_from = "/".join(sorted(in_message_from)) or "?"
        said_to = "/".join(sorted(in_message_to)) or "?"
        # the wire text quotes the envelope only: what the fagmelding says is kept in our log
        raise _Reject(
            ErrorCode.INCONSISTENT,
            f"the envelope says {sender} -> {to}, which is not the sender and receiver of the "
            "business message",
            "eb:MessageHeader",
            reason="the HER-ids of its envelope and business message disagree",
            logged=f"the envelope says {sender} -> {to}, the business message says "
            f"{said_from} -> {said_to}",
        )
    return message, plain


def _verify_signature(
    ctx: EngineContext,
    mime: MimeMessage,
    envelope: Envelope,
    root: etree._Element,
    certificates: SigningCertificates,
    channel: str,
) -> dict[str, Attachment]:
    """Check that the envelope's signature verifies with the sender's certificate, once that
    has passed the certificate checks: its registered one, or during a rollover the one it
    replaced (see :func:`trust.verify_sender`). First receipts and repeats alike. Returns the
    parts whose digests matched, by content-id: the very objects whose bytes were checked."""
    sender = envelope.header.from_party.her_id
    parts = dict(mime.attachments)
    signature = verify_sender(
        ctx, root, {cid: part.data for cid, part in parts.items()}, sender, certificates
    )
    if signature.certificate is None:
        if certificates.current is None and certificates.previous is None:
            raise _Reject(
                ErrorCode.SECURITY_FAILURE,
                f"the sender {sender} is not a known communication party with a signing "
                "certificate",
                "eb:MessageHeader/eb:From/eb:PartyId",
                reason="its sender is not a known communication party with a signing certificate",
                verified=False,
            )
        problem = signature.check.problem or "a reference did not match"
        raise _Reject(
            ErrorCode.SECURITY_FAILURE,
            f"the signature did not verify: {problem}",
            "ds:Signature",
            reason="its signature did not verify with its sender's certificate",
            verified=False,
        )
    if signature.problem is not None and signature.problem.revocation_unknown:
        detail = (
            "the sender's signing certificate cannot be checked now (whether it is revoked could "
            "not be found out); send the message again later"
        )
        with ctx.store.unit_of_work() as uow:
            uow.events.record(
                None,
                EventKind.NOTE,
                actor=sender_actor(channel, sender),
                code="revocation-unknown",
                detail=f"a message from {sender} was not taken now: {signature.problem}; "
                "answered for its sender to send it again",
                ebxml_message_id=envelope.header.message_id,
            )
            uow.commit()
        raise InboundDeferred(detail, until=envelope.header.time_to_live)
    if signature.problem is not None:
        raise _Reject(
            ErrorCode.SECURITY_FAILURE,
            f"the sender's signing certificate is not acceptable: {signature.problem}",
            "ds:Signature/ds:KeyInfo",
            reason="its sender's signing certificate is not accepted now",
        )
    matched = {content_id_of_url(ref.uri) for ref in signature.check.references if ref.matched}
    return {cid: part for cid, part in parts.items() if cid in matched}


def _duplicate(
    ctx: EngineContext,
    mime: MimeMessage,
    envelope: Envelope,
    root: etree._Element,
    certificates: SigningCertificates,
    original: MessageRow,
    channel: str,
) -> InboundReply:
    """A known eb:MessageId. A resend by its sender gets our signal again; anything else (not
    signed by the sender, or from another party) is not that message, and is not answered with
    that message's Acknowledgment: it is logged against it and refused, with nothing stored."""
    header = envelope.header
    with ctx.store.unit_of_work() as uow:
        ours = _last_transport_receipt(uow, original.id)
    refused = ours is not None and ours.kind == "message-error"
    try:
        if _her_id(header.from_party) != original.from_her_id:
            raise _Reject(
                ErrorCode.INCONSISTENT,
                f"this MessageId was received from {original.from_her_id}, not from "
                f"{_party_shown(header.from_party)}",
                "eb:MessageHeader/eb:MessageData/eb:MessageId",
                reason="its MessageId came from another sender before",
            )
        if not refused:  # our refusal may go again to anyone; our Acknowledgment may not
            _verify_signature(ctx, mime, envelope, root, certificates, channel)
    except _Reject as reject:
        return _refuse_repeat(ctx, envelope, original, reject, channel, certificates)
    if ours is None and envelope.ack_requested:
        return _acknowledge_duplicate(ctx, original, envelope, root, channel)
    with ctx.store.unit_of_work() as uow:
        return _resend_signal(ctx, uow, original, envelope, channel)


def _acknowledge_duplicate(
    ctx: EngineContext,
    original: MessageRow,
    envelope: Envelope,
    root: etree._Element,
    channel: str,
) -> InboundReply:
    """A resend by its sender that asks for an Acknowledgment (eb:AckRequested) of a message
    whose first copy asked for none, so that none was built: not processed again, but its
    Acknowledgment is built, stored and sent as a first copy's is (of this copy's signature,
    verified by the caller: the same message, signed again)."""
    ack = signals.build_ack(ctx, envelope, root)
    [ack_ref] = ctx.store.payloads.put_all(ack.body)
    committing = False
    try:
        with ctx.store.unit_of_work() as uow:
            if _last_transport_receipt(uow, original.id) is None:
                route = _reply_endpoint(
                    ctx, uow, str(original.from_her_id), str(original.to_her_id)
                )
                inline = _inline(channel, envelope.sync_reply, route)
                uow.events.record(
                    original.id,
                    EventKind.SIGNAL_IN,
                    actor=sender_actor(channel, _party_shown(envelope.header.from_party)),
                    code="duplicate",
                    detail="the same ebXML MessageId arrived again, asking for an "
                    "Acknowledgment its first copy did not ask for; not processed again, "
                    "our Acknowledgment "
                    + (
                        "offered in the response"
                        if inline
                        else "queued"
                        if route is not None
                        else "stored, with no way back to the sender"
                    ),
                    ebxml_message_id=envelope.header.message_id,
                    at=ctx.clock(),
                )
                _record_signal(ctx, uow, ack, ack_ref, "acknowledgment", original, route, inline)
                committing = True
                uow.commit()
                ctx.notify_workers(uow)
                return InboundReply(ack.content_type, ack.body) if inline else InboundReply()
    except BaseException:
        _discard_unless_committing(ctx, committing, ack_ref)
        raise
    # another copy's Acknowledgment was recorded meanwhile: that one is sent again
    ctx.store.payloads.discard(ack_ref)
    with ctx.store.unit_of_work() as uow:
        return _resend_signal(ctx, uow, original, envelope, channel)


def _refuse_repeat(
    ctx: EngineContext,
    envelope: Envelope,
    original: MessageRow,
    reject: _Reject,
    channel: str,
    certificates: SigningCertificates,
) -> InboundReply:
    """A message with the eb:MessageId of ``original`` that is not its sender's resend: logged
    against the original, nothing stored; a MessageError only in a SyncReply response."""
    header = envelope.header
    error = reject.error
    with ctx.store.unit_of_work() as uow:
        uow.events.record(
            original.id,
            EventKind.ERROR,
            actor=sender_actor(channel, _party_shown(header.from_party)),
            code=str(error.code),
            detail="the ebXML MessageId of this message arrived again, but not as a resend by "
            f"its sender ({reject.logged}): refused, not answered with our signal",
            ebxml_message_id=header.message_id,
        )
        _alert_refused(ctx, uow, header, reject, original.id, certificates)
        uow.commit()
    if channel != "http" or not envelope.sync_reply:
        return InboundReply()  # no signal to a party that may not be who it says
    wire = signals.build_error(ctx, OriginalIds.of(header), [error], _us(ctx, header))
    return InboundReply(wire.content_type, wire.body)


def _refuse_unverified(
    ctx: EngineContext,
    envelope: Envelope,
    reject: _Reject,
    channel: str,
    certificates: SigningCertificates,
) -> InboundReply:
    """A message refused before its signature verified with its sender's certificate: its From
    and MessageId are anybody's to write (a MessageId travels in clear). Logged and alerted,
    nothing stored: a row would hold the MessageId against the sender's own message, taken for
    a repeat when it came, and a MessageError queued to the sender's endpoint would end that
    message there. The MessageError goes only in the HTTP response, to whoever sent it.

    By mail there is no response to answer in, and a MessageError mailed to whom the From names
    would go to a party that may not have sent it: refused (InboundRefused), so the mail intake
    quarantines the mail whole. A genuine partner refused so (our copy of its signing
    certificate stale, a rollover the register has not caught up with) thus leaves the operator
    its message to reprocess, not only an alert."""
    header = envelope.header
    error = reject.error
    with ctx.store.unit_of_work() as uow:
        uow.events.record(
            None,
            EventKind.ERROR,
            actor=sender_actor(channel, _party_shown(header.from_party)),
            code=str(error.code),
            detail=f"a message whose signature was not verified was refused ({reject.logged}); "
            "not stored, answered only in the response to its request",
            ebxml_message_id=header.message_id,
        )
        _alert_refused(ctx, uow, header, reject, None, certificates, channel)
        uow.commit()
    if channel != "http":  # no response to answer in, and no signal to whom it names
        raise InboundRefused(
            str(error.code),
            f"a message whose signature was not verified was refused ({reject.logged})",
            _her_id(header.from_party),
        )
    wire = signals.build_error(ctx, OriginalIds.of(header), [error], _us(ctx, header))
    return InboundReply(wire.content_type, wire.body)


def _envelope_row(
    ctx: EngineContext, envelope: Envelope, channel: str, wire_ref: str
) -> MessageRow:
    """A received message's row as far as the envelope tells (the fagmelding adds the rest)."""
    header = envelope.header
    return MessageRow(
        direction=Direction.INBOUND.value,
        channel=channel,
        environment=ctx.policy.environment,
        ebxml_message_id=header.message_id,
        ebxml_conversation_id=header.conversation_id,
        ebxml_ref_to_message_id=header.ref_to_message_id,
        cpa_id=header.cpa_id,
        ebxml_service=header.service,
        ebxml_action=header.action,
        # a PartyId of another type (a URI, say) is no HER-id: kept in the stored envelope only
        from_her_id=_her_id(header.from_party),
        to_her_id=_her_id(header.to_party),
        wire_ref=wire_ref,
    )


def _her_id(party: Party) -> str | None:
    return party.her_id if party.party_type == PARTY_TYPE_HER else None


def _party_shown(party: Party) -> str:
    """A From as our log and texts name it: its HER-id, or a digest of a PartyId of another
    type (that is any text, up to 255 characters, the log's actor holds 128)."""
    return _her_id(party) or "party-" + hashlib.sha256(party.her_id.encode()).hexdigest()[:16]


def _inline(channel: str, sync_reply: bool, route: tuple[str, str] | None) -> bool:
    """Answer in the HTTP response: when asked (SyncReply), or when there is no other way back.

    Mail has no response to answer in; a signal we cannot route is then only stored and logged.
    """
    if channel != "http":
        return False
    return sync_reply or route is None


def _reply_endpoint(
    ctx: EngineContext, uow: UnitOfWork, sender: str, our_her_id: str
) -> tuple[str, str] | None:
    """(endpoint, channel) where our signals to ``sender`` go, per its agreement."""
    try:
        partner = ctx.directory.partner(uow, sender, our_her_id=our_her_id)
    except PartnerUnknown:
        return None
    if partner.endpoint is None or partner.channel not in ctx.transports:
        return None
    return partner.endpoint, partner.channel


def _record_signal(
    ctx: EngineContext,
    uow: UnitOfWork,
    wire: signals.SignalWire,
    wire_ref: PayloadRef,
    kind: str,
    row: MessageRow,
    route: tuple[str, str] | None,
    inline: bool,
    *,
    description: str | None = None,
    error_codes: list[dict[str, object]] | None = None,
) -> None:
    """Record our signal (its wire form stored by the caller before the transaction, so the
    caller knows every file of a unit of work that may not commit)."""
    if inline or route is None:
        uow.receipts.add(
            ReceiptRow(
                message_id=row.id,
                kind=kind,
                direction="out",
                at=ctx.clock(),
                ebxml_message_id=wire.message_id,
                ref_to_message_id=row.ebxml_message_id,
                wire_ref=wire_ref.key,
                wire_content_type=wire.content_type,
                description=description,
                error_codes=error_codes,
            )
        )
        if not inline:  # received by mail from a partner we have no way back to
            _unroutable(ctx, uow, kind, row)
        return
    signals.queue_signal(
        ctx,
        uow,
        wire,
        wire_ref,
        kind=kind,
        message_id=row.id,
        ref_to_message_id=row.ebxml_message_id,
        partner_her_id=str(row.from_her_id),
        endpoint=route[0],
        channel=route[1],
        description=description,
        error_codes=error_codes,
    )


def _unroutable(ctx: EngineContext, uow: UnitOfWork, kind: str, row: MessageRow) -> None:
    """Our signal is stored, but there is no agreement with an endpoint on a channel of ours to
    send it by: the sender will resend and in the end give up, unless someone acts."""
    sender = str(row.from_her_id)
    now = ctx.clock()
    uow.events.record(
        row.id,
        EventKind.ERROR,
        actor="msh",
        code="no-route",
        detail=f"our {kind} is stored but cannot be sent: no agreement with {sender} on a "
        "channel this server has",
        at=now,
    )
    raise_alert(
        uow,
        AlertKind.SIGNAL_UNDELIVERED,
        f"our {kind} for message {row.id} from {sender} cannot be sent: this server has no "
        f"agreement with {sender} on a channel it speaks. Add the partner (address register "
        "and CPA, or [[partners]]); until then the sender resends and will give up.",
        at=now,
        message_id=row.id,
        partner_her_id=sender,
        key=f"no-route:{sender}",  # one alert per partner, counting its messages
    )


def _us(ctx: EngineContext, header: MessageHeader) -> str:
    """The HER-id our MessageError comes from: the To when it is ours, else our organisation."""
    return header.to_party.her_id if header.to_party.her_id in ctx.own_her_ids else ctx.organisation


def _refuse(
    ctx: EngineContext,
    mime: MimeMessage,
    envelope: Envelope,
    root: etree._Element,
    certificates: SigningCertificates,
    body: PayloadSource,
    reject: _Reject,
    channel: str,
    keys: frozenset[str] = frozenset(),
    before_commit: Callable[[], None] | None = None,
) -> InboundReply:
    """Store the refused message and its MessageError; ``keys``: the content keys its payload
    used (it was decrypted, or decryption was tried); ``before_commit`` as :func:`receive`'s."""
    header = envelope.header
    error = reject.error
    our = _us(ctx, header)
    wire = signals.build_error(ctx, OriginalIds.of(header), [error], our)
    wire_ref, error_ref = ctx.store.payloads.put_all(body, wire.body)
    now = ctx.clock()
    row = _envelope_row(ctx, envelope, channel, wire_ref.key)
    reply_inline = envelope.sync_reply
    codes: list[dict[str, object]] = [
        {
            "code": str(error.code),
            "severity": str(error.severity),
            "location": error.location,
            "description": reject.logged,
        }
    ]
    committing = False
    try:
        with ctx.store.unit_of_work() as uow:
            uow.messages.add(
                row, actor=sender_actor(channel, _party_shown(header.from_party)), at=now
            )
            uow.messages.set_status(
                row,
                InboundStatus.REJECTED.value,
                actor="msh",
                code=str(error.code),
                detail=f"MessageError sent: {reject.logged}",
                at=now,
            )
            route = _reply_endpoint(ctx, uow, header.from_party.her_id, our)
            reply_inline = _inline(channel, envelope.sync_reply, route)
            _record_signal(
                ctx,
                uow,
                wire,
                error_ref,
                "message-error",
                row,
                route,
                reply_inline,
                description=reject.logged,
                error_codes=codes,
            )
            uow.content_keys.record(keys, row.id, at=now)  # after the row's one INSERT
            _alert_refused(ctx, uow, header, reject, row.id, certificates)
            # its files were written
            ctx.recovery.went_through(uow, (recovery.store(ctx.instance),), at=now)
            if before_commit is not None:
                before_commit()
            committing = True
            uow.commit()
    except IntegrityError:
        ctx.store.payloads.discard(error_ref)
        try:
            # the same MessageId stored meanwhile, or (only with keys of its own) a content
            # key used; a spooled body is the wire form's file, which a refusal copies
            return _after_conflict(ctx, mime, envelope, root, certificates, body, channel)
        finally:
            ctx.store.payloads.discard(wire_ref)
    except BaseException:
        _discard_unless_committing(ctx, committing, wire_ref, error_ref)
        raise
    ctx.notify_workers(uow)
    return InboundReply(wire.content_type, wire.body) if reply_inline else InboundReply()


def _discard_unless_committing(ctx: EngineContext, committing: bool, *refs: PayloadRef) -> None:
    """The unit of work that was to refer to ``refs`` failed (the database away, a deadlock, a
    lock timeout: /ebms answers 503 and the sender resends): nothing refers to the files, and
    the decrypted content must not wait on disk for the orphan sweep, one more copy for each
    resend. A failed COMMIT may have stored the rows all the same: then the files stay (the
    sweep takes them if it did not), as outbound.submit does."""
    if not committing:
        ctx.store.payloads.discard(*refs)


def _alert_refused(
    ctx: EngineContext,
    uow: UnitOfWork,
    header: MessageHeader,
    reject: _Reject,
    message_id: str | None,
    certificates: SigningCertificates,
    channel: str = "http",
) -> None:
    """A refused message is otherwise known to its sender only (from our MessageError): a
    certificate revoked or expired, a stale copy of the register, a TimeToLive passed, HER-ids
    that disagree, our own key, an unknown sender.

    One alert per sender and error code counts the repeats; a message from that sender stored
    later resolves it. Only for a sender we know (we hold its signing certificate): what the
    From of anybody else's message says is not verified, and an alert per such sender would be
    an alert (and a webhook call) per request of whoever sends them. Those share one alert per
    error code, resolved by hand. The text is ours: the error code, a fixed reason, and the
    sender as a HER-id (or a digest of another PartyId), never text the sender chose."""
    now = ctx.clock()
    party = header.from_party
    known = _her_id(party) if certificates.known else None
    code = str(reject.error.code)
    # an unverified message is not stored: its MessageId is the sender's text, not quoted
    which = f"message {message_id}" if message_id else "a message not stored (not verified)"
    if known is None:
        # a PartyId of another type may be a long URI, or any text: named by a digest
        shown = _party_shown(party)
        if reject.our_key is not None:  # signed with a certificate of a party, so rare
            raise_alert(
                uow,
                AlertKind.CERTIFICATE_INVALID,
                f"a message ({which}; its From, not a known party's HER-id, "
                f"reads {shown}) could not be decrypted with our keys ({reject.our_key}) and "
                f"was refused with {code}. Our encryption certificate in the address register "
                "and the keys this server holds may disagree, or its sender uses an old copy "
                "of ours. Resolve this alert by hand.",
                at=now,
                key=recovery.our_decryption(recovery.UNKNOWN_SENDER),
            )
            return
        raise_alert(
            uow,
            AlertKind.MESSAGE_REFUSED,
            f"messages from senders that are not known parties (no signing certificate of "
            f"theirs is held here) were refused with {code}: {reject.reason}; the last was "
            f"{which}, whose From reads {shown} (not verified). A partner missing "
            "from our copy of the address register is refused so (ar sync, or [[partners]]); "
            f"else these are strays or forgeries. {_who_was_told(message_id, channel)}. One "
            "alert for all such senders, which no message resolves: resolve it by hand.",
            at=now,
            key=f"{recovery.UNKNOWN_SENDER}:{code}",
        )
        return
    if reject.our_key is not None:
        ctx.recovery.raise_alert(
            uow,
            AlertKind.CERTIFICATE_INVALID,
            f"a message from {known} ({which}) could not be decrypted with our "
            f"keys ({reject.our_key}) and was refused with {code}. {known} encrypts to a "
            "certificate of ours whose key this server does not hold: an old copy of our "
            "encryption certificate, or ours was renewed in the address register before its "
            "key was installed here (then other senders' messages fail too, each with an "
            f"alert of its own). Messages from {known} fail until it is mended; it resends "
            "for a while.",
            subject=recovery.sender(known),
            key=recovery.our_decryption(known),
            at=now,
            partner_her_id=known,
        )
        return
    ctx.recovery.raise_alert(
        uow,
        AlertKind.MESSAGE_REFUSED,
        f"messages from {known} were refused with {code}: {reject.reason}; the last was "
        f"{which}. "
        + _who_was_told(message_id, channel)
        + ": look at the partner's certificate and register entry, or tell the partner.",
        subject=recovery.sender(known),
        key=f"{known}:{code}",
        at=now,
        partner_her_id=known,
    )


def _who_was_told(message_id: str | None, channel: str) -> str:
    """Who learnt of a refusal (the last message's, for an alert): one stored was answered by a
    MessageError; one not stored (not verified) in the HTTP response, or not at all by mail,
    whose mail is quarantined instead."""
    if message_id:
        return "Only its sender was told, by our MessageError"
    if channel == "http":
        return "Only whoever sent it was told, in the response to its request"
    return "Its mail was quarantined whole, to reprocess once mended; nobody was told"


_TRANSPORT_SIGNALS = ("acknowledgment", "message-error")


def _last_transport_receipt(uow: UnitOfWork, message_id: str) -> ReceiptRow | None:
    """Our last Acknowledgment or MessageError for a received message."""
    sent = [
        r
        for r in uow.receipts.for_message(message_id)
        if r.direction == "out" and r.kind in _TRANSPORT_SIGNALS
    ]
    return sent[-1] if sent else None


def _resend_signal(
    ctx: EngineContext, uow: UnitOfWork, original: MessageRow, envelope: Envelope, channel: str
) -> InboundReply:
    """A repeated eb:MessageId: not processed again; the signal we sent for it is sent again."""
    # Only the transport signal is repeated: an AppRec or DIALOG_AVVIK recorded since is an
    # answer of its own (a message with its own receipts), not what the sender is waiting for.
    signal = _last_transport_receipt(uow, original.id)
    # our MessageError goes again to every resend; our Acknowledgment only when this one asks
    # for it (ebMS 2.0: none without eb:AckRequested)
    unasked = signal is not None and signal.kind == "acknowledgment" and not envelope.ack_requested
    now = ctx.clock()
    uow.events.record(
        original.id,
        EventKind.SIGNAL_IN,
        actor=sender_actor(channel, _party_shown(envelope.header.from_party)),
        code="duplicate",
        detail="the same ebXML MessageId arrived again; not processed again, "
        + (
            "no Acknowledgment sent again, this one asks for none (no AckRequested)"
            if unasked
            else f"our {signal.kind} is sent again"
            if signal
            else "no signal to repeat"
        ),
        ebxml_message_id=envelope.header.message_id,
        at=now,
    )
    if unasked:
        signal = None
    reply = InboundReply()
    if signal is not None and signal.wire_ref is not None:
        route = _reply_endpoint(ctx, uow, str(original.from_her_id), str(original.to_her_id))
        if _inline(channel, envelope.sync_reply, route) or route is None:
            body = ctx.store.payloads.read_bytes(signal.wire_ref)
            reply = InboundReply(str(signal.wire_content_type), body)
        else:
            signals.schedule_send(
                ctx,
                uow,
                signal,
                endpoint=route[0],
                channel=route[1],
                partner=str(original.from_her_id),
                again=True,
            )
    uow.commit()
    ctx.notify_workers(uow)
    return reply
