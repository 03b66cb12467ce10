"""A host name resolved within a deadline (meldingstjener.netresolve): a look-up that hangs is
given up on when the time is up, its thread left to end; those asking the same meanwhile share
it, and look-ups under way are bounded. A numeric host is no look-up."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from held_names import HeldResolver
from meldingstjener import netresolve
from meldingstjener.netresolve import ResolveTimeout


@pytest.fixture
def held() -> Iterator[HeldResolver]:
    resolver = HeldResolver({"ca.held.test": "127.0.0.1", "other.held.test": "127.0.0.1"})
    resolver.hold()
    yield resolver
    resolver.release()
    for thread in threading.enumerate():  # the look-ups left waiting end with the release
        if thread.name == "netresolve":
            thread.join(5)


def test_a_look_up_that_hangs_is_given_up_on_when_the_time_is_up(held: HeldResolver) -> None:
    started = time.monotonic()
    with pytest.raises(ResolveTimeout, match=r"ca\.held\.test was not resolved within 0\.2 s"):
        netresolve.getaddrinfo("ca.held.test", 80, timeout=0.2, resolver=held)
    assert time.monotonic() - started < 2  # held up to HOLD_LIMIT (10 s) without the deadline
    # asked again meanwhile, the look-up under way is waited for, no second one begun
    with pytest.raises(ResolveTimeout):
        netresolve.getaddrinfo("ca.held.test", 80, timeout=0.05, resolver=held)
    assert held.asked["ca.held.test"] == 1
    # answered, it is the answer of whoever asks within the time
    held.release()
    [info, *_] = netresolve.getaddrinfo(
        "ca.held.test", 80, type=socket.SOCK_STREAM, timeout=5, resolver=held
    )
    assert info[4][:2] == ("127.0.0.1", 80)


def test_look_ups_under_way_are_bounded(
    held: HeldResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a name server that does not answer leaves a thread per question until its own time-out:
    # past the bound, a question is refused at once, its resolver not asked
    monkeypatch.setattr(netresolve, "MAX_PENDING", 1)
    with pytest.raises(ResolveTimeout):
        netresolve.getaddrinfo("ca.held.test", 80, timeout=0.05, resolver=held)
    with pytest.raises(ResolveTimeout, match="1 look-ups are under way already"):
        netresolve.getaddrinfo("other.held.test", 80, timeout=5, resolver=held)
    assert held.asked == {"ca.held.test": 1}


def test_a_failed_look_up_is_the_callers_error() -> None:
    def not_found(*_args: object) -> list[netresolve.AddressInfo]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror, match="not known"):
        netresolve.getaddrinfo("nowhere.test", 443, timeout=5, resolver=not_found)


def test_a_numeric_host_is_answered_in_the_callers_thread() -> None:
    asked: list[tuple[threading.Thread, int]] = []

    def resolver(host: str, port: int, *args: int) -> list[netresolve.AddressInfo]:
        asked.append((threading.current_thread(), args[3]))
        return list(socket.getaddrinfo(host, port, *args))

    for host in ("127.0.0.1", "::1"):
        [info, *_] = netresolve.getaddrinfo(host, 80, timeout=0.0, resolver=resolver)
        assert info[4][0] == host
    assert [thread for thread, _ in asked] == [threading.current_thread()] * 2
    assert all(flags & socket.AI_NUMERICHOST for _, flags in asked)
