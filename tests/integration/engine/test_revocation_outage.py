"""The CA's OCSP responder away (answering what is no OCSP answer) while messages go: under
``revocation_policy = "hard"`` a queued message is held, not given up, and a received one is
answered 503 for its sender to send again, not refused; under either policy a
``revocation-unknown`` alert says so, resolved by the responder's next answer. Both parties'
certificates name a real OCSP responder on 127.0.0.1 and no CRL."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from engine_pair import Pair, make_pair
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "security"))
from ocsp_responder import Responder

from meldingstjener.api import app as api_app
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, Site, dialog_note
from meldingstjener.engine import inbound
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.mail_channel import (
    FAILED_PREFIX,
    FAILED_ROUNDS_BEFORE_QUARANTINE,
    MailIntake,
    Quarantine,
)
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.trust import REVOCATION_RECHECK, InboundDeferred, certificate_problem
from meldingstjener.security.devpki import issue_certificate, load_pki
from meldingstjener.security.validation import CertificateValidator

RETRY = timedelta(seconds=601)  # past the RetryInterval, the OCSP cache and a failure's memory


def _with_ocsp(pki_dir: Path, responder: Responder, her_id: str, role: str) -> Path:
    """The party's certificate for ``role`` issued again for the same key, naming the
    responder (and no CRL); its file."""
    old = x509.load_pem_x509_certificate((pki_dir / f"{her_id}-{role}.pem").read_bytes())
    extended: list[x509.ObjectIdentifier] = []
    with contextlib.suppress(x509.ExtensionNotFound):  # a signing certificate has none
        extended = list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    certificate = issue_certificate(
        responder.pki.ca,
        old.public_key(),  # type: ignore[arg-type]
        old.subject,
        old.extensions.get_extension_for_class(x509.KeyUsage).value,
        not_before=old.not_valid_before_utc,
        not_after=old.not_valid_after_utc,
        ocsp_url=responder.ocsp_url,
        extended_usage=extended,
    )
    responder.issued[certificate.serial_number] = certificate
    path = pki_dir / f"{her_id}-{role}-ocsp.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(params=["hard"])
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ocsp_pair(tmp_path: Path, policy: str) -> Iterator[tuple[Pair, Responder]]:
    pki_dir = tmp_path / "pki"
    responders: list[Responder] = []

    def with_ocsp(gp_site: Site, hospital_site: Site) -> None:
        # the sites' files are written (the PKI copied): their certificates issued again
        # naming the responder, and the engines built once, from the changed files
        responder = Responder(load_pki(pki_dir))
        responders.append(responder)
        files = {
            (her_id, role): _with_ocsp(pki_dir, responder, her_id, role)
            for her_id in (GP_HER, HOSPITAL_HER)
            for role in ("sign", "enc")
        }
        for site in (gp_site, hospital_site):
            text = site.config_path.read_text()
            for (her_id, role), path in files.items():
                text = text.replace(f'"{pki_dir / f"{her_id}-{role}.pem"}"', f'"{path}"')
            text = text.replace(
                f'crl_files = ["{pki_dir / "crl.pem"}"]\n',
                f'revocation_policy = "{policy}"\nrevocation_timeout_seconds = 0.5\n'
                "revocation_cache_seconds = 60\n",
            )
            site.config_path.write_text(text)

    pair = make_pair(
        tmp_path,
        configure=with_ocsp,
        retry_interval_seconds=600,
        retries=3,
        persist_duration_seconds=3600,
    )
    [responder] = responders
    yield pair, responder
    responder.close()
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def _alerts(ctx: EngineContext, kind: AlertKind) -> list[tuple[bool, int, str]]:
    """(open, count, summary) of each alert of ``kind``."""
    with ctx.store.unit_of_work() as uow:
        return [
            (a.resolved_at is None, a.count, a.summary)
            for a in uow.alerts.list(open_only=False, kind=kind)
        ]


def _queued(pair: Pair) -> str:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    return message_id


def test_hard_policy_holds_a_queued_message_while_revocation_cannot_be_found_out(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    message_id = _queued(pair)
    responder.mode = "garbage"
    for _ in range(4):  # four checks within the hour's PersistDuration, all of them held
        pair.clock.advance(seconds=RETRY.total_seconds())
        pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "retrying", (row.last_error_code, row.last_error_text)
    assert row.attempts == 1  # held: not sent, and no attempt counted
    assert _alerts(pair.gp, AlertKind.NOT_DELIVERED) == []
    [(still_open, _, summary)] = _alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN)
    assert still_open and responder.ocsp_url in summary and "hard" in summary
    with pair.gp.store.unit_of_work() as uow:
        held = [e for e in uow.events.for_message(message_id) if e.code == "revocation-unknown"]
    # told once while the cause lasts, not once per check
    assert len(held) == 1 and "checked again" in str(held[0].detail)
    # the responder answers again: the message goes at its next check, the alert is resolved
    responder.mode = "good"
    pair.clock.advance(seconds=RETRY.total_seconds())
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert [still_open for still_open, _, _ in _alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN)] == [
        False
    ]


def test_hard_policy_gives_a_held_message_up_when_persist_duration_runs_out(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    message_id = _queued(pair)
    responder.mode = "garbage"
    for _ in range(7):  # past the hour's PersistDuration
        pair.clock.advance(seconds=RETRY.total_seconds())
        pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert row.attempts == 1
    [(_, _, summary)] = _alerts(pair.gp, AlertKind.NOT_DELIVERED)
    assert "cannot be checked now" in summary and "PersistDuration ran out" in summary
    assert "could not be found out" in summary


@pytest.mark.parametrize("policy", ["soft"], indirect=True)
def test_soft_policy_accepts_unchecked_and_says_so_once(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    responder.mode = "garbage"
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    second = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "y"), actor="t")
    pair.run()
    for message_id in (first, second):
        assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    for ctx in (pair.gp, pair.hospital):  # each checks the other's certificates
        [(still_open, count, summary)] = _alerts(ctx, AlertKind.REVOCATION_UNKNOWN)
        assert still_open and count > 1  # one alert, counted at each check
        assert "soft" in summary and "accepted meanwhile" in summary
    responder.mode = "good"
    pair.clock.advance(seconds=RETRY.total_seconds())
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "z"), actor="t")
    pair.run()
    for ctx in (pair.gp, pair.hospital):
        assert [a[0] for a in _alerts(ctx, AlertKind.REVOCATION_UNKNOWN)] == [False]


def test_hard_policy_answers_a_received_message_503_when_revocation_cannot_be_found_out(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    # the GP's message as it goes over the wire (the hospital down meanwhile)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    body = pair.gp.store.payloads.read_bytes(str(row.wire_ref))
    headers = {"Content-Type": str(row.wire_content_type)}
    responder.mode = "garbage"
    with TestClient(api_app.create_app(pair.hospital)) as http:
        answer = http.post("/ebms", content=body, headers=headers)
        assert answer.status_code == 503, answer.text
        assert pair.inbound_messages(pair.hospital) == []
        assert _alerts(pair.hospital, AlertKind.MESSAGE_REFUSED) == []
        [(still_open, _, summary)] = _alerts(pair.hospital, AlertKind.REVOCATION_UNKNOWN)
        assert still_open and "503" in summary
        # the sender sends it again once the responder answers: taken, the alert resolved
        responder.mode = "good"
        pair.clock.advance(seconds=RETRY.total_seconds())
        again = http.post("/ebms", content=body, headers=headers)
        assert again.status_code == 200, again.text
    assert len(pair.inbound_messages(pair.hospital)) == 1  # stored, once
    assert [a[0] for a in _alerts(pair.hospital, AlertKind.REVOCATION_UNKNOWN)] == [False]


def test_hard_policy_defers_a_partners_acknowledgment_while_its_certificate_cannot_be_checked(
    ocsp_pair: tuple[Pair, Responder], tmp_path: Path
) -> None:
    # the responder cannot answer about the hospital's signing certificate only: the GP's
    # message is taken and acknowledged, and the Acknowledgment must not be thrown away (the
    # message resent till it is given up, a forgery alerted) but answered 503, and taken when
    # the hospital sends it again
    pair, responder = ocsp_pair
    signing = x509.load_pem_x509_certificate(
        (tmp_path / "pki" / f"{HOSPITAL_HER}-sign-ocsp.pem").read_bytes()
    )
    responder.away.add(signing.serial_number)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert len(pair.inbound_messages(pair.hospital)) == 1
    assert pair.message(pair.gp, message_id).status == "sent"
    assert _alerts(pair.gp, AlertKind.SIGNAL_UNTRUSTED) == []
    with pair.gp.store.unit_of_work() as uow:
        events = uow.events.for_message(message_id)
    assert [e.code for e in events if e.code in ("revocation-unknown", "SecurityFailure")] == [
        "revocation-unknown"
    ]
    # the responder answers again: the hospital's next try of its signal is taken
    responder.away.clear()
    pair.clock.advance(seconds=61)  # past a failure's memory, well within the RetryInterval
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert _alerts(pair.gp, AlertKind.SIGNAL_UNTRUSTED) == []


def test_hard_policy_leaves_a_mail_in_the_box_while_revocation_cannot_be_found_out(
    ocsp_pair: tuple[Pair, Responder], tmp_path: Path
) -> None:
    # an outage longer than the rounds that put a failing mail aside: the mail waits in the
    # box, its tries not counted, and is taken once the responder answers
    pair, responder = ocsp_pair
    pair.network.down.add(pair.hospital_site.endpoint)
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    [sent] = pair.network.sent
    body = sent.body.read_bytes() if isinstance(sent.body, Path) else sent.body
    mail = (
        b"Message-ID: <outage-1@gp.example>\r\nContent-Type: "
        + sent.content_type.encode()
        + b"\r\n\r\n"
        + body
    )
    responder.mode = "garbage"
    intake = MailIntake(pair.hospital, tmp_path / "quarantine")
    for _ in range(FAILED_ROUNDS_BEFORE_QUARANTINE + 2):
        with pytest.raises(InboundDeferred):
            intake.on_mail(mail)
        pair.clock.advance(seconds=61)  # each round asks the responder again
    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())
    assert _alerts(pair.hospital, AlertKind.MAIL_QUARANTINED) == []
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.state.keys_unchanged_since(FAILED_PREFIX, pair.clock() + timedelta(days=1)) == []
    responder.mode = "good"
    intake.on_mail(mail)
    assert len(pair.inbound_messages(pair.hospital)) == 1


def test_a_mail_deferred_past_its_time_to_live_is_put_aside(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its sender has given up on it: it does not wait in the box for the outage's end
    def deferred(*args: object, **kwargs: object) -> None:
        raise InboundDeferred("cannot be checked now", until=pair.clock() - timedelta(seconds=1))

    monkeypatch.setattr(inbound, "receive", deferred)
    mail = b"Message-ID: <late-1@gp.example>\r\nContent-Type: text/xml\r\n\r\n<Envelope/>\r\n"
    with pytest.raises(Quarantine) as quarantined:
        MailIntake(pair.hospital, tmp_path / "quarantine").on_mail(mail)
    assert str(quarantined.value) == "RevocationUnknown"
    [(_, _, summary)] = _alerts(pair.hospital, AlertKind.MAIL_QUARANTINED)
    assert "TimeToLive passed" in summary


def test_hard_policy_sends_a_held_message_minutes_after_the_responder_answers_again(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    # one failed request must not hold the queue for a whole RetryInterval (ten minutes
    # here, twelve hours for a [[partners]] agreement)
    pair, responder = ocsp_pair
    message_id = _queued(pair)
    responder.mode = "garbage"
    pair.clock.advance(seconds=RETRY.total_seconds())
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    responder.mode = "good"
    pair.clock.advance(seconds=REVOCATION_RECHECK.total_seconds() + 1)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


@pytest.mark.parametrize("policy", ["soft"], indirect=True)
def test_one_cas_certificates_naming_an_address_away_and_one_answering_do_not_flap_the_alert(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    away = responder.certificate(her_id=GP_HER, ocsp_path="/down")
    answered = responder.certificate(her_id=GP_HER)
    responder.away.add(away.serial_number)
    validator = CertificateValidator([responder.pki.ca_certificate], clock=pair.clock)
    seen = []
    for _ in range(6):
        for certificate in (away, answered):
            certificate_problem(
                validator,
                certificate,
                "signing",
                pair.clock(),
                store=pair.gp.store,
                instance=pair.gp.instance,
            )
            seen.append(_alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN)[0][0])
        pair.clock.advance(seconds=5)
    assert seen == [True] * 12  # raised once, never resolved by the other's answers
    # the address answers again: the certificate it failed for is answered about, resolved
    responder.away.clear()
    pair.clock.advance(seconds=61)
    certificate_problem(
        validator, away, "signing", pair.clock(), store=pair.gp.store, instance=pair.gp.instance
    )
    assert [a[0] for a in _alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN)] == [False]


def test_a_certificate_unknown_for_its_own_sake_is_refused_and_raises_no_alert(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    # hard policy: naming no address, or unknown to its responder, is no outage: refused (no
    # hold, no 503 for ever), and the CA's services are not said to be away
    pair, responder = ocsp_pair
    nameless = responder.certificate(her_id=GP_HER, ocsp_path=None)
    stranger = responder.certificate(her_id=GP_HER)
    responder.unknown.add(stranger.serial_number)
    validator = CertificateValidator(
        [responder.pki.ca_certificate], clock=pair.clock, revocation_policy="hard"
    )
    for certificate in (nameless, stranger):
        problem = certificate_problem(
            validator,
            certificate,
            "signing",
            pair.clock(),
            store=pair.gp.store,
            instance=pair.gp.instance,
        )
        assert problem is not None and not problem.revocation_unknown
        assert "could not be found out" in str(problem)
    assert _alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN) == []
