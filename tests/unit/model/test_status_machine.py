"""The message status machine: legal paths pass, illegal changes raise."""

from __future__ import annotations

import itertools

import pytest

from meldingstjener.model import (
    Direction,
    IllegalTransition,
    InboundStatus,
    OutboundStatus,
    allowed_next,
    check_transition,
    initial_status,
    is_terminal,
)

OUT = Direction.OUTBOUND
IN = Direction.INBOUND


def walk(direction: Direction, path: list[str]) -> None:
    for current, new in itertools.pairwise(path):
        check_transition(direction, current, new)


def test_outbound_happy_path() -> None:
    walk(OUT, ["accepted", "sent", "transport-acknowledged", "apprec-ok"])


def test_outbound_retry_then_not_delivered() -> None:
    walk(OUT, ["accepted", "sent", "retrying", "sent", "retrying", "not-delivered"])


def test_late_acknowledgment_after_giving_up_is_recorded() -> None:
    walk(OUT, ["not-delivered", "transport-acknowledged", "apprec-rejected"])


def test_inbound_paths() -> None:
    walk(IN, ["received", "acknowledged", "delivered", "apprec-sent"])
    walk(IN, ["received", "rejected"])
    walk(IN, ["received", "acknowledged", "misaddressed-purged"])
    walk(IN, ["received", "acknowledged", "delivered", "apprec-sent", "misaddressed-purged"])


@pytest.mark.parametrize(
    ("direction", "current", "new"),
    [
        (OUT, "accepted", "accepted"),
        (OUT, "apprec-ok", "sent"),
        (OUT, "transport-acknowledged", "sent"),
        (OUT, "accepted", "delivered"),  # an inbound status on an outbound message
        (IN, "received", "delivered"),  # must be acknowledged first
        (IN, "rejected", "acknowledged"),
        (IN, "misaddressed-purged", "delivered"),
        (IN, "received", "no-such-status"),
    ],
)
def test_illegal_transitions_raise(direction: Direction, current: str, new: str) -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(direction, current, new)
    assert current in str(caught.value) and new in str(caught.value)


def test_every_status_is_reachable_from_the_initial_one() -> None:
    for direction, statuses in ((OUT, OutboundStatus), (IN, InboundStatus)):
        seen = {initial_status(direction).value}
        frontier = list(seen)
        while frontier:
            for nxt in allowed_next(direction, frontier.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen == {status.value for status in statuses}


def test_terminal_statuses() -> None:
    assert is_terminal(OUT, "apprec-ok")
    assert is_terminal(IN, "rejected")
    assert not is_terminal(OUT, "sent")
