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
identity`), and at most :data:`MAX_PENDING` look-ups are under way at once: beyond that a new
question is refused as timed out at once.

A numeric host (an IP address) is answered in the caller's thread: the resolver asks nobody for
it (``AI_NUMERICHOST``).
"""

from __future__ import annotations

import copy
import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]
Resolver = Callable[..., Sequence[AddressInfo]]
"""socket.getaddrinfo's signature: (host, port, family, type, proto, flags) -> address infos."""

# Look-ups under way at most, of different questions: each one a thread that may wait for the
# resolver's whole time-out. Far more than the webhooks called at once and the CAs' hosts.
MAX_PENDING = 32


class ResolveTimeout(TimeoutError):
    """A host name was not resolved within the time given (or too many look-ups hang)."""


@dataclass(frozen=True)
class _Question:
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
_pending_lock = threading.Lock()


def getaddrinfo(
    host: str,
    port: int | str | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
    *,
    timeout: float | None,
    resolver: Resolver | None = None,
) -> list[AddressInfo]:
    """``socket.getaddrinfo``'s answer within ``timeout`` seconds (None: as long as the resolver
    takes), else :class:`ResolveTimeout`. ``resolver`` stands for ``socket.getaddrinfo``, which
    is looked up at each call (so one put in its place, by a test, is used too)."""
    resolve: Resolver = resolver or socket.getaddrinfo
    if _numeric(host):
        return list(resolve(host, port, family, type, proto, flags | socket.AI_NUMERICHOST))
    if timeout is None:
        return list(resolve(host, port, family, type, proto, flags))
    look_up = _look_up(_Question(host, port, family, type, proto, flags, resolve))
    if not look_up.done.wait(max(0.0, timeout)):
        raise ResolveTimeout(f"the host name {host} was not resolved within {timeout:.3g} s")
    if look_up.error is not None:
        # a copy: callers sharing the look-up raise it at once, each with its own traceback
        raise copy.copy(look_up.error)
    return look_up.answer


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _look_up(question: _Question) -> _LookUp:
    """The look-up under way for ``question``, or a new one."""
    with _pending_lock:
        look_up = _pending.get(question)
        if look_up is not None:
            return look_up
        if len(_pending) >= MAX_PENDING:
            raise ResolveTimeout(
                f"the host name {question.host} was not resolved: {len(_pending)} look-ups "
                "are under way already (the name servers do not answer?)"
            )
        look_up = _pending[question] = _LookUp(question)
        return look_up


def _forget(look_up: _LookUp) -> None:
    """A look-up that ended is no longer joined: the next question asks anew."""
    with _pending_lock:
        if _pending.get(look_up.question) is look_up:
            del _pending[look_up.question]
