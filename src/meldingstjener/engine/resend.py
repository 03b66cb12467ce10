"""Sending a given-up message again: an operator's new copy of a ``not-delivered`` message.

A message is ``not-delivered`` when its receiver did not acknowledge it within the agreement's
PersistDuration (``transmit``): its MessageId may not be sent again then (the receiver keeps it
for duplicate elimination only that long). Once the partner is back, the operator (``resend``,
``POST /api/messages/{id}/resend``) sends a new copy: a new ebXML message built from the stored
fagmelding by :func:`.outbound.submit`, as any other (validation, the receiver's current
agreement, endpoint and certificate, encryption, signing). The fagmelding is the same
document, its MsgHead MsgId too: an EPJ that checks for repeats knows one by it, and an AppRec
answering either copy is matched by it (``receipts._apprec_answers``).

A message given up although the receiving side took some attempt (its MSH answered 2xx, or
our mail server took a mail that did not come back: :func:`.transmit.attempts_taken`, the rule
the not-delivered alert follows) was very likely, or maybe, received: only its Acknowledgment
did not come back, and a copy would be a duplicate in the receiver's EPJ. It is sent again only
with the operator's word that the receiver says it did not arrive (``checked``: kept, masked, as
the note of the not-delivered alert the resend resolves); without it, refused
``maybe-received``.

Only ``not-delivered`` is sent again. A message under way (accepted, sent, retrying) is still
being sent; one acknowledged or answered the receiver has. One that ended ``transport-error``
was refused by the receiver's MSH with a MessageError: it got the message and said why it
would not take it, which a copy of the same document meets again unless someone mends the
cause, and a late Acknowledgment may still follow it (the receiver has it): the EPJ sends it
again when the cause is mended.

Exactly once: the copy is stored with the idempotency key ``resend:<id of the original>``
(unique in the store), in the commit that also locks the original, checks that it is still
``not-delivered``, writes the link into both message logs and resolves the original's
``not-delivered`` alert. Two operators at once make one copy; the second is told its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.copies import COPY_OF, SENT_AGAIN, copy_key, copy_of
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.transmit import attempts_taken
from meldingstjener.model import Direction, OutboundStatus
from meldingstjener.store import audit
from meldingstjener.store.payloads import PayloadNotFound
from meldingstjener.store.tables import MessageRow, ReceiptRow
from meldingstjener.store.uow import EventKind, UnitOfWork

# The one status a message is sent again from (see the module's text for the others).
RESENDABLE = OutboundStatus.NOT_DELIVERED.value


class ResendRefused(SubmitRejected):
    """The message is not sent again. ``code``: ``not-found``, ``not-outbound``,
    ``not-resendable`` (its status), ``already-sent-again`` (``copy_id`` names the copy),
    ``content-removed`` (retention removed its fagmelding), ``maybe-received`` (the receiving
    side took it, and nobody said it did not arrive), ``invalid-checked`` (those words cannot
    be kept as given); or one of submit's own codes
    (``unknown-receiver``, ``certificate-problem``, ...) from the new copy's checks."""

    def __init__(self, code: str, message: str, *, copy_id: str | None = None) -> None:
        super().__init__(code, message)
        self.copy_id = copy_id


@dataclass(frozen=True)
class Resent:
    """A message sent again: ``original_id``'s new copy is ``copy_id``. ``checked_kept``: the
    receiver's word (``checked``) kept as the note of the alert the resend resolved; False when
    it was given but the alert was resolved already (or is gone): then it is kept nowhere, and
    the caller says so; None when none was given."""

    original_id: str
    copy_id: str
    checked_kept: bool | None = None


@dataclass(frozen=True)
class Operator:
    """Who sends a message again: ``client`` (``cli``, or the API client's label) and the
    person behind it, for the audit log; ``by`` is what the message logs and the alert say."""

    client: str
    person: str | None = None

    @property
    def by(self) -> str:
        return f"{self.client}/{self.person}" if self.person else self.client


def resend(
    ctx: EngineContext, message_id: str, *, operator: Operator, checked: str | None = None
) -> Resent:
    """Send the ``not-delivered`` message ``message_id`` again as a new copy; return both ids.
    ``checked``: what the receiver said when asked whether it arrived (needed when the
    receiving side took an attempt; kept as the resolved alert's note). Raises
    :class:`ResendRefused` (or submit's :class:`SubmitRejected`); nothing is stored then. The
    audit log has the resend, by ``operator``, and the alert it resolved."""
    try:
        note = audit.resolution_note(checked)
    except audit.NoteRefused as refused:
        raise ResendRefused("invalid-checked", f"the words of --checked: {refused}") from None
    original = _resendable(ctx, message_id, checked=note is not None)
    payload_ref = str(original.payload_ref)
    linked: list[str] = []
    kept: list[bool] = []

    def link(uow: UnitOfWork, copy: MessageRow) -> None:
        kept.append(_link(ctx, uow, original.id, copy, operator, note))
        linked.append(copy.id)

    try:
        copy_id = submit(
            ctx,
            # the stored file, copied into the copy's own (retention removes each by its key)
            ctx.store.payloads.path(payload_ref),
            to_her_id=original.to_her_id,
            actor=f"resend:{operator.by}",
            client_id=original.client_id,  # the EPJ's message, whose client may follow the copy
            on_stored=link,
            idempotency_key=copy_key(original.id),
            # The new copy goes in the original's ebXML conversation (ebMS 2.0 3.1.3: the
            # messages of one exchange share it): the same business message, with the same
            # MsgId; the receiver's answer to either, and a reply, belong to that exchange.
            # The eb:MessageId is new: the receiver forgets the old one after PersistDuration
            # and may deliver a repeat of it then, or drop it as a duplicate before.
            conversation_id=original.ebxml_conversation_id,
        )
    except (FileNotFoundError, PayloadNotFound):
        raise _content_removed(original.id) from None
    if copy_id not in linked:
        # submit found a copy under the key (another operator's, stored meanwhile) and
        # answered with it instead of storing this one
        raise _already(original.id, copy_id)
    return Resent(original.id, copy_id, kept[-1] if note is not None else None)


def _resendable(ctx: EngineContext, message_id: str, *, checked: bool) -> MessageRow:
    """The message, when it may be sent again now: checked before the copy is built; the
    commit checks the status again, under the message's lock (its attempts do not change once
    it is given up)."""
    with ctx.store.unit_of_work() as uow:
        message = uow.messages.get(message_id)
        if message is None:
            raise ResendRefused("not-found", f"no message {message_id}")
        if message.direction != Direction.OUTBOUND.value:
            raise ResendRefused(
                "not-outbound",
                f"message {message.id} was received, not sent: only a message of ours is sent "
                "again",
            )
        copy = copy_of(uow, message.id)
        if copy is not None:
            raise _already(message.id, copy.id)
        _check_status(message)
        taken = attempts_taken(uow, message)
        if taken.maybe_received and not checked:
            raise ResendRefused(
                "maybe-received",
                f"message {message.id} was given up without an Acknowledgment, but "
                f"{taken.words()}: a copy would be a duplicate in its EPJ if it did. When the "
                'receiver says it did not arrive, send it again with their word: --checked "..." '
                '(the API: {"checked": "..."}), kept as the note of the resolved alert',
            )
        if message.payload_ref is None or not ctx.store.payloads.exists(message.payload_ref):
            raise _content_removed(message.id)
        return message


def _check_status(message: MessageRow) -> None:
    """Refuse a message not ``not-delivered``, saying why its status rules out a copy."""
    if message.status == RESENDABLE:
        return
    why = _WHY_NOT.get(message.status, "it is not a message given up")
    raise ResendRefused(
        "not-resendable",
        f"message {message.id} is {message.status}: {why}. Only a not-delivered message is "
        "sent again",
    )


_WHY_NOT = {
    OutboundStatus.ACCEPTED.value: "it is still being sent",
    OutboundStatus.SENT.value: "it is still being sent (waiting for its Acknowledgment)",
    OutboundStatus.RETRYING.value: "it is still being sent (retrying)",
    OutboundStatus.TRANSPORT_ACKNOWLEDGED.value: "the receiver acknowledged it",
    OutboundStatus.APPREC_OK.value: "the receiver has it and answered with an AppRec",
    OutboundStatus.APPREC_OK_WITH_ERRORS.value: "the receiver has it and answered with an AppRec",
    OutboundStatus.APPREC_REJECTED.value: "the receiver has it and rejected it by AppRec; "
    "the EPJ sends a corrected message",
    OutboundStatus.TRANSPORT_ERROR.value: "the receiver's MSH refused it with a MessageError "
    "(see its last error); mend the cause with the partner, then the EPJ sends it again",
}


def _link(
    ctx: EngineContext,
    uow: UnitOfWork,
    original_id: str,
    copy: MessageRow,
    operator: Operator,
    note: str | None,
) -> bool:
    """In the commit that stores ``copy``: the original, locked, still ``not-delivered`` (a
    late Acknowledgment may have come meanwhile: then no copy is stored); both logs name the
    other; the original's ``not-delivered`` alert is resolved, by ``operator``, with ``note``
    (the receiver's word that it did not arrive, masked; never in a log); audited. Whether the
    note was kept (not when the alert was resolved already, by hand or by the server)."""
    original = uow.messages.get(original_id, for_update=True)
    if original is None:  # removed meanwhile
        raise ResendRefused("not-found", f"no message {original_id}")
    _check_status(original)
    now = ctx.clock()
    uow.events.record(
        original.id,
        EventKind.NOTE,
        actor=f"resend:{operator.by}",
        code=SENT_AGAIN,
        detail=f"sent again as {copy.id} (eb:MessageId {copy.ebxml_message_id}) by {operator.by}",
        at=now,
    )
    uow.events.record(
        copy.id,
        EventKind.NOTE,
        actor=f"resend:{operator.by}",
        code=COPY_OF,
        detail=f"a new copy of {original.id} (eb:MessageId {original.ebxml_message_id}), "
        f"not delivered; sent again by {operator.by}",
        at=now,
    )
    _answer_sent_again(uow, original, copy, now)
    alert = uow.alerts.by_key(f"{AlertKind.NOT_DELIVERED}:{original.id}")
    was_open = alert is not None and alert.resolved_at is None
    if alert is not None and was_open:
        audit.follow_up_alert(
            uow,
            alert.id,
            resolve=True,
            client=operator.client,
            person=operator.person,
            by=operator.by,
            at=now,
            note=note,
        )
    audit.add(
        uow,
        client=operator.client,
        person=operator.person,
        action="resend",
        outcome=audit.Outcome.OK,
        message_id=original.id,
        her_id=original.to_her_id,
        detail=f"sent again as {copy.id}",
    )
    return note is not None and was_open


def _answer_sent_again(
    uow: UnitOfWork, original: MessageRow, copy: MessageRow, now: datetime
) -> None:
    """When ``original`` is our answer to a received message (an AppRec, a dialog-avvik), its
    receipt there names it as sent (``show``'s and ``status``'s "sent as ..."): one more names
    the copy, so the help desk sees the answer that went, beside the one given up."""
    sent = select(ReceiptRow).where(
        ReceiptRow.direction == "out", ReceiptRow.ebxml_message_id == original.ebxml_message_id
    )
    for receipt in list(uow.session.scalars(sent)):
        uow.receipts.add(
            ReceiptRow(
                message_id=receipt.message_id,
                kind=receipt.kind,
                direction="out",
                at=now,
                ebxml_message_id=copy.ebxml_message_id,
                ref_to_message_id=receipt.ref_to_message_id,
                apprec_status=receipt.apprec_status,
                error_codes=receipt.error_codes,
            )
        )


def _already(original_id: str, copy_id: str) -> ResendRefused:
    return ResendRefused(
        "already-sent-again",
        f"message {original_id} was sent again already, as {copy_id}; follow that one "
        f"(show {copy_id}), and send it again if it too is not delivered",
        copy_id=copy_id,
    )


def _content_removed(original_id: str) -> ResendRefused:
    return ResendRefused(
        "content-removed",
        f"the business document of message {original_id} is no longer stored (retention's "
        "payload_days, or the message was purged); the EPJ must send it again",
    )
