"""The link between a message sent again and its new copy (:mod:`.resend`), as ``show``, the
operator API, the EPJ's GetStatus and GetApprecInfo and the webhooks read it: kept apart from
the resend itself, which loads the outbound pipeline (the XML and cryptography packages), so
that ``show`` does not.

A copy is stored with the idempotency key ``resend:<id of the original>`` (the column is unique:
one copy per original, see :mod:`.resend`); both message logs say it too (NOTE events
:data:`SENT_AGAIN` and :data:`COPY_OF`).
"""

from __future__ import annotations

from sqlalchemy import select

from meldingstjener.model import Direction, OutboundStatus
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import UnitOfWork

# The codes of the NOTE events that link the two copies: on the original, which copy it was sent
# again as; on the copy, which message it is a new copy of.
SENT_AGAIN = "sent-again"
COPY_OF = "copy-of"
# The idempotency key of a copy (``messages.idempotency_key``, unique): one copy per original.
_KEY_PREFIX = "resend:"


def copy_key(original_id: str) -> str:
    """The idempotency key the copy of ``original_id`` is stored under."""
    return f"{_KEY_PREFIX}{original_id}"


def copy_of(uow: UnitOfWork, original_id: str) -> MessageRow | None:
    """The copy ``original_id`` was sent again as, if it was."""
    return uow.session.scalar(
        select(MessageRow).where(
            MessageRow.direction == Direction.OUTBOUND.value,
            MessageRow.idempotency_key == copy_key(original_id),
        )
    )


def original_of(copy: MessageRow) -> str | None:
    """The id of the message ``copy`` is a new copy of, or None when it is none."""
    key = copy.idempotency_key or ""
    return key[len(_KEY_PREFIX) :] if key.startswith(_KEY_PREFIX) else None


def links(uow: UnitOfWork, message: MessageRow) -> dict[str, str | None]:
    """What ``show`` and the operator API tell of a message's copies: ``sent_again_as`` (the
    copy it was sent again as) and ``copy_of`` (the message it is a copy of)."""
    copy = copy_of(uow, message.id) if message.direction == Direction.OUTBOUND.value else None
    return {"sent_again_as": copy.id if copy is not None else None, "copy_of": original_of(message)}


# how many originals one look-up of their copies names (a bound on a statement's parameters)
_COPIES_AT_ONCE = 500


def copies_of(uow: UnitOfWork, messages: list[MessageRow]) -> dict[str, str]:
    """The copies each of ``messages`` was sent again as, by the original's id: what a list of
    messages (``GET /api/log``) tells of each, by the unique index of the copies' keys, a
    few hundred originals a statement, not a statement each."""
    originals = [m.id for m in messages if m.direction == Direction.OUTBOUND.value]
    found: dict[str, str] = {}
    for start in range(0, len(originals), _COPIES_AT_ONCE):
        keys = [copy_key(original) for original in originals[start : start + _COPIES_AT_ONCE]]
        rows = uow.session.execute(
            select(MessageRow.id, MessageRow.idempotency_key).where(
                MessageRow.direction == Direction.OUTBOUND.value,
                MessageRow.idempotency_key.in_(keys),
            )
        )
        for copy_id, key in rows:
            found[str(key)[len(_KEY_PREFIX) :]] = copy_id
    return found


# What a message and its copies have come to, the furthest first: an AppRec of the receiver
# (which answers the business document, whichever copy carried it), then a transport receipt.
_FURTHEST = (
    frozenset(
        {
            OutboundStatus.APPREC_OK.value,
            OutboundStatus.APPREC_OK_WITH_ERRORS.value,
            OutboundStatus.APPREC_REJECTED.value,
        }
    ),
    frozenset({OutboundStatus.TRANSPORT_ACKNOWLEDGED.value}),
)


def answering_for(uow: UnitOfWork, message: MessageRow) -> tuple[str, str | None]:
    """Whose fate the EPJ is told for ``message`` (GetStatus, GetApprecInfo), which it knows by
    its id only, and the newest copy it was sent again as (``sentAgainAs``, None when never).

    Of the message and its copies, the newest that an AppRec answered, else the newest that a
    receipt acknowledged, else the newest copy: a late Acknowledgment or AppRec of the original
    (the receiver had it after all: an AppRec goes to the copy furthest on, which may be the
    original while its copy waits) is its fate as much as the copy's, and a copy still waiting
    must not hide it."""
    chain = [message]
    seen = {message.id}
    while (copy := copy_of(uow, chain[-1].id)) is not None and copy.id not in seen:
        seen.add(copy.id)
        chain.append(copy)
    newest = chain[-1].id if len(chain) > 1 else None
    for statuses in _FURTHEST:
        reached = [m for m in chain if m.status in statuses]
        if reached:
            return reached[-1].id, newest
    return chain[-1].id, newest


def first_original(uow: UnitOfWork, copy: MessageRow) -> str | None:
    """The id of the message first sent of which ``copy`` is a copy, through copies of copies:
    the one its EPJ submitted and knows (webhooks' ``copyOf``); None when ``copy`` is none.
    Reads a row per copy in between, and none for a message that is no copy."""
    first = original_of(copy)
    seen = {copy.id}
    while first is not None and first not in seen:
        seen.add(first)
        earlier = uow.messages.get(first)
        before = original_of(earlier) if earlier is not None else None
        if before is None:
            break
        first = before
    return first
