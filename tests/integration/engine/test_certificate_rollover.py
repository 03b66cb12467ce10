"""A partner's signing-certificate rollover: what it signed with the old key still verifies for
the grace period (``security.previous_signing_certificate_days``), and no longer after it."""

from __future__ import annotations

import base64
import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from engine_pair import Pair, refusals_not_stored

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, dialog_note
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.registry.certificates import certificate_from_der
from meldingstjener.registry.errors import ArRecordRefused
from meldingstjener.registry.store import party_from_row, save_parties
from meldingstjener.security.devpki import init_pki, organisation_number_for, revoke

GRACE = timedelta(days=7)


def pki_of(pair: Pair) -> Path:
    return pair.gp_site.directory.parent / "pki"


def new_signing_certificate(pair: Pair, organisation_of: str = GP_HER) -> x509.Certificate:
    """A signing certificate from the same CA for the organisation of ``organisation_of``,
    with a key nobody signed with."""
    her_id = "8399" + organisation_of[-3:]
    pki = init_pki(
        pki_of(pair),
        [her_id],
        organisation_numbers={her_id: organisation_number_for(organisation_of)},
    )
    return pki.parties[her_id].signing.certificate


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
    # not verified: answered in the response, not stored (its MessageId is anybody's to write)
    assert [m for m in pair.inbound_messages(pair.hospital) if m.status == "rejected"] == []
    [refused] = refusals_not_stored(pair.hospital, row.ebxml_message_id)
    assert "did not verify" in str(refused.detail)


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
    register_rollover(pair.gp, "8200002", new_signing_certificate(pair, HOSPITAL_HER))
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
    # (Revoked as of the engines' clock, not the wall clock: the injected clock stands still
    # while the test runs, and a revocation after it would not count yet.)
    revoke(pki_of(pair), pki_of(pair) / "8100001-sign.pem", when=pair.clock())
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
    third = (
        init_pki(
            pki_of(pair),
            ["8300008"],
            organisation_numbers={"8300008": organisation_number_for(GP_HER)},
        )
        .parties["8300008"]
        .signing.certificate
    )
    register_rollover(pair.hospital, "8100001", third)
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.previous_signing_certificate == current != original


def resend(pair: Pair, message_id: str) -> None:
    """The stored wire form of a sent message, sent again as it is (signed before)."""
    from meldingstjener.transport.base import Delivery

    row = pair.message(pair.gp, message_id)
    wire = pair.gp.store.payloads.path(str(row.wire_ref))
    pair.network.send(Delivery(pair.hospital_site.endpoint, str(row.wire_content_type), wire))
    pair.run()


def acknowledgments(pair: Pair, message_id: str) -> int:
    """The Acknowledgments that reached the GP: the first is its receipt, the same one sent
    again to a resend is logged as a repeat."""
    with pair.gp.store.unit_of_work() as uow:
        stored = sum(r.kind == "acknowledgment" for r in uow.receipts.for_message(message_id))
        repeats = sum(e.code == "signal-repeated" for e in uow.events.for_message(message_id))
    return stored + repeats


def test_a_resend_signed_before_the_rollover_gets_our_acknowledgment_again(pair: Pair) -> None:
    # The sender missed our Acknowledgment, rolled over, and resends the envelope it signed
    # before: the duplicate check must verify it with the replaced certificate.
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert acknowledgments(pair, message_id) == 1
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    resend(pair, message_id)
    assert acknowledgments(pair, message_id) == 2
    [received] = pair.inbound_messages(pair.hospital)
    assert "SecurityFailure" not in codes(pair.hospital, received.id)


def test_a_resend_signed_with_a_revoked_previous_certificate_is_refused(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    revoke(pki_of(pair), pki_of(pair) / "8100001-sign.pem", when=pair.clock())
    restart_hospital(pair)
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    resend(pair, message_id)
    assert acknowledgments(pair, message_id) == 1  # nothing more came back
    [received] = pair.inbound_messages(pair.hospital)
    assert "SecurityFailure" in codes(pair.hospital, received.id)


def test_a_certificate_of_another_organisation_is_no_rollover(pair: Pair) -> None:
    # A register record giving the HER-id a certificate of another organisation than the
    # certificates held for it is refused for that party, the stored copy kept: no grace
    # period begins in which both keys would sign for it. (That two certificates of different
    # organisations are no rollover where such a row exists is tested in
    # tests/unit/security/test_organisation_number.py.)
    with pytest.raises(ArRecordRefused, match="belongs to organisation"):
        register_rollover(pair.hospital, "8100001", new_signing_certificate(pair, HOSPITAL_HER))
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.signing_cert_replaced_at is None
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_rollover_in_the_configuration_keeps_the_replaced_certificate(pair: Pair) -> None:
    new = new_signing_certificate(pair)
    new_file = pki_of(pair) / "gp-new-sign.pem"
    new_file.write_bytes(new.public_bytes(Encoding.PEM))
    config = pair.hospital_site.config_path
    old_file = f'signing_cert = "{pki_of(pair) / "8100001-sign.pem"}"'
    assert old_file in config.read_text()
    config.write_text(config.read_text().replace(old_file, f'signing_cert = "{new_file}"'))
    restart_hospital(pair)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.signing_cert_replaced_at == pair.clock()


def test_a_change_back_keeps_the_time_of_the_first_change(pair: Pair) -> None:
    # Two sources that disagree (the configuration at every start, the register at every
    # sync) must not keep both certificates accepted for ever.
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None
        original = x509.load_der_x509_certificate(base64.b64decode(str(row.signing_certificate)))
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    first = replaced_at(pair)
    pair.clock.advance(days=3)
    restart_hospital(pair)  # the configuration writes the original back
    register_rollover(pair.hospital, "8100001", original)  # (the same, when run by hand)
    assert replaced_at(pair) == first
    register_rollover(pair.hospital, "8100001", new_signing_certificate(pair))
    assert replaced_at(pair) == first


def replaced_at(pair: Pair) -> object:
    with pair.hospital.store.unit_of_work() as uow:
        row = uow.parties.get("8100001")
        assert row is not None and row.previous_signing_certificate is not None
        return row.signing_cert_replaced_at


def test_the_grace_period_ends_and_a_thumbprint_alone_keeps_the_old_one(pair: Pair) -> None:
    from meldingstjener.engine.directory import SigningCertificates

    old = x509.load_pem_x509_certificate((pki_of(pair) / "8100001-sign.pem").read_bytes())
    new = new_signing_certificate(pair)
    at = pair.clock()
    both = SigningCertificates(new, old, at)
    assert both.candidates(at + GRACE, GRACE) == [new, old]
    assert both.candidates(at + GRACE + timedelta(seconds=1), GRACE) == [new]
    assert both.candidates(at, timedelta(0)) == [new]
    # the register named a new certificate by its thumbprint only (its bytes come later)
    assert SigningCertificates(None, old, at).candidates(at, GRACE) == [old]
    assert SigningCertificates(None, old, at).candidates(at + 2 * GRACE, GRACE) == []
