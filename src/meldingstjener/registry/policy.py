"""The outbound gate the engine calls before it sends: is this message agreed with the receiver?

:func:`check_outbound` reads our partner agreement with the receiver from the store and raises
:class:`NotAgreed` (stable code, readable message) when it does not allow the send, or has ended
(a CPA's end, kept with the agreement) at the moment of the send. An agreement
row with an empty message-type list allows any type: partners configured in ``[[partners]]`` and
agreements built from the address register name no types.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime

from meldingstjener.registry.agreements import NotAgreed, PartnerAgreement, check_send
from meldingstjener.registry.store import agreement_from_row
from meldingstjener.registry.terms import AgreedMessage
from meldingstjener.store.uow import UnitOfWork

__all__ = ["check_agreement", "check_outbound"]


def check_outbound(
    uow: UnitOfWork,
    our_her_id: str,
    their_her_id: str,
    msg_type: str | None,
    version: str | None,
    *,
    test_message: bool = False,
    now: datetime | None = None,
) -> None:
    """Raise :class:`NotAgreed` unless we may send ``msg_type`` ``version`` to ``their_her_id``.

    Codes: ``no-agreement`` (no row for the pair), ``agreement-not-active`` (also after the
    agreement's end), ``message-type-not-agreed``, ``version-not-agreed``. ``msg_type`` None (a
    payload without a MsgHead type) only checks the state and end; ``version`` None checks the
    type but not the version. ``test_message`` also allows an agreement in the testing state.
    ``now`` is the moment of the send (default: the wall clock).
    """
    row = uow.agreements.for_pair(str(our_her_id), str(their_her_id))
    agreement = None if row is None else agreement_from_row(row)
    check_agreement(
        agreement,
        our_her_id,
        their_her_id,
        msg_type,
        version,
        test_message=test_message,
        now=now,
    )


def check_agreement(
    agreement: PartnerAgreement | None,
    our_her_id: str,
    their_her_id: str,
    msg_type: str | None,
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
    """:func:`check_outbound` for an agreement already read (the engine keeps them cached).

    ``answer``: the message answers one received from the partner (see :func:`check_send`).
    Returns the agreed binding the message goes by (see :func:`check_send`), or None when the
    agreement has none (the envelope then follows the NHN convention)."""
    at = now if now is not None else datetime.now(UTC)
    if agreement is None:
        raise NotAgreed(
            "no-agreement",
            f"there is no partner agreement between HER-id {our_her_id} and HER-id "
            f"{their_her_id}; add one with 'meldingstjener partners add' before sending",
        )
    if msg_type is not None and (version is not None or agreement.bindings):
        return check_send(
            agreement,
            msg_type,
            version,
            test_message=test_message,
            answer=answer,
            now=at,
            namespaces=namespaces,
            answered_service=answered_service,
            conversation_service=conversation_service,
            preferred_roles=preferred_roles,
        )
    unknown_type = msg_type is not None and agreement.versions_for(msg_type) is None
    if msg_type is not None and unknown_type and not agreement.any_message_type:
        # the type is not agreed: check_send says so
        check_send(agreement, msg_type, "", test_message=test_message, answer=answer, now=at)
    # With any_message_type set, check_send checks the state and end date and nothing else.
    anything = replace(agreement, any_message_type=True)
    check_send(anything, "", "", test_message=test_message, answer=answer, now=at)
    return None
