"""The outbound pipeline: accept a fagmelding for a receiver and make it ready to send.

accept -> validate -> find the receiver and our agreement -> check that the MsgHead HER-ids agree
with the envelope -> encrypt to the receiver's certificate -> build and sign the envelope ->
store (payload, wire form, message row, transmit job) in one commit. Sending, waiting for the
Acknowledgment and retrying happen in :mod:`.transmit`, driven by jobs in the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from meldingstjener.ebxml import (
    ManifestReference,
    MessageHeader,
    Party,
    build_envelope,
    new_message_id,
)
from meldingstjener.ebxml.mime import new_content_id
from meldingstjener.engine import payload_io
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import Partner, PartnerUnknown
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.fagmelding import Fagmelding, inspect
from meldingstjener.engine.routing import APPREC, names_for, names_of
from meldingstjener.engine.trust import certificate_problem
from meldingstjener.model import Direction, InboundStatus
from meldingstjener.registry.agreements import (
    ANSWER_EVENT,
    TEST_MESSAGE_EVENT,
    AgreementState,
    NotAgreed,
    test_message_detail,
)
from meldingstjener.registry.policy import check_agreement
from meldingstjener.store.payloads import PayloadSource, source_sha256, source_size
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import EventKind, SendingView, UnitOfWork

PAYLOAD_CONTENT_TYPE = payload_io.PAYLOAD_CONTENT_TYPE
MAX_PAYLOAD_BYTES = 35 * 1024 * 1024
TRANSMIT = "transmit"


def submit(
    ctx: EngineContext,
    payload: PayloadSource,
    *,
    to_her_id: str | None = None,
    actor: str,
    client_id: str | None = None,
    on_stored: Callable[[UnitOfWork, MessageRow], None] | None = None,
    inspected: Fagmelding | None = None,
    also_stored: Callable[[UnitOfWork, MessageRow], None] | None = None,
    idempotency_key: str | None = None,
    may_answer: Callable[[str], bool] | None = None,
    request_digest: str | None = None,
    answering: str | None = None,
    test_message: bool = False,
    conversation_id: str | None = None,
) -> str:
    """Accept ``payload`` (bytes, or a file: a path or a spool, which is kept without a copy)
    for sending; return our message id. Raises :class:`SubmitRejected`.

    ``inspected`` is ``inspect(payload)`` when the caller has already read it (the API does, to
    check whom the client may send as): a fagmelding is parsed and validated once, not twice.

    ``on_stored`` runs in the same transaction that stores the message, so a caller's own
    bookkeeping (an AppRec marking the message it answers) commits with it or not at all; it
    replaces the marking done for an AppRec posted from outside. ``also_stored`` runs in that
    transaction too, besides that marking (the API's audit row).

    ``idempotency_key`` (the API's ``Idempotency-Key``, prefixed with the client): a submit
    that carries the key of a stored message returns that message instead of sending again, so
    a client may retry a request whose answer it never got. The same key with another request
    is refused (``idempotency-key-reused``): with ``request_digest`` (the caller's digest of all
    it was asked, kept with the message), another digest; without it, another business message.

    ``may_answer``: for an AppRec posted from outside, whether its client may act for the
    HER-id of the message it answers (see ``receipts.mark_answered_by_document``).

    ``answering``: the id of the received message an answer of the server's is for (its
    ``on_stored`` marks that one): the answer continues that message's conversation.

    ``test_message`` (``send --test``): the operator says the message is a test message, which
    its MsgHead must say itself (ProcessingStatus D, see :func:`_is_test_message`). A test
    message may go to a partner whose agreement is in testing or verified-inactive, and so may
    an answer (``answering``, or an AppRec or DIALOG_AVVIK about a message received from the
    receiver, see :func:`_is_answer`).
    While the agreement is not active such a message is marked so in its log (the events
    ``test-message``, ``answer-in-onboarding``): its sends go on by them, and a test message
    with an Acknowledgment and a positive AppRec verifies the partner
    (``agreements.verified_test_exchange``).

    ``conversation_id``: the ebXML ConversationId to go in, when the caller knows it (a message
    sent again by :mod:`.resend` continues the conversation of the copy it replaces); else the
    one of the message answered, or the MsgHead's.
    """
    if idempotency_key is not None:
        earlier = _submitted_with(ctx, idempotency_key, payload, request_digest)
        if earlier is not None:
            return earlier
    size = source_size(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise SubmitRejected(
            "too-large",
            f"the business message is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
        )
    message = inspected or inspect(
        payload, ctx.policy.schema_dir, max_bytes=ctx.policy.max_xml_bytes
    )
    if not message.valid:
        raise SubmitRejected(
            "invalid-message",
            "the business message is not valid; nothing was sent",
            message.problem_lines(),
        )
    sender_her, receiver_her = _addressing(ctx, message, to_her_id)
    test = _is_test_message(message, declared=test_message)
    with ctx.store.unit_of_work() as uow:
        try:
            partner = ctx.directory.partner(uow, receiver_her, our_her_id=sender_her)
        except PartnerUnknown as exc:
            code = "unknown-receiver" if exc.what == "no communication party" else "no-agreement"
            raise SubmitRejected(code, f"cannot send to {receiver_her}: {exc}") from None
        answered = _answered(uow, message, sender_her, receiver_her, answering)
        conventional = names_for(message.msg_type, answered_type=answered.msg_type)
        answer = _is_answer(message, answered, test)
        try:
            # the agreement the directory found: our organisation's covers its services
            binding = check_agreement(
                ctx.directory.agreement(uow, partner.our_her_id, receiver_her),
                partner.our_her_id,
                receiver_her,
                message.msg_type,
                _version_of(message),
                test_message=test,
                answer=answer,
                now=ctx.clock(),
                namespaces=message.namespaces,
                answered_service=answered.service if message.msg_type == APPREC else None,
                conversation_service=answered.service,
                preferred_roles=(conventional.from_role, conventional.to_role),
            )
        except NotAgreed as exc:
            raise SubmitRejected(exc.code, f"not sent to {receiver_her}: {exc}") from None
    _check_partner(ctx, partner, message)

    now = ctx.clock()
    assert partner.encryption_certificate is not None  # checked in _check_partner
    content_id = new_content_id(ctx.host)
    names = names_of(binding) if binding is not None else conventional
    header = MessageHeader(
        from_party=Party(sender_her, names.from_role),
        to_party=Party(receiver_her, names.to_role),
        cpa_id=partner.cpa_id,
        conversation_id=conversation_id
        or answered.conversation_id
        or message.ref_to_conversation
        or message.msg_id
        or str(uuid.uuid4()),
        service=names.service,
        service_type=names.service_type,
        action=names.action,
        message_id=new_message_id(ctx.host),
        timestamp=now,
        description=ctx.description(),
    )
    route = partner.route(binding)  # the channel and the envelope's flags, by one rule
    if route.endpoint is None:
        raise SubmitRejected("no-agreement", f"no endpoint is known for {partner.her_id}")
    root = build_envelope(
        header,
        manifest=[ManifestReference.for_content_id(content_id, "Encrypted business message")],
        ack_requested=route.ack_requested,
        sync_reply=route.sync_reply,
        duplicate_elimination=route.duplicate_elimination,
    )
    body, content_type = payload_io.seal(
        ctx,
        payload,
        partner.encryption_certificate,
        root,
        content_id,
        transfer_encoding="binary" if route.channel == "http" else "base64",
        gzip=binding is not None and binding.gzip,
    )
    payload_ref, wire_ref = ctx.store.payloads.put_all(payload, body)
    row = MessageRow(
        direction=Direction.OUTBOUND.value,
        channel=route.channel,
        environment=ctx.policy.environment,
        ebxml_message_id=header.message_id,
        ebxml_conversation_id=header.conversation_id,
        cpa_id=header.cpa_id,
        ebxml_service=header.service,
        ebxml_action=header.action,
        from_her_id=sender_her,
        to_her_id=receiver_her,
        payload_ref=payload_ref.key,
        payload_size=payload_ref.size,
        payload_sha256=payload_ref.sha256,
        wire_ref=wire_ref.key,
        wire_content_type=content_type,
        encrypted_to_sha256=partner.encryption_sha256,
        expires_at=now + partner.persist_duration,
        next_attempt_at=now,
        client_id=client_id,
        idempotency_key=idempotency_key,
        idempotency_digest=request_digest if idempotency_key is not None else None,
        **message.row_fields(),
    )
    committing = False
    try:
        with ctx.store.unit_of_work() as uow:
            uow.messages.add(
                row, actor=actor, detail=f"accepted for {receiver_her} ({partner.name})", at=now
            )
            # a new message cannot have changed before its first send: the worker is told what
            # it would otherwise read back
            sending = SendingView(
                id=row.id,
                status=row.status,
                from_her_id=sender_her,
                to_her_id=receiver_her,
                wire_ref=wire_ref.key,
                wire_content_type=content_type,
                ebxml_message_id=header.message_id,
                attempts=row.attempts or 0,
                expires_at=row.expires_at,
                ebxml_service=header.service,
                ebxml_action=header.action,
                msg_type=row.msg_type,
                encrypted_to_sha256=row.encrypted_to_sha256,
            )
            ctx.schedule_now(
                uow,
                TRANSMIT,
                message_id=row.id,
                dedup_key=f"{TRANSMIT}:{row.id}",
                sending=sending,
            )
            if on_stored is not None:
                on_stored(uow, row)
            elif message.msg_type == APPREC:
                from meldingstjener.engine.receipts import mark_answered_by_document  # (cycle)

                mark_answered_by_document(ctx, uow, row, message, may_answer)
            if also_stored is not None:
                also_stored(uow, row)
            if partner.agreement_state != AgreementState.ACTIVE.value:
                marks = _onboarding_marks(partner, receiver_her, route.ack_requested, test, answer)
                _mark_onboarding(uow, row, marks, now)
            committing = True
            uow.commit()
    except IntegrityError:
        if idempotency_key is None:
            raise
        # the same key in two requests at once: the other one stored its message first
        try:
            earlier = _submitted_with(ctx, idempotency_key, payload, request_digest)
        finally:
            ctx.store.payloads.discard(payload_ref, wire_ref)
        if earlier is None:
            raise
        return earlier
    except BaseException:
        # Refused inside the transaction (an answer that lost the race, an AppRec its client
        # may not send): nothing refers to the files. A failed commit may have stored the row
        # all the same, so then they stay (the payload sweep takes them if it did not).
        if not committing:
            ctx.store.payloads.discard(payload_ref, wire_ref)
        raise
    ctx.notify_workers(uow)
    return row.id


def _submitted_with(
    ctx: EngineContext, idempotency_key: str, payload: PayloadSource, request_digest: str | None
) -> str | None:
    """The message stored under ``idempotency_key``, if any, when it was asked for by this same
    request; SubmitRejected when by another one.

    The same request: the same ``request_digest`` when the caller gives one and the message
    kept one; else (a caller that gives none, a message stored before digests were kept) the
    same business message. A business message alone is not the request: the same document to
    another receiver, under the same key, would be answered with a message that never went
    there."""
    with ctx.store.unit_of_work() as uow:
        earlier = uow.session.execute(
            select(MessageRow.id, MessageRow.payload_sha256, MessageRow.idempotency_digest).where(
                MessageRow.direction == Direction.OUTBOUND.value,
                MessageRow.idempotency_key == idempotency_key,
            )
        ).first()
    if earlier is None:
        return None
    if request_digest is not None and earlier.idempotency_digest is not None:
        same = earlier.idempotency_digest == request_digest
    else:
        same = earlier.payload_sha256 is None or earlier.payload_sha256 == source_sha256(payload)
    if not same:
        raise SubmitRejected(
            "idempotency-key-reused",
            "this Idempotency-Key was used for another request (another business message, "
            "receiver or ebXML overrides); use a new key for each new message",
        )
    return str(earlier.id)


@dataclass(frozen=True)
class _Answered:
    """The received message a submitted one answers (an AppRec's original, else the MsgHead's
    parent in the conversation): its MsgHead type, the Service it came in and its ebXML
    ConversationId, which the answer continues (ebMS ties one exchange's messages by it)."""

    msg_type: str | None = None
    service: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None  # the received message's id: None when it answers none


def _answered(
    uow: UnitOfWork,
    message: Fagmelding,
    sender_her: str,
    receiver_her: str,
    answering: str | None = None,
) -> _Answered:
    """``answering``: the id of the received message the answer is for, when the caller knows
    it (``receipts.send_apprec``); else the one ``receipts.answered_copy`` finds, as an AppRec
    document is marked by it (the same MsgId may have come to us more than once: as a copy to
    another of our HER-ids, or sent again), never one from another sender."""
    from meldingstjener.engine.receipts import answered_copy  # (cycle)

    if message.msg_type == APPREC:
        answered = message.apprec_original_msg_id
    else:
        answered = message.ref_to_parent
    original = uow.messages.get(answering) if answering is not None else None
    if original is None and answered:
        rejects = message.msg_type == APPREC and message.apprec_status == "2"
        original, _ = answered_copy(
            uow,
            answered,
            their_her_id=receiver_her,
            our_her_ids=(sender_her, message.sender.service, message.sender.person),
            target=InboundStatus.REJECTED if rejects else InboundStatus.APPREC_SENT,
        )
    if original is None:
        return _Answered()
    # only an AppRec is named after what it answers (the convention's S-<type>/APPREC)
    answered_type = original.msg_type if message.msg_type == APPREC else None
    return _Answered(
        answered_type, original.ebxml_service, original.ebxml_conversation_id, original.id
    )


# Our answers about a received message (receipts): an AppRec, or a DIALOG_AVVIK after a
# positive AppRec had gone out (``receipts.report_misaddressed``).
_RECEIPT_TYPES = frozenset({APPREC, "DIALOG_AVVIK"})


def _is_answer(message: Fagmelding, answered: _Answered, test: bool) -> bool:
    """Whether ``message`` goes as an answer while the agreement is testing or
    verified-inactive: it answers a message received from the partner (``answered``) and is a
    receipt of ours about it, or is itself a test message. Any other message that refers to
    one received (a production dialog note with a RefToParent) is a production message and
    waits for the agreement to be active like any other."""
    if answered.message_id is None:
        return False
    return message.msg_type in _RECEIPT_TYPES or test


def _is_test_message(message: Fagmelding, *, declared: bool) -> bool:
    """Whether ``message`` is a test message: its MsgHead says so (MsgInfo/ProcessingStatus
    V="D", Debugging, as the samsvar test messages do). ``declared`` (``send --test``) asks that
    it does: a message the operator sends as a test whose MsgHead says production (V="P") or
    nothing is refused, for only the document tells the partner it is a test (its EPJ may
    import one without ProcessingStatus D as production), and the MsgHead is the EPJ's
    (signed) document, which is not rewritten here."""
    head = message.report.msghead
    status = head.msg_info.processing_status if head is not None else None
    code = status.v if status is not None else None
    if declared and code != "D":
        production = code == "P"
        raise SubmitRejected(
            "test-message-in-production" if production else "test-message-not-marked",
            "the message is sent as a test message but its MsgHead "
            + ("says it is production (ProcessingStatus P)" if production else "does not say so")
            + "; set ProcessingStatus D in the EPJ, or send it without --test; nothing was sent",
        )
    return code == "D"


def _onboarding_marks(
    partner: Partner, their_her_id: str, ack_requested: bool, test: bool, answer: bool
) -> list[tuple[str, str]]:
    """The (code, detail) marks of a message sent while the agreement is not active: a test
    message's names the agreement it goes under (``partner.our_her_id``, our organisation's
    for a service without one of its own) and whether it asks for an Acknowledgment."""
    state = partner.agreement_state
    marks: list[tuple[str, str]] = []
    if test:
        detail = test_message_detail(
            partner.our_her_id, their_her_id, state, ack_requested=ack_requested
        )
        marks.append((TEST_MESSAGE_EVENT, detail))
    if answer:
        marks.append((ANSWER_EVENT, f"sent as an answer while the partner agreement is {state}"))
    return marks


def _mark_onboarding(
    uow: UnitOfWork, row: MessageRow, marks: list[tuple[str, str]], now: datetime
) -> None:
    """Mark in the message's log why it may go while the agreement is not active: each send
    reads the marks again (``transmit._refusal``), and a marked test message that got its
    receipts verifies the partner (``agreements.verified_test_exchange``)."""
    for code, detail in marks:
        uow.events.record(row.id, EventKind.NOTE, actor="msh", code=code, detail=detail, at=now)


def _version_of(message: Fagmelding) -> str | None:
    """The business-content version an agreement speaks of (e.g. "1.0" of Dialogmelding 1.0)."""
    if message.report.content is None:
        return None
    numbers = [part for part in message.report.content.split() if part[:1].isdigit()]
    return numbers[0] if numbers else None


def _addressing(ctx: EngineContext, message: Fagmelding, to_her_id: str | None) -> tuple[str, str]:
    """(our HER-id, their HER-id) for the envelope; they must agree with the MsgHead.

    Theirs is the MsgHead's receiver (organisation or service), or, when ``to_her_id`` names
    one, a copy receiver (OtherReceiver): an EPJ posts a message once per receiver, and the
    copy goes to that receiver, as the inbound side accepts it."""
    sender_her = message.sender.communication_party
    if sender_her is None or sender_her not in ctx.own_her_ids:
        raise SubmitRejected(
            "inconsistent-addressing",
            f"the sender HER-id in the message ({sender_her or 'none'}) is not one of ours "
            f"({', '.join(sorted(ctx.own_her_ids)) or 'none configured'})",
        )
    in_message = {message.receiver.organisation, message.receiver.service} - {None}
    receiver_her = to_her_id or message.receiver.communication_party
    if receiver_her is None:
        raise SubmitRejected("inconsistent-addressing", "the message names no receiver HER-id")
    copy = to_her_id is not None and to_her_id in message.copy_receivers
    if receiver_her not in in_message and not copy:
        copies = sorted(message.copy_receivers)
        raise SubmitRejected(
            "inconsistent-addressing",
            f"the receiver {receiver_her} does not agree with the message, which is addressed to "
            f"{' / '.join(sorted(str(h) for h in in_message)) or 'nobody'}"
            + (f" with copies to {', '.join(copies)}" if copies else ""),
        )
    return str(sender_her), str(receiver_her)


def _check_partner(ctx: EngineContext, partner: Partner, message: Fagmelding) -> None:
    if partner.agreement_state == "suspended":
        raise SubmitRejected(
            "not-agreed", f"the agreement with {partner.her_id} is suspended; nothing was sent"
        )
    unusable = partner.unusable_because(ctx.clock())
    if unusable is not None:
        raise SubmitRejected(
            "receiver-inactive",
            f"cannot send to {partner.her_id} ({partner.name}): it {unusable}; nothing was "
            "sent. Choose another receiver, or send when the register has it active again",
        )
    if partner.encryption_certificate is None:
        raise SubmitRejected(
            "certificate-problem", f"no encryption certificate is known for {partner.her_id}"
        )
    problem = certificate_problem(
        ctx.validator,
        partner.encryption_certificate,
        "encryption",
        ctx.clock(),
        store=ctx.store,
        instance=ctx.instance,
    )
    if problem is not None:
        raise SubmitRejected(
            "certificate-problem",
            f"the encryption certificate of {partner.her_id} is not acceptable: {problem}",
        )
