"""Partner agreements (partneravtaler): what we may send to one counterparty, and the gate the
outbound pipeline passes every message through.

A :class:`PartnerAgreement` is built from :class:`AgreementTerms` (CPA, CPP or address register,
see :func:`resolve_terms`) plus what only we know: the onboarding state and the contacts. The
state follows the regional routine for connecting partners: ordered -> testing ->
verified-inactive -> active, with suspended as a pause from active and ended reachable from
every state (and left only forced, back to ordered: an agreement ended by mistake).

:func:`send_decision` is the one rule of what a state lets through (test messages and answers
in testing and verified-inactive, everything when active), holds (production messages of
an agreement that exists and has not ended) or gives up (ended). :func:`check_send` refuses, with
:class:`NotAgreed` (stable code, readable message), a message type or version that is not agreed
or a message the state does not let through; :func:`check_state_change` refuses a step off the
routine, and verified-inactive without a verified test exchange (:func:`verified_test_exchange`)
unless forced with the operator's words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from meldingstjener.registry.cpa import agreement_for, terms_from_cpp
from meldingstjener.registry.cppa_model import CollaborationProtocol
from meldingstjener.registry.errors import RegistryError
from meldingstjener.registry.parties import CommunicationParty
from meldingstjener.registry.terms import (
    AgreedMessage,
    AgreementTerms,
    TermsSource,
    terms_from_ar,
)
from meldingstjener.registry.versions import choose_version, normalise_version, sort_versions

if TYPE_CHECKING:
    from meldingstjener.store.uow import UnitOfWork

__all__ = [
    "AgreementState",
    "Contact",
    "NotAgreed",
    "PartnerAgreement",
    "check_send",
    "check_state_change",
    "choose_binding",
    "choose_version",
    "log_state_change",
    "negotiate_version",
    "resolve_terms",
    "send_decision",
    "test_message_detail",
    "verified_test_exchange",
]


class AgreementState(StrEnum):
    ORDERED = "ordered"
    TESTING = "testing"
    VERIFIED_INACTIVE = "verified-inactive"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    ENDED = "ended"


_S = AgreementState
# The onboarding routine: test messages go out in "testing"; after a verified test the service
# is switched off ("verified-inactive") until the activation date. Suspension is reversible, and
# a suspended or verified partner can be sent back to testing after a change (new certificate).
# Ended (a cancelled order, a partner that leaves) is reachable from every state; it is left
# only forced, with the operator's words, back to ordered, the routine's beginning (ended by
# mistake, a partner would else be cut off for good: `partners add` refuses a pair that has one).
_NEXT_STATES: dict[AgreementState, frozenset[AgreementState]] = {
    _S.ORDERED: frozenset({_S.TESTING, _S.ENDED}),
    _S.TESTING: frozenset({_S.VERIFIED_INACTIVE, _S.ORDERED, _S.ENDED}),
    _S.VERIFIED_INACTIVE: frozenset({_S.ACTIVE, _S.TESTING, _S.ENDED}),
    _S.ACTIVE: frozenset({_S.SUSPENDED, _S.ENDED}),
    _S.SUSPENDED: frozenset({_S.ACTIVE, _S.TESTING, _S.ENDED}),
    _S.ENDED: frozenset({_S.ORDERED}),
}
# the steps taken only forced, whatever the evidence
_FORCED_ONLY = frozenset({(_S.ENDED, _S.ORDERED)})

SendDecision = Literal["send", "hold", "give-up"]


def send_decision(state: AgreementState, *, test_message: bool, answer: bool) -> SendDecision:
    """What an agreement in ``state`` does with a message: the one rule submit (which refuses
    all but "send") and every send of a queued message (which holds or gives up) follow.

    Active sends everything. Testing and verified-inactive send test messages (MsgHead
    ProcessingStatus D: step 4 of the routine, and step 5 on the activation
    date) and answers (our AppRec or DIALOG_AVVIK about a message received from the partner: a
    partner's test waits for them). Any other message of an
    agreement that exists and has not ended (ordered, testing, verified-inactive, suspended) is
    held: the state is the operator's and may move on (a new certificate is tested, a
    suspension lifted), and PersistDuration still caps the wait. Ended gives up at once."""
    if state is _S.ACTIVE:
        return "send"
    if state is _S.ENDED:
        return "give-up"
    if answer and state in (_S.TESTING, _S.VERIFIED_INACTIVE):
        return "send"
    # step 5 of the routine sends a test message while verified-inactive, on the activation
    # date, before the service is switched on
    if test_message and state in (_S.TESTING, _S.VERIFIED_INACTIVE):
        return "send"
    return "hold"


class NotAgreed(Exception):
    """A send the partner agreement does not allow. ``code`` is stable; the message says what
    is missing and what to do about it."""

    # Codes: agreement-not-active, message-type-not-agreed, version-not-agreed,
    # no-common-version, no-agreement-source, illegal-state-change, test-not-verified.
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    # A receiver reports the same situation with ebXML "NotSupported"; the engine can map to it.
    ebxml_error_code = "NotSupported"


@dataclass(frozen=True, slots=True)
class Contact:
    """Someone at the partner to call about deviations (name/role of staff, never patients)."""

    name: str
    role: str | None = None
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class PartnerAgreement:
    our_her_id: str
    counterparty_her_id: str
    state: AgreementState
    source: TermsSource
    cpa_id: str | None = None
    channel: str | None = None  # "smtp", "http", "amqp"
    endpoint: str | None = None
    message_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    retries: int | None = None
    retry_interval: timedelta | None = None
    persist_duration: timedelta | None = None
    ack_requested: str | None = None
    duplicate_elimination: str | None = None
    sync_reply_mode: str | None = None
    contacts: tuple[Contact, ...] = ()
    any_message_type: bool = False  # terms from the address register do not name types
    activation_date: date | None = None
    valid_to: datetime | None = None
    # The outbound bindings of a CPA or CPP (empty for register and configured terms): per
    # business document, the envelope's Service, Action and Roles and the channel it goes by.
    bindings: tuple[AgreedMessage, ...] = ()

    @classmethod
    def from_terms(
        cls,
        terms: AgreementTerms,
        *,
        our_her_id: str | None = None,
        state: AgreementState = AgreementState.ORDERED,
        contacts: Iterable[Contact] = (),
        activation_date: date | None = None,
    ) -> PartnerAgreement:
        ours = our_her_id or terms.our_her_id
        if not ours:
            raise ValueError("our HER-id is needed to make a partner agreement")
        channel = terms.default_channel
        return cls(
            our_her_id=str(ours),
            counterparty_her_id=terms.counterparty_her_id,
            state=state,
            source=terms.source,
            cpa_id=terms.cpa_id,
            channel=channel.transport if channel else None,
            endpoint=channel.endpoint if channel else None,
            message_types=terms.message_types(),
            retries=channel.retries if channel else None,
            retry_interval=channel.retry_interval if channel else None,
            persist_duration=channel.persist_duration if channel else None,
            ack_requested=channel.ack_requested if channel else None,
            duplicate_elimination=channel.duplicate_elimination if channel else None,
            sync_reply_mode=channel.sync_reply_mode if channel else None,
            contacts=tuple(contacts),
            any_message_type=terms.any_message_type,
            activation_date=activation_date,
            valid_to=terms.valid_to,
            bindings=terms.outbound,
        )

    @property
    def bound(self) -> bool:
        """Whether a message goes by one of the agreement's bindings (chosen by
        :func:`choose_binding`, which gives its envelope's names and channel): an agreement with
        bindings, unless it takes any message type (``partners set --any-message-type`` keeps
        the bindings), whose messages follow the NHN convention as terms without bindings do."""
        return bool(self.bindings) and not self.any_message_type

    def versions_for(self, message_type: str) -> tuple[str, ...] | None:
        """Agreed versions of ``message_type`` (exact name first, then ignoring case)."""
        if message_type in self.message_types:
            return self.message_types[message_type]
        folded = message_type.casefold()
        for name, versions in self.message_types.items():
            if name.casefold() == folded:
                return versions
        return None


def _needs_evidence(current: AgreementState, new: AgreementState) -> bool:
    """Whether the step is one that leaves testing (to verified-inactive, or to active), for
    which the routine asks for a verified test exchange."""
    return current is _S.TESTING and new in (_S.VERIFIED_INACTIVE, _S.ACTIVE)


def check_state_change(
    current: AgreementState,
    new: AgreementState,
    *,
    verified_test: str | None = None,
    forced: str | None = None,
) -> AgreementState:
    """``new`` when the routine allows the step from ``current``; else :class:`NotAgreed`.

    Leaving testing (to verified-inactive, or to active) needs the evidence step 4 of the
    routine asks for: ``verified_test``, the id of an outbound test message to the partner that
    got an Acknowledgment and a positive AppRec (:func:`verified_test_exchange`), or ``forced``,
    the operator's words why it goes without one (record them with :func:`log_state_change`).
    """
    if new not in _NEXT_STATES[current]:
        allowed = ", ".join(sorted(s.value for s in _NEXT_STATES[current])) or "none"
        raise NotAgreed(
            "illegal-state-change",
            f"a partner agreement cannot go from {current.value} to {new.value} "
            f"(allowed from {current.value}: {allowed})",
        )
    if (current, new) in _FORCED_ONLY and not (forced or "").strip():
        raise NotAgreed(
            "illegal-state-change",
            f"a partner agreement that has {current.value} goes back to {new.value} only "
            "forced, with the reason why (partners set HER_ID --state ordered --force REASON)",
        )
    if _needs_evidence(current, new) and verified_test is None and not (forced or "").strip():
        raise NotAgreed(
            "test-not-verified",
            f"a partner agreement cannot go from testing to {new.value} before a test message "
            "to the partner has got an Acknowledgment and a positive AppRec (status 1); send "
            "one (a MsgHead with ProcessingStatus D), or force the change "
            "with the reason why",
        )
    return new


def verified_test_exchange(uow: UnitOfWork, our_her_id: str, their_her_id: str) -> str | None:
    """The id of the last outbound test message under the agreement of ``our_her_id`` with
    ``their_her_id`` that got an Acknowledgment and a positive AppRec (status 1, apprec-ok),
    or None. One sent without AckRequested (the CPA's ackRequested never) gets no
    Acknowledgment: its positive AppRec alone verifies it.

    Only a test message created after the agreement last entered testing counts (the entry
    :func:`log_state_change` records): one sent back to testing (a new certificate) is tested
    anew, not let out on a test from an earlier round.

    A test message is one submit marked so (the event ``test-message``, see
    ``engine.outbound``), naming the agreement it went under (:func:`test_message_detail`): a
    message from one of our services goes under our organisation's agreement when the service
    has none of its own. A mark from before the agreement was named counts for the sender's
    HER-id."""
    from sqlalchemy import and_, func, not_, or_, select, true

    from meldingstjener.model import Direction, OutboundStatus
    from meldingstjener.store.tables import EventRow, MessageRow, ReceiptRow

    uow.events.write_pending()
    under = _agreement_key(our_her_id, their_her_id) + ": "
    acknowledged = select(ReceiptRow.id).where(
        ReceiptRow.message_id == MessageRow.id, ReceiptRow.kind == "acknowledgment"
    )
    marks = select(EventRow.id).where(
        EventRow.message_id == MessageRow.id, EventRow.code == TEST_MESSAGE_EVENT
    )
    marked = marks.where(
        or_(
            EventRow.detail.startswith(under, autoescape=True),
            and_(
                not_(EventRow.detail.startswith("agreement ")),
                MessageRow.from_her_id == str(our_her_id),
            ),
        )
    )
    without_ack = marks.where(EventRow.detail.startswith(under + _WITHOUT_ACK, autoescape=True))
    entered_testing = uow.session.scalar(
        select(func.max(EventRow.at)).where(
            EventRow.message_id.is_(None),
            EventRow.code == ENTERED_TESTING_EVENT,
            EventRow.detail.startswith(
                _agreement_key(our_her_id, their_her_id) + " from ", autoescape=True
            ),
        )
    )
    this_round = true() if entered_testing is None else MessageRow.created_at > entered_testing
    found = uow.session.scalars(
        select(MessageRow.id)
        .where(
            MessageRow.direction == Direction.OUTBOUND.value,
            MessageRow.to_her_id == str(their_her_id),
            MessageRow.status == OutboundStatus.APPREC_OK.value,
            or_(acknowledged.exists(), without_ack.exists()),
            marked.exists(),
            this_round,
        )
        .order_by(MessageRow.created_at.desc())
        .limit(1)
    ).first()
    return None if found is None else str(found)


def _agreement_key(our_her_id: str, their_her_id: str) -> str:
    """How the message log names one agreement (its test messages, its state changes)."""
    return f"agreement {our_her_id} -> {their_her_id}"


_WITHOUT_ACK = "sent as a test message without AckRequested"


def test_message_detail(
    our_her_id: str, their_her_id: str, state: str, *, ack_requested: bool
) -> str:
    """The detail of the ``test-message`` mark submit writes: the agreement the message went
    under (our HER-id in it may be our organisation's for a message from one of its services)
    and whether it asked for an Acknowledgment, which :func:`verified_test_exchange` reads."""
    sent = _WITHOUT_ACK if not ack_requested else "sent as a test message"
    return f"{_agreement_key(our_her_id, their_her_id)}: {sent} while it is {state}"


# The message-log code that marks an outbound message as a test message (set by submit).
TEST_MESSAGE_EVENT = "test-message"
# ... and as an answer sent while the agreement was not active (so a queued one goes on).
ANSWER_EVENT = "answer-in-onboarding"
# The agreement entry (no message) of an agreement entering testing: a new round of tests.
ENTERED_TESTING_EVENT = "agreement-testing"


def log_state_change(
    uow: UnitOfWork,
    our_her_id: str,
    their_her_id: str,
    current: AgreementState,
    new: AgreementState,
    *,
    actor: str,
    verified_test: str | None = None,
    forced: str | None = None,
    at: datetime | None = None,
) -> None:
    """Record a state change the routine asks evidence for in the message log: on the verified
    test message's own log, or, forced, as an agreement entry with the operator's words. An
    agreement entering testing is recorded too (an agreement entry): only test messages after
    it verify the agreement (:func:`verified_test_exchange`)."""
    from meldingstjener.store.uow import EventKind

    step = f"{_agreement_key(our_her_id, their_her_id)} from {current.value} to {new.value}"
    if new is _S.TESTING and current is not _S.TESTING:
        detail = f"{step}: a new round of testing"
        uow.events.record(
            None, EventKind.NOTE, actor=actor, code=ENTERED_TESTING_EVENT, detail=detail, at=at
        )
        return
    if (current, new) in _FORCED_ONLY:
        verified_test = None  # no test stands for such a step: the operator's words do
        detail = f"{step} forced: {(forced or '').strip()}"
    elif not _needs_evidence(current, new):
        return
    elif verified_test is not None:
        detail = f"{step}: verified by this test message"
    elif (forced or "").strip():
        detail = f"{step} forced without a verified test exchange: {(forced or '').strip()}"
    else:
        return
    uow.events.record(
        verified_test,
        EventKind.NOTE,
        actor=actor,
        code="agreement-forced" if verified_test is None else "agreement-verified",
        detail=detail,
        at=at,
    )


def choose_binding(
    agreement: PartnerAgreement,
    message_type: str,
    namespaces: Iterable[str] = (),
    *,
    answered_service: str | None = None,
    conversation_service: str | None = None,
    preferred_roles: tuple[str | None, str | None] | None = None,
) -> tuple[AgreedMessage | None, bool]:
    """The agreed binding a business document goes by, and whether its namespace chose it.

    The document's namespaces (MsgHead's and its content's, or the AppRec's) against each
    binding's business schema (its most specific NamespaceSupported); failing that, the
    binding whose Action is ``message_type`` (the NHN convention, where Action and MsgHead type
    are the same). An AppRec answering a received message (``answered_service``) takes a
    binding of the Service that message came in. Of several that fit, the one in the
    conversation's Service (``conversation_service``) first, then the one whose Action is the
    message type, then the one with ``preferred_roles`` (the convention's), else the CPA's
    first. ``(None, False)`` when none fits.
    """
    wanted = set(namespaces)
    candidates = list(agreement.bindings)
    if answered_service is not None:
        candidates = [b for b in candidates if b.service == answered_service]
    by_namespace = [b for b in candidates if b.namespace is not None and b.namespace in wanted]
    folded = message_type.casefold()
    by_action = [b for b in candidates if b.message_type.casefold() == folded]
    chosen = by_namespace or by_action
    if not chosen:
        return None, False

    def rank(binding: AgreedMessage) -> tuple[bool, bool, bool]:
        return (
            conversation_service is None or binding.service != conversation_service,
            binding.message_type.casefold() != folded,
            preferred_roles is None or (binding.from_role, binding.to_role) != preferred_roles,
        )

    return min(chosen, key=rank), bool(by_namespace)


def check_send(
    agreement: PartnerAgreement,
    message_type: str,
    version: str | None,
    *,
    test_message: bool = False,
    answer: bool = False,
    now: datetime | None = None,
    namespaces: Iterable[str] = (),
    answered_service: str | None = None,
    conversation_service: str | None = None,
    preferred_roles: tuple[str | None, str | None] | None = None,
) -> AgreedMessage | None:
    """Raise :class:`NotAgreed` unless ``message_type`` in ``version`` may go to the partner;
    return the agreed binding it goes by (None for an agreement without bindings: register
    terms and configured partners, whose envelope follows the NHN convention).

    Ordinary messages need an active agreement; ``test_message`` (the routine sends test
    messages one week before activation, and on the activation date) and ``answer`` (our
    AppRec or DIALOG_AVVIK about a message received from the partner) also allow testing and
    verified-inactive: see
    :func:`send_decision`. For an agreement with
    bindings (a CPA's or CPP's) the binding is chosen by :func:`choose_binding` from the
    document's ``namespaces`` and the rest; a binding its namespace chose needs no version
    check (the namespace is the version), one chosen by its Action checks ``version`` as
    before. ``version`` None checks no version.
    """
    _check_state(agreement, test_message, answer)
    if now is not None and agreement.valid_to is not None and now > agreement.valid_to:
        raise NotAgreed(
            "agreement-not-active",
            f"the agreement with HER-id {agreement.counterparty_her_id} ended "
            f"{agreement.valid_to.isoformat()}; renew the CPA before sending",
        )
    if agreement.any_message_type:
        return None
    binding = None
    if agreement.bound:
        namespaces = tuple(namespaces)
        binding, by_namespace = choose_binding(
            agreement,
            message_type,
            namespaces,
            answered_service=answered_service,
            conversation_service=conversation_service,
            preferred_roles=preferred_roles,
        )
        if binding is None:
            raise _no_binding(agreement, message_type, namespaces, answered_service)
        if by_namespace:
            return binding
        message_type = binding.message_type
    if version is None:
        _agreed_versions(agreement, message_type)
        return binding
    versions = _agreed_versions(agreement, message_type)
    if normalise_version(version) not in {normalise_version(v) for v in versions}:
        raise NotAgreed(
            "version-not-agreed",
            f"{message_type} version {version} is not agreed with HER-id "
            f"{agreement.counterparty_her_id} (agreed: {', '.join(versions) or 'none'}); "
            "send an agreed version or update the agreement",
        )
    return binding


def _no_binding(
    agreement: PartnerAgreement,
    message_type: str,
    namespaces: tuple[str, ...],
    answered_service: str | None,
) -> NotAgreed:
    documents = ", ".join(namespaces) or "none"
    where = ""
    if answered_service:
        where = f" in the service {answered_service} of the message it answers"
    bindings = [b for b in agreement.bindings if answered_service in {None, b.service}]
    named = sorted({f"{b.service}/{b.message_type} ({b.namespace})" for b in bindings})
    agreed = ", ".join(named[:12]) + (f" and {len(named) - 12} more" if len(named) > 12 else "")
    return NotAgreed(
        "message-type-not-agreed",
        f"message type {message_type} (namespace {documents}) is not agreed{where} with HER-id "
        f"{agreement.counterparty_her_id}: no binding of the agreement takes a document of that "
        f"namespace or has the Action {message_type} (agreed: {agreed or 'none'}); order it "
        "from the partner and update the agreement",
    )


def negotiate_version(
    agreement: PartnerAgreement, message_type: str, our_versions: Iterable[str]
) -> str:
    """The newest version of ``message_type`` we support and the partner accepts."""
    ours = tuple(our_versions)
    if agreement.any_message_type:
        newest = sort_versions(ours)
        if not newest:
            raise NotAgreed("no-common-version", f"we support no version of {message_type}")
        return newest[0]
    theirs = _agreed_versions(agreement, message_type)
    chosen = choose_version(ours, theirs)
    if chosen is None:
        raise NotAgreed(
            "no-common-version",
            f"no common version of {message_type} with HER-id {agreement.counterparty_her_id}: "
            f"we support {', '.join(sort_versions(ours)) or 'none'}, they accept "
            f"{', '.join(theirs) or 'none'}; upgrade one side or agree another message type",
        )
    return chosen


def _check_state(agreement: PartnerAgreement, test_message: bool, answer: bool) -> None:
    if send_decision(agreement.state, test_message=test_message, answer=answer) != "send":
        hint = {
            AgreementState.ORDERED: "it is ordered but not yet tested; activate it before sending",
            AgreementState.TESTING: "it is in testing: only test messages (MsgHead "
            "ProcessingStatus D) and answers may be sent",
            AgreementState.VERIFIED_INACTIVE: "it is verified but waits for its activation "
            "date: only test messages (MsgHead ProcessingStatus D) and "
            "answers may be sent; activate it before sending",
            AgreementState.SUSPENDED: "it is suspended; resume it before sending",
            AgreementState.ENDED: "it has ended; nothing more is sent to it",
        }.get(agreement.state, agreement.state.value)
        raise NotAgreed(
            "agreement-not-active",
            f"the partner agreement with HER-id {agreement.counterparty_her_id} is not active "
            f"({hint})",
        )


def _agreed_versions(agreement: PartnerAgreement, message_type: str) -> tuple[str, ...]:
    versions = agreement.versions_for(message_type)
    if versions is None:
        agreed = ", ".join(sorted(agreement.message_types)) or "none"
        raise NotAgreed(
            "message-type-not-agreed",
            f"message type {message_type} is not agreed with HER-id "
            f"{agreement.counterparty_her_id} (agreed types: {agreed}); order it from the partner "
            "and update the agreement",
        )
    return versions


def resolve_terms(
    cpa: CollaborationProtocol | None,
    cpp: CollaborationProtocol | None,
    ar_party: CommunicationParty | None,
    *,
    our_her_id: str,
    now: datetime | None = None,
) -> tuple[AgreementTerms, TermsSource]:
    """Terms from the best source available: our CPA with them, else their CPP, else their
    address-register entry. Skipped sources are explained in ``terms.notes``."""
    notes: list[str] = []
    if cpa is None:
        notes.append("no CPA with the counterparty")
    elif now is not None and not cpa.in_force_at(now):
        notes.append(f"CPA {cpa.protocol_id} is not in force at {now.isoformat()}")
    else:
        try:
            terms = agreement_for(cpa, our_her_id)
            return replace(terms, notes=tuple(notes)), TermsSource.CPA
        except RegistryError as exc:
            notes.append(f"CPA {cpa.protocol_id} unusable: {exc}")
    if cpp is None:
        notes.append("no CPP from the counterparty")
    else:
        try:
            terms = terms_from_cpp(cpp, our_her_id)
            return replace(terms, notes=tuple(notes)), TermsSource.CPP
        except RegistryError as exc:
            notes.append(f"CPP {cpp.protocol_id} unusable: {exc}")
    if ar_party is None:
        notes.append("no address-register entry")
        raise NotAgreed(
            "no-agreement-source",
            "cannot tell how to reach the counterparty: " + "; ".join(notes),
        )
    terms = terms_from_ar(ar_party, our_her_id)
    return replace(terms, notes=tuple(notes)), TermsSource.AR
