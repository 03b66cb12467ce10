"""The HTTP transport tells a failure after the whole message was sent (the partner's MSH may
have taken it) from one before (it cannot have it): ``TransportFailure.maybe_delivered``, which
decides whether the alert of a message given up says "NOT delivered" or "ask the receiver".
A partner on a real loopback socket plays each case."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from meldingstjener.transport.base import Delivery, TransportFailure
from meldingstjener.transport.http import HttpTransport

TIMEOUT = 0.5
# how long a stalling partner waits for the test to release it: reached only when the sender
# waits for the answer longer than its time-out (a fault of its own)
GIVE_UP = 10.0
# larger than what the loopback's socket buffers take in without the partner reading
LARGE = 16 * 1024 * 1024


class _Partner:
    """One connection, scripted by ``then``: ``stall`` reads the whole request and answers
    nothing until released; ``drop`` reads the whole request and closes; ``refuse`` reads the
    request's head only and closes, its body unread."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.read_whole = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._session, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/ebms"

    def _session(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as stream:
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if self.then == "refuse":
                return
            stream.read(length)
            self.read_whole.set()
            if self.then == "stall":
                self.release.wait(GIVE_UP)

    def close(self) -> None:
        self.release.set()
        self.thread.join(timeout=GIVE_UP)
        self.listener.close()


@pytest.fixture
def partner(request: pytest.FixtureRequest) -> Iterator[_Partner]:
    partner = _Partner(request.param)
    yield partner
    partner.close()


def _send(endpoint: str, body: bytes = b"<message/>") -> TransportFailure:
    transport = HttpTransport()
    try:
        with pytest.raises(TransportFailure) as failure:
            transport.send(Delivery(endpoint, "multipart/related", body, timeout_seconds=TIMEOUT))
    finally:
        transport.close()
    return failure.value


@pytest.mark.parametrize("partner", ["stall"], indirect=True)
def test_no_answer_to_a_whole_message_may_have_delivered_it(partner: _Partner) -> None:
    failure = _send(partner.endpoint)
    assert partner.read_whole.is_set()  # the partner has the message, unanswered
    assert failure.code == "timeout" and failure.retryable
    assert failure.maybe_delivered
    assert "after the whole message was sent" in failure.detail


@pytest.mark.parametrize("partner", ["drop"], indirect=True)
def test_a_connection_closed_after_the_whole_message_may_have_delivered_it(
    partner: _Partner,
) -> None:
    failure = _send(partner.endpoint)
    assert partner.read_whole.is_set()
    assert failure.code == "connection-lost" and failure.retryable
    assert failure.maybe_delivered


@pytest.mark.parametrize("partner", ["refuse"], indirect=True)
def test_a_connection_closed_before_the_message_was_whole_did_not_deliver_it(
    partner: _Partner,
) -> None:
    # the body is larger than the socket buffers: its writing breaks off at the close
    failure = _send(partner.endpoint, b"x" * LARGE)
    assert not partner.read_whole.is_set()
    assert failure.code == "connect-failed" and failure.retryable
    assert not failure.maybe_delivered


def test_no_connection_did_not_deliver_it() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failure = _send(f"http://127.0.0.1:{port}/ebms")
    assert failure.code == "connect-failed" and not failure.maybe_delivered
