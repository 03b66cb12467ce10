"""ebXML over HTTP(S): POST the MIME message to the partner's endpoint (``POST /ebms`` on ours).

A 2xx answer means the receiving MSH took the message; a body in the answer is a synchronous
signal (SyncReply). Anything else is a :class:`TransportFailure`: connection problems, time-outs
and 5xx/429 answers are retryable; other 4xx answers mean the request itself is wrong for that
endpoint and are not retried blindly (they still go through the agreement's retry policy if the
engine decides so).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from meldingstjener.transport.base import (
    Delivery,
    TransportFailure,
    TransportResult,
    body_size,
)

CHUNK = 1024 * 1024


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


class HttpTransport:
    channel = "http"

    def __init__(self, *, verify: bool | str = True, client: httpx.Client | None = None) -> None:
        self._client = client or httpx.Client(
            verify=verify,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers={"User-Agent": "meldingstjener"},
        )

    def send(self, delivery: Delivery) -> TransportResult:
        headers = {"Content-Type": delivery.content_type, "SOAPAction": '"ebXML"'}
        headers.update(delivery.headers)
        if isinstance(delivery.body, Path):
            headers["Content-Length"] = str(body_size(delivery.body))
            content: bytes | Iterator[bytes] = _file_chunks(delivery.body)
        else:
            content = delivery.body
        try:
            response = self._client.post(
                delivery.endpoint,
                content=content,
                headers=headers,
                timeout=delivery.timeout_seconds,
            )
        except httpx.TimeoutException:
            raise TransportFailure(
                "timeout", f"no answer from {delivery.endpoint} in {delivery.timeout_seconds:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise TransportFailure(
                "connect-failed", f"cannot reach {delivery.endpoint}: {type(exc).__name__}"
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransportFailure(
                f"http-{response.status_code}",
                f"{delivery.endpoint} answered {response.status_code}",
            )
        if response.status_code >= 400:
            raise TransportFailure(
                f"http-{response.status_code}",
                f"{delivery.endpoint} refused the request with {response.status_code}",
                retryable=False,
            )
        body = response.content
        return TransportResult(
            reply_content_type=response.headers.get("content-type") if body else None,
            reply_body=body or None,
            status_code=response.status_code,
        )

    def close(self) -> None:
        self._client.close()
