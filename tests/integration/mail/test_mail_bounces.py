"""A bounce of one of our mails, through the real Postfix into our real mailbox: recorded on the
message it returns (event, mail-bounced alert, resolved by the message's Acknowledgment) and
deleted from the box; one that names none of our messages is quarantined as a bounce."""

from __future__ import annotations

import email
import smtplib
import ssl
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from mailtest_support import MailSite, mailbox_count, wait_for_mail

from meldingstjener.devsites import dialog_question
from meldingstjener.engine.outbound import submit
from meldingstjener.model import OutboundStatus

PRIVATE = "Ola Nordmann 01017012345"  # what a bounce's texts may quote; never in ours


def _sent_mail(gp: MailSite, hospital: MailSite, tls_context: ssl.SSLContext) -> bytes:
    """One question from the GP office, mailed; the mail as it reached the hospital's box."""
    submit(gp.ctx, dialog_question(gp.site, hospital.site, "Bounce?"), actor="test")
    gp.work()
    wait_for_mail(hospital.user, 1, tls_context)
    raw: list[bytes] = []
    hospital.collector.collect_once(lambda mail: raw.append(mail.read()))
    return raw[0]


def _dsn(original: bytes, recipient: str, returned: str) -> bytes:
    """A delivery status notification (RFC 3464) as a partner's mail server writes it."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.partner.example"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Auto-Submitted"] = "auto-replied"
    report.attach(MIMEText(f"Your mail to {recipient} about {PRIVATE} could not be delivered."))
    status = MIMEBase("message", "delivery-status")
    about_message, about_recipient = Message(), Message()
    about_message["Reporting-MTA"] = "dns; mx.partner.example"
    about_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    about_recipient["Action"] = "failed"
    about_recipient["Status"] = "5.1.1"
    about_recipient["Diagnostic-Code"] = f"smtp; 550 5.1.1 <{recipient}>: {PRIVATE} unknown"
    status.set_payload([about_message, about_recipient])
    report.attach(status)
    if returned == "message/rfc822":
        report.attach(MIMEMessage(email.message_from_bytes(original)))
    else:
        headers = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        part = MIMEBase("text", "rfc822-headers")
        part.set_payload(headers.decode("ascii"))
        report.attach(part)
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _plain_bounce(original: bytes, *, mime: bool = True, folded: bool = False) -> bytes:
    """An older bounce: a text from MAILER-DAEMON that quotes the original's headers (qmail's
    has no MIME headers at all: ``mime=False``), with our Subject as a relay folded it
    (``folded``: our ``Subject: ebXML <eb:MessageId>`` is longer than 78 characters)."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    if folded:
        assert headers.count(b"\r\nSubject: ebXML ") == 1
        headers = headers.replace(b"\r\nSubject: ebXML ", b"\r\nSubject: ebXML\r\n ")
    return (
        b"From: MAILER-DAEMON@mx.partner.example\r\nSubject: failure notice\r\n"
        + (b"Content-Type: text/plain\r\n" if mime else b"")
        + b"\r\n"
        b"Hi. This is the qmail-send program. " + PRIVATE.encode() + b"\r\n"
        b"--- Below this line is a copy of the message.\r\n\r\n" + headers + b"\r\n\r\nbody\r\n"
    )


def _bounce_to(site: MailSite, raw: bytes, tls_context: ssl.SSLContext) -> None:
    """Through Postfix with the empty envelope sender of a bounce (Return-Path: <>)."""
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as server:
        server.sendmail("", [site.user], raw)
    wait_for_mail(site.user, 1, tls_context)


def _open_alerts(site: MailSite) -> dict[str, list[tuple[str | None, str]]]:
    with site.ctx.store.unit_of_work() as uow:
        found: dict[str, list[tuple[str | None, str]]] = {}
        for alert in uow.alerts.list(open_only=True):
            found.setdefault(alert.kind, []).append((alert.message_id, alert.summary))
        return found


PLAIN = ("plain", "qmail", "qmail-folded")


@pytest.mark.parametrize("returned", ["message/rfc822", "text/rfc822-headers", *PLAIN])
def test_a_bounce_of_our_mail_is_recorded_on_its_message_and_leaves_the_box(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext, returned: str
) -> None:
    gp, hospital = pair
    original = _sent_mail(gp, hospital, tls_context)
    if returned in PLAIN:  # qmail's has no MIME headers: text, not unreadable
        bounce = _plain_bounce(
            original, mime=returned == "plain", folded=returned == "qmail-folded"
        )
    else:
        bounce = _dsn(original, hospital.user, returned)
    _bounce_to(gp, bounce, tls_context)

    result = gp.collect()

    assert (result.delivered, result.quarantined, result.kept) == (1, 0, 0)
    assert mailbox_count(gp.user, tls_context) == 0
    assert not list(gp.intake.quarantine_dir.glob("*.eml"))
    [sent] = gp.messages("out")
    assert sent.status == OutboundStatus.SENT.value  # not failed: a resend may go through
    codes = "no status code given" if returned in PLAIN else "5.1.1 failed"
    with gp.ctx.store.unit_of_work() as uow:
        [event] = [e for e in uow.events.for_message(sent.id) if e.code == "mail-bounced"]
        jobs = uow.jobs.count()
    assert f"{hospital.user} refused it" in str(event.detail) and codes in str(event.detail)
    assert jobs >= 1  # its retry is still due
    [(message_id, summary)] = _open_alerts(gp)["mail-bounced"]
    assert message_id == sent.id
    assert f"{hospital.user} refused it ({codes})" in summary
    assert "Ola" not in summary + str(event.detail)
    assert "mail-quarantined" not in _open_alerts(gp)

    # the message did arrive after all (here: the mail the partner's server returned): its
    # Acknowledgment ends the alert
    hospital.intake.on_mail(original)
    hospital.work()
    wait_for_mail(gp.user, 1, tls_context)
    gp.collect()
    assert gp.messages("out")[0].status == OutboundStatus.TRANSPORT_ACKNOWLEDGED.value
    assert "mail-bounced" not in _open_alerts(gp)


def test_a_bounce_that_names_none_of_our_messages_is_quarantined_as_a_bounce(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    gp, hospital = pair
    original = _sent_mail(gp, hospital, tls_context).replace(
        b"Subject: ebXML ", b"Subject: ebXML not-ours-"
    )
    _bounce_to(
        gp, _dsn(original.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", hospital.user, "x"), tls_context
    )

    result = gp.collect()

    assert (result.delivered, result.quarantined) == (0, 1)
    assert mailbox_count(gp.user, tls_context) == 0
    assert len(list(gp.intake.quarantine_dir.glob("*.eml"))) == 1
    alerts = _open_alerts(gp)
    assert "mail-bounced" not in alerts
    [(_, summary)] = alerts["mail-quarantined"]
    assert "(Bounce)" in summary and "a bounce from a mail server" in summary
    assert f"{hospital.user} refused (5.1.1 failed)" in summary
    assert "ask the sender to resend" not in summary
    assert "Ola" not in summary


def test_a_bounce_that_cannot_be_read_is_quarantined_as_a_bounce_at_once(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever a mail server put in it, a bounce is not tried again round after round (and
    # then quarantined with the advice to ask its sender to resend)
    from meldingstjener.engine import mail_channel

    def unreadable(head: bytes) -> object:
        raise ValueError("a header the email package cannot take")

    monkeypatch.setattr(mail_channel, "read_bounce", unreadable)
    gp, hospital = pair
    _bounce_to(gp, _dsn(_sent_mail(gp, hospital, tls_context), hospital.user, "x"), tls_context)

    result = gp.collect()

    assert (result.delivered, result.quarantined) == (0, 1)
    assert mailbox_count(gp.user, tls_context) == 0
    [(_, summary)] = _open_alerts(gp)["mail-quarantined"]
    assert "(Bounce)" in summary and "(it could not be read)" in summary
    assert "ask the sender to resend" not in summary


def test_a_bounce_with_a_header_longer_than_any_server_writes_is_put_aside_unread(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    """A "bounce" whose nested part has a crafted Content-Type of 50 kB (under Postfix's limit
    of 100 kB per header block): the email package would take seconds over it (minutes over a
    few hundred kB). It is quarantined with its own code before it is read."""
    gp, _ = pair
    crafted = b'Content-Type: multipart/mixed; boundary="' + b";" * 50_000
    _bounce_to(
        gp,
        b"From: MAILER-DAEMON@relay\r\nMessage-Id: <crafted@relay>\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n\r\n"
        b"--XX\r\n" + crafted + b"\r\n\r\nhello\r\n--XX--\r\n",
        tls_context,
    )

    result = gp.collect()

    assert (result.delivered, result.quarantined) == (0, 1)
    assert mailbox_count(gp.user, tls_context) == 0
    [(_, summary)] = _open_alerts(gp)["mail-quarantined"]
    assert (
        "(HeaderTooLong)" in summary
        and "(a Message-Id @relay of SHA-256 " in summary
        and "crafted" not in summary
    )
    assert "a header line of more than 8,192 bytes" in summary


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["nested", "top"])
def test_a_crafted_header_is_put_aside_before_it_is_read(
    pair: tuple[MailSite, MailSite], where: str
) -> None:
    """The intake given a crafted mail (not through Postfix, which would cut the header): the
    email package would take a quarter of an hour over the nested part's Content-Type; the
    timeout only guards against that coming back. A header of the bounce's own that long is
    put aside too."""
    from meldingstjener.transport.mailbox import Quarantine

    gp, _ = pair
    crafted = b'multipart/mixed; boundary="' + b";" * 1_200_000
    if where == "nested":
        mail = (
            b"From: MAILER-DAEMON@relay\r\nContent-Type: multipart/report; "
            b"report-type=delivery-status; boundary=XX\r\n\r\n--XX\r\nContent-Type: "
            + crafted
            + b"\r\n\r\nhello\r\n--XX--\r\n"
        )
    else:
        mail = (
            b"From: MAILER-DAEMON@relay\r\nContent-Type: multipart/report; "
            b"report-type=delivery-status; boundary=XX\r\n"
            b"X-Filler: " + b"x" * 20_000 + b"\r\n\r\n--XX--\r\n"
        )
    with pytest.raises(Quarantine) as caught:
        gp.intake.on_mail(mail)
    assert caught.value.reason == "HeaderTooLong"
    [(_, summary)] = _open_alerts(gp)["mail-quarantined"]
    assert "It was not read further" in summary
