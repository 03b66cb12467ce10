"""Host names resolved within a deadline, for outgoing calls that must end by one.

``socket.getaddrinfo`` takes no time-out: it waits for the system resolver, which gives up only
after its time-out times its attempts times the name servers (resolv.conf's defaults: 5 s, 2
and up to 3, half a minute). A CRL or OCSP fetch for a message being sent, or a webhook call,
bounded by a deadline in everything else, would be held that long by a resolver that hangs.

:func:`getaddrinfo` makes the look-up in a daemon thread and waits for it at most the time
given; when that runs out it raises :class:`ResolveTimeout` (a ``TimeoutError``, so an
``OSError``) and the caller goes on. A resolver call cannot be stopped, so its thread is left to
end by the resolver's own time-out: a daemon thread (a process may exit meanwhile) that only
waits, and whose answer is dropped, or taken by a caller that asked the same meanwhile. So that
a resolver that hangs does not gather threads, a question asked while a look-up of it is under
way waits for that look-up (as the payload marker's read does, :mod:`meldingstjener.store.
identity`), and at most :data:`MAX_PENDING` look-ups of one *pool* are under way at once:
beyond that a new question of the pool is refused as timed out at once. Each user of the
helper asks in a pool of its own (:data:`WEBHOOKS`, :data:`REVOCATION`), so that the names one
user's callers choose (a webhook's host is an API client's) cannot take the look-ups another
needs (a CA's CRL or OCSP host, checked for a message being sent).

Each caller gets an answer of its own, and a failed look-up's error as one of its own: of the
class callers catch, with the original as its cause (a look-up's error is shared by all who
waited for it; raised in several threads at once, one exception would gather their tracebacks).

A numeric host (an IP address) is answered in the caller's thread: the resolver asks nobody for
it (``AI_NUMERICHOST``).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]
Resolver = Callable[..., Sequence[AddressInfo]]
"""socket.getaddrinfo's signature: (host, port, family, type, proto, flags) -> address infos."""

# Look-ups under way at most in one pool, of different questions: each one a thread that may
# wait for the resolver's whole time-out. Far more than the webhooks called at once, or the
# CAs' hosts.
MAX_PENDING = 32
# The pools: the users of this helper, each bounded on its own
WEBHOOKS = "webhooks"
REVOCATION = "revocation"
# The classes a failed look-up's error reaches each caller as, the first the original is: what
# callers catch (OSError, gaierror for its code, UnicodeError for a name IDNA refuses, ValueError),
# and TypeError (a port of a wrong type: a caller's bug, kept as one).
_RAISED_AS: tuple[type[Exception], ...] = (
    socket.gaierror,
    OSError,
    UnicodeError,
    ValueError,
    TypeError,
)


class ResolveTimeout(TimeoutError):
    """A host name was not resolved within the time given (or too many look-ups hang)."""


@dataclass(frozen=True)
class _Question:
    pool: str
    host: str
    port: int | str | None
    family: int
    type: int
    proto: int
    flags: int
    resolver: Resolver


class _LookUp:
    """One look-up in a daemon thread, its answer or its error kept for whoever waits."""

    def __init__(self, question: _Question) -> None:
        self.question = question
        self.done = threading.Event()
        self.answer: list[AddressInfo] = []
        self.error: Exception | None = None
        threading.Thread(target=self._run, name="netresolve", daemon=True).start()

    def _run(self) -> None:
        asked = self.question
        try:
            self.answer = list(
                asked.resolver(
                    asked.host, asked.port, asked.family, asked.type, asked.proto, asked.flags
                )
            )
        except Exception as exc:  # the caller's to see: gaierror, UnicodeError, ...
            self.error = exc
        finally:
            self.done.set()
            _forget(self)


_pending: dict[_Question, _LookUp] = {}
_under_way: Counter[str] = Counter()  # of _pending, in each pool
_pending_lock = threading.Lock()


def getaddrinfo(
    host: str,
    port: int | str | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
    *,
    pool: str,
    timeout: float | None,
    resolver: Resolver | None = None,
) -> list[AddressInfo]:
    """``socket.getaddrinfo``'s answer within ``timeout`` seconds (None: as long as the resolver
    takes), else :class:`ResolveTimeout`; asked in ``pool``, whose look-ups under way are
    bounded on their own (:data:`WEBHOOKS`, :data:`REVOCATION`). ``resolver`` stands for
    ``socket.getaddrinfo``, which is looked up at each call (so one put in its place, by a
    test, is used too)."""
    resolve: Resolver = resolver or socket.getaddrinfo
    if _numeric(host):
        return list(resolve(host, port, family, type, proto, flags | socket.AI_NUMERICHOST))
    if timeout is None:
        return list(resolve(host, port, family, type, proto, flags))
    look_up = _look_up(_Question(pool, host, port, family, type, proto, flags, resolve))
    if not look_up.done.wait(max(0.0, timeout)):
        raise ResolveTimeout(f"the host name {host} was not resolved within {timeout:.3g} s")
    if look_up.error is not None:
        raise _own_error(look_up.error) from look_up.error
    return list(look_up.answer)  # the callers sharing the look-up may each change theirs


def _own_error(error: Exception) -> Exception:
    """One caller's own error for a look-up's ``error``: of the first of :data:`_RAISED_AS`
    that it is, with its words (and a gaierror's or OSError's code). Not a copy of it: an
    exception is made again from its arguments, which one of a class of its own may take
    otherwise (its words changed, or no copy made at all)."""
    raised_as = next((kind for kind in _RAISED_AS if isinstance(error, kind)), Exception)
    if isinstance(error, OSError) and error.errno is not None and error.strerror is not None:
        return raised_as(error.errno, error.strerror)
    return raised_as(str(error))


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _look_up(question: _Question) -> _LookUp:
    """The look-up under way for ``question``, or a new one in its pool."""
    with _pending_lock:
        look_up = _pending.get(question)
        if look_up is not None:
            return look_up
        under_way = _under_way[question.pool]
        if under_way >= MAX_PENDING:
            raise ResolveTimeout(
                f"the host name {question.host} was not resolved: {under_way} look-ups of "
                f"{question.pool} are under way already (the name servers do not answer?)"
            )
        look_up = _pending[question] = _LookUp(question)
        _under_way[question.pool] += 1
        return look_up


def _forget(look_up: _LookUp) -> None:
    """A look-up that ended is no longer joined: the next question asks anew."""
    with _pending_lock:
        if _pending.get(look_up.question) is look_up:
            del _pending[look_up.question]
            _under_way[look_up.question.pool] -= 1
