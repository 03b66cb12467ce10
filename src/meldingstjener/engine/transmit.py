"""Sending and resending: the ``transmit`` and ``ack-timeout`` jobs.

A send that reaches the partner moves the message to ``sent`` and schedules an ``ack-timeout``
one RetryInterval later. If neither Acknowledgment nor MessageError has arrived by then, the same
wire bytes (same MessageId, so the partner's duplicate elimination works) are sent again, up to
``Retries`` resends and never past ``PersistDuration``. Then the message is ``not-delivered`` and
an alert tells the operator that the content must reach the receiver another way; or, when the
receiver's server took one or more of its attempts (an HTTP 2xx: only the Acknowledgment did not
come back), or a mail server took one that did not come back as undeliverable, or an attempt
failed only after the whole message was sent (a time-out or a broken connection while waiting
for the answer), to ask the receiver whether it arrived before sending it again
(:class:`AttemptsTaken`).

Before each send, first or resend, the checks submit made are made again (:func:`_refusal`): a
message queued while its receiver was down must not go out once the agreement has ended or no
longer takes its type, the register has the receiver inactive, or the encryption certificate
the payload was encrypted to has been revoked or has expired (the ciphertext is not made again
here: the EPJ sends the message again). Those give up at once, as an agreement set to ended
does; an agreement that exists but is not active (ordered, testing, verified-inactive,
suspended: the operator's state, which moves on) holds a message its state does not let
through (``agreements.send_decision``), checked again every RetryInterval until
PersistDuration. So does a certificate whose revocation could not be found out under
``revocation_policy = "hard"`` (the CA's CRL and OCSP away: a state that passes; event
``revocation-unknown``), checked again after ``REVOCATION_RECHECK`` (five minutes) when the
RetryInterval is longer: one failed request must not hold the queue for a RetryInterval (12 hours
for a ``[[partners]]`` agreement) after the CA answers again. A message encrypted to a
certificate the receiver has replaced since goes, with a note (see :func:`_certificate_refusal`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Literal

from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.directory import Partner, PartnerUnknown
from meldingstjener.engine.mail_bounces import bounce_alert_key
from meldingstjener.engine.receipts import schedule_apprec_deadline
from meldingstjener.engine.routing import APPREC, names_for
from meldingstjener.engine.trust import REVOCATION_RECHECK, certificate_problem
from meldingstjener.model import Direction, OutboundStatus, allowed_next
from meldingstjener.registry.agreements import (
    ANSWER_EVENT,
    TEST_MESSAGE_EVENT,
    AgreementState,
    NotAgreed,
    PartnerAgreement,
    choose_binding,
    send_decision,
)
from meldingstjener.registry.policy import check_agreement
from meldingstjener.registry.terms import AgreedMessage
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import (
    WAITING_TO_BE_SENT,
    ClaimedJob,
    EventKind,
    MessageState,
    SendingView,
    UnitOfWork,
)
from meldingstjener.transport.base import (
    Delivery,
    TransportFailure,
    TransportResult,
    send_once,
)

log = logging.getLogger(__name__)

TRANSMIT = "transmit"
ACK_TIMEOUT = "ack-timeout"
_SENDABLE = WAITING_TO_BE_SENT
# The codes a message is held with (:func:`_hold`): its agreement suspended, or in a state of
# onboarding that does not let it through; its receiver's certificate whose revocation could
# not be found out. ``status`` tells a message whose newest event is one of these as held.
AGREEMENT_SUSPENDED = "agreement-suspended"
AGREEMENT_NOT_ACTIVE = "agreement-not-active"
REVOCATION_UNKNOWN = "revocation-unknown"
HOLDS: Final = frozenset({AGREEMENT_SUSPENDED, AGREEMENT_NOT_ACTIVE, REVOCATION_UNKNOWN})
# what a hold's detail says last: the time of the check it was written for (see hold_reason)
_CHECKED_AGAIN = "; checked again "


def _attempt_allowed(row: MessageRow | MessageState, partner: Partner, at: datetime) -> bool:
    """Whether the agreement allows another attempt at ``at``: not after Retries resends, and
    not at or after PersistDuration (how long the receiver remembers the MessageId to eliminate
    duplicates: a send then could be delivered twice)."""
    if row.attempts > partner.retries:
        return False
    return row.expires_at is None or at < row.expires_at


def _next_attempt(
    row: MessageRow | MessageState, partner: Partner, now: datetime
) -> datetime | None:
    """When to try again after a failed send, or None when the agreement allows no more."""
    due = now + partner.retry_interval
    return due if _attempt_allowed(row, partner, due) else None


def _give_up(
    uow: UnitOfWork, row: MessageRow, partner_name: str, reason: str, now: datetime
) -> None:
    taken = attempts_taken(uow, row)
    uow.messages.set_status(
        row,
        OutboundStatus.NOT_DELIVERED.value,
        actor="worker",
        code="not-delivered",
        detail=f"given up after {row.attempts} attempt(s): {reason}{taken.event_words()}",
        at=now,
    )
    uow.jobs.cancel_for_message(row.id)
    # the message's fate is this alert's now; a bounce of it by mail is part of its story
    uow.alerts.resolve(bounce_alert_key(row.id), at=now)
    raise_alert(
        uow,
        AlertKind.NOT_DELIVERED,
        taken.alert_words(row, partner_name, reason),
        at=now,
        message_id=row.id,
        partner_her_id=row.to_her_id,
    )
    _resolve_unreachable_given_up(uow, row, now)


@dataclass(frozen=True)
class AttemptsTaken:
    """What the receiving side took of a message given up, by its attempts' outcomes: the one
    rule the not-delivered alert and the give-up's event (the message's last error, which
    ``status`` and ``show`` print) both follow.

    ``count``: the attempts whose send worked (:func:`transmit_job` logs each as an ``attempt``
    event without a code; a failed one has its failure's code). ``unsure``: the attempts that
    failed after the whole message was sent (``TransportFailure.maybe_delivered``: a time-out
    or a broken connection while waiting for the answer, a 2xx whose answer was too slow or
    too large; their code ends in ``-after-send``, :func:`_failed`): whether the receiver took
    them is not known. What ``count`` says depends on the
    channel they went by (``channel``, the message's: that of its last delivered attempt):
    over HTTP the receiver's MSH answered 2xx, it took the message, and only its Acknowledgment
    did not come back (a broken path of signals to us): the receiver very likely has it, and a
    resend would be a duplicate in its EPJ. By mail our mail server took it, which says nothing
    of its arrival; ``bounced`` counts the mails returned as undeliverable
    (``engine.mail_bounces``): when every mail handed over came back, none arrived."""

    count: int
    channel: str | None
    bounced: int
    unsure: int = 0

    @property
    def maybe_received(self) -> bool:
        return self.count + self.unsure > self.bounced

    def words(self) -> str:
        """What the receiving side took, and to ask the receiver before sending it again."""
        ask = "ask the receiver whether it arrived before sending it again"
        unsure = (
            f"{self.unsure} attempt{'s' if self.unsure != 1 else ''} ended after the whole "
            "message was sent (a time-out or a broken connection while waiting for the "
            "answer), so whether it reached the receiver is not known"
        )
        if not self.count:
            return f"{unsure}: {ask}"
        also = f", and {unsure}" if self.unsure else ""
        times = f"{self.count} time{'s' if self.count != 1 else ''}"
        if self.channel == "http":
            return (
                f"the receiver's server took it {times} (HTTP 2xx) but no Acknowledgment came "
                f"back{also}: {ask}"
            )
        server = "the mail server" if self.channel == "smtp" else "the transport"
        returned = f", {self.bounced} came back as undeliverable" if self.bounced else ""
        if not self.unsure:
            also = ", so whether it reached the receiver is not known"
        return f"{server} took it {times}{returned} but no Acknowledgment came back{also}: {ask}"

    def event_words(self) -> str:
        """What follows the reason in the give-up's event (nothing when nobody took it)."""
        return f"; {self.words()}" if self.maybe_received else ""

    def alert_words(self, row: MessageRow, partner_name: str, reason: str) -> str:
        """The ``not-delivered`` alert's summary (no patient data: ids, names and codes)."""
        message = f"message {row.id} ({row.msg_type}) to {row.to_her_id} ({partner_name})"
        if not self.maybe_received:
            if handed := self.count + self.unsure:  # every mail handed over came back
                reason += f"; each of the {handed} mails handed over came back as undeliverable"
            return (
                f"{message} was NOT delivered: {reason}. No transport receipt arrived. The "
                "content must reach the receiver another way (for example phone or paper), or "
                "be sent again once the receiver can be reached: meldingstjener resend "
                f"{row.id}"
            )
        words = self.words()
        resend = f"a resend (meldingstjener resend {row.id})"
        if self.channel == "http" and self.count:
            duplicate = f"It very likely did: {resend} would then be a duplicate in its EPJ."
        else:
            duplicate = f"If it did, {resend} would be a duplicate in its EPJ."
        check = (
            "that the partner's signals can reach this server"
            if self.count
            else "that the partner's server answers within the time-out"
        )
        return (
            f"{message} was given up without an Acknowledgment: {reason}. "
            f"{words[0].upper()}{words[1:]}. {duplicate} Check {check}."
        )


# the code of the event engine.mail_bounces records for a mail returned as undeliverable
_BOUNCED = "mail-bounced"
# what ends the code of an attempt's event when it failed after the whole message was sent
# (``TransportFailure.maybe_delivered``: ``timeout-after-send``, ``connection-lost-after-send``)
AFTER_SEND = "-after-send"


def attempts_taken(uow: UnitOfWork, row: MessageRow) -> AttemptsTaken:
    """The attempts of ``row`` that the receiving side took, from its log (read at a give-up
    only: no statement on the path of a send)."""
    count = bounced = unsure = 0
    for event in uow.events.for_message(row.id):
        if event.kind == EventKind.ATTEMPT and event.code is None:
            count += 1
        elif event.kind == EventKind.ATTEMPT and str(event.code).endswith(AFTER_SEND):
            unsure += 1
        elif event.code == _BOUNCED:
            bounced += 1
    channel = row.channel if row.sent_endpoint is not None else None
    return AttemptsTaken(count, channel, bounced, unsure)


def _resolve_unreachable_given_up(uow: UnitOfWork, row: MessageRow, at: datetime) -> None:
    """After ``row`` was given up: when no other message to its receiver waits to be sent,
    resolve the receiver's open ``partner-unreachable`` alerts, each saying why.

    Such an alert says that messages are kept and resent; with none left to resend it is no
    longer something to act on (each message given up has its ``not-delivered`` alert, which
    tells that the content must reach the receiver another way), and only a send that works
    would resolve it, so it stayed open until closed by hand. While another message to that
    receiver waits (from any of our HER-ids, to any of its endpoints: a CPA's other channel
    too), or waits for its Acknowledgment (``sent`` with its ``ack-timeout`` job: resent when
    it does not come), the alerts stay: the endpoint that failed may be the one that message
    goes to. A message sent without AckRequested (a CPA's ackRequested never) stays ``sent``
    for good with no such job: nothing resends it, so it does not keep the alerts open.

    The queue to the receiver is held first (PostgreSQL): of two messages given up at once,
    each would see the other still waiting (not committed), and neither resolve; held, the
    second to commit reads after the first's commit."""
    receiver = str(row.to_her_id)
    uow.messages.hold_queue_to(receiver)
    if uow.messages.waits_to_be_sent(receiver, other_than=row.id, ack_timeout_kind=ACK_TIMEOUT):
        return
    uow.alerts.resolve_all_for_partner(
        AlertKind.PARTNER_UNREACHABLE.value,
        receiver,
        resolution=(
            f"Resolved {at:%Y-%m-%d %H:%M} UTC: no message to {receiver} waits to be sent any "
            f"more; the last one ({row.id}) was given up, see its not-delivered alert. The "
            "endpoint was not found reachable again: the next message to this partner tells."
        ),
        at=at,
    )


def _give_up_before_sending(
    uow: UnitOfWork, message_id: str, partner_name: str, reason: str, now: datetime
) -> None:
    """Give up on a message under its lock, unless it was acknowledged or given up meanwhile."""
    row = uow.messages.get(message_id, for_update=True)
    assert row is not None
    if row.status in _SENDABLE:
        _give_up(uow, row, partner_name, reason, now)
    uow.commit()


def _refusal(
    ctx: EngineContext, uow: UnitOfWork, partner: Partner, view: SendingView, now: datetime
) -> tuple[Literal["hold", "give-up"], str] | None:
    """Why the message may not go to ``partner`` now, by the checks submit makes on what the
    store holds (the same functions, on the same cached reads: the partner and its agreement):
    None when it may; ("hold", why) while the agreement's state holds it (see
    ``agreements.send_decision``: a production message while the agreement is ordered,
    testing, verified-inactive or suspended); ("give-up", why) when the agreement has ended (its
    state, or a CPA's end), no longer takes the message (its MsgHead type, or for an agreement
    with bindings the envelope's Service and Action), or the register has the receiver
    inactive. The receiver's certificate is checked by :func:`_certificate_refusal`, outside
    the unit of work. No patient data in the reasons."""
    agreement = ctx.directory.agreement(uow, partner.our_her_id, partner.her_id)
    checked = agreement
    decision = "send"
    if agreement is not None and agreement.state is not AgreementState.ACTIVE:
        marks: set[str | None] = set()
        if agreement.state in (AgreementState.TESTING, AgreementState.VERIFIED_INACTIVE):
            # what submit marked the message as while the agreement was not active
            marks = {e.code for e in uow.events.for_message(view.id)}
        decision = send_decision(
            agreement.state,
            test_message=TEST_MESSAGE_EVENT in marks,
            answer=ANSWER_EVENT in marks,
        )
        if decision == "give-up":
            return "give-up", f"the partner agreement with {partner.her_id} has ended"
        # a held or let-through message: whatever else the agreement says, its end, still counts
        checked = replace(agreement, state=AgreementState.ACTIVE)
    # the rule submit chose a binding by: a message of an agreement that takes any type (with
    # its bindings kept) went by the convention's names, not a binding's
    bound = checked is not None and checked.bound
    try:
        check_agreement(
            checked,
            partner.our_her_id,
            partner.her_id,
            # an agreement with bindings chose the envelope's names by the document, which a
            # send does not read: its binding is looked for by those names below
            None if bound else view.msg_type,
            None,
            now=now,
        )
    except NotAgreed as exc:
        return "give-up", f"the partner agreement no longer allows sending to it ({exc})"
    named = view.ebxml_service is not None and view.ebxml_action is not None
    if bound and named and _binding(checked, view) is None:
        return "give-up", (
            f"the partner agreement no longer has the binding {view.ebxml_service}/"
            f"{view.ebxml_action} the message was made for"
        )
    unusable = partner.unusable_because(now)
    if unusable is not None:
        return "give-up", f"the receiver {unusable}"
    if decision == "hold" and agreement is not None:
        return "hold", (
            f"the agreement with {partner.her_id} ({partner.name}) is {agreement.state.value}"
        )
    return None


def _binding(agreement: PartnerAgreement | None, view: SendingView) -> AgreedMessage | None:
    """The agreement's binding the message goes by, found again by its envelope's Service and
    Action (a send does not read the document whose namespace chose it): by
    :func:`choose_binding`, so that of several bindings of that Service and Action the one
    submit chose (the convention's roles, else the agreement's first) gives the route. None
    for an agreement that is not bound (its messages follow the convention)."""
    service, action = view.ebxml_service, view.ebxml_action
    if agreement is None or not agreement.bound or service is None or action is None:
        return None
    roles = None
    if view.msg_type is not None and view.msg_type != APPREC:
        conventional = names_for(view.msg_type)
        roles = (conventional.from_role, conventional.to_role)
    binding, _ = choose_binding(agreement, action, answered_service=service, preferred_roles=roles)
    if binding is None or (binding.service, binding.message_type) != (service, action):
        return None  # one whose Action differs only in case is not the one the message names
    return binding


def _certificate_refusal(
    ctx: EngineContext, partner: Partner, view: SendingView, now: datetime
) -> tuple[tuple[Literal["hold", "give-up"], str] | None, str | None]:
    """Whether the message may go to ``partner`` for the encryption certificate its payload was
    encrypted to: (("give-up", why), None) when it may not; (("hold", why), None) when that
    cannot be told now; (None, a note for the message's events) when it goes although that
    certificate is no longer the receiver's; (None, None) when it goes. Run with no unit of
    work open: the validator may fetch CRLs and ask OCSP responders over the network, for
    seconds, and a unit of work holds SQLite's write lock (or a pooled PostgreSQL connection
    idle in its transaction) meanwhile.

    The certificate the payload was encrypted to is checked when the party still has it (the
    directory keeps its current encryption certificate only): revoked, expired or otherwise
    refused gives the message up; refused only because whether it is revoked could not be found
    out (hard policy, the CA's services away) holds it, as a suspended agreement does: the
    outage may pass before PersistDuration. One the receiver has replaced since is not known
    here any more, and is not checked: the message goes (during a rollover the old key normally
    still decrypts), and a note (``encrypted-to-replaced``) says so; a receiver that cannot
    decrypt it answers with a MessageError, which ends it as transport-error. Giving it up
    instead would lose an AppRec of ours for good (the message it answers cannot be answered
    again). A message stored before the certificate was recorded
    (``encrypted_to_sha256`` None) has the receiver's current certificate checked."""
    current = partner.encryption_sha256
    if current is None:
        return ("give-up", "no encryption certificate is known for the receiver any more"), None
    encrypted_to = view.encrypted_to_sha256
    if encrypted_to is not None and encrypted_to != current:
        return None, (
            "the payload was encrypted to an encryption certificate of the receiver (SHA-256 "
            f"{encrypted_to[:16]}...) that the register has replaced since (by {current[:16]}"
            "...); sent anyway, as the receiver normally still holds the old key during a "
            "rollover: it answers with a MessageError if it cannot decrypt the message"
        )
    assert partner.encryption_certificate is not None
    problem = certificate_problem(
        ctx.validator,
        partner.encryption_certificate,
        "encryption",
        now,
        store=ctx.store,
        instance=ctx.instance,
    )
    if problem is not None and problem.revocation_unknown:
        return (
            "hold",
            f"the receiver's encryption certificate cannot be checked now ({problem})",
        ), None
    if problem is not None:
        return (
            "give-up",
            (
                f"the receiver's encryption certificate is not acceptable any more ({problem}); "
                "the message, encrypted to it when it was accepted, is not sent"
            ),
        ), None
    return None, None


def _hold(
    uow: UnitOfWork,
    job: ClaimedJob,
    partner: Partner,
    reason: str,
    code: str,
    now: datetime,
    *,
    until_then: str = "while it was",
    check_again: timedelta | None = None,
) -> None:
    """Keep a message unsent while its agreement holds it (``code``: agreement-suspended, or
    agreement-not-active for the onboarding states), or its receiver's certificate cannot be
    checked (revocation-unknown): checked again one RetryInterval later, or ``check_again``
    when that is sooner (its attempts and Retries untouched), given up when PersistDuration has
    passed (the reason said, then "PersistDuration ran out", then ``until_then``)."""
    row = uow.messages.get(str(job.message_id), for_update=True)
    assert row is not None
    if row.status not in _SENDABLE:  # acknowledged, given up or sent by another run meanwhile
        uow.jobs.finish_if(job.id, TRANSMIT)
    elif row.expires_at is not None and now >= row.expires_at:
        _give_up(uow, row, partner.name, f"{reason}, and PersistDuration ran out {until_then}", now)
    else:
        due = now + min(partner.retry_interval, check_again or partner.retry_interval)
        if row.expires_at is not None:
            due = min(due, row.expires_at)  # the give-up comes when PersistDuration passes
        detail = f"{reason}: held, not sent{_CHECKED_AGAIN}{due:%Y-%m-%d %H:%M:%S} UTC"
        if row.status != OutboundStatus.RETRYING.value:
            uow.messages.set_status(
                row,
                OutboundStatus.RETRYING.value,
                actor="worker",
                code=code,
                detail=detail,
                at=now,
            )
        elif not _held_so_already(uow, row.id, code):
            uow.events.record(
                row.id,
                EventKind.NOTE,
                actor="worker",
                code=code,
                detail=detail,
                ebxml_message_id=row.ebxml_message_id,
                at=now,
            )
        row.next_attempt_at = due
        # a job of its own, not this one rescheduled: this job's claims were holds, which its
        # count of claims would take for sends that may have reached the partner (maybe_sent)
        uow.jobs.finish(job.id)
        uow.jobs.schedule(TRANSMIT, due, message_id=row.id, dedup_key=f"{TRANSMIT}:{row.id}")
    uow.commit()


def _held_so_already(uow: UnitOfWork, message_id: str, code: str) -> bool:
    """Whether the message's newest event is a hold for the same cause (the change to
    ``retrying`` that began it, or its note): its checks while that lasts (every five minutes
    of a revocation outage, every RetryInterval of a suspended agreement) write no note each,
    which would bury its log in repeats; its next check is the message's ``next_attempt_at``."""
    latest = uow.events.latest(message_id)
    return latest is not None and latest.code == code


def hold_reason(detail: str) -> str:
    """A hold's detail without the time of the check it was written for: its first note is
    kept while the cause lasts (:func:`_held_so_already`), so that time passed long ago; the
    next check is the message's ``next_attempt_at``."""
    return detail.partition(_CHECKED_AGAIN)[0]


def transmit_job(ctx: EngineContext, job: ClaimedJob) -> TransportResult | None:
    """Send (or resend) one message. Returns the transport's result when it was delivered."""
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:  # no statement at all for a handed-over new message
        view = job.sending or uow.messages.sending_view(str(job.message_id))
        if view is None or view.status not in _SENDABLE:
            if view is None or view.status != OutboundStatus.SENT.value:
                uow.jobs.finish(job.id)  # acknowledged, refused or given up meanwhile
            else:
                # sent, by another run: if that was a run of this job (whose lease ran out),
                # the job's row is that send's ack-timeout now, which must stay; a resend
                # scheduled before that send got through is no longer wanted
                uow.jobs.finish_if(job.id, TRANSMIT)
            uow.commit()
            return None
        try:
            partner = ctx.directory.partner(uow, str(view.to_her_id), our_her_id=view.from_her_id)
        except PartnerUnknown as exc:
            reason = f"the partner is no longer known ({exc})"
            _give_up_before_sending(uow, view.id, str(view.to_her_id), reason, now)
            return None
        refusal = _refusal(ctx, uow, partner, view, now)
        agreement = ctx.directory.agreement(uow, partner.our_her_id, partner.her_id)
        route = partner.route(_binding(agreement, view))  # as submit built the envelope
        if refusal is not None and refusal[0] == "give-up":
            _give_up_before_sending(uow, view.id, partner.name, refusal[1], now)
            return None
    # The validator may take seconds (CRL and OCSP fetches): no unit of work is open meanwhile,
    # so receives and submits are not kept waiting for the database. The job's claim keeps
    # other runs of it off; a give-up or hold below locks the row and reads it again (an
    # Acknowledgment, a MessageError or the operator may have settled it meanwhile).
    refused, note = _certificate_refusal(ctx, partner, view, now)
    if refused is not None and refused[0] == "give-up":
        with ctx.store.unit_of_work() as uow:
            _give_up_before_sending(uow, view.id, partner.name, refused[1], now)
        return None
    if refused is not None:
        with ctx.store.unit_of_work() as uow:
            _hold(
                uow,
                job,
                partner,
                refused[1],
                REVOCATION_UNKNOWN,
                now,
                until_then="before it could be checked",
                check_again=REVOCATION_RECHECK,
            )
        return None
    if refusal is not None:
        with ctx.store.unit_of_work() as uow:
            suspended = agreement is not None and agreement.state is AgreementState.SUSPENDED
            code = AGREEMENT_SUSPENDED if suspended else AGREEMENT_NOT_ACTIVE
            _hold(uow, job, partner, refusal[1], code, now)
        return None
    # A resend, or a first send whose job was claimed before (its worker may have died
    # after the partner took it, before recording that), is a resend: not at or after
    # PersistDuration, when the partner no longer knows the MessageId. A first send that
    # only waited (a backlog, the server down) goes: the partner has never seen it.
    maybe_sent = view.attempts > 0 or job.attempts > 1
    if maybe_sent and view.expires_at is not None and now >= view.expires_at:
        reason = "PersistDuration ran out before a resend"
        if ctx.store_failing.failing:  # the resends it waited for: said, not left to guess
            reason += ", while this server could not use its store (see its store-failing alert)"
        with ctx.store.unit_of_work() as uow:
            _give_up_before_sending(uow, view.id, partner.name, reason, now)
        return None
    wire = ctx.store.payloads.path(str(view.wire_ref))
    content_type = str(view.wire_content_type)
    transport = ctx.transports.get(route.channel)
    try:
        if transport is None:
            raise TransportFailure(
                "no-transport", f"this server has no {route.channel} transport", retryable=False
            )
        result = send_once(
            transport,
            Delivery(
                str(route.endpoint),
                content_type,
                wire,
                timeout_seconds=60.0,
                ebxml_message_id=view.ebxml_message_id,
                from_her_id=view.from_her_id,
                to_her_id=view.to_her_id,
            ),
        )
    except TransportFailure as failure:
        _failed(ctx, job, partner, failure, ctx.clock(), str(route.endpoint), note)
        return None
    # what follows counts from the end of the send, which may have taken minutes (a large
    # upload): the wait for the Acknowledgment must not be eaten up by the upload itself
    now = ctx.clock()
    # every message passes here: its state is read and written without the ORM (lock_state)
    with ctx.store.unit_of_work() as uow:
        state = uow.messages.lock_state(str(job.message_id))
        assert state is not None
        attempts = state.attempts + 1
        _note(uow, state.id, state.ebxml_message_id, note, now)
        uow.events.record(
            state.id,
            EventKind.ATTEMPT,
            actor="worker",
            detail=f"attempt {attempts} delivered to {route.endpoint}",
            ebxml_message_id=state.ebxml_message_id,
            at=now,
        )
        sent = OutboundStatus.SENT.value if state.status in _SENDABLE else state.status
        state = uow.messages.change_state(
            state,
            status=sent,
            attempts=attempts,
            actor="worker",
            at=now,
            delivered_to=(route.channel, str(route.endpoint)),
        )
        # without AckRequested (a CPA's ackRequested never) no Acknowledgment will come: the
        # send is not repeated for want of one, and the AppRec deadline counts from the send
        # (else nothing would ever say that no answer came)
        if state.status == OutboundStatus.SENT.value and route.ack_requested:
            due = _next_attempt(state, partner, now) or (now + partner.retry_interval)
            uow.jobs.finish_and_schedule(
                job.id, ACK_TIMEOUT, due, message_id=state.id, dedup_key=f"{ACK_TIMEOUT}:{state.id}"
            )
        else:
            uow.jobs.finish(job.id)
            if state.status == OutboundStatus.SENT.value:
                schedule_apprec_deadline(ctx, uow, state.id, state.msg_type)
        _resolve_unreachable(uow, partner, str(route.endpoint), now)
        uow.commit()
    return result


def _unreachable_key(her_id: str, endpoint: str) -> str:
    """The ``partner-unreachable`` alert's key: per partner and endpoint, as its text names one.
    A CPA may bind a channel per action (NAV: a question on HTTPS, claims by mail): a send that
    works on one must not resolve the alert of another that is down (it flipped open and
    resolved at every retry). An endpoint too long for the key goes as its digest."""
    key = f"{her_id}:{endpoint}"
    if len(key) > _KEY_ROOM:
        key = f"{her_id}:sha256:{hashlib.sha256(endpoint.encode()).hexdigest()}"
    return key


# alerts.dedup_key is 255 characters, the kind and its colon come first
_KEY_ROOM = 255 - len(f"{AlertKind.PARTNER_UNREACHABLE}:")


def _resolve_unreachable(uow: UnitOfWork, partner: Partner, endpoint: str, at: datetime) -> None:
    """After a send to ``partner`` at ``endpoint`` worked: resolve the partner's open
    ``partner-unreachable`` alerts but those of its other endpoints (``Partner.endpoints``: this
    agreement's and its bindings' channel endpoints, and those of our other HER-ids' agreements
    with the partner: a CPA's other channel, or another agreement's endpoint, may be down while
    this one works). So the alert of this endpoint is resolved, that of an endpoint no
    agreement with the partner names any more (a typo mended, a gateway moved: every send goes
    to the new one, nothing would ever resolve it) and the one an earlier version kept per
    partner (its key without the endpoint). Every message passes here: one prepared UPDATE."""
    sent_to = _unreachable_key(partner.her_id, endpoint)
    kept = {
        f"{AlertKind.PARTNER_UNREACHABLE}:{key}"
        for key in (_unreachable_key(partner.her_id, e) for e in partner.endpoints)
        if key != sent_to
    }
    uow.alerts.resolve_for_partner(
        AlertKind.PARTNER_UNREACHABLE, partner.her_id, kept=sorted(kept), at=at
    )


def _note(
    uow: UnitOfWork, message_id: str, ebxml_message_id: str | None, note: str | None, at: datetime
) -> None:
    """Record :func:`_certificate_refusal`'s note on the message, with the attempt it led to."""
    if note is not None:
        uow.events.record(
            message_id,
            EventKind.NOTE,
            actor="worker",
            code="encrypted-to-replaced",
            detail=note,
            ebxml_message_id=ebxml_message_id,
            at=at,
        )


def _failed(
    ctx: EngineContext,
    job: ClaimedJob,
    partner: Partner,
    failure: TransportFailure,
    now: datetime,
    endpoint: str,
    note: str | None = None,
) -> None:
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.get(str(job.message_id), for_update=True)
        assert row is not None
        _note(uow, row.id, row.ebxml_message_id, note, now)
        # Sent (a run of this job whose lease had run out, while another one got through and
        # turned the job row into its ack-timeout), acknowledged or given up meanwhile: that
        # outcome stands, and the row under this job's id is no longer this job. The attempt
        # is logged; it does not count against the agreement's Retries.
        overtaken = row.status not in _SENDABLE
        if not overtaken:
            row.attempts += 1
        uow.events.record(
            row.id,
            EventKind.ATTEMPT,
            actor="worker",
            # read by attempts_taken at a give-up: no statement of its own on the send path
            code=failure.code + (AFTER_SEND if failure.maybe_delivered else ""),
            detail=("an overtaken attempt" if overtaken else f"attempt {row.attempts}")
            + f" failed: {failure.detail}",
            ebxml_message_id=row.ebxml_message_id,
            at=now,
        )
        if overtaken:
            uow.commit()
            return
        due = _next_attempt(row, partner, now) if failure.retryable else None
        if due is None:
            _give_up(uow, row, partner.name, f"last attempt failed ({failure.detail})", now)
        else:
            detail = f"{failure.detail}; next attempt {due:%Y-%m-%d %H:%M:%S} UTC"
            if row.status != OutboundStatus.RETRYING.value:
                uow.messages.set_status(
                    row,
                    OutboundStatus.RETRYING.value,
                    actor="worker",
                    code=failure.code,
                    detail=detail,
                    at=now,
                )
            else:  # the newest failure is the last error (its attempt's event is logged above)
                uow.messages.record_error(row, failure.code, detail)
            row.next_attempt_at = due
            uow.jobs.reschedule(job.id, due)
            raise_alert(
                uow,
                AlertKind.PARTNER_UNREACHABLE,
                f"{partner.her_id} ({partner.name}) cannot be reached at {endpoint}: "
                f"{failure.detail}. Messages are kept and resent.",
                at=now,
                partner_her_id=partner.her_id,
                key=_unreachable_key(partner.her_id, endpoint),
            )
        uow.commit()


def ack_timeout_job(ctx: EngineContext, job: ClaimedJob) -> None:
    """No Acknowledgment or MessageError arrived in time: resend, or give up."""
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:
        row = uow.messages.get(str(job.message_id), for_update=True)
        if row is None or row.status != OutboundStatus.SENT.value:
            uow.jobs.finish(job.id)
            uow.commit()
            return
        try:
            partner = ctx.directory.partner(uow, str(row.to_her_id), our_her_id=row.from_her_id)
        except PartnerUnknown as exc:
            _give_up(uow, row, str(row.to_her_id), f"the partner is no longer known ({exc})", now)
            uow.commit()
            return
        uow.jobs.finish(job.id)
        if not _attempt_allowed(row, partner, now):  # the resend would go now
            _give_up(uow, row, partner.name, "neither Acknowledgment nor MessageError arrived", now)
        else:
            assert OutboundStatus.RETRYING.value in allowed_next(Direction.OUTBOUND, row.status)
            uow.messages.set_status(
                row,
                OutboundStatus.RETRYING.value,
                actor="worker",
                # the message's last error: the newest trouble, not a failed send before it
                code=AlertKind.ACK_MISSING.value,
                detail="no Acknowledgment within the retry interval; resending",
                at=now,
            )
            uow.jobs.schedule(TRANSMIT, now, message_id=row.id, dedup_key=f"{TRANSMIT}:{row.id}")
            # The partner took the send (a 2xx answer) but said nothing: left to the give-up,
            # that was silent for the whole PersistDuration. Per partner, since a partner whose
            # signals do not reach us misses them for every message; the next send that works
            # does not resolve it (it did work), the partner's next Acknowledgment does.
            raise_alert(
                uow,
                AlertKind.ACK_MISSING,
                f"{row.to_her_id} ({partner.name}) took message {row.id} ({row.msg_type}) but "
                "sent no Acknowledgment within the retry interval; it is resent (attempt "
                f"{row.attempts + 1} of at most {partner.retries + 1}). Check that the partner's "
                "signals can reach this server.",
                at=now,
                partner_her_id=row.to_her_id,
            )
        uow.commit()
