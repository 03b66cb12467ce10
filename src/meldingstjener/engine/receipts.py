"""Application receipts (AppRec), misaddressed messages and the end-to-end status of a message.

Receiving side: a message delivered to the EPJ owes an AppRec; the EPJ decides (``send_apprec``),
or the server sends a positive one itself for partners configured so. The server rejects on its
own (negative AppRec) for reasons it knows: a receiver service that is not ours (E21), a business
message with format errors (T02, or the code formats gives the fault, such as T10 for a version
it does not support), anything else with X99 and a text. A message we were not
entitled to never reaches the EPJ: its payload is purged and the sender told — by a negative
AppRec, or by a DIALOG_AVVIK when a positive AppRec had already gone out (``report_misaddressed``).

Sending side: incoming AppRecs are matched to the sent message by OriginalMsgId and sender; the
status becomes apprec-ok / apprec-rejected / apprec-ok-with-errors; a rejection raises an alert,
and so does an AppRec that has not arrived by its deadline (``apprec-deadline`` jobs).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from meldingstjener.engine import housekeeping
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.fagmelding import Fagmelding
from meldingstjener.engine.mail_bounces import bounce_alert_key
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import (
    AppRecError,
    AppRecStatus,
    build_apprec,
    build_dialog_avvik,
    copy_receiver,
    read_apprec,
    read_msghead,
    serialize_apprec,
)
from meldingstjener.formats.apprec import APPREC_VERSIONS, apprec_party_from
from meldingstjener.formats.codelists import APPREC_ERRORS, code_list
from meldingstjener.formats.errors import FormatError
from meldingstjener.formats.msghead import MsgHead
from meldingstjener.formats.parties import Party
from meldingstjener.formats.validation import INTERNAL_ERROR
from meldingstjener.formats.xmlparse import XmlError
from meldingstjener.model import Direction, InboundStatus, OutboundStatus, allowed_next
from meldingstjener.model.privacy import codes_shown, partner_code, redact
from meldingstjener.model.status import IllegalTransition
from meldingstjener.registry.store import bindings_from_json
from meldingstjener.store.tables import AgreementRow, MessageRow, ReceiptRow
from meldingstjener.store.uow import ClaimedJob, EventKind, UnitOfWork

log = logging.getLogger(__name__)

APPREC = "APPREC"
APPREC_DEADLINE = "apprec-deadline"
AUTO_APPREC = "auto-apprec"
SERVER_VERDICT = "server-verdict"
DEFAULT_APPREC_VERSION = "1.1"

_OUT_STATUS = {
    "1": OutboundStatus.APPREC_OK,
    "2": OutboundStatus.APPREC_REJECTED,
    "3": OutboundStatus.APPREC_OK_WITH_ERRORS,
}
API_APPREC_STATUS = {
    OutboundStatus.APPREC_OK.value: "Ok",
    OutboundStatus.APPREC_REJECTED.value: "Rejected",
    OutboundStatus.APPREC_OK_WITH_ERRORS.value: "OkErrorInMessagePart",
}
_API_STATUS_BY_CODE = {"1": "Ok", "2": "Rejected", "3": "OkErrorInMessagePart"}


class AppRecRefused(Exception):
    """An AppRec that may not be sent now (already answered, purged, not an inbound message...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ReceiverStatus:
    """Status per receiver in the shape of NHN's EDI 2.0 API (StatusInfo)."""

    receiver_her_id: str
    transport_delivery_state: str  # Unconfirmed | Acknowledged | Rejected
    app_rec_status: str | None  # Ok | Rejected | OkErrorInMessagePart | None


@dataclass(frozen=True)
class AppRecInfo:
    receiver_her_id: str
    app_rec_status: str
    errors: tuple[tuple[str, str], ...]
    received_at: datetime
    # each error's OT (the partner EPJ's own words, masked as stored), beside ``errors``
    error_ots: tuple[str | None, ...] = ()


# --- receiving side: deliver, answer -----------------------------------------------------------


def deliver(
    ctx: EngineContext, message_id: str, *, actor: str, read_at: datetime | None = None
) -> None:
    """The message has reached the EPJ: marked read, or written to the inbox folder (fetching
    the document alone is not enough: the answer may never have arrived). Answering it delivers
    it too, in the answer's own transaction (:func:`_taken_by_answer`).

    ``read_at``: the EPJ marked the message read (the API's MarkMessageAsRead) at this time. It
    is set in the transaction that delivers, so a message is never read but not delivered (it
    would leave the unread list while the engine, its automatic AppRec and the ``inbox-waiting``
    follow-up still wait for the delivery). A message the engine no longer offers (rejected,
    purged) is still marked read, and :class:`AppRecRefused` (``not-deliverable``) raised after
    the commit."""
    with ctx.store.unit_of_work() as uow:
        row = _inbound(uow, message_id, for_update=True)
        if read_at is not None and row.read_at is None:
            row.read_at = read_at
        if row.status in (InboundStatus.DELIVERED.value, InboundStatus.APPREC_SENT.value):
            uow.commit()  # delivering is idempotent; only the read mark may be new
            return
        if row.status != InboundStatus.ACKNOWLEDGED.value or row.payload_ref is None:
            uow.commit()  # reading what is stored is allowed
            raise AppRecRefused(
                "not-deliverable", f"message {message_id} is {row.status}; it is not for the EPJ"
            )
        # at the engine's time: the apprec-owed check (engine/inbox_watch.py) judges by it
        uow.messages.set_status(
            row,
            InboundStatus.DELIVERED.value,
            actor=actor,
            detail="delivered to the EPJ",
            at=ctx.clock(),
        )
        if row.msg_type != APPREC and _auto_apprec(ctx, uow, row):
            # owed from this commit on: a job, so that a crash before it is sent cannot lose it
            ctx.schedule_now(
                uow, AUTO_APPREC, message_id=row.id, dedup_key=f"{AUTO_APPREC}:{row.id}"
            )
        uow.commit()
    ctx.notify_workers(uow)


# refusals of an AppRec that is not owed any more: the EPJ answered first, the message was
# purged (which leaves no payload), the message is gone, or it is an AppRec
_NO_LONGER_OWED = frozenset({"already-answered", "purged", "not-found", "apprec-for-apprec"})


def auto_apprec_job(ctx: EngineContext, job: ClaimedJob) -> None:
    """Send the positive AppRec the agreement asks for on delivery. One that cannot go (the EPJ
    answered first, or the message was purged) is not owed any more; one that is owed and
    cannot be sent (the sender's certificate, the agreement, ...) is an ``apprec-unsent``."""
    refused: AppRecRefused | None = None
    try:
        send_apprec(ctx, str(job.message_id), status=1, errors=[], actor="msh:auto-apprec")
    except AppRecRefused as exc:
        refused = exc
        log.info("no automatic AppRec for message %s: %s", job.message_id, exc.code)
    with ctx.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)
        owed = refused is not None and refused.code not in _NO_LONGER_OWED
        row = uow.messages.get(str(job.message_id)) if owed else None
        if refused is not None and row is not None:
            # it stays delivered for ever, and its sender waits for the AppRec
            uow.events.record(
                row.id,
                EventKind.ERROR,
                actor="msh:auto-apprec",
                code=refused.code,
                detail=f"the automatic AppRec could not be sent: {refused.message}",
            )
            raise_alert(
                uow,
                AlertKind.APPREC_UNSENT,
                f"message {row.id} ({row.msg_type}) from {row.from_her_id} was delivered, but "
                f"the automatic AppRec its agreement asks for could not be sent "
                f"({refused.code}); the sender waits for it. Mend the cause and have the EPJ "
                "answer the message, or tell the sender another way.",
                at=ctx.clock(),
                message_id=row.id,
                partner_her_id=row.from_her_id,
            )
        uow.commit()


def _auto_apprec(ctx: EngineContext, uow: UnitOfWork, row: MessageRow) -> bool:
    agreement = uow.agreements.for_pair(str(row.to_her_id), str(row.from_her_id))
    if agreement is None:
        agreements = uow.agreements.for_counterparty(str(row.from_her_id))
        agreement = agreements[0] if agreements else None
    return bool(agreement is not None and agreement.auto_apprec)


def _unbuildable(exc: FormatError | XmlError) -> AppRecRefused:
    """The refusal of an AppRec its message cannot give: by the fault's code and XML path, not
    its text (which may quote a value of the message)."""
    where = f" at {exc.path}" if isinstance(exc, FormatError) and exc.path else ""
    return AppRecRefused("apprec-unbuildable", f"the AppRec cannot be built ({exc.code}{where})")


def send_apprec(
    ctx: EngineContext,
    message_id: str,
    *,
    status: int,
    errors: list[tuple[str, str]],
    actor: str,
    version: str | None = None,
) -> str:
    """Answer a received message with an AppRec; return the AppRec's own message id."""
    try:
        code = AppRecStatus(status)
    except ValueError:
        raise AppRecRefused(
            "invalid-status", f"AppRec status must be 1, 2 or 3, not {status}"
        ) from None
    if code is not AppRecStatus.OK and not errors:
        raise AppRecRefused("errors-required", "a rejection or partial error needs an error code")
    with ctx.store.unit_of_work() as uow:
        row = _inbound(uow, message_id)
        if row.msg_type == APPREC:
            raise AppRecRefused("apprec-for-apprec", "an AppRec is never answered with an AppRec")
        target = (
            InboundStatus.APPREC_SENT
            if code is not AppRecStatus.REJECTED
            else InboundStatus.REJECTED
        )
        if not _status_allows(row, target):  # answered, rejected or purged: whatever its content
            raise AppRecRefused(
                "already-answered",
                f"message {message_id} is {row.status}; an AppRec cannot be sent now",
            )
        if row.payload_ref is None:
            # owed, but the AppRec is built from the content, which [retention] removed
            raise AppRecRefused(
                "purged",
                f"message {message_id} has no content any more (removed by retention); an "
                "AppRec cannot be built",
            )
        try:
            original = read_msghead(ctx.store.payloads.read_bytes(row.payload_ref))
        except (FormatError, XmlError) as exc:
            raise _unbuildable(exc) from None
        version = version or _apprec_version(uow, row)
    try:
        payload = build_apprec(
            original,
            status=code,
            errors=[AppRecError.of(c, text or None) for c, text in errors],
            version=version,
            software_name="meldingstjener",
            answer_as=_copy_answered(original, row.to_her_id),
            received_at=_date_time(row.created_at),
        )
    except (FormatError, XmlError) as exc:
        # a message the lenient validator let through may lack what an AppRec quotes
        raise _unbuildable(exc) from None
    return _submit_answer(ctx, payload, row, target, actor, code, errors, "AppRec")


def _date_time(at: datetime) -> str:
    """``at`` as xs:dateTime, UTC when the store gave it without a zone."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def _copy_answered(original: MsgHead, to_her_id: str | None) -> Party | None:
    """The copy receiver (OtherReceiver) a message came to, when it came as a copy: the
    AppRec comes from it, since the MsgHead's receiver is not ours and outbound refuses to
    send in its name. None for a message to its receiver."""
    if to_her_id is None:
        return None
    receiver = original.receiver_her_ids
    if to_her_id in (receiver.organisation, receiver.service):
        return None
    return copy_receiver(original.msg_info, to_her_id)


def _apprec_version(uow: UnitOfWork, row: MessageRow) -> str:
    agreement = uow.agreements.for_pair(str(row.to_her_id), str(row.from_her_id))
    if agreement is None:
        found = uow.agreements.for_counterparty(str(row.from_her_id))
        agreement = found[0] if found else None
    if agreement is not None and agreement.apprec_version:
        return agreement.apprec_version
    if agreement is not None:
        agreed = _agreed_apprec_version(agreement, row.ebxml_service)
        if agreed is not None:
            return agreed
    return DEFAULT_APPREC_VERSION


def _agreed_apprec_version(agreement: AgreementRow, service: str | None) -> str | None:
    """The AppRec version a CPA's bindings take in ``service`` (the answered message's): the
    newest whose namespace one of them names (NAV's take only 1.0). None without bindings."""
    bindings, _ = bindings_from_json(agreement.message_types)
    in_service = [b for b in bindings if b.service == service] or list(bindings)
    named = {b.namespace for b in in_service}
    for version in sorted(APPREC_VERSIONS.values(), key=lambda v: v.name, reverse=True):
        if version.namespace in named:
            return version.name
    return None


def _submit_answer(
    ctx: EngineContext,
    payload: bytes,
    row: MessageRow,
    target: InboundStatus,
    actor: str,
    code: AppRecStatus | None,
    errors: list[tuple[str, str]],
    what: str,
    *,
    purge: bool = False,
    also: Callable[[UnitOfWork, MessageRow], None] | None = None,
) -> str:
    """Send ``payload`` back to the sender of ``row`` and move ``row`` to ``target`` atomically
    (``also`` adds to that transaction)."""

    def mark(uow: UnitOfWork, answer: MessageRow) -> None:
        original = _inbound(uow, row.id, for_update=True)
        try:
            _taken_by_answer(uow, original, target, actor)
            uow.messages.set_status(
                original,
                target.value,
                actor=actor,
                code=errors[0][0] if errors else None,
                detail=f"{what} sent ({answer.id})"
                + (f": {', '.join(c for c, _ in errors)}" if errors else ""),
            )
        except IllegalTransition:
            # Checked before the answer was built, without the lock: another answer (a retry
            # of the same request) got there first. This one is refused, and nothing stored.
            raise AppRecRefused(
                "already-answered",
                f"message {row.id} is {original.status}; a {what} cannot be sent now",
            ) from None
        if also is not None:
            also(uow, original)
        uow.receipts.add(
            ReceiptRow(
                message_id=original.id,
                kind="apprec" if what == "AppRec" else "dialog-avvik",
                direction="out",
                at=ctx.clock(),
                # the answer as sent: `status` follows it (given up, its alerts)
                ebxml_message_id=answer.ebxml_message_id,
                ref_to_message_id=original.msg_id,
                apprec_status=str(code.value) if code is not None else None,
                error_codes=[{"code": c, "text": t} for c, t in errors] or None,
            )
        )
        if purge and original.payload_ref:
            _purge_after_commit(ctx, uow, original)

    try:
        return submit(
            ctx,
            payload,
            to_her_id=str(row.from_her_id),
            actor=actor,
            on_stored=mark,
            answering=row.id,
        )
    except SubmitRejected as exc:
        raise AppRecRefused(exc.code, f"the {what} could not be sent: {exc.message}") from None


def mark_answered_by_document(
    ctx: EngineContext,
    uow: UnitOfWork,
    answer: MessageRow,
    message: Fagmelding,
    may_answer: Callable[[str], bool] | None = None,
) -> None:
    """An AppRec the EPJ built itself (folder drop, API document) answers a received message:
    move that message on and record the receipt, in the transaction that stores the AppRec.

    ``may_answer`` (the API client's HER-ids): whether the client may act for the HER-id the
    answered message was sent to. Otherwise the AppRec is refused (``SubmitRejected``, nothing
    stored): a client would move another client's message, which then leaves its inbox.

    An AppRec for a message that may not be answered now (answered already, purged) is
    refused too (``already-answered``, as :func:`send_apprec` refuses it)."""
    if message.msg_type != APPREC or not message.apprec_original_msg_id:
        return
    code = message.apprec_status or "1"
    target = InboundStatus.REJECTED if code == "2" else InboundStatus.APPREC_SENT
    found, received = answered_copy(
        uow,
        message.apprec_original_msg_id,
        their_her_id=answer.to_her_id,
        our_her_ids=(answer.from_her_id, answer.sender_service_her_id, answer.sender_person_her_id),
        target=target,
    )
    if found is None:
        if received:
            uow.events.record(
                answer.id,
                EventKind.NOTE,
                actor="msh",
                code="apprec-ambiguous",
                detail=f"this AppRec answers MsgId {message.apprec_original_msg_id}, received "
                f"{received} times from {answer.to_her_id}, none of them sent to "
                f"{answer.from_her_id}: no received message is marked answered",
            )
        return
    original = uow.messages.get(found.id, for_update=True)
    assert original is not None
    if may_answer is not None and not may_answer(str(original.to_her_id)):
        raise SubmitRejected(
            "not-allowed",
            f"the AppRec answers a message sent to HER-id {original.to_her_id}, which this "
            "client may not act for",
        )
    actor = f"apprec-document:{answer.client_id or 'epj'}"
    if not may_be_answered(original, target):
        # answered already (or purged, or not offered to the EPJ): refused as send_apprec
        # refuses it. (It went out, the status stayed apprec-sent and the sender's Ok, while
        # the sender's EPJ got a second, rejecting AppRec.)
        raise SubmitRejected(
            "already-answered",
            f"the AppRec answers message {original.id}, which is {original.status}; an AppRec "
            "cannot be sent now",
        )
    _taken_by_answer(uow, original, target, actor)
    errors = list(message.apprec_errors)
    uow.messages.set_status(
        original,
        target.value,
        actor=actor,
        code=errors[0][0] if errors else None,
        detail=f"AppRec sent ({answer.id})",
    )
    uow.receipts.add(
        ReceiptRow(
            message_id=original.id,
            kind="apprec",
            direction="out",
            at=ctx.clock(),
            ebxml_message_id=answer.ebxml_message_id,  # the answer as sent (see _submit_answer)
            ref_to_message_id=original.msg_id,
            apprec_status=code,
            error_codes=message.apprec_error_records() or None,
        )
    )


def may_be_answered(row: MessageRow, target: InboundStatus) -> bool:
    """Whether an answer (an AppRec, a dialog-avvik) moving the received ``row`` to ``target``
    may go now: not one answered already, purged (its payload gone) or not offered to the EPJ.
    One not marked read yet is delivered on the way (:func:`_taken_by_answer`). The one check
    of :func:`send_apprec`, :func:`mark_answered_by_document` and :func:`answered_copy`."""
    return row.payload_ref is not None and _status_allows(row, target)


def _status_allows(row: MessageRow, target: InboundStatus) -> bool:
    """Whether the received ``row``'s status lets an answer move it to ``target``."""
    unread = row.status == InboundStatus.ACKNOWLEDGED.value
    status = InboundStatus.DELIVERED.value if unread else row.status
    return target.value in allowed_next(Direction.INBOUND, status)


def answered_copy(
    uow: UnitOfWork,
    msg_id: str,
    *,
    their_her_id: str | None,
    our_her_ids: Iterable[str | None],
    target: InboundStatus = InboundStatus.APPREC_SENT,
) -> tuple[MessageRow | None, int]:
    """The received message an answer of ours (an AppRec, a reply in its conversation) to
    ``their_her_id`` answers, by its MsgId ``msg_id``, and how many messages of that MsgId
    came from them. Outbound takes its ebXML ConversationId and Service, and an AppRec document
    marks it answered: one rule, so the AppRec travels in the conversation of the copy it marks.

    The one from them (never from another sender) sent to one of ``our_her_ids`` (the
    answer's sender, its service, its person). The same MsgId reaches several of our HER-ids
    when the sender sends copies, and one of them more than once when its EPJ sends it again:
    the oldest still waiting for its answer (:func:`may_be_answered`) is answered first, else
    the newest (answered already: the answer is refused as such). When no copy was sent to
    exactly the answering HER-id, a single message from that sender is still the one
    answered; between several, none is guessed."""
    from_them = [
        m
        for m in uow.messages.by_msg_id(Direction.INBOUND, msg_id)
        if m.from_her_id == their_her_id
    ]
    answering = set(our_her_ids) - {None}
    addressed = [m for m in from_them if m.to_her_id in answering]
    if addressed:
        waiting = [m for m in addressed if may_be_answered(m, target)]
        return (waiting[0] if waiting else addressed[-1]), len(from_them)
    if len(from_them) == 1:
        return from_them[0], 1
    return None, len(from_them)


def _taken_by_answer(
    uow: UnitOfWork, original: MessageRow, target: InboundStatus, actor: str
) -> None:
    """An EPJ that answers a message it has not marked read has it: it is delivered on the way
    to ``apprec-sent``, without the agreement's automatic AppRec (the EPJ's own is the answer)."""
    if original.status == InboundStatus.ACKNOWLEDGED.value and target is InboundStatus.APPREC_SENT:
        uow.messages.set_status(
            original, InboundStatus.DELIVERED.value, actor=actor, detail="delivered to the EPJ"
        )


def _purge_after_commit(ctx: EngineContext, uow: UnitOfWork, row: MessageRow) -> None:
    """Forget the message's content: the row lets go of its files now, the files go once that
    has committed. (Deleting first, a crash or a failed commit left a row pointing at nothing.)
    A crash between the commit and the delete leaves the files: a ``payload-delete`` job, in
    the same transaction, removes them then.

    The files are the decrypted payload and the wire form as received, which holds the same
    content encrypted to our own key. What non-repudiation needs stays: the receipts, and our
    Acknowledgment (its digests of the message; a file of its own, repeated to a resend)."""
    keys = [str(ref) for ref in (row.payload_ref, row.wire_ref) if ref]
    row.payload_ref = None
    row.wire_ref = None
    housekeeping.delete_after_commit(ctx.store, uow, keys, now=ctx.clock())


def _inbound(uow: UnitOfWork, message_id: str, *, for_update: bool = False) -> MessageRow:
    row = uow.messages.get(message_id, for_update=for_update)
    if row is None or row.direction != Direction.INBOUND.value:
        raise AppRecRefused("not-found", f"no received message {message_id}")
    return row


def report_misaddressed(ctx: EngineContext, message_id: str, *, actor: str, reason: str) -> str:
    """A clinician says the message was not for us: purge it and tell the sender.

    After a positive AppRec the sender gets a DIALOG_AVVIK (Tilbakemelding om feil i mottatt
    melding); before any AppRec, a negative AppRec (X99 with the reason).
    """
    with ctx.store.unit_of_work() as uow:
        row = _inbound(uow, message_id)
        if InboundStatus.MISADDRESSED_PURGED.value not in allowed_next(
            Direction.INBOUND, row.status
        ):
            raise AppRecRefused("not-allowed", f"message {message_id} is {row.status}")
        if row.payload_ref is None:
            raise AppRecRefused("purged", f"message {message_id} has no payload any more")
        original = read_msghead(ctx.store.payloads.read_bytes(row.payload_ref))
        answered = row.status == InboundStatus.APPREC_SENT.value

    def alert(uow: UnitOfWork, purged: MessageRow) -> None:
        # with the purge and the answer, or not at all: an answer that cannot be sent leaves
        # the content stored and the sender untold, and the alert must not say otherwise
        raise_alert(
            uow,
            AlertKind.MISADDRESSED_RECEIVED,
            f"message {purged.id} ({purged.msg_type}) from {purged.from_her_id} was reported "
            f"as not for us by {actor}; its content was purged and the sender told",
            at=ctx.clock(),
            message_id=purged.id,
            partner_her_id=purged.from_her_id,
        )

    if answered:
        payload = build_dialog_avvik(original, description=reason)
        return _submit_answer(
            ctx,
            payload,
            row,
            InboundStatus.MISADDRESSED_PURGED,
            actor,
            None,
            [],
            "DIALOG_AVVIK",
            purge=True,
            also=alert,
        )
    payload = build_apprec(
        original,
        status=AppRecStatus.REJECTED,
        errors=[AppRecError.of("X99", reason)],
        version=DEFAULT_APPREC_VERSION,
        software_name="meldingstjener",
    )
    return _submit_answer(
        ctx,
        payload,
        row,
        InboundStatus.MISADDRESSED_PURGED,
        actor,
        AppRecStatus.REJECTED,
        [("X99", reason)],
        "AppRec",
        purge=True,
        also=alert,
    )


# --- receiving side: what the server decides itself -------------------------------------------


@dataclass(frozen=True)
class ServerVerdict:
    """A rejection the server makes on its own, decided before the message is stored."""

    status: InboundStatus
    errors: list[tuple[str, str]]
    purge: bool
    alert: bool


def schedule_verdict(
    ctx: EngineContext, uow: UnitOfWork, message_id: str, verdict: ServerVerdict
) -> None:
    """Store the server's verdict with the message it judges, in the same transaction.

    The message stays ``received`` (in no inbox, no webhook) until the verdict's AppRec has gone
    and moved it on, so the EPJ never sees a message the server rejects, and a crash in between
    leaves this job, not a message that is acknowledged but never judged.
    """
    ctx.schedule_now(
        uow,
        SERVER_VERDICT,
        message_id=message_id,
        data={
            "status": verdict.status.value,
            "errors": [list(error) for error in verdict.errors],
            "purge": verdict.purge,
            "alert": verdict.alert,
        },
        dedup_key=f"{SERVER_VERDICT}:{message_id}",
    )


def server_verdict_job(ctx: EngineContext, job: ClaimedJob) -> None:
    """Send the AppRec of a stored verdict and apply it; done already when the message has
    moved on from ``received`` (the job repeated after a crash)."""
    data = job.data or {}
    verdict = ServerVerdict(
        InboundStatus(data["status"]),
        [(str(code), str(text)) for code, text in data["errors"]],
        purge=bool(data["purge"]),
        alert=bool(data["alert"]),
    )
    if verdict.status is InboundStatus.ACKNOWLEDGED:
        _passed_unjudged(ctx, job, verdict)
        return
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.get(str(job.message_id))
        payload_ref = (
            row.payload_ref if row is not None and row.status == InboundStatus.RECEIVED else None
        )
    if payload_ref is not None:
        original = ctx.store.payloads.read_bytes(payload_ref)
        reject_by_server(ctx, str(job.message_id), original, verdict)
    with ctx.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)
        uow.commit()


def _passed_unjudged(ctx: EngineContext, job: ClaimedJob, verdict: ServerVerdict) -> None:
    """A message whose validation failed with an error of ours (a layer's ``internal-error``)
    goes to the EPJ, which answers it, with a ``validation-failed`` alert and no AppRec of the
    server's: its T02 told the sender its message was invalid, for a fault of ours (and an
    error nobody saw: no log, no alert)."""
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.get(str(job.message_id), for_update=True)
        if row is not None and row.status == InboundStatus.RECEIVED.value:
            what = verdict.errors[0][1] if verdict.errors else "the checks failed"
            uow.messages.set_status(
                row,
                InboundStatus.ACKNOWLEDGED.value,
                actor="msh",
                code=INTERNAL_ERROR,
                detail=f"{what} with an error of this server's; no AppRec from the server, the "
                "EPJ has the message",
            )
            raise_alert(
                uow,
                AlertKind.VALIDATION_FAILED,
                f"the validation of message {row.id} ({row.msg_type}) from {row.from_her_id} "
                f"failed: {what} with an unexpected error of this server's (the server log "
                "names it). The sender got no AppRec from the server; the message went to the "
                "EPJ unchecked by that layer. Report the fault; the EPJ answers the message.",
                at=ctx.clock(),
                message_id=row.id,
                partner_her_id=row.from_her_id,
            )
        uow.jobs.finish(job.id)
        uow.commit()
    ctx.notify_workers(uow)


def judge(ctx: EngineContext, message: Fagmelding, envelope_to: str) -> ServerVerdict | None:
    """Decide whether a received message must be rejected by the server itself (before it is
    stored: the verdict is stored with it, see ``schedule_verdict``)."""
    if message.msg_type == APPREC:
        return None
    ours = ctx.own_her_ids
    service: str | None = message.receiver.service
    addressed = {str(h) for h in (message.receiver.organisation, service) if h}
    copy = envelope_to in message.copy_receivers and envelope_to not in addressed
    if copy:
        # the copy receiver's own service, which must be ours as the main receiver's must
        service = _copy_service(message, envelope_to)
    if (not copy and envelope_to not in ours) or (service is not None and str(service) not in ours):
        return ServerVerdict(
            InboundStatus.MISADDRESSED_PURGED,
            [("E21", f"mottaker {service or envelope_to} finnes ikke hos oss")],
            purge=True,
            alert=True,
        )
    errors = [p for p in message.report.problems if p.severity == "error"]
    theirs = [p for p in errors if p.code != INTERNAL_ERROR]
    if theirs:
        first = theirs[0]
        return ServerVerdict(
            InboundStatus.REJECTED,
            [(_apprec_code_of(first.code), f"{first.path}: {first.code}")],
            purge=False,
            alert=False,
        )
    failed = sorted({p.layer for p in errors})
    if failed:
        # a layer that failed with an error of ours says nothing of the message: no T02 (the
        # sender told its message is invalid, for our fault), an alert, and the EPJ has it
        return ServerVerdict(
            InboundStatus.ACKNOWLEDGED,
            [(INTERNAL_ERROR, f"the {' and '.join(failed)} checks failed")],
            purge=False,
            alert=True,
        )
    return None


def _apprec_code_of(problem_code: str) -> str:
    """The 8221 code of a negative AppRec for a validation problem: the ``apprec_code`` of the
    formats error with that ``code`` (T10 for a version or format we do not support, T01, T99,
    T02), and T02 (does not validate) for the validator's own checks, which have no class."""
    classes: list[type[FormatError] | type[XmlError]] = [FormatError, XmlError]
    while classes:
        found = classes.pop()
        if found.code == problem_code:
            return found.apprec_code
        classes.extend(found.__subclasses__())
    return "T02"


def _copy_service(message: Fagmelding, envelope_to: str) -> str | None:
    """The service (the nested organisation) of the OtherReceiver a copy came to as
    ``envelope_to``; None when it names none."""
    head = message.report.msghead
    party = copy_receiver(head.msg_info, envelope_to) if head is not None else None
    organisation = party.organisation if party is not None else None
    nested = organisation.organisation if organisation is not None else None
    return str(nested.her_id) if nested is not None and nested.her_id else None


def reject_by_server(
    ctx: EngineContext, message_id: str, original_payload: bytes, verdict: ServerVerdict
) -> str | None:
    """Send the server's own negative AppRec (E21 / T02 / X99) and apply the verdict."""
    with ctx.store.unit_of_work() as uow:
        row = _inbound(uow, message_id)
    try:
        # a message the lenient validator let through may still lack what an AppRec quotes
        original = read_msghead(original_payload)
        payload = build_apprec(
            original,
            status=AppRecStatus.REJECTED,
            errors=[AppRecError.of(code, text) for code, text in verdict.errors],
            version=DEFAULT_APPREC_VERSION,
            software_name="meldingstjener",
            answer_as=_copy_answered(original, row.to_her_id),
            received_at=_date_time(row.created_at),
        )
        if verdict.status is InboundStatus.MISADDRESSED_PURGED:
            payload = _from_our_organisation(ctx, payload)
    except (FormatError, XmlError) as exc:
        _rejected_without_apprec(ctx, message_id, verdict, _unbuildable(exc))
        return None

    def alert(uow: UnitOfWork, judged: MessageRow) -> None:
        # with the purge and the AppRec it announces, or not at all: committed before them, it
        # stood (saying the sender had its AppRec) when the AppRec could not be sent, and a
        # crash in between counted it once more at the job's next run
        raise_alert(
            uow,
            AlertKind.MISADDRESSED_RECEIVED,
            f"message {judged.id} ({judged.msg_type}) from {judged.from_her_id} was addressed "
            f"to {verdict.errors[0][1].split()[1]}, which is not ours; it was purged and the "
            "sender got a negative AppRec (E21)",
            at=ctx.clock(),
            message_id=judged.id,
            partner_her_id=judged.from_her_id,
        )

    try:
        return _submit_answer(
            ctx,
            payload,
            row,
            verdict.status,
            "msh",
            AppRecStatus.REJECTED,
            verdict.errors,
            "AppRec",
            purge=verdict.purge,
            also=alert if verdict.alert else None,
        )
    except AppRecRefused as refused:
        _rejected_without_apprec(ctx, message_id, verdict, refused)
        return None


def _rejected_without_apprec(
    ctx: EngineContext, message_id: str, verdict: ServerVerdict, refused: AppRecRefused
) -> None:
    """Apply the verdict all the same, and tell the operator: the sender holds our
    Acknowledgment and waits for an AppRec that will not come."""
    with ctx.store.unit_of_work() as uow:
        row = _inbound(uow, message_id, for_update=True)
        uow.messages.set_status(
            row,
            verdict.status.value,
            actor="msh",
            code=refused.code,
            detail=f"rejected, but the AppRec could not be sent: {refused.message}",
        )
        if verdict.purge and row.payload_ref:
            _purge_after_commit(ctx, uow, row)
        raise_alert(
            uow,
            AlertKind.APPREC_UNSENT,
            f"message {row.id} ({row.msg_type}) from {row.from_her_id} was rejected by this "
            f"server ({', '.join(code for code, _ in verdict.errors)}), but no AppRec could be "
            f"sent ({refused.code}). Tell the sender another way that it did not reach the "
            "patient record.",
            at=ctx.clock(),
            message_id=row.id,
            partner_her_id=row.from_her_id,
        )
        uow.commit()


def _from_our_organisation(ctx: EngineContext, payload: bytes) -> bytes:
    """An AppRec about a service we do not have comes from our organisation, not that service."""
    apprec = read_apprec(payload)
    organisation = ctx.organisation
    name = apprec.sender.inst.name or "meldingstjener"
    sender = apprec_party_from(Party.of(name, organisation))
    return serialize_apprec(dataclasses.replace(apprec, sender=sender))


# --- sending side: incoming AppRecs and deadlines -----------------------------------------------


def apply_incoming_apprec(
    ctx: EngineContext, uow: UnitOfWork, received: MessageRow, message: Fagmelding
) -> None:
    """Match a received AppRec to what we sent (OriginalMsgId + sender) and update its status."""
    now = ctx.clock()
    status_code = message.apprec_status or "2"
    target = _OUT_STATUS.get(status_code, OutboundStatus.APPREC_REJECTED)
    answered = _apprec_answers(uow, received, message, target)
    if answered is None:
        uow.events.record(
            received.id,
            EventKind.NOTE,
            actor="msh",
            code="apprec-unmatched",
            detail=f"AppRec from {received.from_her_id} for a message we did not send "
            f"(OriginalMsgId {message.apprec_original_msg_id})",
            at=now,
        )
        if target is not OutboundStatus.APPREC_OK:
            # a rejection of something: maybe a message sent past this server (another system
            # of ours), maybe one whose row is gone; either way someone must look at it
            shown = codes_shown(_apprec_code_meant(code) for code, _ in message.apprec_errors)
            raise_alert(
                uow,
                AlertKind.APPREC_REJECTED,
                f"{received.from_her_id} sent AppRec "
                f"'{_API_STATUS_BY_CODE.get(status_code, status_code)}'"
                + (f" ({shown})" if shown else "")
                + f" (received as message {received.id}) for a message this server did not "
                "send. Find out which message it answers; its content may not have reached the "
                "patient record.",
                at=now,
                message_id=received.id,
                partner_her_id=received.from_her_id,
                key=f"unmatched:{received.id}",
            )
        return
    original = uow.messages.get(answered, for_update=True)
    assert original is not None
    # the partner's codes and texts as sent (its own words, OT, too), masked like every text
    # we store, in the receipt only: never in the log or an alert
    codes = [
        {key: redact(value) for key, value in error.items()}
        for error in message.apprec_error_records()
    ]
    uow.receipts.add(
        ReceiptRow(
            message_id=original.id,
            kind="apprec",
            direction="in",
            at=now,
            ebxml_message_id=received.ebxml_message_id,
            ref_to_message_id=original.msg_id,
            apprec_status=status_code,
            error_codes=codes or None,
            description=message.apprec_description(),
        )
    )
    text = codes_shown(_apprec_code_meant(code) for code, _ in message.apprec_errors)
    if target.value in allowed_next(Direction.OUTBOUND, original.status):
        uow.messages.set_status(
            original,
            target.value,
            actor=f"apprec:{received.from_her_id}",
            code=_apprec_code_shown(message.apprec_errors[0][0]) if message.apprec_errors else None,
            detail=f"AppRec {_API_STATUS_BY_CODE.get(status_code, status_code)}"
            + (f" ({text})" if text else ""),
            at=now,
        )
        uow.jobs.cancel_for_message(original.id)
    else:
        uow.events.record(
            original.id,
            EventKind.SIGNAL_IN,
            actor=f"apprec:{received.from_her_id}",
            detail=f"another AppRec arrived (status stays {original.status})",
            at=now,
        )
    if target is not OutboundStatus.APPREC_OK:
        raise_alert(
            uow,
            AlertKind.APPREC_REJECTED,
            f"{received.from_her_id} answered message {original.id} ({original.msg_type}) with "
            f"AppRec '{_API_STATUS_BY_CODE.get(status_code, status_code)}'"
            + (f": {text}" if text else "")
            + ". Follow up with the receiver; the content may not have reached the patient record.",
            at=now,
            message_id=original.id,
            partner_her_id=received.from_her_id,
        )
    # the receiver has the message: neither a missing AppRec nor an earlier bounce of it by
    # mail is the news any longer
    uow.alerts.resolve(
        f"{AlertKind.APPREC_MISSING}:{original.id}", bounce_alert_key(original.id), at=now
    )


def _apprec_answers(
    uow: UnitOfWork, received: MessageRow, message: Fagmelding, target: OutboundStatus
) -> str | None:
    """The id of the sent message an incoming AppRec answers: one with its OriginalMsgId, sent
    to the AppRec's sender, from the HER-id of ours the AppRec is addressed to (its Receiver's
    service, else its organisation: two of our HER-ids may send one MsgId).

    An EPJ that resends a message at the business level sends the same MsgId again, in a new
    ebXML message; each copy gets its own AppRec. A copy still waiting for one (whose status
    the AppRec may move) takes it, the copies the receiver has first: acknowledged, then sent
    or retrying (it may have arrived), then given up or failed (a resend usually follows a
    give-up: the copy that never arrived took the AppRec, the delivered one got a false
    apprec-missing), then one accepted and not yet sent, the oldest first within each. Else
    the oldest it may still move (a corrected AppRec), else the newest. Never one given up
    before any attempt: the receiver cannot have it. (Always the newest, the older copy got a
    false apprec-missing.)
    """
    candidates = [
        m
        for m in uow.messages.by_msg_id(Direction.OUTBOUND, str(message.apprec_original_msg_id))
        if m.to_her_id in {received.from_her_id}
        or {m.receiver_org_her_id, m.receiver_service_her_id} & {received.from_her_id}
    ]
    receiver = message.receiver
    organisation = str(receiver.organisation) if receiver.organisation else None
    by_sender = (
        # sent from the HER-id the AppRec names, the most specific first
        *(
            [m for m in candidates if ours and m.from_her_id == str(ours)]
            for ours in (receiver.service, receiver.organisation, received.to_her_id)
        ),
        # an AppRec naming only our organisation, for a message sent from one of its services
        [m for m in candidates if organisation and m.sender_org_her_id == organisation],
    )
    candidates = next((found for found in by_sender if found), [])
    if not candidates:
        return None
    may_move = [
        m
        for m in candidates
        if target.value in allowed_next(Direction.OUTBOUND, m.status) and not _never_sent(m)
    ]
    waiting = [m for m in may_move if m.status not in API_APPREC_STATUS]
    if waiting:
        return min(waiting, key=lambda m: _WAITING_RANK.get(m.status, 3)).id  # stable: oldest
    if may_move:
        return may_move[0].id
    sent = [m for m in candidates if not _never_sent(m)]
    return sent[-1].id if sent else None


# which waiting copy of a resent MsgId an AppRec answers first: the copies the receiver has
# (acknowledged) or may have (sent, retrying), then those given up or failed after an attempt,
# which may have arrived all the same (a lost Acknowledgment); an accepted copy last (no
# attempt counted yet: only a send under way, its attempt not yet recorded, can have arrived)
_WAITING_RANK = {
    OutboundStatus.TRANSPORT_ACKNOWLEDGED.value: 0,
    OutboundStatus.SENT.value: 1,
    OutboundStatus.RETRYING.value: 1,
    OutboundStatus.NOT_DELIVERED.value: 2,
    OutboundStatus.TRANSPORT_ERROR.value: 2,
    OutboundStatus.ACCEPTED.value: 3,
}


def _never_sent(row: MessageRow) -> bool:
    """A copy given up or failed before any attempt went out: the receiver cannot have it."""
    return not row.attempts and row.status in (
        OutboundStatus.NOT_DELIVERED.value,
        OutboundStatus.TRANSPORT_ERROR.value,
    )


# an AppRec Error's V as the code lists define them (8221: E10, E21, T02, X99, ...)
_APPREC_CODE_SHAPE = re.compile(r"[A-Z0-9]{1,8}")


def _apprec_code_shown(code: str) -> str:
    """A partner's AppRec error code as our texts and code columns show it: "?" for one that
    does not look like a code (a V is any text the partner likes, and may quote the message)."""
    return partner_code(code.upper(), _APPREC_CODE_SHAPE)  # "e21" is E21, as the lists say


def _apprec_code_meant(code: str) -> str:
    """A partner's AppRec error code as :func:`_apprec_code_shown` shows it, followed by what
    code list 8221 says it means (``E21 Mottaker finnes ikke``): the list's text is ours, the
    same for every message, and names nobody; the partner's own words (DN, OT) may name the
    patient and stay in the receipt (``--texts``)."""
    shown = _apprec_code_shown(code)
    meaning = code_list(APPREC_ERRORS).text(shown)
    return f"{shown} {meaning}" if meaning else shown


def schedule_apprec_deadline(
    ctx: EngineContext, uow: UnitOfWork, message_id: str, msg_type: str | None
) -> None:
    """After a transport receipt, or after the send of a message that asked for none (no
    AckRequested), expect an AppRec within the deadline for its message type."""
    if msg_type == APPREC:
        return  # an AppRec is never answered with an AppRec
    deadline = ctx.policy.apprec_deadline(msg_type)
    uow.jobs.schedule(
        APPREC_DEADLINE,
        ctx.clock() + deadline,
        message_id=message_id,
        dedup_key=f"{APPREC_DEADLINE}:{message_id}",
    )


def apprec_deadline_job(ctx: EngineContext, job: ClaimedJob) -> None:
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:
        # the message's lock first, then the job's, as an AppRec or Acknowledgment takes them
        # (one that is committing meanwhile is waited for: its status, not the one before it)
        row = uow.messages.get(str(job.message_id), for_update=True)
        uow.jobs.finish(job.id)
        # still sent: it went without AckRequested (with it, the Acknowledgment or the
        # ack-timeout moves it on long before), and neither an AppRec nor a reply came
        unanswered = row is not None and (
            row.status == OutboundStatus.TRANSPORT_ACKNOWLEDGED.value
            or (row.status == OutboundStatus.SENT.value and not _replied_to(uow, row))
        )
        if row is not None and unanswered:
            hours = ctx.policy.apprec_deadline(row.msg_type) / timedelta(hours=1)
            missing = (
                f"no AppRec from {row.to_her_id} for message {row.id} ({row.msg_type}) "
                f"{hours:g} h after its transport receipt"
                if row.status == OutboundStatus.TRANSPORT_ACKNOWLEDGED.value
                else f"no answer from {row.to_her_id} for message {row.id} ({row.msg_type}) "
                f"{hours:g} h after it was sent, neither an AppRec nor a reply (it asked for "
                "no transport receipt: none says that it arrived)"
            )
            raise_alert(
                uow,
                AlertKind.APPREC_MISSING,
                f"{missing}. Ask the receiver whether it reached the patient record.",
                at=now,
                message_id=row.id,
                partner_her_id=row.to_her_id,
            )
            uow.events.record(
                row.id,
                EventKind.NOTE,
                actor="worker",
                code="apprec-missing",
                detail=f"no AppRec within {hours:g} h",
                at=now,
            )
        uow.commit()


def _replied_to(uow: UnitOfWork, row: MessageRow) -> bool:
    """Whether the receiver of the sent ``row`` has sent a reply to it (:func:`_is_reply`)."""
    if row.ebxml_conversation_id is None:
        return False
    received = select(MessageRow).where(
        MessageRow.ebxml_conversation_id == row.ebxml_conversation_id,
        MessageRow.direction == Direction.INBOUND.value,
    )
    return any(_is_reply(row, reply) for reply in uow.session.scalars(received))


def resolve_replied_to(uow: UnitOfWork, received: MessageRow, *, at: datetime) -> None:
    """On storing the received message ``received``: resolve the ``apprec-missing`` alert of
    each message of ours it is a reply to (:func:`_is_reply`) that is still ``sent`` (it went
    without AckRequested), with a NOTE event on that message saying which message answered it.
    The deadline job finds a reply that came before the deadline; one after it (NAV's Svar a
    day late) left the alert open for good, as only an AppRec resolved it.

    On every received message: one SELECT by the conversation index, finding as a rule nothing
    (a message of ours still ``sent`` in that conversation is one without AckRequested, or one
    whose Acknowledgment is on its way)."""
    if received.ebxml_conversation_id is None or not _is_reply_kind(received):
        return
    # as a rule there is none: asked first by a statement prepared once, the ORM's query (and
    # its lock) only when there is (the ORM's query on every received message cost the
    # receiving server 0.5-0.7 ms of its 9 ms per message: docs/PERFORMANCE.md)
    if not uow.messages.sent_in_conversation(received.ebxml_conversation_id):
        return
    # locked as the deadline job locks it: that job, running meanwhile, sees this reply
    # committed, or this receive sees its alert raised (else it would be raised after the
    # reply was looked for, and stay open)
    waiting = (
        select(MessageRow)
        .where(
            MessageRow.ebxml_conversation_id == received.ebxml_conversation_id,
            MessageRow.direction == Direction.OUTBOUND.value,
            MessageRow.status == OutboundStatus.SENT.value,
        )
        .with_for_update(key_share=True)
    )
    for sent in uow.session.scalars(waiting):
        key = f"{AlertKind.APPREC_MISSING}:{sent.id}"
        alert = uow.alerts.by_key(key) if _is_reply(sent, received) else None
        if alert is None or alert.resolved_at is not None:
            continue
        uow.alerts.resolve(key, at=at)
        uow.events.record(
            sent.id,
            EventKind.NOTE,
            actor="msh",
            code="replied",
            detail=f"{received.from_her_id} replied in its conversation after the AppRec "
            f"deadline (received as message {received.id}): apprec-missing resolved",
            at=at,
        )


def _is_reply(sent: MessageRow, received: MessageRow) -> bool:
    """Whether the received message ``received`` answers the message ``sent`` as a reply of
    the receiver's own: in its ebXML conversation, from the HER-id it went to, stored since.
    NAV answers an EgenandelForesporsel with a Svar, in the HTTP response, and no AppRec: the
    EPJ has that answer, so a message sent without AckRequested is not waited for as an AppRec
    is. The one rule for the deadline job (:func:`_replied_to`) and for a reply after the
    deadline (:func:`resolve_replied_to`). An AppRec is no such reply (it answers the message it
    names, by the AppRec path), nor is a message refused (rejected: the EPJ never had it)."""
    return (
        _is_reply_kind(received)
        and sent.ebxml_conversation_id is not None
        and received.ebxml_conversation_id == sent.ebxml_conversation_id
        and sent.direction == Direction.OUTBOUND.value
        and received.direction == Direction.INBOUND.value
        and received.from_her_id == sent.to_her_id
        and received.created_at >= sent.created_at
    )


def _is_reply_kind(received: MessageRow) -> bool:
    """Whether a received message may be a reply at all: not an AppRec, not refused nor purged
    (the EPJ never has either)."""
    return received.msg_type != APPREC and received.status not in _NO_REPLY_STATUSES


_NO_REPLY_STATUSES = frozenset(
    {InboundStatus.REJECTED.value, InboundStatus.MISADDRESSED_PURGED.value}
)


# --- status in the shape of EDI 2.0 ------------------------------------------------------------


def transport_delivery_state(status: str) -> str:
    if status in (OutboundStatus.TRANSPORT_ERROR.value, OutboundStatus.NOT_DELIVERED.value):
        return "Rejected"
    if status in (
        OutboundStatus.ACCEPTED.value,
        OutboundStatus.SENT.value,
        OutboundStatus.RETRYING.value,
    ):
        return "Unconfirmed"
    return "Acknowledged"


# A sent message's transport in words, for people (``meldingstjener status``). The EDI 2.0
# states above are NHN's contract and stay as they are in the API, but "Rejected" lumps a
# partner that refused the message (a MessageError) with one never reached (every attempt a
# connection refused or a 503 until the agreement's retries ran out): read by a help desk as
# "the partner refused it", it sends them to the wrong party.
_TRANSPORT_WORDS = {
    OutboundStatus.ACCEPTED.value: "not sent yet",
    OutboundStatus.SENT.value: "sent, waiting for the partner's Acknowledgment",
    OutboundStatus.RETRYING.value: "not acknowledged yet, being sent again",
    OutboundStatus.TRANSPORT_ERROR.value: "refused by the partner's MSH (a MessageError)",
    OutboundStatus.NOT_DELIVERED.value: (
        "given up: the partner never acknowledged it (not reached, or no answer)"
    ),
}
# the statuses no error leads to: a message's last error kept in one of them is of its sending
# before (an http-503 "next attempt ..." of a message acknowledged since), history. Every other
# status is still being sent (the error is of that sending) or was set with its own error (a
# MessageError's, an AppRec's, the giving up's)
_ERRORLESS_STATUSES = frozenset(
    {OutboundStatus.TRANSPORT_ACKNOWLEDGED.value, OutboundStatus.APPREC_OK.value}
)


def transport_delivery_words(status: str) -> str:
    """What happened to a sent message in transport, in words (its EDI 2.0 state beside)."""
    return _TRANSPORT_WORDS.get(status, "acknowledged by the partner")


def last_error_is_history(status: str) -> bool:
    """Whether a sent message's last error (and the next attempt its text names) is of its
    past: kept in a status no error leads to, shown as history, not as its state now."""
    return status in _ERRORLESS_STATUSES


def receiver_status(ctx: EngineContext, message_id: str) -> list[ReceiverStatus]:
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.get(message_id)
        if row is None or row.direction != Direction.OUTBOUND.value:
            raise AppRecRefused("not-found", f"no sent message {message_id}")
        return [
            ReceiverStatus(
                receiver_her_id=str(row.to_her_id),
                transport_delivery_state=transport_delivery_state(row.status),
                app_rec_status=API_APPREC_STATUS.get(row.status),
            )
        ]


def apprec_info(ctx: EngineContext, message_id: str) -> list[AppRecInfo]:
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.get(message_id)
        if row is None:
            raise AppRecRefused("not-found", f"no message {message_id}")
        received = [
            r
            for r in uow.receipts.for_message(message_id)
            if r.kind == "apprec" and r.direction == "in"
        ]
    return [
        AppRecInfo(
            receiver_her_id=str(row.to_her_id),
            app_rec_status=_API_STATUS_BY_CODE.get(str(r.apprec_status), "Rejected"),
            errors=tuple(
                (str(e.get("code")), str(e.get("text") or "")) for e in r.error_codes or []
            ),
            received_at=r.at,
            error_ots=tuple(e.get("ot") or None for e in r.error_codes or []),
        )
        for r in received
    ]
