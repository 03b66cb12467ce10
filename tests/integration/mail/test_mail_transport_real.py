"""SmtpTransport and MailboxCollector against the real local Postfix and Dovecot: STARTTLS with
login, TLS and plain; POP3 and IMAP; what is deleted and what stays; SMTP error classes."""

from __future__ import annotations

import dataclasses
import imaplib
import random
import re
import ssl
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
from mailtest_support import (
    PASSWORD,
    MailSite,
    address,
    drop_mail,
    mailbox_count,
    wait_for_mail,
)

from meldingstjener.ebxml.mime import Attachment, package, unpackage_message
from meldingstjener.engine.mail_channel import FAILED_COLLECTIONS_BEFORE_ALERT, MailCollectorThread
from meldingstjener.transport import mailbox
from meldingstjener.transport.base import Delivery, TransportFailure
from meldingstjener.transport.mailbox import MailboxCollector, Quarantine
from meldingstjener.transport.smtp import SmtpTransport

SENDER = "8300001"
BOX = "8300003"


def _transport(context: ssl.SSLContext, **kwargs: object) -> SmtpTransport:
    options: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 587,
        "security": "starttls",
        "username": address(SENDER),
        "password": PASSWORD,
        "from_address": address(SENDER),
        "ssl_context": context,
    }
    options.update(kwargs)
    return SmtpTransport(**options)  # type: ignore[arg-type]


def _collector(context: ssl.SSLContext, protocol: str, security: str) -> MailboxCollector:
    return MailboxCollector(
        protocol=protocol,  # type: ignore[arg-type]
        host="127.0.0.1",
        security=security,
        username=address(BOX),
        password=PASSWORD,
        ssl_context=context,
    )


def _message(payload: bytes) -> tuple[bytes, str]:
    return package(b"<SOAP:Envelope/>", [Attachment("p@x", "application/pkcs7-mime", payload)])


@pytest.mark.parametrize(
    ("protocol", "security"),
    [("pop3", "tls"), ("pop3", "starttls"), ("imap", "tls"), ("imap", "starttls")],
)
def test_sent_mail_is_collected_unchanged_and_deleted(
    tls_context: ssl.SSLContext,
    fresh_boxes: list[str],
    tmp_path: Path,
    protocol: str,
    security: str,
) -> None:
    fresh_boxes.append(address(BOX))
    payload = b".a line that starts with a dot\r\n" * 3 + bytes(range(256)) * 100
    body, content_type = _message(payload)
    wire = tmp_path / "wire.mime"
    wire.write_bytes(body)
    delivery = Delivery(f"mailto:{address(BOX)}", content_type, wire, ebxml_message_id="m-1")
    transport = _transport(tls_context)
    transport.send(delivery)
    transport.send(delivery)  # a resend of the same ebXML message: a second, distinct mail
    wait_for_mail(address(BOX), 2, tls_context)

    collected: list[bytes] = []
    result = _collector(tls_context, protocol, security).collect_once(
        lambda mail: collected.append(mail.read())
    )

    assert (result.found, result.delivered, result.kept) == (2, 2, 0)
    mails = [unpackage_message(raw) for raw in collected]
    assert all(m.attachment_bytes() == {"p@x": payload} for m in mails)
    assert all(m.headers.get("soapaction") == '"ebXML"' for m in mails)
    assert mails[0].message_id != mails[1].message_id
    assert mailbox_count(address(BOX), tls_context) == 0


def _size_in_box(context: ssl.SSLContext) -> int:
    with imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=context) as session:
        session.login(address(BOX), PASSWORD)
        session.select("INBOX", readonly=True)
        _, data = session.fetch("1", "(RFC822.SIZE)")
        return int(str(data[0]).rsplit("RFC822.SIZE ", 1)[1].rstrip(")'"))


def test_imap_fetches_a_mail_in_pieces_and_keeps_it_whole(
    tls_context: ssl.SSLContext,
    fresh_boxes: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh_boxes.append(address(BOX))
    payload = bytes(range(256)) * 400
    body, content_type = _message(payload)
    delivery = Delivery(f"mailto:{address(BOX)}", content_type, body, ebxml_message_id="m-2")
    collected: list[bytes] = []
    for piece in ("the whole size", 997):  # one piece of exactly its size; many odd pieces
        _transport(tls_context).send(delivery)
        wait_for_mail(address(BOX), 1, tls_context)
        size = _size_in_box(tls_context)
        monkeypatch.setattr(mailbox, "FETCH_PIECE", size if isinstance(piece, str) else piece)
        collected.clear()
        result = _collector(tls_context, "imap", "tls").collect_once(
            lambda mail: collected.append(mail.read())
        )
        assert result.delivered == 1 and len(collected[0]) == size
        assert unpackage_message(collected[0]).attachment_bytes() == {"p@x": payload}


@pytest.mark.parametrize("pop3_piece", [64 * 1024, 7, 2])
def test_pop3_and_imap_collect_a_7bit_mail_byte_for_byte(
    tls_context: ssl.SSLContext,
    fresh_boxes: list[str],
    monkeypatch: pytest.MonkeyPatch,
    pop3_piece: int,
) -> None:
    """Lines that start with a dot (doubled on the wire, RFC 1939), a lone dot inside the
    text, and a line far over poplib's 2048-byte limit (an envelope on one line): both
    protocols give the body exactly as it was sent, also when a POP3 line comes in pieces
    that split a CRLF."""
    monkeypatch.setattr(mailbox, "_POP3_PIECE", pop3_piece)
    fresh_boxes.append(address(BOX))
    body = (
        b".a line that starts with a dot\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"<SOAP:Envelope>" + b"x" * 10_000 + b"</SOAP:Envelope>\r\n"
        b"last line\r\n"
    )
    mail = b"Message-Id: <dots@x>\r\nSubject: dots\r\n\r\n" + body
    collected: list[bytes] = []
    for protocol in ("pop3", "imap"):
        drop_mail(address(BOX), mail)
        wait_for_mail(address(BOX), 1, tls_context)
        result = _collector(tls_context, protocol, "tls").collect_once(
            lambda handed: collected.append(handed.read())
        )
        assert result.delivered == 1, result.problems
    assert [whole.split(b"\r\n\r\n", 1)[1] for whole in collected] == [body, body]


def test_a_spool_directory_that_cannot_be_made_is_a_disk_problem(
    tls_context: ssl.SSLContext, tmp_path: Path
) -> None:
    collector = _collector(tls_context, "pop3", "tls")
    (tmp_path / "a-file").write_text("not a directory")
    collector.spool_dir = tmp_path / "a-file" / "mail-spool"
    with pytest.raises(TransportFailure) as caught:
        collector.collect_once(lambda mail: None)
    assert caught.value.code == "mail-spool"


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_a_mail_over_the_limit_stays_in_the_box_unread(
    tls_context: ssl.SSLContext, fresh_boxes: list[str], protocol: str
) -> None:
    fresh_boxes.append(address(BOX))
    drop_mail(address(BOX), b"Message-Id: <small@x>\r\nSubject: s\r\n\r\nsmall\r\n")
    drop_mail(address(BOX), b"Message-Id: <big@x>\r\nSubject: b\r\n\r\n" + b"x" * 20_000)
    wait_for_mail(address(BOX), 2, tls_context)
    collector = _collector(tls_context, protocol, "tls")
    collector.max_mail_bytes = 10_000
    handed: list[bytes] = []
    result = collector.collect_once(lambda mail: handed.append(mail.read()))
    assert (result.delivered, result.too_large) == (1, 1)
    assert b"small" in handed[0] and 20_000 < result.large_sizes[0] < 21_000
    assert mailbox_count(address(BOX), tls_context) == 1
    collector.max_mail_bytes = None
    result = collector.collect_once(lambda mail: handed.append(mail.read()))
    assert (result.delivered, result.too_large) == (1, 0) and b"x" * 20_000 in handed[1]


def test_a_large_mail_first_in_a_pop3_box_does_not_hold_the_others_back(
    tls_context: ssl.SSLContext, fresh_boxes: list[str]
) -> None:
    # LIST gives the oldest first: the mail left for its size is first in every later batch
    fresh_boxes.append(address(BOX))
    drop_mail(address(BOX), b"Message-Id: <big@x>\r\n\r\n" + b"x" * 20_000)
    wait_for_mail(address(BOX), 1, tls_context)
    for number in range(5):
        drop_mail(address(BOX), f"Message-Id: <s{number}@x>\r\n\r\nsmall\r\n".encode())
    wait_for_mail(address(BOX), 6, tls_context)
    collector = _collector(tls_context, "pop3", "tls")
    collector.max_mail_bytes, collector.batch = 10_000, 2
    handed: list[bytes] = []
    result = collector.collect_once(lambda mail: handed.append(mail.read()))
    assert (result.delivered, result.too_large, len(result.large_sizes)) == (5, 1, 1)
    assert mailbox_count(address(BOX), tls_context) == 1


def test_a_box_whose_search_answer_is_longer_than_imaplib_reads_is_searched_in_windows(
    tls_context: ssl.SSLContext, fresh_boxes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """imaplib refuses an answer line over ``imaplib._MAXLINE`` (1,000,000) bytes, and one
    SEARCH of a box of some 100,000 mails is such a line: the box could never be collected
    again. Here the limit is made small (1,000 bytes) and the box holds 300 mails, whose one
    SEARCH answer is longer than that; the windows hold the answers under it."""
    import smtplib

    fresh_boxes.append(address(BOX))
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as server:
        for number in range(300):
            server.sendmail(
                "dropper@" + address(BOX).partition("@")[2],
                [address(BOX)],
                f"Message-Id: <w{number}@x>\r\n\r\nmail {number}\r\n".encode(),
            )
    wait_for_mail(address(BOX), 300, tls_context, timeout=120)
    # oldest first: the order of the UIDs (Postfix may deliver them out of their sending order)
    session = imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=tls_context)
    session.login(address(BOX), PASSWORD)
    session.select("INBOX", readonly=True)
    _, data = session.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    session.logout()
    told = [item for item in data if isinstance(item, tuple)]
    by_uid = sorted((int(head.split(b"UID ")[1].split()[0]), body.strip()) for head, body in told)
    oldest_first = [message_id for _, message_id in by_uid]
    assert len(oldest_first) == 300

    monkeypatch.setattr(imaplib, "_MAXLINE", 1_000)
    monkeypatch.setattr(mailbox, "SEARCH_WINDOW", 50)  # 50 UIDs and spaces: under 1,000 bytes
    collector = _collector(tls_context, "imap", "tls")
    collector.max_mail_bytes = 10_000  # SEARCH LARGER goes in windows too
    handed: list[bytes] = []
    result = collector.collect_once(lambda mail: handed.append(mail.read()))
    assert (result.found, result.delivered) == (300, 300)
    message_ids = [re.search(rb"^Message-Id: <w\d+@x>", mail, re.M) for mail in handed]
    assert [found.group(0) for found in message_ids if found] == oldest_first
    assert mailbox_count(address(BOX), tls_context) == 0


def test_the_search_window_keeps_an_answer_under_imaplibs_line_limit() -> None:
    longest_uid = len(str(2**32 - 1))  # a UID is a 32-bit number (RFC 3501 2.3.1.1)
    assert len(b"* SEARCH\r\n") + mailbox.SEARCH_WINDOW * (1 + longest_uid) < imaplib._MAXLINE


def test_mails_kept_in_a_pop3_batch_do_not_end_the_collection(
    tls_context: ssl.SSLContext, fresh_boxes: list[str]
) -> None:
    """A mail the callback keeps stays first in every later listing: each later batch passes
    it by, and the mails behind it are collected in the same round (the collection used to
    end with the first batch that kept one)."""
    fresh_boxes.append(address(BOX))
    for number in range(8):
        drop_mail(address(BOX), f"Message-Id: <m{number}@x>\r\n\r\nmail {number}\r\n".encode())
        wait_for_mail(address(BOX), number + 1, tls_context)  # in this order in the box
    collector = _collector(tls_context, "pop3", "tls")
    collector.batch = 3
    handed: list[bytes] = []

    def keep_two(mail: BinaryIO) -> None:
        text = mail.read()
        handed.append(text.split(b"mail ")[-1].strip())
        if b"<m1@x>" in text or b"<m4@x>" in text:
            raise RuntimeError("the database is away for this one")

    result = collector.collect_once(keep_two)
    assert handed == [str(number).encode() for number in range(8)]  # each looked at once
    assert (result.found, result.delivered, result.kept) == (8, 6, 2)
    assert mailbox_count(address(BOX), tls_context) == 2


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_a_mail_larger_than_its_server_said_is_cut_off_and_left(
    tls_context: ssl.SSLContext,
    fresh_boxes: list[str],
    monkeypatch: pytest.MonkeyPatch,
    protocol: str,
) -> None:
    """A server that under-reports sizes (LIST says 1 byte, SEARCH LARGER finds nothing): the
    limit holds while the mail is read, and the mail after it is still collected."""
    import poplib

    fresh_boxes.append(address(BOX))
    drop_mail(address(BOX), b"Message-Id: <big@x>\r\n\r\n" + b"x" * 20_000)
    wait_for_mail(address(BOX), 1, tls_context)
    drop_mail(address(BOX), b"Message-Id: <small@x>\r\n\r\nsmall\r\n")
    wait_for_mail(address(BOX), 2, tls_context)
    listed = poplib.POP3.list

    def under_reported(session: poplib.POP3, *args: object) -> tuple[bytes, list[bytes], int]:
        response, lines, octets = listed(session, *args)  # type: ignore[arg-type]
        return response, [line.split()[0] + b" 1" for line in lines], octets

    monkeypatch.setattr(poplib.POP3, "list", under_reported)
    monkeypatch.setattr(MailboxCollector, "_imap_sizes", lambda self, session, large: {})
    monkeypatch.setattr(mailbox, "FETCH_PIECE", 4096)
    collector = _collector(tls_context, protocol, "tls")
    collector.max_mail_bytes = 10_000
    handed: list[bytes] = []
    result = collector.collect_once(lambda mail: handed.append(mail.read()))
    assert result.too_large == 1 and result.delivered == 1
    assert len(handed) == 1 and b"small" in handed[0]
    assert mailbox_count(address(BOX), tls_context) == 1  # the large one, left


def test_a_failing_callback_keeps_the_mail_and_quarantine_deletes_it(
    tls_context: ssl.SSLContext, fresh_boxes: list[str]
) -> None:
    fresh_boxes.append(address(BOX))
    for number in (1, 2):
        drop_mail(
            address(BOX), f"Message-Id: <n{number}@x>\r\nSubject: {number}\r\n\r\nx\r\n".encode()
        )
    wait_for_mail(address(BOX), 2, tls_context)

    def fail_always(mail: BinaryIO) -> None:
        raise RuntimeError("the database is down")

    collector = _collector(tls_context, "imap", "tls")
    kept = collector.collect_once(fail_always)
    assert (kept.found, kept.kept, kept.delivered) == (2, 2, 0)
    assert mailbox_count(address(BOX), tls_context) == 2

    def quarantine(mail: BinaryIO) -> None:
        raise Quarantine("MimeProblem")

    pop = _collector(tls_context, "pop3", "tls")
    aside = pop.collect_once(quarantine)
    assert (aside.found, aside.quarantined) == (2, 2)
    assert mailbox_count(address(BOX), tls_context) == 0


def test_a_stored_binary_message_is_reencoded_for_mail_in_pieces(
    tls_context: ssl.SSLContext, fresh_boxes: list[str], tmp_path: Path
) -> None:
    """A message stored for HTTP (packaged binary) that goes by mail: re-encoded base64 part
    by part into a temporary file and sent from there, never held whole. It was read whole,
    unpacked and packaged again in memory: some three times its size. (Python's own
    allocations are what is measured: the bytes of the mail are all of them.)"""
    import tracemalloc

    fresh_boxes.append(address(BOX))
    payload = random.Random(7).randbytes(16 * 1024 * 1024)
    body, content_type = package(
        b"<SOAP:Envelope/>",
        [Attachment("p@x", "application/pkcs7-mime", payload)],
        transfer_encoding="binary",
        envelope_content_id="env@x",
    )
    stored = tmp_path / "wire.mime"
    stored.write_bytes(body)
    del body
    transport = _transport(tls_context, spool_dir=tmp_path / "mail-spool")
    tracemalloc.start()
    try:
        transport.send(Delivery(f"mailto:{address(BOX)}", content_type, stored))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak:,} bytes at peak for a 16 MiB payload"
    assert list((tmp_path / "mail-spool").iterdir()) == []  # the temporary file is gone

    wait_for_mail(address(BOX), 1, tls_context)
    handed: list[bytes] = []
    _collector(tls_context, "imap", "tls").collect_once(lambda mail: handed.append(mail.read()))
    received = unpackage_message(handed[0])
    assert received.start == "env@x" and received.envelope_xml == b"<SOAP:Envelope/>"
    assert received.attachments["p@x"].data == payload
    assert handed[0].count(b"Content-Transfer-Encoding: base64") == 2


def test_plain_port_25_without_login(tls_context: ssl.SSLContext, fresh_boxes: list[str]) -> None:
    fresh_boxes.append(address(BOX))
    body, content_type = _message(b"x")
    _transport(tls_context, port=25, security="none", username=None).send(
        Delivery(f"mailto:{address(BOX)}", content_type, body)
    )
    wait_for_mail(address(BOX), 1, tls_context)


def test_a_wrong_password_is_a_retryable_auth_failure(tls_context: ssl.SSLContext) -> None:
    with pytest.raises(TransportFailure) as caught:
        _transport(tls_context, password="wrong").send(
            Delivery(f"mailto:{address(BOX)}", "text/xml", b"<x/>\r\n")
        )
    assert caught.value.code == "smtp-auth-failed"
    assert caught.value.retryable
    assert "our own mail server 127.0.0.1:587 refused our login" in caught.value.detail
    assert "[smtp] settings (username, password_file or password_env)" in caught.value.detail


def test_an_unknown_recipient_is_a_permanent_5xx(tls_context: ssl.SSLContext) -> None:
    with pytest.raises(TransportFailure) as caught:
        _transport(tls_context).send(
            Delivery("mailto:9999999@testedi.nhn.no", "text/xml", b"<x/>\r\n")
        )
    assert caught.value.code.startswith("smtp-5")
    assert not caught.value.retryable


def test_our_own_server_refusing_our_sender_is_retryable_and_says_so(
    tls_context: ssl.SSLContext,
) -> None:
    # Postfix's submission port wants STARTTLS first: "530 5.7.0 Must issue a STARTTLS command
    # first" at MAIL FROM. It is this server's setup, not the message: every message failed
    # for good at its first attempt; now they wait, and the detail says where to look.
    with pytest.raises(TransportFailure) as caught:
        _transport(tls_context, security="none", username=None).send(
            Delivery(f"mailto:{address(BOX)}", "text/xml", b"<x/>\r\n")
        )
    assert caught.value.code == "smtp-sender-refused"
    assert caught.value.retryable
    assert "our own mail server 127.0.0.1:587 refused our sender" in caught.value.detail
    assert "530 5.7.0" in caught.value.detail and "[smtp] settings" in caught.value.detail


def test_an_untrusted_certificate_fails_tls(tls_context: ssl.SSLContext) -> None:
    # the system's trust store, without the local server's self-signed certificate: the
    # detail says why the certificate was not accepted (not only CERTIFICATE_VERIFY_FAILED),
    # and that it is our setup, as for the partner-unreachable alert it lands in
    with pytest.raises(TransportFailure) as caught:
        _transport(tls_context, ssl_context=ssl.create_default_context()).send(
            Delivery(f"mailto:{address(BOX)}", "text/xml", b"<x/>\r\n")
        )
    assert caught.value.code == "smtp-tls-failed"
    assert "CERTIFICATE_VERIFY_FAILED (self-signed certificate)" in caught.value.detail
    assert "our own mail server 127.0.0.1:587" in caught.value.detail
    assert "[smtp] settings (host, port, security, ca_file)" in caught.value.detail
    assert "the partner is not the problem" in caught.value.detail


def test_an_untrusted_mailbox_certificate_is_named_and_its_alert_points_to_ca_file(
    pair: tuple[MailSite, MailSite],
) -> None:
    _, hospital = pair
    untrusting = dataclasses.replace(hospital.collector, ssl_context=ssl.create_default_context())
    with pytest.raises(TransportFailure) as caught:
        untrusting.collect_once(lambda mail: None)
    assert caught.value.code == "mailbox-tls-failed"
    assert "CERTIFICATE_VERIFY_FAILED (self-signed certificate)" in caught.value.detail

    thread = MailCollectorThread(untrusting, hospital.intake, 3600, threading.Event())
    for _ in range(FAILED_COLLECTIONS_BEFORE_ALERT):
        thread._collect_round()
    with hospital.ctx.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.list(open_only=True) if a.kind == "mailbox-unreachable"]
    assert "(self-signed certificate)" in alert.summary
    assert "check the TLS settings: [mailbox] ca_file" in alert.summary
    assert "the account and its password" not in alert.summary


def test_a_wrong_mailbox_password_is_an_auth_failure(tls_context: ssl.SSLContext) -> None:
    for protocol in ("pop3", "imap"):
        collector = _collector(tls_context, protocol, "tls")
        collector.password = "wrong"
        with pytest.raises(TransportFailure) as caught:
            collector.collect_once(lambda mail: None)
        assert caught.value.code == "mailbox-auth-failed"
