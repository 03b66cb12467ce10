"""A mail the mail server cannot hand out (a fault of its own: here Dovecot cannot read the
mail's file) is that mail's failure, not the mailbox's: the mails around it are collected and
deleted, it stays in the box, and after the try limit a mail-stuck alert names it."""

from __future__ import annotations

import dataclasses
import ssl
import threading

import pytest
from mailtest_support import (
    MailSite,
    drop_mail,
    mailbox_count,
    unreadable_on_the_server,
    wait_for_mail,
)

from meldingstjener.devsites import dialog_question
from meldingstjener.engine.mail_channel import FAILED_ROUNDS_BEFORE_QUARANTINE, MailCollectorThread
from meldingstjener.engine.outbound import submit


def _send_question(gp: MailSite, hospital: MailSite) -> None:
    submit(gp.ctx, dialog_question(gp.site, hospital.site, "spørsmål"), actor="test")
    gp.work()


def _open_alerts(site: MailSite) -> dict[str, str]:
    with site.ctx.store.unit_of_work() as uow:
        return {a.kind: a.summary for a in uow.alerts.list(open_only=True)}


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_a_mail_the_server_cannot_hand_out_stays_named_and_the_others_are_collected(
    pair: tuple[MailSite, MailSite], tls_context: ssl.SSLContext, protocol: str
) -> None:
    gp, hospital = pair
    # a message, the mail the server cannot read, and a message behind it
    _send_question(gp, hospital)
    wait_for_mail(hospital.user, 1, tls_context)
    drop_mail(hospital.user, b"Message-Id: <unreadable@x>\r\nSubject: on a bad disk\r\n\r\nx\r\n")
    wait_for_mail(hospital.user, 2, tls_context)
    _send_question(gp, hospital)
    wait_for_mail(hospital.user, 3, tls_context)
    collector = dataclasses.replace(hospital.collector, protocol=protocol, port=None)
    thread = MailCollectorThread(collector, hospital.intake, 3600, threading.Event())

    with unreadable_on_the_server(hospital.user, b"<unreadable@x>"):
        thread._collect_round()
        assert thread.last_failure is None  # not the mailbox's failure
        assert thread.last_result is not None
        assert (thread.last_result.delivered, thread.last_result.refused) == (2, 1)
        assert len(hospital.messages("in")) == 2
        hospital.work()  # our two Acknowledgments
        for _ in range(FAILED_ROUNDS_BEFORE_QUARANTINE - 2):
            thread._collect_round()
            assert thread.last_failure is None
            assert "mail-stuck" not in _open_alerts(hospital)  # a few tries are no deviation
        thread._collect_round()
        hospital.work()
        alerts = _open_alerts(hospital)
        assert "mailbox-unreachable" not in alerts
        summary = alerts["mail-stuck"]
        assert "1 mail(s) stay in" in summary
        assert f"hand it out in {FAILED_ROUNDS_BEFORE_QUARANTINE} collections or more" in summary
        assert "it cannot be quarantined, as it cannot be read" in summary
        if protocol == "pop3":  # LIST tells its size; Dovecot refuses TOP as well as RETR
            assert "number 1 (" in summary and " bytes, no Message-Id told)" in summary
        else:  # Dovecot ends the session on it: a new one goes on, nothing more is asked
            assert "(size not told, no Message-Id told)" in summary and "[BYE]" in summary
        thread._collect_round()  # a lasting state: its text, and so its alert, stays the same
        assert _open_alerts(hospital)["mail-stuck"] == summary
        # The messages were received and answered once: their deletion was not undone
        wait_for_mail(gp.user, 2, tls_context)
        assert len(hospital.messages("in")) == 2

    # the server can read it again: taken (not ebXML, so put aside), and the alert goes
    thread._collect_round()
    assert thread.last_result is not None and thread.last_result.quarantined == 1
    assert "mail-stuck" not in _open_alerts(hospital)
    assert mailbox_count(hospital.user, tls_context) == 0
    assert mailbox_count(gp.user, tls_context) == 2  # no Acknowledgment mailed again
