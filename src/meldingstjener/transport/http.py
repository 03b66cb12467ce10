"""ebXML over HTTP(S): POST the MIME message to the partner's endpoint (``POST /ebms`` on ours).

A 2xx answer means the receiving MSH took the message; a body in the answer is a synchronous
signal (SyncReply). Anything else is a :class:`TransportFailure`: connection problems, time-outs,
redirects (not followed), 5xx and 408/425/429 answers are retryable; other 4xx answers mean the
request itself is wrong for that endpoint and are not retried.

The answer's body is read up to ``MAX_REPLY_BYTES`` and within the delivery's time-out: a peer
that trickles its answer, or sends one without end, must not hold a worker for ever or fill its
memory. A larger or slower answer is a retryable failure, like a 5xx.

A failure after the whole request was written (no answer within the time-out, a connection the
partner closed or that broke while we waited for its answer, a 2xx whose body was too slow or
too large) is ``maybe_delivered``: the partner's MSH may have taken the message. One before
that (no connection, a write that broke off or timed out) is not: the partner cannot have a
message it did not get whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx

from meldingstjener.httpbody import BodyTooLarge, BodyTooSlow, read_capped
from meldingstjener.transport.base import (
    Delivery,
    TransportFailure,
    TransportResult,
    body_size,
)

CHUNK = 1024 * 1024
# A synchronous answer is one signal, an Acknowledgment or a MessageError: a few kilobytes
MAX_REPLY_BYTES = 2 * 1024 * 1024
# 4xx answers that say "not now" rather than "never": a proxy that timed out waiting for a
# large upload (408), too early (425), too many requests (429)
_RETRY_LATER = frozenset({408, 425, 429})


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


class _Body:
    """A request's body that knows whether it went out whole: httpx asks for the piece after
    the last one only once the last was written to the connection (its Content-Length is
    set, so nothing follows it on the wire)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.sent = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        self.sent = True


class HttpTransport:
    channel = "http"

    def __init__(self, *, verify: bool | str = True, client: httpx.Client | None = None) -> None:
        self._verify = verify
        self._made = client
        self._making = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        # made at the first send, not with the engine: its TLS context (the CA bundle read and
        # parsed, some 30 ms) is paid by every command that builds an engine and never sends
        if self._made is None:
            with self._making:
                if self._made is None:
                    self._made = httpx.Client(
                        verify=self._verify,
                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                        headers={"User-Agent": "meldingstjener"},
                    )
        return self._made

    def send(self, delivery: Delivery) -> TransportResult:
        headers = {"Content-Type": delivery.content_type, "SOAPAction": '"ebXML"'}
        headers.update(delivery.headers)
        headers["Content-Length"] = str(body_size(delivery.body))
        body = _Body(
            _file_chunks(delivery.body) if isinstance(delivery.body, Path) else (delivery.body,)
        )
        try:
            with self._client.stream(
                "POST",
                delivery.endpoint,
                content=body,
                headers=headers,
                timeout=delivery.timeout_seconds,
            ) as response:
                _check_status(delivery, response)
                reply = _read_reply(delivery, response)
        except httpx.TimeoutException:
            waited = " after the whole message was sent" if body.sent else ""
            raise TransportFailure(
                "timeout",
                f"no answer from {delivery.endpoint} in {delivery.timeout_seconds:g} s{waited}",
                maybe_delivered=body.sent,
            ) from None
        except httpx.TransportError as exc:
            if body.sent:
                raise TransportFailure(
                    "connection-lost",
                    f"the connection to {delivery.endpoint} closed or broke after the whole "
                    f"message was sent, before its answer: {type(exc).__name__}",
                    maybe_delivered=True,
                ) from None
            raise TransportFailure(
                "connect-failed", f"cannot reach {delivery.endpoint}: {type(exc).__name__}"
            ) from None
        return TransportResult(
            reply_content_type=response.headers.get("content-type") if reply else None,
            reply_body=reply or None,
            status_code=response.status_code,
        )

    def close(self) -> None:
        if self._made is not None:
            self._made.close()


def _check_status(delivery: Delivery, response: httpx.Response) -> None:
    """A :class:`TransportFailure` for any answer but 2xx (its body is not read)."""
    status = response.status_code
    if 300 <= status < 400:
        # not followed: the agreement names the endpoint, and a redirect is a change the
        # operator must see (and make), not one to follow silently with a health message
        raise TransportFailure(
            f"http-{status}",
            f"{delivery.endpoint} redirected ({status}) to "
            f"{response.headers.get('location', '(no Location)')[:200]}; the agreement's "
            "endpoint may be out of date",
        )
    if status >= 500 or status in _RETRY_LATER:
        raise TransportFailure(f"http-{status}", f"{delivery.endpoint} answered {status}")
    if not 200 <= status < 300:
        raise TransportFailure(
            f"http-{status}",
            f"{delivery.endpoint} refused the request with {status}",
            retryable=False,
        )


def _read_reply(delivery: Delivery, response: httpx.Response) -> bytes:
    """The answer's body, read in pieces: at most ``MAX_REPLY_BYTES``, and all of it within
    ``delivery.timeout_seconds`` of the answer's start (httpx's time-out is for each read, so
    a trickle of a byte a second never ends by it; the last read may add one time-out)."""
    try:
        return read_capped(
            response, MAX_REPLY_BYTES, deadline=time.monotonic() + delivery.timeout_seconds
        )
    except BodyTooLarge:
        raise TransportFailure(
            "reply-too-large",
            f"{delivery.endpoint} answered with more than {MAX_REPLY_BYTES} bytes; "
            "a synchronous signal is a few kilobytes",
            maybe_delivered=True,  # it answered 2xx: it took the message
        ) from None
    except BodyTooSlow:
        raise TransportFailure(
            "timeout",
            f"{delivery.endpoint} did not finish its answer in {delivery.timeout_seconds:g} s",
            maybe_delivered=True,  # it answered 2xx: it took the message
        ) from None
