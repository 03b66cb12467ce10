"""A host name resolved within a deadline (meldingstjener.netresolve): a look-up that hangs is
given up on when the time is up, its thread left to end; those asking the same meanwhile share
it, each given an answer (or an error) of its own, and look-ups under way are bounded in each
pool apart. A numeric host is no look-up."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from held_names import HeldResolver
from meldingstjener import netresolve
from meldingstjener.netresolve import ResolveTimeout

POOL = netresolve.REVOCATION


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
    with pytest.raises(ResolveTimeout, match=r"ca\.held\.test was not resolved within 0\.2 s"):
        netresolve.getaddrinfo("ca.held.test", 80, pool=POOL, timeout=0.2, resolver=held)
    # given up while the look-up was still held, not at the resolver's own end (HOLD_LIMIT)
    assert held.expired == 0
    # asked again meanwhile, the look-up under way is waited for, no second one begun
    with pytest.raises(ResolveTimeout):
        netresolve.getaddrinfo("ca.held.test", 80, pool=POOL, timeout=0.05, resolver=held)
    assert held.asked["ca.held.test"] == 1
    # answered, it is the answer of whoever asks within the time
    held.release()
    [info, *_] = netresolve.getaddrinfo(
        "ca.held.test", 80, type=socket.SOCK_STREAM, pool=POOL, timeout=5, resolver=held
    )
    assert info[4][:2] == ("127.0.0.1", 80)


def test_look_ups_under_way_are_bounded(
    held: HeldResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a name server that does not answer leaves a thread per question until its own time-out:
    # past the bound, a question is refused at once, its resolver not asked
    monkeypatch.setattr(netresolve, "MAX_PENDING", 1)
    with pytest.raises(ResolveTimeout):
        netresolve.getaddrinfo("ca.held.test", 80, pool=POOL, timeout=0.05, resolver=held)
    with pytest.raises(ResolveTimeout, match="1 look-ups of revocation are under way already"):
        netresolve.getaddrinfo("other.held.test", 80, pool=POOL, timeout=5, resolver=held)
    assert held.asked == {"ca.held.test": 1}


def test_a_failed_look_up_is_the_callers_error() -> None:
    def not_found(*_args: object) -> list[netresolve.AddressInfo]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror, match="not known") as raised:
        netresolve.getaddrinfo("nowhere.test", 443, pool=POOL, timeout=5, resolver=not_found)
    assert raised.value.errno == socket.EAI_NONAME  # what a caller may tell apart by
    assert isinstance(raised.value.__cause__, socket.gaierror)


def test_each_pool_is_bounded_apart(held: HeldResolver, monkeypatch: pytest.MonkeyPatch) -> None:
    # A webhook's host is an API client's choice: webhooks' look-ups left hanging, up to the
    # bound, do not take those a revocation check needs (a CA's host, for a message being sent)
    monkeypatch.setattr(netresolve, "MAX_PENDING", 1)
    webhooks = netresolve.WEBHOOKS
    with pytest.raises(ResolveTimeout):
        netresolve.getaddrinfo("other.held.test", 443, pool=webhooks, timeout=0.05, resolver=held)
    with pytest.raises(ResolveTimeout, match="1 look-ups of webhooks are under way already"):
        netresolve.getaddrinfo("ca.held.test", 443, pool=webhooks, timeout=5, resolver=held)
    answering = HeldResolver({"ca.held.test": "127.0.0.1"})
    [info, *_] = netresolve.getaddrinfo(
        "ca.held.test",
        80,
        type=socket.SOCK_STREAM,
        pool=netresolve.REVOCATION,
        timeout=5,
        resolver=answering,
    )
    assert info[4][:2] == ("127.0.0.1", 80)
    assert held.asked == {"other.held.test": 1}


class _ReleasedByASecondCaller(HeldResolver):
    """Held, and released by a second caller, in the thread given, as it looks for the look-up
    under way: a question's hash, its resolver's among its parts, is taken then, under the lock
    that keeps the look-up under way until that caller has it. So the second caller shares the
    first's look-up however the threads are scheduled. ``failure``: what the look-up raises
    once released, if anything."""

    def __init__(self, second: threading.Thread, failure: Exception | None = None) -> None:
        super().__init__({"ca.held.test": "127.0.0.1"})
        self.second = second
        self.failure = failure
        self.called = threading.Event()  # the first caller's look-up is under way
        self.hold()

    def __call__(self, host: object, port: object, *args: object, **kwargs: object) -> object:
        self.called.set()
        answer = super().__call__(host, port, *args, **kwargs)
        if self.failure is not None:
            raise self.failure
        return answer

    def __hash__(self) -> int:
        if threading.current_thread() is self.second and self.called.is_set():
            self.release()
        return id(self)


def _shared(resolver: _ReleasedByASecondCaller) -> tuple[object, object]:
    """What two callers sharing one look-up got, each: an answer or an error."""
    got: dict[str, object] = {}

    def ask(who: str) -> None:
        try:
            got[who] = netresolve.getaddrinfo(
                "ca.held.test", 80, pool=POOL, timeout=5, resolver=resolver
            )
        except Exception as exc:
            got[who] = exc

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert resolver.called.wait(5)
    ask("second")  # in resolver.second: this thread
    first.join(5)
    assert resolver.asked["ca.held.test"] == 1  # one look-up for both
    return got["first"], got["second"]


def test_callers_sharing_a_look_up_each_get_an_answer_of_their_own() -> None:
    first, second = _shared(_ReleasedByASecondCaller(threading.current_thread()))
    assert isinstance(first, list) and first == second
    assert first is not second  # one caller's changes to its list are not the other's
    assert first[0][4][:2] == ("127.0.0.1", 80)


class _NotKnownHere(OSError):
    """A resolver's error made from other arguments than its ``args``: made again from those
    (as copy.copy does) it says something else."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} is not known here")


def test_callers_sharing_a_failed_look_up_each_get_an_error_of_their_own() -> None:
    failure = _NotKnownHere("ca.held.test")
    first, second = _shared(_ReleasedByASecondCaller(threading.current_thread(), failure))
    for error in (first, second):
        assert isinstance(error, OSError), error  # what the callers catch
        assert str(error) == "ca.held.test is not known here"
        assert error.__cause__ is failure  # with the resolver's traceback
    assert first is not second


def test_a_numeric_host_is_answered_in_the_callers_thread() -> None:
    asked: list[tuple[threading.Thread, int]] = []

    def resolver(host: str, port: int, *args: int) -> list[netresolve.AddressInfo]:
        asked.append((threading.current_thread(), args[3]))
        return list(socket.getaddrinfo(host, port, *args))

    for host in ("127.0.0.1", "::1"):
        [info, *_] = netresolve.getaddrinfo(host, 80, pool=POOL, timeout=0.0, resolver=resolver)
        assert info[4][0] == host
    assert [thread for thread, _ in asked] == [threading.current_thread()] * 2
    assert all(flags & socket.AI_NUMERICHOST for _, flags in asked)
