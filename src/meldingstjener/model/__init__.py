"""Plain domain types shared by every layer: HER-ids, directions, message statuses and their rules.

Nothing in this package imports anything else of ours.
"""

from meldingstjener.model.herid import HerId, InvalidHerId, PartyRef
from meldingstjener.model.status import (
    Direction,
    IllegalTransition,
    InboundStatus,
    OutboundStatus,
    Status,
    allowed_next,
    check_transition,
    initial_status,
    is_terminal,
)

__all__ = [
    "Direction",
    "HerId",
    "IllegalTransition",
    "InboundStatus",
    "InvalidHerId",
    "OutboundStatus",
    "PartyRef",
    "Status",
    "allowed_next",
    "check_transition",
    "initial_status",
    "is_terminal",
]
