"""A partner's signing-certificate rollover: what it signed with the old key still verifies for
the grace period (``security.previous_signing_certificate_days``), and no longer after it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from engine_pair import Pair

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.registry.certificates import certificate_from_der
from meldingstjener.registry.store import party_from_row, save_parties
from meldingstjener.security.devpki import init_pki, revoke

GRACE = timedelta(days=7)


def pki_of(pair: Pair) -> Path:
    return pair.gp_site.directory.parent / "pki"


def new_signing_certificate(pair: Pair) -> x509.Certificate:
    """A signing certificate from the same CA, with a key the partner never signed with."""
    return init_pki(pki_of(pair), ["8300009"]).parties["8300009"].signing.certificate


def restart_hospital(pair: Pair) -> None:
    """The hospital's engine built again from its configuration, on the same store. (That
    writes the configured partners' certificates again: a rollover is registered after it.)"""
    pair.hospital.store.database.dispose()
    hospital = build_engine(load_settings(pair.hospital_site.config_path), clock=pair.clock)
    hospital.transports = {"http": pair.network}
    pair.network.engines[pair.hospital_site.endpoint] = hospital
    pair.hospital = hospital


def register_rollover(ctx: EngineContext, her_id: str, certificate: x509.Certificate) -> None:
    """The address register now names ``certificate`` as the party's signing certificate."""
    with ctx.store.unit_of_work() as uow:
        row = uow.parties.get(her_id)
        assert row is not None
        party = dataclasses.replace(
            party_from_row(row),
            signing_certificate=certificate_from_der(certificate.public_bytes(Encoding.DER)),
        )
        save_parties(uow, [party])
        uow.commit()


def codes(ctx: EngineContext, message_id: str) -> list[str | None]:
    with ctx.store.unit_of_work() as uow:
        return [e.code for e in uow.events.for_message(message_id)]


def test_a_message_signed_before_the_senders_rollover_verifies_during_the_grace_period(
    pair: Pair,
) -> None:
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, first).status == "transport-acknowledged"
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"

    pair.clock.advance(seconds=(GRACE + timedelta(hours=1)).total_seconds())
    late = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "y"), actor="t")
    pair.run()
    row = pair.message(pair.gp, late)
    assert row.status == "transport-error" and row.last_error_code == "SecurityFailure"
    refused = [m for m in pair.inbound_messages(pair.hospital) if m.status == "rejected"]
    assert len(refused) == 1 and "did not verify" in str(refused[0].last_error_text)


def test_without_a_grace_period_the_old_signature_is_refused_at_once(pair: Pair) -> None:
    config = pair.hospital_site.config_path
    config.write_text(
        config.read_text().replace(
            "[security]\n", "[security]\nprevious_signing_certificate_days = 0\n"
        )
    )
    restart_hospital(pair)
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).last_error_code == "SecurityFailure"


def test_an_acknowledgment_signed_before_the_receivers_rollover_is_applied(pair: Pair) -> None:
    register_rollover(pair.gp, "8200002", new_signing_certificate(pair))
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, first).status == "transport-acknowledged"

    pair.clock.advance(seconds=(GRACE + timedelta(hours=1)).total_seconds())
    late = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "y"), actor="t")
    pair.run()
    assert pair.message(pair.gp, late).status == "sent"  # the Acknowledgment changed nothing
    assert "SecurityFailure" in codes(pair.gp, late)


def test_a_revoked_previous_certificate_is_not_accepted(pair: Pair) -> None:
    # The old key was compromised: the partner rolled over and its CA revoked the old
    # certificate. The grace period must not let a signature with that key through.
    revoke(pki_of(pair), pki_of(pair) / "8100001-sign.pem")
    restart_hospital(pair)  # it reads the new CRL
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).last_error_code == "SecurityFailure"
    [refused] = pair.inbound_messages(pair.hospital)
    assert "revoked" in str(refused.last_error_text)


def test_the_party_keeps_the_certificate_its_current_one_replaced(pair: Pair) -> None:
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None
        original = row.signing_certificate
        assert row.previous_signing_certificate is None and row.signing_cert_replaced_at is None
    second = new_signing_certificate(pair)
    register_rollover(pair.hospital, "8100001", second)
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.previous_signing_certificate == original
        replaced_at = row.signing_cert_replaced_at
        assert replaced_at is not None
    # the register sending the same record again changes nothing
    register_rollover(pair.hospital, "8100001", second)
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.previous_signing_certificate == original
        assert row.signing_cert_replaced_at == replaced_at
        current = row.signing_certificate
    # a second rollover: the one replaced now is the second certificate
    third = x509.load_pem_x509_certificate((pki_of(pair) / "8200001-sign.pem").read_bytes())
    register_rollover(pair.hospital, "8100001", third)
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.previous_signing_certificate == current != original
