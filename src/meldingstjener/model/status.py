"""The message status machine: every status a message can have and every legal change.

One table, no I/O (in the spirit of h11's ``_state.py``). The store calls
:func:`check_transition` before it writes a new status, in the same transaction that records the
event, so an illegal change never reaches the database.

Outbound: accepted -> sent -> transport-acknowledged | transport-error -> apprec-ok |
apprec-rejected | apprec-ok-with-errors, with retrying and not-delivered on the way.
Inbound: received -> acknowledged -> delivered (to the EPJ) -> apprec-sent, or rejected, or
misaddressed-purged.
"""

from __future__ import annotations

from enum import StrEnum


class Direction(StrEnum):
    OUTBOUND = "out"
    INBOUND = "in"


class OutboundStatus(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    RETRYING = "retrying"
    TRANSPORT_ACKNOWLEDGED = "transport-acknowledged"
    TRANSPORT_ERROR = "transport-error"
    NOT_DELIVERED = "not-delivered"
    APPREC_OK = "apprec-ok"
    APPREC_REJECTED = "apprec-rejected"
    APPREC_OK_WITH_ERRORS = "apprec-ok-with-errors"


class InboundStatus(StrEnum):
    RECEIVED = "received"
    ACKNOWLEDGED = "acknowledged"
    DELIVERED = "delivered"
    APPREC_SENT = "apprec-sent"
    REJECTED = "rejected"
    MISADDRESSED_PURGED = "misaddressed-purged"


Status = OutboundStatus | InboundStatus

_O = OutboundStatus
_I = InboundStatus
_APPRECS = frozenset({_O.APPREC_OK, _O.APPREC_REJECTED, _O.APPREC_OK_WITH_ERRORS})

# Why some edges exist:
# - accepted -> transport-acknowledged / transport-error / apprec-*: the partner's signal can
#   arrive (as its own request) before the sender has recorded that the send succeeded.
# - sent/retrying -> apprec-*: the Acknowledgment can be lost while the AppRec arrives; the AppRec
#   proves delivery, so we accept it rather than leave the message hanging.
# - not-delivered -> transport-acknowledged / apprec-*: a late receipt after we gave up is still a
#   fact the help desk must see; it moves the message on (the alert stays for follow-up).
# - transport-error -> retrying: an operator may resend after fixing the cause (e.g. a certificate).
# - transport-error -> transport-acknowledged / apprec-*: the receiver's Acknowledgment or AppRec
#   after a MessageError (overtaken in the mail, or the error came from another MSH): it proves
#   the receiver has the message, which the help desk must see before anyone resends it (the
#   MessageError's alert stays for follow-up).
# - apprec-ok-with-errors -> apprec-*: a corrected AppRec may follow.
_OUTBOUND: dict[OutboundStatus, frozenset[OutboundStatus]] = {
    _O.ACCEPTED: frozenset(
        {_O.SENT, _O.RETRYING, _O.TRANSPORT_ACKNOWLEDGED, _O.TRANSPORT_ERROR, _O.NOT_DELIVERED}
        | _APPRECS
    ),
    _O.SENT: frozenset(
        {_O.TRANSPORT_ACKNOWLEDGED, _O.TRANSPORT_ERROR, _O.RETRYING, _O.NOT_DELIVERED} | _APPRECS
    ),
    _O.RETRYING: frozenset(
        {_O.SENT, _O.TRANSPORT_ACKNOWLEDGED, _O.TRANSPORT_ERROR, _O.NOT_DELIVERED} | _APPRECS
    ),
    _O.TRANSPORT_ACKNOWLEDGED: _APPRECS,
    _O.TRANSPORT_ERROR: frozenset({_O.RETRYING, _O.TRANSPORT_ACKNOWLEDGED} | _APPRECS),
    _O.NOT_DELIVERED: frozenset({_O.TRANSPORT_ACKNOWLEDGED} | _APPRECS),
    _O.APPREC_OK: frozenset(),
    _O.APPREC_REJECTED: frozenset(),
    _O.APPREC_OK_WITH_ERRORS: frozenset({_O.APPREC_OK, _O.APPREC_REJECTED}),
}

_INBOUND: dict[InboundStatus, frozenset[InboundStatus]] = {
    _I.RECEIVED: frozenset({_I.ACKNOWLEDGED, _I.REJECTED, _I.MISADDRESSED_PURGED}),
    _I.ACKNOWLEDGED: frozenset({_I.DELIVERED, _I.REJECTED, _I.MISADDRESSED_PURGED}),
    _I.DELIVERED: frozenset({_I.APPREC_SENT, _I.REJECTED, _I.MISADDRESSED_PURGED}),
    # A clinician may find a wrong recipient after a positive AppRec went out (-> DIALOG_AVVIK).
    _I.APPREC_SENT: frozenset({_I.MISADDRESSED_PURGED}),
    _I.REJECTED: frozenset(),
    _I.MISADDRESSED_PURGED: frozenset(),
}


class IllegalTransition(ValueError):
    """A status change the message status machine does not allow."""

    def __init__(self, direction: Direction, current: str, new: str) -> None:
        self.direction = direction
        self.current = current
        self.new = new
        allowed = ", ".join(sorted(allowed_next(direction, current))) or "none (final status)"
        super().__init__(
            f"illegal status change for an {direction.name.lower()} message: "
            f"{current} -> {new} (allowed from {current}: {allowed})"
        )


def initial_status(direction: Direction) -> Status:
    return _O.ACCEPTED if direction is Direction.OUTBOUND else _I.RECEIVED


def parse_status(direction: Direction, value: str) -> Status:
    """The status named ``value`` for ``direction``; ValueError when there is no such status."""
    if direction is Direction.OUTBOUND:
        return OutboundStatus(value)
    return InboundStatus(value)


def allowed_next(direction: Direction, current: str) -> frozenset[str]:
    if direction is Direction.OUTBOUND:
        return frozenset(s.value for s in _OUTBOUND[OutboundStatus(current)])
    return frozenset(s.value for s in _INBOUND[InboundStatus(current)])


def check_transition(direction: Direction, current: str, new: str) -> Status:
    """Return the new status if ``current -> new`` is legal for ``direction``; raise otherwise."""
    try:
        parse_status(direction, current)
        target = parse_status(direction, new)
    except ValueError:
        raise IllegalTransition(direction, current, new) from None
    if new not in allowed_next(direction, current):
        raise IllegalTransition(direction, current, new)
    return target


def is_terminal(direction: Direction, status: str) -> bool:
    return not allowed_next(direction, status)


ALL_STATUSES: frozenset[str] = frozenset(s.value for s in OutboundStatus) | frozenset(
    s.value for s in InboundStatus
)


# The statuses after which no step of the server needs a message's content again, by direction:
# half of engine/retention.py's one rule of what is settled (the other half, a received message
# the EPJ has and owes no AppRec for, is of its type: retention's NEVER_ANSWERED). Here, among
# the statuses, so that store/tables.py's UNSETTLED_STATUSES is derived from it rather than kept
# by hand (the store may not import the engine). store/tables.py's UNSETTLED is the whole rule
# turned round, in the literal SQL of a partial index (migration 0025, what /metrics counts): a
# change here is a change there and a migration, which tests/integration/store/test_unsettled.py
# asks for.
SETTLED: dict[str, frozenset[str]] = {
    Direction.OUTBOUND.value: frozenset(
        {
            _O.TRANSPORT_ACKNOWLEDGED,
            _O.NOT_DELIVERED,
            _O.APPREC_OK,
            _O.APPREC_REJECTED,
            _O.APPREC_OK_WITH_ERRORS,
        }
    ),
    Direction.INBOUND.value: frozenset({_I.APPREC_SENT, _I.REJECTED, _I.MISADDRESSED_PURGED}),
}
