"""Two message servers exchanging messages and Acknowledgments by mail only, through the real
Postfix and Dovecot; and a mailbox connection cut in the middle of a collection, which loses
and doubles nothing."""

from __future__ import annotations

import hashlib
import ssl
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
from mailtest_support import (
    CuttingProxy,
    MailSite,
    empty_mailbox,
    mailbox_count,
    wait_for_mail,
)

from meldingstjener.devsites import dialog_question
from meldingstjener.engine.mail_channel import (
    FAILED_COLLECTIONS_BEFORE_ALERT,
    MailCollectorThread,
    start_mail_collector,
)
from meldingstjener.engine.outbound import submit
from meldingstjener.model import InboundStatus, OutboundStatus
from meldingstjener.transport.base import TransportFailure
from meldingstjener.transport.mailbox import MailboxCollector


def _send_questions(gp: MailSite, hospital: MailSite, count: int) -> list[str]:
    ids = [
        submit(
            gp.ctx,
            dialog_question(gp.site, hospital.site, f"spørsmål {n}"),
            actor="test",
        )
        for n in range(count)
    ]
    gp.work()
    return ids


def test_messages_and_acknowledgments_travel_by_mail_only(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    gp, hospital = pair
    (message_id,) = _send_questions(gp, hospital, 1)
    assert gp.messages("out")[0].status == OutboundStatus.SENT.value

    wait_for_mail(hospital.user, 1, tls_context)
    assert hospital.collect().delivered == 1
    (received,) = hospital.messages("in")
    assert received.channel == "smtp"
    assert received.status == InboundStatus.ACKNOWLEDGED.value
    assert mailbox_count(hospital.user, tls_context) == 0

    assert hospital.work() >= 1  # the Acknowledgment goes back by mail
    wait_for_mail(gp.user, 1, tls_context)
    assert gp.collect().delivered == 1
    with gp.ctx.store.unit_of_work() as uow:
        row = uow.messages.get(message_id)
        assert row is not None
        assert row.status == OutboundStatus.TRANSPORT_ACKNOWLEDGED.value
        receipts = uow.receipts.for_message(message_id)
    assert [r.kind for r in receipts if r.direction == "in"] == ["acknowledgment"]


@pytest.mark.parametrize(("protocol", "port"), [("pop3", 995), ("imap", 993)])
def test_a_connection_cut_mid_collection_loses_and_doubles_nothing(
    pair: tuple[MailSite, MailSite],
    tls_context: ssl.SSLContext,
    proxy_factory: list[CuttingProxy],
    protocol: str,
    port: int,
) -> None:
    gp, hospital = pair
    sent = _send_questions(gp, hospital, 4)
    wait_for_mail(hospital.user, 4, tls_context)

    handed: list[bytes] = []

    def counting(mail: BinaryIO) -> None:
        raw = mail.read()
        handed.append(raw)
        hospital.intake.on_mail(raw)

    # Cut the stream from the server after about two and a half mails.
    mail_size = len(
        Path(str(gp.ctx.store.payloads.path(str(gp.messages("out")[0].wire_ref)))).read_bytes()
    )
    proxy = CuttingProxy(port, cut_after=int(mail_size * 2.5)).start()
    proxy_factory.append(proxy)
    cut = MailboxCollector(
        protocol=protocol,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=proxy.port,
        security="tls",
        username=hospital.user,
        password=hospital.collector.password,
        ssl_context=tls_context,
    )
    with pytest.raises(TransportFailure) as caught:
        cut.collect_once(counting)
    assert caught.value.code == "mailbox-connection-lost"
    assert proxy.cuts == 1
    assert 1 <= len(handed) < 4  # the cut really came in the middle
    stored_before = len(hospital.messages("in"))
    assert stored_before == len(handed)

    again = hospital.collect()  # directly, no proxy
    assert again.kept == 0 and again.quarantined == 0
    received = hospital.messages("in")
    assert len(received) == 4
    assert len({m.ebxml_message_id for m in received}) == 4
    assert mailbox_count(hospital.user, tls_context) == 0

    # Every message is acknowledged by mail and reaches its sender; a mail collected again
    # (POP3 undoes the deletions of a session cut short) gets its Acknowledgment again.
    with hospital.ctx.store.unit_of_work() as uow:
        repeats = sum(
            [e.code for e in uow.events.for_message(m.id)].count("duplicate") for m in received
        )
    assert repeats <= len(handed)
    hospital.work()
    wait_for_mail(gp.user, 4 + repeats, tls_context)
    assert gp.collect().delivered == 4 + repeats
    statuses = {gp.messages("out")[i].status for i in range(4)}
    assert statuses == {OutboundStatus.TRANSPORT_ACKNOWLEDGED.value}
    assert sorted(m.id for m in gp.messages("out")) == sorted(sent)
    assert mailbox_count(gp.user, tls_context) == 0


def test_a_mail_collected_again_is_answered_by_the_ebxml_check(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    """A mail that comes again (a crash after the message was stored but before the mailbox
    deleted it, or the partner resending the same MIME because our Acknowledgment was lost):
    the eb:MessageId duplicate check keeps it from being stored twice, and our signal goes
    again each time, so the partner stops resending."""
    gp, hospital = pair
    _send_questions(gp, hospital, 1)
    wait_for_mail(hospital.user, 1, tls_context)
    raw: list[bytes] = []
    hospital.collector.collect_once(lambda mail: raw.append(mail.read()))  # kept here
    hospital.intake.on_mail(raw[0])
    [received] = hospital.messages("in")
    for _ in range(2):  # the same mail again, twice
        hospital.intake.on_mail(raw[0])
    assert len(hospital.messages("in")) == 1
    with hospital.ctx.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(received.id)]
    assert codes.count("duplicate") == 2
    hospital.work()  # the Acknowledgment, and the same again for each repeat
    wait_for_mail(gp.user, 1, tls_context)
    gp.collect()
    [sent] = gp.messages("out")
    assert sent.status == OutboundStatus.TRANSPORT_ACKNOWLEDGED.value


def _jobs(site: MailSite) -> int:
    with site.ctx.store.unit_of_work() as uow:
        return uow.jobs.count()


def test_the_collector_thread_collects_on_demand(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    gp, hospital = pair
    _send_questions(gp, hospital, 1)
    wait_for_mail(hospital.user, 1, tls_context)
    stop = threading.Event()
    thread = start_mail_collector(hospital.ctx, hospital.settings, stop)  # as serve starts it
    assert isinstance(thread, MailCollectorThread)
    try:
        first = thread.collect_now(timeout=30)
        if first is not None and first.found == 0:
            first = thread.collect_now(timeout=30)  # the first round began before the mail
        assert first is not None
        assert len(hospital.messages("in")) == 1
    finally:
        stop.set()
        thread.collect_now(wait=False)
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_mail_that_fails_round_after_round_is_put_aside_and_the_box_moves_on(
    pair: tuple[MailSite, MailSite],
    tls_context: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unforeseen failure keeps the mail for the next round (the database may be away); one
    that fails every round would block the box for good, so the fifth round quarantines it."""
    from meldingstjener.engine import mail_channel

    gp, hospital = pair
    _send_questions(gp, hospital, 1)
    wait_for_mail(hospital.user, 1, tls_context)

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an unforeseen fault")

    monkeypatch.setattr(mail_channel.inbound, "receive", failing)
    for _ in range(mail_channel.FAILED_ROUNDS_BEFORE_QUARANTINE - 1):
        result = hospital.collect()
        assert (result.kept, result.quarantined) == (1, 0)
        assert mailbox_count(hospital.user, tls_context) == 1
    result = hospital.collect()
    assert (result.kept, result.quarantined) == (0, 1)
    assert mailbox_count(hospital.user, tls_context) == 0
    assert len(list((hospital.settings.data_dir / "quarantine").glob("*.eml"))) == 1
    with hospital.ctx.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.list(open_only=True) if a.kind == "mail-quarantined"]
    assert "(Unknown)" in alert.summary


def test_a_mail_that_cannot_be_put_aside_either_is_an_alert_while_it_stays(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext, tmp_path: Path
) -> None:
    """A mail that fails round after round is quarantined after five; when that fails too (the
    quarantine folder's disk), it stays in the box, tried every round: mail-stuck names it
    until a collection finds it gone or put aside."""
    from mailtest_support import drop_mail

    from meldingstjener.engine import mail_channel

    _, hospital = pair
    drop_mail(hospital.user, b"Message-Id: <no-type@x>\r\n\r\nnot ebXML\r\n")
    wait_for_mail(hospital.user, 1, tls_context)
    quarantine = hospital.intake.quarantine_dir
    (tmp_path / "not-a-folder").write_bytes(b"")
    hospital.intake.quarantine_dir = tmp_path / "not-a-folder" / "quarantine"
    thread = MailCollectorThread(hospital.collector, hospital.intake, 3600, threading.Event())
    for _ in range(mail_channel.FAILED_ROUNDS_BEFORE_QUARANTINE - 1):
        thread._collect_round()
        assert thread.last_result is not None and thread.last_result.kept == 1
        assert "mail-stuck" not in _open_alerts(hospital)
    thread._collect_round()
    summary = _open_alerts(hospital)["mail-stuck"]
    told = hashlib.sha256(b"no-type@x").hexdigest()[:16]  # named by its digest and host
    assert f"@x of SHA-256 {told}...) failed in 5 collections or more and could not be put" in (
        summary
    )
    assert "no-type" not in summary
    assert "(NotADirectoryError: Not a directory)" in summary
    thread._collect_round()  # a lasting state: its text, and so its alert, stays the same
    assert _open_alerts(hospital)["mail-stuck"] == summary
    assert mailbox_count(hospital.user, tls_context) == 1
    hospital.intake.quarantine_dir = quarantine  # the disk is mended
    thread._collect_round()
    assert thread.last_result is not None and thread.last_result.quarantined == 1
    assert "mail-stuck" not in _open_alerts(hospital)
    assert mailbox_count(hospital.user, tls_context) == 0


def test_a_message_our_own_mail_server_refuses_waits_and_the_alert_says_why(
    pair: tuple[MailSite, MailSite],
) -> None:
    """Our submission server refuses our sender (here: no STARTTLS on Postfix's port 587, "530
    5.7.0 Must issue a STARTTLS command first"): a matter of our setup, so the message is
    kept and resent, and the partner-unreachable alert says to look at [smtp]; it used to
    be given up at its first attempt as if the partner had refused it."""
    import dataclasses

    from meldingstjener.transport.smtp import SmtpTransport

    gp, hospital = pair
    transport = gp.ctx.transports["smtp"]
    assert isinstance(transport, SmtpTransport)
    gp.ctx.transports = {
        **gp.ctx.transports,
        "smtp": dataclasses.replace(transport, security="none", username=None),
    }
    _send_questions(gp, hospital, 1)
    [sent] = gp.messages("out")
    assert sent.status == OutboundStatus.RETRYING.value
    alerts = _open_alerts(gp)
    assert "not-delivered" not in alerts
    assert "our own mail server 127.0.0.1:587 refused our sender" in alerts["partner-unreachable"]
    assert "[smtp] settings" in alerts["partner-unreachable"]


def _whole_body_encoded(raw: bytes, encoding: str) -> bytes:
    """The mail as a gateway that encodes the whole body would pass it on."""
    import base64
    import binascii

    cut = raw.index(b"\r\n\r\n") + 4
    headers, body = raw[: cut - 2], raw[cut:]
    assert b"Content-Transfer-Encoding: 7bit\r\n" in headers
    headers = headers.replace(b"Content-Transfer-Encoding: 7bit\r\n", b"")
    if encoding == "base64":
        encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
    else:
        encoded = binascii.b2a_qp(body)  # keeps the CRLF line ends of the body
    return headers + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode() + encoded


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_a_mail_whose_whole_body_is_encoded_is_received(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext, encoding: str
) -> None:
    gp, hospital = pair
    _send_questions(gp, hospital, 1)
    wait_for_mail(hospital.user, 1, tls_context)
    raw: list[bytes] = []
    hospital.collector.collect_once(lambda mail: raw.append(mail.read()))
    hospital.intake.on_mail(_whole_body_encoded(raw[0], encoding))
    [received] = hospital.messages("in")
    assert received.status == InboundStatus.ACKNOWLEDGED.value


def test_an_ebxml_mail_with_one_long_gateway_header_is_received(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    # The 8 kB header limit guards the email package, which reads bounces only; a partner's
    # ebXML mail whose gateway adds one long header was quarantined as HeaderTooLong.
    gp, hospital = pair
    _send_questions(gp, hospital, 1)
    wait_for_mail(hospital.user, 1, tls_context)
    raw: list[bytes] = []
    hospital.collector.collect_once(lambda mail: raw.append(mail.read()))
    hospital.intake.on_mail(b"X-Gateway-Trace: " + b"hop;" * 5_000 + b"\r\n" + raw[0])
    [received] = hospital.messages("in")
    assert received.status == InboundStatus.ACKNOWLEDGED.value
    assert list(hospital.intake.quarantine_dir.glob("*.eml")) == []


def test_a_whole_body_that_is_not_base64_is_quarantined(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    from meldingstjener.transport.mailbox import Quarantine

    _, hospital = pair
    mail = (
        b"Message-Id: <broken@x>\r\nContent-Type: multipart/related; boundary=b\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nQUJDR\r\n"
    )
    with pytest.raises(Quarantine) as caught:
        hospital.intake.on_mail(mail)
    assert caught.value.reason == "MimeProblem"
    assert len(list(hospital.intake.quarantine_dir.glob("*.eml"))) == 1
    assert hospital.messages("in") == []


def _open_alerts(site: MailSite) -> dict[str, str]:
    with site.ctx.store.unit_of_work() as uow:
        return {a.kind: a.summary for a in uow.alerts.list(open_only=True)}


def test_a_mailbox_that_cannot_be_collected_raises_an_alert_until_it_can(
    pair: tuple[MailSite, MailSite],
) -> None:
    import dataclasses

    _, hospital = pair
    stop = threading.Event()
    away = dataclasses.replace(hospital.collector, port=1)  # nothing listens there
    thread = MailCollectorThread(away, hospital.intake, 3600, stop)
    for _ in range(FAILED_COLLECTIONS_BEFORE_ALERT - 1):
        thread._collect_round()
    assert "mailbox-unreachable" not in _open_alerts(hospital)  # a blip is no deviation
    thread._collect_round()
    summary = _open_alerts(hospital)["mailbox-unreachable"]
    assert "could not collect the mailbox imap://127.0.0.1:1 3 times in a row" in summary
    thread.collector = hospital.collector
    thread._collect_round()
    assert thread.last_result is not None
    assert "mailbox-unreachable" not in _open_alerts(hospital)


def test_a_mail_left_for_its_size_is_an_alert_while_it_stays(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    from mailtest_support import drop_mail

    _, hospital = pair
    drop_mail(hospital.user, b"Message-Id: <big@x>\r\n\r\n" + b"x" * 5_000)
    wait_for_mail(hospital.user, 1, tls_context)
    hospital.collector.max_mail_bytes = 1_000
    thread = MailCollectorThread(hospital.collector, hospital.intake, 3600, threading.Event())
    thread._collect_round()
    assert "left there, unread" in _open_alerts(hospital)["mail-too-large"]
    assert mailbox_count(hospital.user, tls_context) == 1
    hospital.collector.max_mail_bytes = 10_000  # the operator raised the limit
    thread._collect_round()
    assert "mail-too-large" not in _open_alerts(hospital)
    assert len(list(hospital.intake.quarantine_dir.glob("*.eml"))) == 1  # not ebXML: aside


def test_a_mail_whose_size_was_not_told_is_named_so(pair: tuple[MailSite, MailSite]) -> None:
    from meldingstjener.engine.mail_channel import report_collection
    from meldingstjener.transport.mailbox import CollectResult

    _, hospital = pair
    result = CollectResult(found=2, too_large=2, large_sizes=[70_000_000, None])
    report_collection(hospital.ctx, hospital.collector, "host-a:8080", result, None, 0)
    summary = _open_alerts(hospital)["mail-too-large"]
    assert "(70,000,000 bytes, size not told)" in summary


LOCKED_BOX = "8300007"  # pop3_lock_session for this user only (scripts/install-mail-server.sh)


def test_a_mailbox_held_open_elsewhere_is_reported_in_use_not_as_a_wrong_password(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dovecot with pop3_lock_session refuses a second POP3 session of the same user with
    "-ERR [IN-USE]" (after waiting about ten seconds for the lock): the collection fails as
    mailbox-in-use, and the alert points at the other program that holds the box, not at the
    password. (One failed round raises it here: each costs Dovecot's ten seconds.)"""
    import poplib

    from mailtest_support import PASSWORD, address

    from meldingstjener.engine import mail_channel

    monkeypatch.setattr(mail_channel, "FAILED_COLLECTIONS_BEFORE_ALERT", 1)
    _, hospital = pair
    holder = poplib.POP3_SSL("127.0.0.1", 995, context=tls_context, timeout=30)
    holder.user(address(LOCKED_BOX))
    holder.pass_(PASSWORD)  # a mail client, say, with the box open
    try:
        locked = MailboxCollector(
            protocol="pop3",
            host="127.0.0.1",
            security="tls",
            username=address(LOCKED_BOX),
            password=PASSWORD,
            ssl_context=tls_context,
            timeout_seconds=30,  # longer than Dovecot's wait for the lock
        )
        thread = MailCollectorThread(locked, hospital.intake, 3600, threading.Event())
        thread._collect_round()
        assert thread.last_failure is not None
        assert thread.last_failure.code == "mailbox-in-use"
        assert "[IN-USE]" in thread.last_failure.detail
    finally:
        holder.quit()
    summary = _open_alerts(hospital)["mailbox-unreachable"]
    assert "(mailbox-in-use:" in summary
    assert "which other program holds the mailbox open on this account" in summary
    assert "and its password" not in summary
    thread._collect_round()  # the other session has ended: collected, and the alert goes
    assert thread.last_failure is None
    assert "mailbox-unreachable" not in _open_alerts(hospital)


def _try_counts(site: MailSite) -> dict[str, str]:
    from sqlalchemy import text

    with site.ctx.store.unit_of_work() as uow:
        rows = uow.session.execute(
            text("SELECT key, value FROM kv_state WHERE key LIKE 'mail-failed:%'")
        ).all()
    return {key: value for key, value in rows}


def test_a_try_count_does_not_outlive_its_mail(
    pair: tuple[MailSite, MailSite],
    tls_context: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mail that failed twice and then left the box another way (a person deleted it): the
    next collection that looks at the whole box drops its count. A count written lately for a
    mail this collection did not see (another server's, for a mail that came after our
    listing) is kept, and so is the count of a mail still in the box."""
    from datetime import timedelta

    from sqlalchemy import text

    from meldingstjener.engine import mail_channel
    from meldingstjener.store.types import utcnow

    gp, hospital = pair
    _send_questions(gp, hospital, 1)
    wait_for_mail(hospital.user, 1, tls_context)

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an unforeseen fault")

    with monkeypatch.context() as patched:
        patched.setattr(mail_channel.inbound, "receive", failing)
        for _ in range(2):
            assert hospital.collect().kept == 1
    [(gone_key, tries)] = _try_counts(hospital).items()
    assert tries == "2"
    # it was last tried an hour ago; then someone deleted it from the box
    with hospital.ctx.store.unit_of_work() as uow:
        uow.session.execute(
            text("UPDATE kv_state SET updated_at = :at WHERE key = :key"),
            {"at": utcnow() - timedelta(hours=1), "key": gone_key},
        )
        uow.state.set(mail_channel.FAILED_PREFIX + "f" * 32, "1")  # another server's, now
        uow.commit()
    empty_mailbox(hospital.user, tls_context)
    _send_questions(gp, hospital, 1)  # a new mail, which fails once and stays
    wait_for_mail(hospital.user, 1, tls_context)
    with monkeypatch.context() as patched:
        patched.setattr(mail_channel.inbound, "receive", failing)
        assert hospital.collect().kept == 1
    counts = _try_counts(hospital)
    assert gone_key not in counts
    assert counts[mail_channel.FAILED_PREFIX + "f" * 32] == "1"
    assert sorted(counts.values()) == ["1", "1"]  # the new mail's count, kept
    assert hospital.collect().delivered == 1
    assert _try_counts(hospital) == {mail_channel.FAILED_PREFIX + "f" * 32: "1"}
