"""``meldingstjener mail quarantine`` and ``mail reprocess``: a mail put aside by the collector
is taken in again by the path a collected mail takes. A partner's message refused because our
copy of its signing certificate was stale is received, once the copy is mended, and answered
with its Acknowledgment by mail; a mail still refused stays where it is, and the command says
why and fails."""

from __future__ import annotations

import base64
import ssl

from mailtest_support import MailSite, drop_mail, mailbox_count, wait_for_mail
from sqlalchemy import update
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_question
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.directory import sync_configured_partners
from meldingstjener.engine.outbound import submit
from meldingstjener.model import OutboundStatus
from meldingstjener.security.certs import load_certificate
from meldingstjener.store.tables import PartyRow


def _mail(site: MailSite, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(site.site.config_path), "mail", *args])
    return result.exit_code, result.output


def _open_alerts(site: MailSite) -> dict[str, str]:
    with site.ctx.store.unit_of_work() as uow:
        return {a.kind: a.summary for a in uow.alerts.list(open_only=True)}


def _stale_signing_certificate(of: MailSite, at: MailSite) -> None:
    """``at``'s copy of ``of``'s signing certificate replaced by another party's (``at``'s own):
    a register copy that lags behind a rollover."""
    from cryptography.hazmat.primitives.serialization import Encoding

    other = load_certificate(at.settings.keys.signing_cert)
    with at.ctx.store.unit_of_work() as uow:
        uow.session.execute(
            update(PartyRow)
            .where(PartyRow.her_id == of.site.address_her_id)
            .values(signing_certificate=base64.b64encode(other.public_bytes(Encoding.DER)).decode())
        )
        uow.commit()


def test_a_mail_refused_for_a_stale_certificate_is_received_by_mail_reprocess(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    gp, hospital = pair
    _stale_signing_certificate(of=gp, at=hospital)
    submit(gp.ctx, dialog_question(gp.site, hospital.site, "spørsmål"), actor="test")
    gp.work()
    wait_for_mail(hospital.user, 1, tls_context)
    result = hospital.collect()
    assert (result.delivered, result.quarantined) == (0, 1), result.problems
    [kept] = hospital.intake.quarantine_dir.glob("*.eml")
    assert hospital.messages("in") == []
    assert "mail-quarantined" in _open_alerts(hospital)
    [sent] = gp.messages("out")

    code, listing = _mail(hospital, "quarantine")
    assert code == 0, listing
    assert kept.name in listing and "SecurityFailure" in listing
    assert sent.ebxml_message_id in listing  # read from the mail, to find the message by

    # our copy of the register mended (here from the configuration, as `ar sync` would)
    sync_configured_partners(hospital.ctx.store, hospital.settings)
    code, output = _mail(hospital, "reprocess", kept.name)
    assert code == 0, output
    assert f"{kept.name} (eb:MessageId {sent.ebxml_message_id}): taken in" in output
    assert not kept.exists() and list(hospital.intake.quarantine_dir.iterdir()) == []
    [received] = hospital.messages("in")
    assert received.ebxml_message_id == sent.ebxml_message_id
    alerts = _open_alerts(hospital)
    assert "mail-quarantined" not in alerts and "message-refused" not in alerts

    # its Acknowledgment is mailed by the server's workers, as for any mail collected
    hospital.work()
    wait_for_mail(gp.user, 1, tls_context)
    gp.collect()
    assert gp.messages("out")[0].status == OutboundStatus.TRANSPORT_ACKNOWLEDGED.value
    code, listing = _mail(hospital, "quarantine")
    assert code == 0 and "no mails in" in listing


def test_a_mail_still_refused_stays_and_the_command_fails_with_its_code(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext
) -> None:
    _, hospital = pair
    drop_mail(hospital.user, b"Message-Id: <plain-1@x>\r\nContent-Type: text/plain\r\n\r\nhi\r\n")
    wait_for_mail(hospital.user, 1, tls_context)
    assert hospital.collect().quarantined == 1
    assert mailbox_count(hospital.user, tls_context) == 0
    [kept] = hospital.intake.quarantine_dir.glob("*.eml")
    content = kept.read_bytes()

    code, output = _mail(hospital, "reprocess", str(kept))
    assert code == 1
    assert f"{kept.name}: refused again (MimeProblem); the file stays" in output
    # quarantined again only as the same file: no new copy, the alert counted again
    assert list(hospital.intake.quarantine_dir.iterdir()) == [kept]
    assert kept.read_bytes() == content
    with hospital.ctx.store.unit_of_work() as uow:
        alert = uow.alerts.by_key(f"{AlertKind.MAIL_QUARANTINED}:{kept.stem}")
        assert alert is not None and alert.resolved_at is None and alert.count == 2
    assert hospital.messages("in") == []

    # a file renamed by hand gives way to its copy under the mail's hash: still one file
    renamed = kept.rename(kept.with_name("from-the-partner.eml"))
    code, output = _mail(hospital, "reprocess", str(renamed))
    assert code == 1 and "refused again (MimeProblem)" in output
    assert list(hospital.intake.quarantine_dir.iterdir()) == [kept]


def test_only_mails_in_the_quarantine_folder_are_taken(pair: tuple[MailSite, MailSite]) -> None:
    _, hospital = pair
    code, output = _mail(hospital, "reprocess", "0123456789abcdef.eml")
    assert code == 2 and "is not a mail in the quarantine folder" in output


def test_a_mail_being_put_aside_is_not_taken(pair: tuple[MailSite, MailSite]) -> None:
    # `mail reprocess quarantine/*` must not take the .tmp of a mail a collecting server is
    # writing there (or one a crash left): it would be quarantined as a cut-off mail
    _, hospital = pair
    hospital.intake.quarantine_dir.mkdir(parents=True, exist_ok=True)
    writing = hospital.intake.quarantine_dir / "0123456789abcdef.tmp"
    writing.write_bytes(b"Message-Id: <half@x>\r\nSubject: half a mail\r\n")
    code, output = _mail(hospital, "reprocess", str(writing))
    assert code == 2 and "is not a mail in the quarantine folder" in output
    assert list(hospital.intake.quarantine_dir.iterdir()) == [writing]
