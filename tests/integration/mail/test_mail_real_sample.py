"""The real third-party ebXML mail (../shared/reference/samples/ebxml/real-smtp-mail), dropped into
our mailbox through Postfix: collected, parsed, its signature verified with its certificate as
of its signing time, and then refused and quarantined: its sender (HER 8141253) is no
communication party of ours (and its receiver, HER 79768, is not us either), so its signature
cannot be verified here, and an unverified From is nobody to mail a MessageError to. It is kept
aside whole, not stored, as unreadable mail is, each with an alert."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest
from mailtest_support import MailSite, drop_mail, mail_gp, mailbox_count, wait_for_mail
from sqlalchemy import select

from meldingstjener.ebxml import parse_envelope
from meldingstjener.ebxml.mime import unpackage_message
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security.certs import load_certificate
from meldingstjener.security.devpki import init_pki
from meldingstjener.security.validation import CertificateValidator, Reason
from meldingstjener.security.xmldsig import verify_ebxml_envelope
from meldingstjener.store.tables import EventRow

STEM = "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328"


@pytest.fixture
def gp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_boxes: list[str], pki_template: Path
) -> MailSite:
    site = mail_gp(tmp_path, monkeypatch, pki_template)
    fresh_boxes.append(site.user)
    return site


def test_the_real_mail_is_collected_verified_and_quarantined_as_from_no_known_party(
    gp: MailSite, tls_context: ssl.SSLContext, reference_dir: Path, tmp_path: Path
) -> None:
    original = (reference_dir / f"{STEM}.msg").read_bytes()
    certificate = load_certificate(reference_dir / f"{STEM}.cer")
    drop_mail(gp.user, original)
    wait_for_mail(gp.user, 1, tls_context)

    checked: list[datetime] = []

    def verify_then_receive(mail: BinaryIO) -> None:
        mime = unpackage_message(mail.read())
        root = parse_xml(mime.envelope_xml)
        check = verify_ebxml_envelope(root, mime.attachment_bytes(), certificate=certificate)
        assert check.valid, check.problem
        signed_at = parse_envelope(root).header.timestamp
        checked.append(signed_at)
        mail.seek(0)
        gp.intake.on_mail(mail)  # the spooled file itself, as the collector thread hands it

    # A failed assertion in the callback would leave the mail in the box (counted as kept).
    result = gp.collector.collect_once(verify_then_receive)
    assert (result.found, result.delivered, result.quarantined) == (1, 0, 1), result.problems
    assert mailbox_count(gp.user, tls_context) == 0
    [kept] = gp.intake.quarantine_dir.glob("*.eml")  # the whole mail, to reprocess

    # The certificate was valid when the message was signed, and has expired since.
    (signed_at,) = checked
    assert signed_at.astimezone(UTC).date().isoformat() == "2023-08-29"
    # Any trust anchor will do: we lack the issuer's test CA, so "untrusted" is expected too.
    anchor = init_pki(tmp_path / "ca", []).ca_certificate
    validator = CertificateValidator([anchor], check_revocation=False)
    assert (
        Reason.EXPIRED not in validator.validate(certificate, usage="signing", at=signed_at).reasons
    )
    later = validator.validate(certificate, usage="signing", at=datetime(2026, 1, 1, tzinfo=UTC))
    assert Reason.EXPIRED in later.reasons

    # The sender is not a known party here: its signature could not be checked, so its From
    # and MessageId are anybody's to write. The refusal is logged and alerted, the mail kept
    # aside, nothing is stored under its MessageId (the sender's resend, once it is known, is
    # then received) and nothing is mailed to whom it names.
    assert gp.messages("in") == []
    message_id = parse_envelope(parse_xml(unpackage_message(original).envelope_xml)).header
    with gp.ctx.store.unit_of_work() as uow:
        refusals = [
            e
            for e in uow.session.scalars(select(EventRow))
            if e.ebxml_message_id == message_id.message_id and e.message_id is None
        ]
        assert [e.code for e in refusals] == ["SecurityFailure"]
        assert uow.jobs.count() == 0
        [alert] = [a for a in uow.alerts.list(open_only=True) if a.kind == "message-refused"]
        assert "whose From reads 8141253 (not verified)" in alert.summary
        assert "quarantined whole" in alert.summary and "MessageError" not in alert.summary
        [quarantined] = [
            a for a in uow.alerts.list(open_only=True) if a.kind == AlertKind.MAIL_QUARANTINED
        ]
        assert kept.name in quarantined.summary and "(SecurityFailure)" in quarantined.summary

    # The same mail again is refused again, and put aside again (a file of its own: the mail
    # server wrote it other Received headers), not stored.
    drop_mail(gp.user, original)
    wait_for_mail(gp.user, 1, tls_context)
    again = gp.collect()
    assert (again.delivered, again.quarantined) == (0, 1), again.problems
    files = sorted(gp.intake.quarantine_dir.glob("*.eml"))
    assert len(files) == 2 and kept in files
    assert gp.messages("in") == []
    assert mailbox_count(gp.user, tls_context) == 0


@pytest.mark.parametrize(
    "mail",
    [
        b"Message-Id: <plain-1@x>\r\nContent-Type: text/plain\r\n\r\nhello\r\n",
        b"Message-Id: <none-1@x>\r\nSubject: no content type\r\n\r\nhello\r\n",
        b"Message-Id: <cut-1@x>\r\nContent-Type: multipart/related; boundary=b\r\n\r\n--b\r\n",
    ],
    ids=["not-ebxml", "no-content-type", "truncated"],
)
def test_an_unreadable_mail_is_quarantined_with_an_alert(
    gp: MailSite, tls_context: ssl.SSLContext, mail: bytes
) -> None:
    drop_mail(gp.user, mail)
    wait_for_mail(gp.user, 1, tls_context)
    collected: list[bytes] = []

    def keep_copy(mail: BinaryIO) -> None:
        collected.append(mail.read())
        mail.seek(0)
        gp.intake.on_mail(mail)

    result = gp.collector.collect_once(keep_copy)
    assert (result.found, result.quarantined, result.kept) == (1, 1, 0)
    assert mailbox_count(gp.user, tls_context) == 0
    files = list(gp.intake.quarantine_dir.glob("*.eml"))
    assert len(files) == 1
    assert files[0].read_bytes() == collected[0]  # the whole mail, as collected
    with gp.ctx.store.unit_of_work() as uow:
        alerts = [
            a for a in uow.alerts.list(open_only=True) if a.kind == AlertKind.MAIL_QUARANTINED
        ]
        assert len(alerts) == 1
        assert files[0].name in alerts[0].summary
    assert gp.messages("in") == []
