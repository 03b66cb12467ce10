"""The pure parts of the SMTP transport: addresses, the environment guard, the size limit (checked
before any connection), dot-stuffing, mail-safety and the re-encoding of binary signals."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meldingstjener.ebxml.mime import Attachment, package, unpackage
from meldingstjener.transport.base import Delivery, TransportFailure
from meldingstjener.transport.smtp import (
    EnvironmentGuard,
    SmtpTransport,
    dot_stuffed,
    mail_address,
    mail_safe,
    reencode_for_mail,
)


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("mailto:8100001@testedi.nhn.no", "8100001@testedi.nhn.no"),
        ("MAILTO:8100001@TestEDI.nhn.no", "8100001@testedi.nhn.no"),
        ("mailto:post%2Bx@edi.nhn.no?subject=x", "post+x@edi.nhn.no"),
        ("8100001@samsvar.nhn.no", "8100001@samsvar.nhn.no"),
    ],
)
def test_mail_address(endpoint: str, address: str) -> None:
    assert mail_address(endpoint) == address


@pytest.mark.parametrize(
    "endpoint", ["mailto:", "http://x/ebms", "mailto:a b@c.no", "mailto:@x.no"]
)
def test_bad_endpoints_are_refused_for_good(endpoint: str) -> None:
    with pytest.raises(TransportFailure) as caught:
        mail_address(endpoint)
    assert caught.value.code == "bad-endpoint"
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("environment", "address", "allowed"),
    [
        ("test", "1@testedi.nhn.no", True),
        ("test", "1@samsvar.nhn.no", True),
        ("test", "1@edi.nhn.no", False),
        ("test", "1@sub.edi.nhn.no", False),
        ("qa", "1@edi.nhn.no", False),
        ("test", "1@example.no", True),
        ("prod", "1@edi.nhn.no", True),
        ("prod", "1@testedi.nhn.no", False),
        ("prod", "1@samsvar.nhn.no", False),
    ],
)
def test_environment_guard(environment: str, address: str, allowed: bool) -> None:
    guard = EnvironmentGuard(environment)
    if allowed:
        guard.check(address)
        return
    with pytest.raises(TransportFailure) as caught:
        guard.check(address)
    assert caught.value.code == "environment-guard"
    assert not caught.value.retryable


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: a connection attempt would show as readable."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        yield server


def _connected(server: socket.socket) -> bool:
    # poll, not select: select refuses a descriptor above 1023, which a long run's worker
    # process may have reached by the time this runs
    watch = select.poll()
    watch.register(server, select.POLLIN)
    return bool(watch.poll(0))


def test_an_oversize_mail_is_refused_before_connecting(
    tmp_path: Path, listener: socket.socket
) -> None:
    big = tmp_path / "big.mime"
    with big.open("wb") as handle:
        handle.truncate(51_200_000)  # sparse: the size counts, the disk does not
    transport = SmtpTransport(
        host="127.0.0.1",
        port=listener.getsockname()[1],
        security="none",
        from_address="8100001@testedi.nhn.no",
    )
    delivery = Delivery("mailto:8200001@testedi.nhn.no", "multipart/related; boundary=x", big)
    with pytest.raises(TransportFailure) as caught:
        transport.send(delivery)
    assert caught.value.code == "too-large"
    assert not caught.value.retryable
    assert "51,200,000" in caught.value.detail
    assert not _connected(listener)


def test_the_guard_refuses_before_connecting(listener: socket.socket) -> None:
    transport = SmtpTransport(
        host="127.0.0.1",
        port=listener.getsockname()[1],
        security="none",
        from_address="8100001@testedi.nhn.no",
    )
    with pytest.raises(TransportFailure) as caught:
        transport.send(Delivery("mailto:8200001@edi.nhn.no", "text/xml", b"<x/>\r\n"))
    assert caught.value.code == "environment-guard"
    assert not _connected(listener)


def test_a_closed_port_is_a_retryable_connect_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends
    transport = SmtpTransport(
        host="127.0.0.1", port=port, security="none", from_address="8100001@testedi.nhn.no"
    )
    with pytest.raises(TransportFailure) as caught:
        transport.send(Delivery("mailto:8200001@testedi.nhn.no", "text/xml", b"<x/>\r\n"))
    assert caught.value.code == "connect-failed"
    assert caught.value.retryable


def test_each_attempt_gets_a_new_message_id() -> None:
    transport = SmtpTransport(host="h", from_address="8100001@testedi.nhn.no")
    delivery = Delivery("mailto:8200001@testedi.nhn.no", "text/xml", b"", ebxml_message_id="m1")
    heads = [transport.render_head(delivery, "8200001@testedi.nhn.no") for _ in range(2)]
    ids = [
        next(line for line in head.split(b"\r\n") if line.startswith(b"Message-Id:"))
        for head in heads
    ]
    assert ids[0] != ids[1]
    assert b'SOAPAction: "ebXML"' in heads[0]
    assert b"From: 8100001@testedi.nhn.no" in heads[0]
    assert heads[0].endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"a\r\n.b\r\n"], b"a\r\n..b\r\n"),
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n"),
        ([b".start\r\n"], b"..start\r\n"),
        ([b"a.\r\nb"], b"a.\r\nb\r\n"),
        ([b"a\r", b"\n.", b"x\r\n"], b"a\r\n..x\r\n"),
    ],
)
def test_dot_stuffing(chunks: list[bytes], expected: bytes) -> None:
    assert b"".join(dot_stuffed(chunks)) == expected


@pytest.mark.parametrize(
    ("chunks", "safe"),
    [
        ([b"abc\r\ndef\r\n"], True),
        ([b"abc\r", b"\ndef\r\n"], True),
        ([b"abc\ndef\r\n"], False),  # bare LF
        ([b"abc\rdef\r\n"], False),  # bare CR
        ([b"\xc3\xa6\r\n"], False),  # 8-bit
        ([b"x" * 998 + b"\r\n"], True),
        ([b"x" * 999 + b"\r\n"], False),
        ([b"x" * 500, b"x" * 499, b"\r\n"], False),  # a long line across chunks
    ],
)
def test_mail_safety(chunks: list[bytes], safe: bool) -> None:
    assert mail_safe(chunks) is safe


def test_a_binary_signal_is_reencoded_with_the_same_content() -> None:
    envelope = b"<SOAP:Envelope>" + b"x" * 5000 + "æ</SOAP:Envelope>".encode()
    body, content_type = package(
        envelope,
        [Attachment("p1@x", "application/pkcs7-mime", bytes(range(256)) * 10)],
        transfer_encoding="binary",
        envelope_content_id="env@x",
    )
    assert not mail_safe([body])
    new_type, new_body = reencode_for_mail(content_type, body)
    assert mail_safe([new_body])
    before, after = unpackage(content_type, body), unpackage(new_type, new_body)
    assert after.envelope_xml == before.envelope_xml
    assert after.start == "env@x"
    assert after.attachment_bytes() == before.attachment_bytes()


class SlowRelay:
    """One SMTP session, scripted: the relay is slow to answer MAIL FROM and slower to answer
    the end of the upload (it scans the mail first), as relays in front of large mail are."""

    def __init__(
        self,
        listener: socket.socket,
        slow_command: float,
        slow_end: float,
        silent_quit: bool = False,
    ) -> None:
        self.listener = listener
        self.slow_command, self.slow_end = slow_command, slow_end
        self.silent_quit = silent_quit
        self.released = threading.Event()  # a silent QUIT is answered by the closing only
        self.accepted = threading.Event()
        self.thread = threading.Thread(target=self._session, daemon=True)
        self.thread.start()

    def _session(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 relay ready\r\n")
            while line := lines.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    connection.sendall(b"250 relay\r\n")
                elif verb == b"MAIL":
                    time.sleep(self.slow_command)  # the slowness under test, not a wait
                    connection.sendall(b"250 ok\r\n")
                elif verb == b"RCPT":
                    connection.sendall(b"250 ok\r\n")
                elif verb == b"DATA":
                    connection.sendall(b"354 go on\r\n")
                    while lines.readline() not in (b".\r\n", b""):
                        pass
                    time.sleep(self.slow_end)
                    self.accepted.set()
                    connection.sendall(b"250 accepted\r\n")
                elif verb == b"QUIT":
                    if self.silent_quit:
                        self.released.wait(timeout=600)
                        return
                    connection.sendall(b"221 bye\r\n")
                    return


def _waiting_a_second(listener: socket.socket) -> SmtpTransport:
    return SmtpTransport(
        host="127.0.0.1",
        port=listener.getsockname()[1],
        security="none",
        from_address="8100001@testedi.nhn.no",
        timeout_seconds=1.0,
    )


def test_a_slow_relay_is_waited_for_as_configured_and_the_end_of_the_upload_longer(
    listener: socket.socket,
) -> None:
    # The delivery's own wait (set for HTTP) is shorter than both answers: the transport's
    # setting governs the commands, and the end of the upload is waited for as RFC 5321 asks.
    # Given up on, the relay had the mail all the same, and the retry sent it again.
    relay = SlowRelay(listener, slow_command=0.5, slow_end=1.5)
    transport = _waiting_a_second(listener)
    delivery = Delivery(
        "mailto:8200001@testedi.nhn.no", "text/xml", b"<x/>\r\n", timeout_seconds=0.2
    )
    assert transport.send(delivery).status_code == 250
    assert relay.accepted.is_set()
    relay.thread.join(timeout=10)


def test_a_relay_that_never_answers_quit_holds_the_send_only_its_step(
    listener: socket.socket,
) -> None:
    # The ten minutes are for the answer to the end of the upload only: a relay that took the
    # mail and then says nothing to QUIT holds the send for one step's wait, not ten minutes.
    relay = SlowRelay(listener, slow_command=0, slow_end=0, silent_quit=True)
    transport = _waiting_a_second(listener)
    delivery = Delivery("mailto:8200001@testedi.nhn.no", "text/xml", b"<x/>\r\n")
    try:
        assert transport.send(delivery).status_code == 250
        assert relay.accepted.is_set()
    finally:
        relay.released.set()
        relay.thread.join(timeout=10)


class RefusingRelay:
    """One SMTP session, scripted: the relay answers the step ``refuse_at`` (greeting, EHLO,
    MAIL, RCPT or the end of DATA) with ``reply``, and every other step as a relay that
    takes the mail."""

    def __init__(self, listener: socket.socket, refuse_at: str, reply: bytes) -> None:
        self.listener, self.refuse_at, self.reply = listener, refuse_at, reply
        self.thread = threading.Thread(target=self._session, daemon=True)
        self.thread.start()

    def _answer(self, step: str, ok: bytes) -> bytes:
        return self.reply + b"\r\n" if step == self.refuse_at else ok

    def _session(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(self._answer("greeting", b"220 relay ready\r\n"))
            if self.refuse_at == "greeting":
                return
            while line := lines.readline():
                verb = line[:4].upper().decode()
                if verb == "DATA":
                    connection.sendall(b"354 go on\r\n")
                    while lines.readline() not in (b".\r\n", b""):
                        pass
                    connection.sendall(self._answer("end", b"250 accepted\r\n"))
                elif verb == "QUIT":
                    connection.sendall(b"221 bye\r\n")
                    return
                else:
                    connection.sendall(self._answer(verb, b"250 ok\r\n"))


@pytest.mark.parametrize(
    ("refuse_at", "reply", "code", "retryable"),
    [
        # about our setup: retried, and said so
        ("greeting", b"554 5.7.1 no SMTP service for you", "smtp-session-refused", True),
        ("EHLO", b"550 5.7.1 client host rejected", "smtp-session-refused", True),
        ("MAIL", b"530 5.7.0 Must issue a STARTTLS command first", "smtp-sender-refused", True),
        ("MAIL", b"550 5.7.1 sender not owned by user", "smtp-sender-refused", True),
        ("EHLO", b"421 4.3.2 busy", "smtp-421", True),
        # about the recipient or the mail: final
        ("MAIL", b"552 5.3.4 message size exceeds fixed limit", "smtp-552", False),
        ("RCPT", b"550 5.1.1 unknown user", "smtp-550", False),
        ("end", b"554 5.6.0 message refused", "smtp-554", False),
    ],
)
def test_whose_5xx_it_is_decides_whether_to_try_again(
    listener: socket.socket, refuse_at: str, reply: bytes, code: str, retryable: bool
) -> None:
    relay = RefusingRelay(listener, refuse_at, reply)
    transport = _waiting_a_second(listener)
    with pytest.raises(TransportFailure) as caught:
        transport.send(Delivery("mailto:8200001@testedi.nhn.no", "text/xml", b"<x/>\r\n"))
    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    assert reply.split(b" ", 1)[1].decode() in caught.value.detail
    if code.startswith("smtp-s"):
        assert "[smtp] settings" in caught.value.detail
    relay.thread.join(timeout=10)
    assert not relay.thread.is_alive()  # the connection was closed, not left to the collector


def test_a_relay_that_does_not_know_ehlo_is_greeted_with_helo(listener: socket.socket) -> None:
    relay = RefusingRelay(listener, "EHLO", b"502 5.5.2 command not recognized")
    transport = _waiting_a_second(listener)
    delivery = Delivery("mailto:8200001@testedi.nhn.no", "text/xml", b"<x/>\r\n")
    assert transport.send(delivery).status_code == 250
    relay.thread.join(timeout=10)


class DroppingRelay:
    """One SMTP session, scripted: the relay closes the connection without an answer at the
    step ``drop_at`` (``RCPT``, or ``end``: once it has read the whole mail)."""

    def __init__(self, listener: socket.socket, drop_at: str) -> None:
        self.listener, self.drop_at = listener, drop_at
        self.read_whole = threading.Event()
        self.thread = threading.Thread(target=self._session, daemon=True)
        self.thread.start()

    def _session(self) -> None:
        connection, _ = self.listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 relay ready\r\n")
            while line := lines.readline():
                verb = line[:4].upper().decode()
                if verb == self.drop_at:
                    return
                if verb == "DATA":
                    connection.sendall(b"354 go on\r\n")
                    while lines.readline() not in (b".\r\n", b""):
                        pass
                    self.read_whole.set()
                    if self.drop_at == "end":
                        return
                connection.sendall(b"250 ok\r\n")


@pytest.mark.parametrize(("drop_at", "maybe_delivered"), [("RCPT", False), ("end", True)])
def test_a_drop_after_the_whole_mail_may_have_delivered_it(
    listener: socket.socket, drop_at: str, maybe_delivered: bool
) -> None:
    # Once the end of the DATA is out, the relay may have taken the mail whatever befalls its
    # answer: the give-up must not say "NOT delivered" of it.
    relay = DroppingRelay(listener, drop_at)
    transport = _waiting_a_second(listener)
    with pytest.raises(TransportFailure) as caught:
        transport.send(Delivery("mailto:8200001@testedi.nhn.no", "text/xml", b"<x/>\r\n"))
    relay.thread.join(timeout=10)
    assert relay.read_whole.is_set() is maybe_delivered
    assert caught.value.code == "connection-lost" and caught.value.retryable
    assert caught.value.maybe_delivered is maybe_delivered
    assert ("after the whole mail was sent" in caught.value.detail) is maybe_delivered
