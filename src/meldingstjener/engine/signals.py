"""ebXML signals: incoming Acknowledgments and MessageErrors, and sending our own.

Incoming signals are verified with the sender's registered signing certificate and matched to
the sent message by RefToMessageId; a signal for a message we do not know is logged, never a
crash, and so is a signal whose eb:MessageId is already a receipt of that message (a repeat, or a
replay of a captured one: it changes nothing, and reopens no alert an operator resolved). Our
signals are built, signed and packaged here, then either returned in the HTTP response
(SyncReply) or stored with a ``send-signal`` job so they survive a restart.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lxml import etree
from sqlalchemy import select

from meldingstjener.ebxml import (
    EbxmlError,
    Envelope,
    ErrorDetail,
    OriginalIds,
    Party,
    ReceiptDigests,
    Severity,
    build_acknowledgment,
    build_message_error,
    compare_receipt_digests,
    envelope_bytes,
    new_message_id,
    package,
    signature_references,
    unpackage_envelope,
)
from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import PartnerUnknown
from meldingstjener.engine.mail_bounces import bounce_alert_key
from meldingstjener.engine.receipts import schedule_apprec_deadline, transport_delivery_state
from meldingstjener.engine.trust import InboundDeferred, SenderSignature, verify_sender
from meldingstjener.formats.xmlparse import XmlError, parse_xml
from meldingstjener.model import Direction, HerId, InvalidHerId, OutboundStatus, allowed_next
from meldingstjener.model.privacy import codes_shown, partner_code, redact
from meldingstjener.security.xmldsig import (
    sign_ebxml_envelope,
)
from meldingstjener.store.opening import StoreUnavailable
from meldingstjener.store.payloads import PayloadRef
from meldingstjener.store.tables import EventRow, JobRow, ReceiptRow
from meldingstjener.store.types import as_utc
from meldingstjener.store.uow import (
    ClaimedJob,
    EventKind,
    MessageState,
    UnitOfWork,
    sender_actor,
)
from meldingstjener.transport.base import Delivery, TransportFailure, send_once
from meldingstjener.transport.smtp import mail_address

log = logging.getLogger(__name__)

SEND_SIGNAL = "send-signal"
# pauses of 2, 4, ... 2048 s: about 68 minutes of trying per send (the partner resends the
# message after its RetryInterval anyway, and its duplicate gets our signal again)
SIGNAL_ATTEMPTS = 12
# The signal-undelivered alert comes once the signal has failed this long, counted from its
# first failed attempt since it was last delivered, whichever send (first, or for a duplicate)
# made it: the partner's RetryInterval may be minutes, and a partner that gets no signal
# gives the message up as not delivered while we have it. An attempt is made at that time.
SIGNAL_ALERT_AFTER = timedelta(minutes=10)


@dataclass(frozen=True)
class SignalWire:
    """A signed, packaged signal ready to go: its ebXML MessageId, Content-Type and body."""

    message_id: str
    content_type: str
    body: bytes


def _finish(ctx: EngineContext, root: etree._Element, message_id: str) -> SignalWire:
    sign_ebxml_envelope(root, {}, ctx.keys.signing_key, ctx.keys.signing_certificate)
    body, content_type = package(envelope_bytes(root), [], transfer_encoding="binary")
    return SignalWire(message_id, content_type, body)


def build_ack(ctx: EngineContext, original: Envelope, original_root: etree._Element) -> SignalWire:
    """A signed Acknowledgment carrying the digests of what we received (non-repudiation)."""
    message_id = new_message_id(ctx.host)
    root = build_acknowledgment(
        original,
        references=signature_references(original_root),
        message_id=message_id,
        timestamp=ctx.clock(),
        our_party=Party(original.header.to_party.her_id, original.header.to_party.role),
        description=ctx.description(),
    )
    return _finish(ctx, root, message_id)


def build_error(
    ctx: EngineContext, original: OriginalIds, errors: list[ErrorDetail], our_her_id: str
) -> SignalWire:
    message_id = new_message_id(ctx.host)
    root = build_message_error(
        original,
        errors,
        message_id=message_id,
        timestamp=ctx.clock(),
        our_party=Party(our_her_id, original.receiver.role if original.receiver else None),
        description=ctx.description(),
    )
    return _finish(ctx, root, message_id)


# --- incoming signals ------------------------------------------------------------------------


def handle_incoming(
    ctx: EngineContext, envelope: Envelope, root: etree._Element, *, channel: str
) -> None:
    """Verify an Acknowledgment or MessageError and apply it to the message it refers to.
    Raises :class:`InboundDeferred` when the sender's certificate cannot be checked now
    (``revocation_policy = "hard"``, its CA's revocation services away): the signal is taken
    when it comes again, as a message is."""
    header = envelope.header
    ref = header.ref_to_message_id or (
        envelope.acknowledgment.ref_to_message_id if envelope.acknowledgment else None
    )
    kind = "acknowledgment" if envelope.is_acknowledgment else "message-error"
    sender = header.from_party.her_id
    # what our columns and texts say of the sender: a forged signal may name any PartyId
    # (255 characters), and an actor holds 128, a HER-id column 16
    sender_her_id = _her_id_of(header.from_party)
    actor = sender_actor(channel, sender_her_id or "no-her-id")
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:  # (no statement when the partner cache has them)
        certificates = ctx.directory.signing_certificates(uow, sender)
    # verified, and its certificate checked, before any lock: a revocation lookup may wait
    # seconds for a CRL, and on SQLite a unit of work holds the store's one write lock
    signature = verify_sender(ctx, root, {}, sender, certificates)
    with ctx.store.unit_of_work() as uow:
        # every sent message gets its Acknowledgment here: its state is read and written
        # without the ORM (lock_state); the rare MessageError loads the whole row
        state = uow.messages.lock_state_by_ebxml_id(Direction.OUTBOUND, ref) if ref else None
        if state is None:
            uow.events.record(
                None,
                EventKind.SIGNAL_IN,
                actor=actor,
                code=kind,
                detail=f"{header.action} from {sender_her_id or 'a party without a HER-id'} "
                f"for a message we do not know ({ref}); logged and ignored",
                ebxml_message_id=header.message_id,
                at=now,
            )
            if signature.trusted:  # (not the common path)
                uow.alerts.resolve(f"{AlertKind.SIGNAL_UNTRUSTED}:{sender}", at=now)
            uow.commit()
            return
        if signature.problem is not None and signature.problem.revocation_unknown:
            # our revocation check is away for a while, not the partner's signature wrong:
            # ignoring the signal would resend our message till it is given up, and alert a
            # forgery. Its sender sends it again (HTTP 503), or the mail waits in its box.
            uow.events.record(
                state.id,
                EventKind.NOTE,
                actor=actor,
                code="revocation-unknown",
                detail=f"{header.action} from {sender_her_id or 'a party without a HER-id'} "
                f"not taken now: {signature.problem}; answered for its sender to send it again",
                ebxml_message_id=header.message_id,
                at=now,
            )
            uow.commit()
            raise InboundDeferred(
                "the sender's signing certificate cannot be checked now (whether it is revoked "
                "could not be found out); send the signal again later",
                until=header.time_to_live,
            )
        ignored = _ignored_because(ctx, uow, envelope, state, signature)
        if ignored is not None:
            code, reason = ignored
            uow.events.record(
                state.id,
                EventKind.ERROR,
                actor=actor,
                code=code,
                detail=f"{header.action} from {sender_her_id or 'a party without a HER-id'} "
                f"ignored: {reason}",
                ebxml_message_id=header.message_id,
                at=now,
            )
            if signature.trusted:  # signed by a party we trust, about another's message
                uow.alerts.resolve(f"{AlertKind.SIGNAL_UNTRUSTED}:{sender}", at=now)
            elif sender_her_id is not None and sender_her_id in (
                state.to_her_id,
                state.receiver_org_her_id,
            ):
                # only the party the message went to: anyone else's untrusted signal (any
                # PartyId a forger likes) would open an alert no trusted signal ever closes
                _alert_untrusted(uow, envelope, state, signature, sender_her_id, now)
            uow.commit()
            return
        if uow.receipts.has_incoming(state.id, header.message_id):
            uow.events.record(
                state.id,
                EventKind.NOTE,
                actor=actor,
                code="signal-repeated",
                detail=f"{header.action} from {sender_her_id or 'a party without a HER-id'} "
                "received again (its eb:MessageId is already a receipt of this message); "
                "logged, nothing changed",
                ebxml_message_id=header.message_id,
                at=now,
            )
            uow.commit()
            return
        if envelope.is_acknowledgment:
            digests = _receipt_digests(ctx, envelope, state)
            if digests is not None and digests.contradicted:
                _refuse_acknowledgment(uow, state, header.message_id, sender, digests, actor, now)
                uow.commit()
                return
            _apply_acknowledgment(ctx, uow, state, header.message_id, sender, actor, now)
            _note_what_it_proves(uow, state, header.message_id, digests, actor, now)
        else:
            _apply_message_error(ctx, uow, state.id, envelope, actor, now)
        uow.commit()


def _her_id_of(party: Party) -> str | None:
    """The party's HER-id, or None when its PartyId does not hold one. Judged by the value, not
    the type: a sloppy peer's PartyId of another type is still looked up as its HER-id."""
    try:
        HerId(party.her_id)
    except InvalidHerId:
        return None
    return party.her_id


def _alert_untrusted(
    uow: UnitOfWork,
    envelope: Envelope,
    state: MessageState,
    signature: SenderSignature,
    sender_her_id: str,
    now: datetime,
) -> None:
    """A signal about our message that we cannot trust changed nothing: the message waits, and
    only an operator can tell a partner's new certificate (not in our register yet) from a
    forgery. One alert per sender, resolved by its next trusted signal."""
    what = "Acknowledgment" if envelope.is_acknowledgment else "MessageError"
    if signature.certificate is None:
        why = "its signature does not verify with the sender's registered signing certificate"
    else:
        why = "the sender's signing certificate is not accepted now"
    raise_alert(
        uow,
        AlertKind.SIGNAL_UNTRUSTED,
        f"an {what} from {sender_her_id} about message "
        f"{state.id} was ignored: {why}; the message stays {state.status}. Check the "
        "partner's certificates in the address register (ar show, ar sync); if they are "
        "right, the signal may be forged.",
        at=now,
        partner_her_id=sender_her_id,
        key=sender_her_id,
    )


def _ignored_because(
    ctx: EngineContext,
    uow: UnitOfWork,
    envelope: Envelope,
    state: MessageState,
    signature: SenderSignature,
) -> tuple[str, str] | None:
    """(code, reason) when a signal about our message must change nothing, else None."""
    if not signature.trusted:
        why = signature.problem or signature.check.problem or "no registered signing certificate"
        return "SecurityFailure", f"its signature did not verify ({why})"
    sender = envelope.header.from_party.her_id
    if sender in (state.to_her_id, state.receiver_org_her_id):
        return None
    if envelope.is_acknowledgment:
        # signed by a party we know, but not the one we sent the message to: it cannot say
        # that the receiver has the message
        return "Inconsistent", f"the message was sent to {state.to_her_id}"
    # A MessageError may come from another party: the MSH at the endpoint saying that the To
    # is not one of its HER-ids. Any other party's would end our message to someone else (no
    # more resends, the EPJ told it was not delivered) on the word of whoever learnt its
    # MessageId, which travels in clear (a mail's Subject).
    if _served_where_sent(ctx, uow, state, sender):
        return None
    return "Inconsistent", (
        f"the message was sent to {state.to_her_id}, and the sender is neither its "
        "organisation nor registered at the endpoint it was sent to"
    )


def _served_where_sent(
    ctx: EngineContext, uow: UnitOfWork, state: MessageState, sender: str
) -> bool:
    """Whether ``sender`` is registered at an endpoint our message was sent to: where its last
    delivered attempt went (kept on the message), and the To's agreed endpoint now (an attempt
    that went there may not be recorded yet, or the message was sent before it was kept),
    against the endpoints agreed with the sender or, for an organisation, with its services
    (the MSH that answers for a To it does not serve signs as its organisation, which may have
    no agreement of its own), and their EDI addresses in the register. Only a MessageError
    from another party than the To comes here: the row is read for our HER-id, as its handling
    does anyway."""
    row = uow.messages.get(state.id)
    if row is None or row.to_her_id is None:
        return False
    wheres = {_endpoint_key(str(row.channel), row.sent_endpoint)}
    try:
        to = ctx.directory.partner(uow, row.to_her_id, our_her_id=row.from_her_id)
    except PartnerUnknown:
        pass
    else:
        wheres.add(_endpoint_key(to.channel, to.endpoint))
    wheres.discard(None)
    if not wheres:
        return False
    parties = uow.parties.with_services(sender)
    agreements = uow.agreements.for_counterparties({sender, *(party.her_id for party in parties)})
    registered = {_endpoint_key(a.channel, a.endpoint) for a in agreements}
    registered.update(_endpoint_key("smtp", party.edi_address) for party in parties)
    return not wheres.isdisjoint(registered)


def _endpoint_key(channel: str, endpoint: str | None) -> tuple[str, str] | None:
    """An endpoint as compared: a mail address with its domain in lower case (``mailto:`` or
    bare); a URL with its scheme and host in lower case, without its scheme's default port or
    a trailing slash; None for none (matches nothing)."""
    value = (endpoint or "").strip()
    if not value:
        return None
    if channel == "smtp":
        try:
            return channel, mail_address(value)
        except TransportFailure:
            return None
    url = urlsplit(value)
    scheme = url.scheme.lower()
    try:
        port = url.port
    except ValueError:
        return channel, value  # no URL: compared as written
    host = (url.hostname or "").lower()
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    if url.username or url.password:
        host = url.netloc.rsplit("@", 1)[0] + "@" + host
    path = url.path.rstrip("/")
    return channel, url._replace(scheme=scheme, netloc=host, path=path).geturl()


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _receipt_digests(
    ctx: EngineContext, envelope: Envelope, state: MessageState
) -> ReceiptDigests | None:
    """What the Acknowledgment's digests say of the envelope we signed and sent
    (:func:`~meldingstjener.ebxml.signals.compare_receipt_digests`); None when ours cannot be
    read back (no wire form kept, its file away): then it is taken as before, with a note.
    One carrying no ``ds:Reference`` needs no read."""
    acknowledged = envelope.acknowledgment.references if envelope.acknowledgment else ()
    if not acknowledged:
        return ReceiptDigests()
    if state.wire_ref is None or state.wire_content_type is None:
        return None
    try:
        path = ctx.store.payloads.path(state.wire_ref)
        ours = signature_references(parse_xml(unpackage_envelope(state.wire_content_type, path)))
    except (OSError, EbxmlError, XmlError, StoreUnavailable) as failure:
        log.warning(
            "the envelope of message %s could not be read to compare an Acknowledgment's "
            "digests with: %s",
            state.id,
            type(failure).__name__,
        )
        return None
    return compare_receipt_digests(ours, acknowledged)


def _refuse_acknowledgment(
    uow: UnitOfWork,
    state: MessageState,
    signal_id: str,
    sender: str,
    digests: ReceiptDigests,
    actor: str,
    now: datetime,
) -> None:
    """A trusted Acknowledgment whose digests contradict what we signed acknowledges something
    else: nothing changes (no receipt; the message waits, resent at its ack-timeout as if none
    had come), logged on the message, and ``signal-untrusted`` for it and its sender (resolved
    by an Acknowledgment of that message that counts, not by the sender's other signals)."""
    uris = ", ".join(f'"{uri}"' for uri in digests.contradicted[:5])
    uow.events.record(
        state.id,
        EventKind.ERROR,
        actor=actor,
        code="ack-digest-mismatch",
        detail=f"Acknowledgment from {sender} ignored: its digest of {uris} is not the one we "
        f"signed (it acknowledges something else); the message stays {state.status}",
        ebxml_message_id=signal_id,
        at=now,
    )
    raise_alert(
        uow,
        AlertKind.SIGNAL_UNTRUSTED,
        f"an Acknowledgment from {sender} about message {state.id} was ignored: its digest "
        f"of {uris} is not the one we signed, so it is no receipt of what we sent; the message "
        f"stays {state.status} and is sent again when no Acknowledgment that matches comes. "
        "Ask the partner what its MSH received.",
        at=now,
        message_id=state.id,
        partner_her_id=sender,
        key=_digest_alert_key(sender, state.id),
    )


def _digest_alert_key(sender: str, message_id: str) -> str:
    """The key of the ``signal-untrusted`` alert of an Acknowledgment refused for its digests:
    per message, so that only an Acknowledgment of that message that counts ends it (the
    sender's trusted signals about its other messages say nothing of this one)."""
    return f"{sender}:{message_id}"


def _note_what_it_proves(
    uow: UnitOfWork,
    state: MessageState,
    signal_id: str,
    digests: ReceiptDigests | None,
    actor: str,
    now: datetime,
) -> None:
    """A note when an Acknowledgment taken proves no part of what we sent: none of its
    digests is of our payload (none at all, or the envelope's ``URI=""`` alone, as NAV's
    partners send), one of ours was made with another digest method (a partner MSH that
    computes them itself with sha1), or ours could not be read back to compare with. One
    that does (ours repeat every reference) costs no statement."""
    if digests is not None and digests.proves_payload:
        return
    if digests is None:
        why = "its digests could not be compared: the envelope we sent could not be read back"
    elif digests.not_comparable:
        uris = ", ".join(f'"{uri}"' for uri in digests.not_comparable[:5])
        why = (
            f"its digest of {uris} is not comparable with ours (made with another digest "
            "method than ours, or empty)"
        )
    elif digests.matched:
        why = "it carries the digest of our envelope only, none of its payload"
    else:
        why = "it carries no digest of what we sent"
    uow.events.record(
        state.id,
        EventKind.NOTE,
        actor=actor,
        code="ack-without-digests",
        detail=f"the Acknowledgment was taken; {why}, so it proves the receipt of the message "
        "id, not of the content",
        ebxml_message_id=signal_id,
        at=now,
    )


def _apply_acknowledgment(
    ctx: EngineContext,
    uow: UnitOfWork,
    state: MessageState,
    signal_id: str,
    sender: str,
    actor: str,
    now: datetime,
) -> None:
    # the partner's signals reach us again, and they are trusted, and a bounce of this message
    # by mail was not the last word: all in one prepared UPDATE, which as a rule matches
    # nothing (this is the path of every message we send)
    uow.alerts.resolve(
        f"{AlertKind.ACK_MISSING}:{state.to_her_id}",
        f"{AlertKind.SIGNAL_UNTRUSTED}:{sender}",
        f"{AlertKind.SIGNAL_UNTRUSTED}:{_digest_alert_key(sender, state.id)}",
        bounce_alert_key(state.id),
        at=now,
    )
    uow.receipts.add(
        ReceiptRow(
            message_id=state.id,
            kind="acknowledgment",
            direction="in",
            at=now,
            ebxml_message_id=signal_id,
            ref_to_message_id=state.ebxml_message_id,
        )
    )
    if OutboundStatus.TRANSPORT_ACKNOWLEDGED.value in allowed_next(
        Direction.OUTBOUND, state.status
    ):
        after = {
            OutboundStatus.NOT_DELIVERED.value: " after the message was given up",
            OutboundStatus.TRANSPORT_ERROR.value: " after a MessageError",
        }.get(state.status, "")
        uow.messages.change_state(
            state,
            status=OutboundStatus.TRANSPORT_ACKNOWLEDGED.value,
            actor=actor,
            detail=f"Acknowledgment received{after}"
            + ("; the receiver has the message: check the alert before resending" if after else ""),
            at=now,
        )
        uow.jobs.cancel_for_message(state.id)
        schedule_apprec_deadline(ctx, uow, state.id, state.msg_type)
    else:
        uow.events.record(
            state.id,
            EventKind.SIGNAL_IN,
            actor=actor,
            detail=f"Acknowledgment received (status stays {state.status})",
            ebxml_message_id=signal_id,
            at=now,
        )


# What a MessageError's alert advises: the partner's MSH refused the message, so a copy of it
# meets the same refusal until the cause is mended; and ``meldingstjener resend`` sends only a
# message given up unanswered (``not-delivered``), never one ended by a MessageError
# (``transport-error``): the EPJ sends the document again.
_SEND_AGAIN_WHEN_MENDED = (
    "Once the cause is mended with the partner, the EPJ (the sender) sends the document again "
    "as a new message, or deliver the content another way"
)
_NOT_BY_RESEND = " (meldingstjener resend does not send a message the receiver's MSH refused)."


def _apply_message_error(
    ctx: EngineContext,
    uow: UnitOfWork,
    message_id: str,
    envelope: Envelope,
    actor: str,
    now: datetime,
) -> None:
    row = uow.messages.get(message_id)
    assert row is not None  # locked by the caller
    header = envelope.header
    sender = header.from_party.her_id
    # a trusted signal from its sender; and, from the party the message went to, an answer all
    # the same (the ack-timeout waits for an Acknowledgment or a MessageError): another
    # party's MessageError about it says nothing of whether that party's signals arrive
    untrusted = f"{AlertKind.SIGNAL_UNTRUSTED}:{sender}"
    if sender in (row.to_her_id, row.receiver_org_her_id):
        # the receiver's MSH has the message, and says so with its error (alerted below): a
        # bounce of an earlier attempt by mail is no longer the news
        uow.alerts.resolve(
            f"{AlertKind.ACK_MISSING}:{row.to_her_id}",
            untrusted,
            bounce_alert_key(row.id),
            at=now,
        )
    else:
        uow.alerts.resolve(untrusted, at=now)
    errors = envelope.error_list.errors if envelope.error_list else ()
    # the partner's own words, kept in the receipt only and masked like any text we store:
    # they may quote the content, so the log and the alert (sent on to webhooks) name codes
    codes = [
        {
            "code": redact(_reported(e)),
            "severity": str(e.severity),
            "location": redact(e.location),
            "description": redact(e.description),
        }
        for e in errors
    ]
    text = redact("; ".join(f"{_reported(e)}: {e.description or ''}".strip() for e in errors))
    uow.receipts.add(
        ReceiptRow(
            message_id=row.id,
            kind="message-error",
            direction="in",
            at=now,
            ebxml_message_id=header.message_id,
            ref_to_message_id=row.ebxml_message_id,
            error_codes=codes,
            description=text,
        )
    )
    shown = codes_shown(_code_shown(error) for error in errors)
    first_code = _code_shown(errors[0]) if errors else "Unknown"
    if errors and all(error.severity is Severity.WARNING for error in errors):
        # the partner processed the message and only remarks on it: no failure, no alert
        uow.events.record(
            row.id,
            EventKind.NOTE,
            actor=actor,
            code=first_code,
            detail=f"MessageError with warnings only from {sender}: {shown}",
            ebxml_message_id=header.message_id,
            at=now,
        )
        return
    if OutboundStatus.TRANSPORT_ERROR.value in allowed_next(Direction.OUTBOUND, row.status):
        uow.messages.set_status(
            row,
            OutboundStatus.TRANSPORT_ERROR.value,
            actor=actor,
            code=first_code,
            detail=f"MessageError from {sender}: {shown}",
            at=now,
        )
        uow.jobs.cancel_for_message(row.id)
        advice = _SEND_AGAIN_WHEN_MENDED + _NOT_BY_RESEND
    else:
        # acknowledged (or answered, or given up) before: the status stays, the log says why,
        # and the alert must not ask for a resend of what the receiver may well have
        uow.events.record(
            row.id,
            EventKind.ERROR,
            actor=actor,
            code=first_code,
            detail=f"MessageError from {sender} after the message was {row.status}: {shown} "
            f"(status stays {row.status})",
            ebxml_message_id=header.message_id,
            at=now,
        )
        # the one rule of what counts as the receiver having it (the EDI 2.0 status's)
        advice = (
            f"The message was {row.status} before: check with the receiver whether it has "
            "the content before resending it."
            if transport_delivery_state(row.status) == "Acknowledged"
            else _SEND_AGAIN_WHEN_MENDED
            + (_NOT_BY_RESEND if row.status == OutboundStatus.TRANSPORT_ERROR.value else ".")
        )
    raise_alert(
        uow,
        AlertKind.MESSAGE_ERROR_RECEIVED,
        f"{sender} refused message {row.id} ({row.msg_type}) with MessageError {shown} "
        f"(the partner's descriptions are in the message's receipts). {advice}",
        at=now,
        message_id=row.id,
        partner_her_id=sender,
    )


# --- outgoing signals ------------------------------------------------------------------------


def queue_signal(
    ctx: EngineContext,
    uow: UnitOfWork,
    wire: SignalWire,
    wire_ref: PayloadRef,
    *,
    kind: str,
    message_id: str | None,
    ref_to_message_id: str | None,
    partner_her_id: str,
    endpoint: str,
    channel: str,
    description: str | None = None,
    error_codes: list[dict[str, object]] | None = None,
) -> ReceiptRow:
    """Record a signal whose wire form the caller has stored (``wire_ref``) and a job that
    sends it, in the caller's transaction."""
    receipt = uow.receipts.add(  # written at once: the job needs its id
        ReceiptRow(
            message_id=message_id,
            kind=kind,
            direction="out",
            at=ctx.clock(),
            ebxml_message_id=wire.message_id,
            ref_to_message_id=ref_to_message_id,
            wire_ref=wire_ref.key,
            wire_content_type=wire.content_type,
            description=description,
            error_codes=error_codes,
        )
    )
    schedule_send(ctx, uow, receipt, endpoint=endpoint, channel=channel, partner=partner_her_id)
    return receipt


def schedule_send(
    ctx: EngineContext,
    uow: UnitOfWork,
    receipt: ReceiptRow,
    *,
    endpoint: str,
    channel: str,
    partner: str,
    again: bool = False,
) -> None:
    """A ``send-signal`` job for a stored outgoing signal (first send, or ``again`` for a
    duplicate). It carries what the send needs, so the job does not read the receipt back."""
    ctx.schedule_now(
        uow,
        SEND_SIGNAL,
        message_id=receipt.message_id,
        data={
            "receipt_id": receipt.id,
            "content_type": receipt.wire_content_type,
            "endpoint": endpoint,
            "channel": channel,
            "partner": partner,
            "wire_ref": receipt.wire_ref,
            "kind": receipt.kind,
            "signal_message_id": receipt.ebxml_message_id,
            **({"again": True} if again else {}),
        },
    )


def _stored_signal(ctx: EngineContext, data: dict[str, Any]) -> tuple[Path, str, str] | None:
    """(wire file, kind, ebXML MessageId) of the signal a send-signal job sends."""
    if data.get("wire_ref"):
        path = ctx.store.payloads.path(str(data["wire_ref"]))
        if not path.is_file():
            return None
        return path, str(data.get("kind")), str(data.get("signal_message_id"))
    with ctx.store.unit_of_work() as uow:  # jobs stored by earlier versions: only the receipt id
        receipt = uow.session.get(ReceiptRow, data.get("receipt_id"))
        if receipt is None or receipt.wire_ref is None:
            return None
        path = ctx.store.payloads.path(receipt.wire_ref)
        return path, receipt.kind, str(receipt.ebxml_message_id)


def _reported(error: ErrorDetail) -> str:
    """The code as the partner wrote it (one outside the ebMS set is kept, not made Unknown)."""
    return error.reported_code or str(error.code)


# the ebMS codes (ValueNotRecognized, SecurityFailure, ...) and a partner's own, such as
# NHN:QueueFull
_EBMS_CODE_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]*")  # a partner's own may be 1001


def _code_shown(error: ErrorDetail) -> str:
    """The partner's code as our texts and code columns (64 characters) show it, "?" for one
    that does not look like a code."""
    return partner_code(_reported(error), _EBMS_CODE_SHAPE)


def send_signal_job(ctx: EngineContext, job: ClaimedJob) -> None:
    """Send a stored signal; retry with growing pauses; alert when it has failed for
    :data:`SIGNAL_ALERT_AFTER`, and when it cannot be delivered at all."""
    data = job.data or {}
    stored = _stored_signal(ctx, data)
    if stored is None:  # purged or never stored: nothing to send
        with ctx.store.unit_of_work() as uow:
            uow.jobs.finish(job.id)
            uow.commit()
        return
    wire_path, kind, signal_message_id = stored
    transport = ctx.transports.get(str(data.get("channel")))
    now = ctx.clock()
    try:
        if transport is None:
            raise TransportFailure("no-transport", f"no transport for {data.get('channel')}")
        send_once(
            transport,
            Delivery(
                str(data["endpoint"]),
                str(data["content_type"]),
                wire_path,
                ebxml_message_id=signal_message_id,
                to_her_id=str(data.get("partner")),
            ),
        )
    except TransportFailure as failure:
        with ctx.store.unit_of_work() as uow:
            _signal_failed(ctx, uow, job, kind, signal_message_id, failure, now)
            uow.commit()
        return
    with ctx.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)
        if (data.get("again") or job.attempts > 1) and job.message_id is not None:
            # a repeat, or a send that failed before, got through where an earlier try may
            # have alerted (a first send that went at once has no earlier one: no statement
            # for it on the path of every message)
            uow.alerts.resolve(f"{AlertKind.SIGNAL_UNDELIVERED}:{job.message_id}", at=now)
        uow.events.record(
            job.message_id,
            EventKind.SIGNAL_OUT,
            actor="worker",
            code=kind,
            detail=f"{kind} delivered to {data.get('partner')}",
            ebxml_message_id=signal_message_id,
            at=now,
        )
        uow.commit()


def _signal_failed(
    ctx: EngineContext,
    uow: UnitOfWork,
    job: ClaimedJob,
    kind: str,
    signal_message_id: str,
    failure: TransportFailure,
    now: datetime,
) -> None:
    """Log a failed send of our signal, and try again or give up, alerting in time.

    A failure that no retry can mend (a 5xx answer to a mail, a test server's guard against a
    production address, a signal too large for the channel) ends at once, as a message's send
    does. Else the signal is tried again with growing pauses, up to :data:`SIGNAL_ATTEMPTS` per
    send, and ``signal-undelivered`` is raised at the first failure :data:`SIGNAL_ALERT_AFTER`
    after the signal's first one (kept, not told again while its text stays): a duplicate of
    the message sends the signal again in a job of its own, and must not restart that clock."""
    data = job.data or {}
    partner = str(data.get("partner"))
    uow.events.record(
        job.message_id,
        EventKind.ATTEMPT,
        actor="worker",
        code=failure.code,
        detail=f"sending our {kind} failed: {failure.detail}",
        ebxml_message_id=signal_message_id,
        at=now,
    )
    first = _first_failure(uow, job.message_id, signal_message_id) or now
    since = f"{_utc(first)} UTC"
    what = f"our {kind} for message {job.message_id} to {partner}"
    if job.attempts >= SIGNAL_ATTEMPTS or not failure.retryable:
        uow.jobs.finish(job.id)
        tries = "every attempt" if failure.retryable else "the last attempt, which no retry mends,"
        raise_alert(
            uow,
            AlertKind.SIGNAL_UNDELIVERED,
            f"{what} could not be delivered: {tries} since {since} failed ({failure.code}), "
            f"{job.attempts} by this send; no more are made. We have the message, but its "
            "sender may take it for not delivered: tell the partner so. The partner's resend of "
            f"the message gets our {kind} again.",
            at=now,
            message_id=job.message_id,
            partner_her_id=partner,
        )
        return
    due = now + timedelta(seconds=min(2**job.attempts, 3600))
    alert_at = first + SIGNAL_ALERT_AFTER
    if now >= alert_at:
        keep_alert(
            uow,
            AlertKind.SIGNAL_UNDELIVERED,
            f"{what} has not been delivered since {since} ({failure.code}); it is tried "
            "again, but the partner may take the message for not delivered meanwhile and give "
            "it up: see `meldingstjener status` of the message, mend the way to the partner "
            "or tell it that we have the message.",
            at=now,
            message_id=job.message_id,
            partner_her_id=partner,
        )
    else:
        due = min(due, alert_at)  # an attempt when the alert is due, not a pause later
    uow.jobs.reschedule(job.id, due)


def _first_failure(
    uow: UnitOfWork, message_id: str | None, signal_message_id: str
) -> datetime | None:
    """When sending our signal first failed since it was last delivered (any send of it: the
    first, a duplicate's), from the message's log; None when it has not failed before."""
    if message_id is None:
        return None
    first = None
    for event in _signal_events(uow, message_id, signal_message_id):
        if event.kind == EventKind.SIGNAL_OUT:
            first = None
        elif event.kind == EventKind.ATTEMPT and first is None:
            first = event.at
    return first


def _signal_events(uow: UnitOfWork, message_id: str, signal_message_id: str) -> list[EventRow]:
    """The sends of our signal in the message's log, oldest first: attempts that failed and
    deliveries (named by the signal's eb:MessageId)."""
    query = (
        select(EventRow)
        .where(
            EventRow.message_id == message_id,
            EventRow.ebxml_message_id == signal_message_id,
            EventRow.kind.in_((EventKind.ATTEMPT, EventKind.SIGNAL_OUT)),
        )
        .order_by(EventRow.at, EventRow.id)
    )
    uow.events.write_pending()
    return list(uow.session.scalars(query))


def _utc(at: datetime) -> str:
    return f"{as_utc(at):%Y-%m-%d %H:%M:%S}"


# --- what became of our signals (``meldingstjener status``) ----------------------------------

TRANSPORT_SIGNALS = ("acknowledgment", "message-error")


@dataclass(frozen=True)
class SignalDelivery:
    """What became of one of our Acknowledgments or MessageErrors.

    ``state``: ``inline`` (answered in the HTTP response to the message, SyncReply: there is
    nothing more to send), ``queued`` (waiting for its first send), ``delivered`` (``at``),
    ``failing`` (failed ``attempts`` times since ``since``, tried again at ``next_attempt_at``),
    ``undelivered`` (failed and given up: the partner's resend sends it again), ``no-route``
    (stored only: no agreed way back to the sender)."""

    state: str
    at: datetime | None = None
    attempts: int = 0
    since: datetime | None = None
    next_attempt_at: datetime | None = None
    last_error_code: str | None = None
    last_error_text: str | None = None

    def as_dict(self) -> dict[str, Any]:
        def iso(at: datetime | None) -> str | None:
            value = as_utc(at)
            return None if value is None else value.isoformat()

        return {
            "state": self.state,
            "at": iso(self.at),
            "failed_attempts": self.attempts,
            "failing_since": iso(self.since),
            "next_attempt_at": iso(self.next_attempt_at),
            "last_error": (
                {"code": self.last_error_code, "text": self.last_error_text}
                if self.last_error_code
                else None
            ),
        }


def signal_deliveries(
    uow: UnitOfWork, message_id: str, receipts: list[ReceiptRow]
) -> dict[int, SignalDelivery]:
    """What became of each of our transport signals among ``receipts`` (a received message's),
    by receipt id: from the message's log (each send's attempt and delivery, named by the
    signal's eb:MessageId; before they were, by its kind) and the send-signal jobs waiting."""
    ours = [r for r in receipts if r.direction == "out" and r.kind in TRANSPORT_SIGNALS]
    if not ours:
        return {}
    events = uow.events.for_message(message_id)
    jobs = list(
        uow.session.scalars(
            select(JobRow).where(JobRow.message_id == message_id, JobRow.kind == SEND_SIGNAL)
        )
    )
    return {receipt.id: _delivery(receipt, events, jobs) for receipt in ours}


def _delivery(receipt: ReceiptRow, events: list[EventRow], jobs: list[JobRow]) -> SignalDelivery:
    def of_signal(event: EventRow) -> bool:
        if event.ebxml_message_id is not None:
            return event.ebxml_message_id == receipt.ebxml_message_id
        if event.kind == EventKind.SIGNAL_OUT:  # logged before they named the signal
            return event.code == receipt.kind
        return event.kind == EventKind.ATTEMPT and str(event.detail or "").startswith(
            f"sending our {receipt.kind} failed"
        )

    delivered: EventRow | None = None
    failures: list[EventRow] = []
    for event in events:
        if event.kind not in (EventKind.SIGNAL_OUT, EventKind.ATTEMPT) or not of_signal(event):
            continue
        if event.kind == EventKind.SIGNAL_OUT:
            delivered, failures = event, []
        else:
            failures.append(event)
    waiting = [
        job
        for job in jobs
        if (job.data or {}).get("receipt_id") == receipt.id
        or (job.data or {}).get("signal_message_id") == receipt.ebxml_message_id
    ]
    next_at = min((job.due_at for job in waiting), default=None)
    if failures:
        last = failures[-1]
        prefix = f"sending our {receipt.kind} failed: "
        text = str(last.detail or "")
        return SignalDelivery(
            "failing" if waiting else "undelivered",
            at=last.at,
            attempts=len(failures),
            since=failures[0].at,
            next_attempt_at=next_at,
            last_error_code=last.code,
            last_error_text=text[len(prefix) :] if text.startswith(prefix) else text,
        )
    if waiting:
        return SignalDelivery("queued", next_attempt_at=next_at)
    if delivered is not None:
        return SignalDelivery("delivered", at=delivered.at)
    if any(event.code == "no-route" for event in events):
        return SignalDelivery("no-route")
    return SignalDelivery("inline", at=receipt.at)
