"""The HTTP client webhook calls are made with: every call ends by its deadline, and connects
only to addresses the target policy allows.

httpx's time-out bounds each read, write and connect on its own: a receiver that trickles its
answer a byte at a time (its status line, its headers or its body) holds the call as long as it
likes, and with it the dispatcher. The client made here connects through a network backend whose
every operation is bounded by the deadline of the call under way (:func:`call_deadline`, kept
in a context variable: calls made at once in several threads each see their own), so a call
ends by it however the receiver paces its bytes. The body of the answer is the caller's to read
in pieces, capped (:func:`meldingstjener.httpbody.read_capped`).

The backend also resolves each host itself, checks every address it resolves to with the
:class:`~meldingstjener.integration.webhook_targets.TargetPolicy` and connects to the checked
address (TLS still verifies, and the request still names, the URL's host): the address checked
is the one connected to, whatever the name resolves to between registration and call.

That lookup is part of the connect: the connect time-out (cut to what is left of the call's
deadline) is one deadline for the lookup and the connects to the addresses found, each given
what is left of it. ``getaddrinfo`` takes no time-out, so it is made through
:func:`meldingstjener.netresolve.getaddrinfo`, which waits for it no longer. A resolver that
hangs fails the call as a connect that hangs does (``ConnectTimeout``).
"""

from __future__ import annotations

import contextvars
import ssl
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpcore
import httpx

from meldingstjener.integration.webhook_targets import TargetPolicy
from meldingstjener.netresolve import ResolveTimeout

# the time.monotonic() by which the call under way in this thread must be over
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "webhook_call_deadline", default=None
)

SocketOption = typing.Any  # httpcore's SOCKET_OPTION tuples, passed on as they come


@contextmanager
def call_deadline(deadline: float) -> Iterator[None]:
    """Bound every network operation of the calls made inside by ``deadline`` (monotonic)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _bounded(timeout: float | None, too_late: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the call's deadline; ``too_late`` once it passed."""
    return _left(_DEADLINE.get(), timeout, too_late, "the webhook call's deadline has passed")


def _left(
    deadline: float | None, timeout: float | None, too_late: type[Exception], why: str
) -> float | None:
    """``timeout`` cut to what is left until ``deadline`` (monotonic; None: no deadline), and
    ``too_late`` (saying ``why``) once that passed."""
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise too_late(why)
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the deadline of the call using it (a kept-alive
    connection serves calls with deadlines of their own, so it is read at each operation).

    A plain socket's read returns as soon as any byte comes; the ssl module's reads, writes and
    handshake each take the socket's time-out as a deadline for the whole operation: a time-out
    cut to what is left of the call's bounds the call however the bytes are paced."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Connects to the addresses the policy allows for a host, resolved and connected to within
    the call's deadline."""

    def __init__(self, policy: TargetPolicy) -> None:
        self._policy = policy
        self._plain = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        # One deadline for the whole connect, the lookup its first step: each step is given
        # what is left of it, not the connect time-out again (a slow name server, then an
        # address that does not answer, took twice the time-out).
        limit = _bounded(timeout, httpcore.ConnectTimeout)
        connect_by = None if limit is None else time.monotonic() + limit
        too_late = f"not connected to {host} within the connect time-out"
        # TargetRefused passes through httpcore and httpx as it is: the caller records it
        try:
            addresses = self._policy.addresses(host, port, limit)
        except ResolveTimeout as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:  # in the resolver's order, as a plain connect tries them
            bounded = _left(connect_by, limit, httpcore.ConnectTimeout, too_late)
            try:
                # an address, not a name: httpcore's backend resolves nothing more
                inner = self._plain.connect_tcp(
                    address, port, bounded, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(inner)
        assert failure is not None  # addresses() returns one at least
        raise failure


class _Transport(httpx.HTTPTransport):
    """httpx's own transport over the backend above (httpx takes no backend of its own)."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__()
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            # httpx keeps its pool elsewhere now: calls would go without the backend's bounds
            raise RuntimeError("httpx.HTTPTransport has no _pool to replace; update webhook_http")
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


def webhook_client(timeout_seconds: float, policy: TargetPolicy) -> httpx.Client:
    """The client for webhook calls: each phase within ``timeout_seconds``, the whole call
    within the deadline given by :func:`call_deadline`, to addresses ``policy`` allows. No
    proxy from the environment (a transport of our own is given; through a proxy the address
    connected to would be the proxy's) and no redirects: a call goes to the URL registered."""
    return httpx.Client(
        transport=_Transport(_GuardedBackend(policy)),
        timeout=timeout_seconds,
        follow_redirects=False,
    )
