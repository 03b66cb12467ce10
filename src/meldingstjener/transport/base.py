"""The transport interface: what the engine needs from any channel.

A transport moves one packaged ebXML message (MIME bytes and its Content-Type) to an endpoint and
reports what happened. It knows nothing about envelopes, signatures or the store; receiving is the
job of each channel's entry point (the HTTP endpoint, the mailbox poller, the AMQP consumer), which
hands the bytes to the engine.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from meldingstjener.model.privacy import passed_through

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One message to move: the endpoint, the MIME Content-Type, and the body (bytes or a file).

    ``endpoint`` is channel-specific: an http(s) URL, a ``mailto:`` address, a queue name.
    ``ebxml_message_id`` and the HER-ids let a channel frame the message (a mail's Message-Id,
    AMQP properties) without reading the envelope.
    """

    endpoint: str
    content_type: str
    body: bytes | Path
    headers: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float = 30.0
    ebxml_message_id: str | None = None
    from_her_id: str | None = None
    to_her_id: str | None = None


@dataclass(frozen=True)
class TransportResult:
    """The receiving side took the message. A synchronous reply (a signal) may come with it."""

    reply_content_type: str | None = None
    reply_body: bytes | None = None
    status_code: int | None = None


class TransportFailure(Exception):
    """The message did not reach the other side; ``retryable`` says whether trying again may help.

    ``code`` is a stable short code for the message log (e.g. ``connect-failed``, ``timeout``,
    ``http-503``), ``detail`` a plain sentence without patient data.

    ``maybe_delivered``: the failure came after the whole message was sent (a time-out or a
    broken connection while waiting for the answer, an HTTP 2xx whose answer's body was too slow
    or too large, no answer to the end of a mail's DATA): the other side may have taken it, and
    a resend may be a duplicate there. False where the failure came before the message was
    whole on the other side (no connection, a write that broke off) or the answer said it was
    not taken (a 5xx, a 4xx).
    """

    def __init__(
        self, code: str, detail: str, *, retryable: bool = True, maybe_delivered: bool = False
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retryable = retryable
        self.maybe_delivered = maybe_delivered


def send_once(transport: Transport, delivery: Delivery) -> TransportResult:
    """``transport.send``, with any error it did not foresee (an endpoint the HTTP library
    cannot parse, say) made a final :class:`TransportFailure`. Left to the worker, such an error
    would be retried every 30 s for ever: no attempt counted, no giving up, no alert."""
    try:
        return transport.send(delivery)
    except TransportFailure:
        raise
    except Exception as exc:
        log.error(
            "sending to %s failed unexpectedly (%s)\n%s",
            delivery.endpoint,
            type(exc).__name__,
            passed_through(exc),
        )
        raise TransportFailure(
            "transport-error",
            f"sending to {delivery.endpoint} failed: {type(exc).__name__}",
            retryable=False,
        ) from exc


def tls_failure(exc: ssl.SSLError) -> str:
    """Why a TLS connection failed, as a failure's detail tells it: OpenSSL's reason and, for a
    certificate it did not accept, why not ("CERTIFICATE_VERIFY_FAILED (self-signed
    certificate)", "... (certificate has expired)", "... (Hostname mismatch, ...)"), which the
    reason alone does not say, and which tells the operator whether ca_file or the host is
    wrong."""
    reason = exc.reason or type(exc).__name__
    verify = getattr(exc, "verify_message", None)  # ssl.SSLCertVerificationError only
    return f"{reason} ({verify})" if verify else str(reason)


def body_missing(exc: OSError) -> TransportFailure:
    """The stored wire form cannot be read. Retryable: the payload directory may be a network
    share that is away for a while (a share that is not mounted shows an empty folder, so
    even "no such file" may pass), and a message given up for that is lost for good, where a
    retry costs one of the agreement's Retries. A file that is really gone is given up when
    the Retries or PersistDuration run out, as any failed send is. A folder that is not the
    store's at all is refused when serve starts (``store/identity.py``)."""
    return TransportFailure(
        "body-missing", f"the stored message cannot be read: {exc.strerror}", retryable=True
    )


def body_size(body: bytes | Path) -> int:
    """The size of what a delivery sends; :func:`body_missing` when its file is gone."""
    if not isinstance(body, Path):
        return len(body)
    try:
        return body.stat().st_size
    except OSError as exc:
        raise body_missing(exc) from None


class Transport(Protocol):
    """A channel. ``send`` raises :class:`TransportFailure` when the message did not arrive."""

    channel: str

    def send(self, delivery: Delivery) -> TransportResult: ...

    def close(self) -> None: ...
