"""What a message given up says of its attempts the receiving side took (help-desk finding 2).

A give-up after the receiver's server took the message (HTTP 2xx) while only its
Acknowledgments were lost was told as "NOT delivered ... must reach the receiver another way
... meldingstjener resend": the receiver had it, and the advice made a duplicate in its EPJ.
By mail, our mail server taking a mail says nothing of its arrival: that is told as not known,
unless every mail came back as undeliverable. So is an attempt that failed after the whole
message was sent (a time-out or a broken connection while waiting for the answer: review r1),
which was told as "NOT delivered" while the receiver had it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from engine_pair import Pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.mail_bounces import record_bounce
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.resend import Operator, ResendRefused, resend
from meldingstjener.store.tables import AlertRow
from meldingstjener.transport.base import Delivery, TransportFailure, TransportResult
from meldingstjener.transport.bounce import Bounce, BouncedRecipient


def cli(pair: Pair, *args: str) -> tuple[int, str]:
    """``meldingstjener ARGS`` on the GP office's store."""
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), *args])
    return result.exit_code, result.output


def _not_delivered(pair: Pair, message_id: str) -> AlertRow:
    with pair.gp.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.list() if a.kind == "not-delivered"]
        assert alert.message_id == message_id
        return alert


def _given_up_detail(pair: Pair, message_id: str) -> str:
    with pair.gp.store.unit_of_work() as uow:
        [event] = [e for e in uow.events.for_message(message_id) if e.code == "not-delivered"]
        return str(event.detail)


def test_a_message_the_receivers_server_took_is_not_told_as_not_delivered(pair: Pair) -> None:
    pair.network.down.add(pair.gp_site.endpoint)  # every Acknowledgment of the hospital is lost
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.until_given_up(message_id)
    assert len(pair.inbound_messages(pair.hospital)) == 1  # the hospital has it, once

    taken = (
        "the receiver's server took it 4 times (HTTP 2xx) but no Acknowledgment came back: "
        "ask the receiver whether it arrived before sending it again"
    )
    summary = _not_delivered(pair, message_id).summary
    assert "NOT delivered" not in summary and "another way" not in summary
    assert taken[1:] in summary and "It very likely did" in summary
    assert f"a resend (meldingstjener resend {message_id}) would then be a duplicate" in summary
    assert taken in _given_up_detail(pair, message_id)
    row = pair.message(pair.gp, message_id)
    assert row.last_error_code == "not-delivered" and taken in str(row.last_error_text)
    code, output = cli(pair, "status", message_id)
    assert code == 0, output
    assert "took it 4 times" in " ".join(output.split())  # rich wraps the line
    code, output = cli(pair, "show", message_id)
    assert code == 0, output
    assert "took it 4 times" in " ".join(output.split())


def test_only_the_attempts_taken_are_counted(pair: Pair) -> None:
    # Two sends refused (the hospital down), then two taken whose Acknowledgments are lost.
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.clock.advance(minutes=11)
    pair.run()
    assert pair.message(pair.gp, message_id).attempts == 2
    pair.network.down = {pair.gp_site.endpoint}
    pair.clock.advance(minutes=11)
    pair.until_given_up(message_id)
    assert pair.message(pair.gp, message_id).attempts == 4
    assert "receiver's server took it 2 times" in _not_delivered(pair, message_id).summary


def test_a_message_nobody_took_is_still_told_as_not_delivered(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.until_given_up(message_id)
    summary = _not_delivered(pair, message_id).summary
    assert "was NOT delivered" in summary and "another way" in summary
    assert "took it" not in summary and "took it" not in _given_up_detail(pair, message_id)


@dataclass
class _MailServer:
    """Our mail server: it takes every mail (which no Acknowledgment ever answers)."""

    sent: list[Delivery] = field(default_factory=list)
    channel: str = "smtp"

    def send(self, delivery: Delivery) -> TransportResult:
        self.sent.append(delivery)
        return TransportResult()


def _by_mail(pair: Pair) -> _MailServer:
    """The GP's agreement with the hospital by mail, through :class:`_MailServer`."""
    mail = _MailServer()
    pair.gp.transports["smtp"] = mail  # type: ignore[assignment]
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.channel, agreement.endpoint = "smtp", "mailto:8200002@edi.example"
        uow.commit()
    return mail


def _bounce(pair: Pair, message_id: str) -> None:
    """A mail of the message came back (as the mail intake records it)."""
    ebxml_id = pair.message(pair.gp, message_id).ebxml_message_id
    refused = BouncedRecipient("8200002@edi.example", "failed", "5.1.1")
    assert record_bounce(pair.gp, Bounce(True, (refused,), ebxml_id, "8200002@edi.example"))


def test_a_mail_handed_over_is_told_as_not_known_to_have_arrived(pair: Pair) -> None:
    mail = _by_mail(pair)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    _bounce(pair, message_id)  # one of the four mails came back
    pair.until_given_up(message_id)
    assert len(mail.sent) == 4
    summary = _not_delivered(pair, message_id).summary
    assert (
        "The mail server took it 4 times, 1 came back as undeliverable but no Acknowledgment "
        "came back, so whether it reached the receiver is not known: ask the receiver whether "
        "it arrived before sending it again"
    ) in summary
    assert "NOT delivered" not in summary and "very likely" not in summary


def test_a_mail_that_came_back_every_time_is_told_as_not_delivered(pair: Pair) -> None:
    mail = _by_mail(pair)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    for _ in range(12):
        pair.run()
        if pair.message(pair.gp, message_id).status == "not-delivered":
            break
        _bounce(pair, message_id)  # each mail sent comes back before the next is due
        pair.clock.advance(minutes=11)
    assert len(mail.sent) == 4
    summary = _not_delivered(pair, message_id).summary
    assert "was NOT delivered" in summary and "another way" in summary
    assert "each of the 4 mails handed over came back as undeliverable" in summary


@dataclass
class _TakenThenUnanswered:
    """The hospital's MSH takes the message, and then the answer does not come: the time-out,
    or a broken connection, after the whole message was sent (``transport.http``). The first
    ``answered`` attempts are answered (2xx)."""

    pair: Pair
    answered: int = 0
    channel: str = "http"

    def send(self, delivery: Delivery) -> TransportResult:
        result = self.pair.network.send(delivery)
        if self.answered:
            self.answered -= 1
            return result
        raise TransportFailure(
            "timeout",
            f"no answer from {delivery.endpoint} in 60 s after the whole message was sent",
            maybe_delivered=True,
        )


def test_a_message_sent_whole_but_unanswered_is_not_told_as_not_delivered(pair: Pair) -> None:
    pair.network.down.add(pair.gp_site.endpoint)  # the Acknowledgments are lost too
    pair.gp.transports = {"http": _TakenThenUnanswered(pair)}  # type: ignore[dict-item]
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.until_given_up(message_id)
    assert len(pair.inbound_messages(pair.hospital)) == 1  # the hospital has it

    unsure = (
        "4 attempts ended after the whole message was sent (a time-out or a broken connection "
        "while waiting for the answer), so whether it reached the receiver is not known: ask "
        "the receiver whether it arrived before sending it again"
    )
    summary = _not_delivered(pair, message_id).summary
    assert "NOT delivered" not in summary and "another way" not in summary
    assert unsure[1:] in summary and "very likely" not in summary
    assert f"If it did, a resend (meldingstjener resend {message_id})" in summary
    assert unsure in _given_up_detail(pair, message_id)
    with pytest.raises(ResendRefused) as refused:  # not without the receiver's word
        resend(pair.gp, message_id, operator=Operator(client="cli", person="kari"))
    assert refused.value.code == "maybe-received"
    assert "ended after the whole message was sent" in refused.value.message
    with pair.gp.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(message_id) if e.kind == "attempt"]
    assert codes == ["timeout-after-send"] * 4


def test_attempts_taken_and_unanswered_are_both_told(pair: Pair) -> None:
    pair.network.down.add(pair.gp_site.endpoint)
    pair.gp.transports = {"http": _TakenThenUnanswered(pair, answered=1)}  # type: ignore[dict-item]
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.until_given_up(message_id)
    summary = _not_delivered(pair, message_id).summary
    assert (
        "The receiver's server took it 1 time (HTTP 2xx) but no Acknowledgment came back, and "
        "3 attempts ended after the whole message was sent"
    ) in summary
    assert "It very likely did" in summary
