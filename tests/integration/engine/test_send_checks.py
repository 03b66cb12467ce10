"""Before each send, first or resend, the checks submit made are made again: a message queued
while its receiver was down does not go out to a revoked encryption certificate (given up:
``not-delivered`` and its alert)."""

from __future__ import annotations

from engine_pair import Pair

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.outbound import submit
from meldingstjener.security.devpki import revoke

SECRET = "Kari Nordmann har hjertesvikt"  # patient data: in no alert or event


def _queued(pair: Pair) -> str:
    """A message submitted while the hospital is down: one attempt failed, it is retrying."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    return message_id


def _not_delivered_alert(pair: Pair, message_id: str) -> str:
    with pair.gp.store.unit_of_work() as uow:
        alerts = [
            a
            for a in uow.alerts.list(open_only=True, kind=AlertKind.NOT_DELIVERED)
            if a.message_id == message_id
        ]
        events = [str(e.detail) for e in uow.events.for_message(message_id)]
    assert len(alerts) == 1
    summary = str(alerts[0].summary)
    assert "another way" in summary
    assert all(SECRET not in text for text in [summary, *events])
    return summary


def _given_up_unsent(pair: Pair, message_id: str, attempts: int = 1) -> str:
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert row.attempts == attempts  # the failed first attempt only: nothing more was sent
    assert pair.inbound_messages(pair.hospital) == []
    return _not_delivered_alert(pair, message_id)


def _gp_restarted(pair: Pair) -> None:
    """The GP office's server restarts (and reads the CA's new CRL)."""
    pair.gp.store.database.dispose()
    gp = build_engine(load_settings(pair.gp_site.config_path), clock=pair.clock)
    gp.transports = {"http": pair.network}
    pair.network.engines[pair.gp_site.endpoint] = gp
    pair.gp = gp


def _revoke_hospital_encryption_certificate(pair: Pair) -> None:
    pki = pair.gp_site.directory.parent / "pki"
    revoke(pki, pki / "8200001-enc.pem", when=pair.clock())
    _gp_restarted(pair)


def test_a_queued_message_is_not_resent_to_a_revoked_encryption_certificate(pair: Pair) -> None:
    message_id = _queued(pair)
    _revoke_hospital_encryption_certificate(pair)
    pair.clock.advance(minutes=11)
    pair.run()
    summary = _given_up_unsent(pair, message_id)
    assert "encryption certificate" in summary and "revoked" in summary


def test_a_first_send_is_not_made_to_a_revoked_encryption_certificate(pair: Pair) -> None:
    # accepted, then the certificate is revoked before the worker sends it (a backlog)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    _revoke_hospital_encryption_certificate(pair)
    pair.run()
    summary = _given_up_unsent(pair, message_id, attempts=0)
    assert "revoked" in summary
