"""What the engine sends by after the address register or an agreement changes, on SQLite and
PostgreSQL: terms taken from the register follow the partner to the address a sync stores, and a
party the register deactivates is refused; a CPA keeps its own endpoint and is not sent under after
its end; certificates are told apart by their whole bytes. The register is the fake one over real
HTTP, synced by the real sync; the GP's mail transport is a loopback to the hospital."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from engine_pair import Loopback, Pair, make_pair

from meldingstjener.devsites import dialog_note
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.outbound import submit
from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.fakes import FakeAddressRegister, serve
from meldingstjener.registry.store import agreement_from_row, party_from_row, save_agreement
from meldingstjener.registry.sync import sync_register
from meldingstjener.registry.terms import TermsSource, terms_from_ar
from meldingstjener.security.certs import organisation_number
from meldingstjener.store.tables import AgreementRow, PartyRow

GP, HOSPITAL = "8100001", "8200002"
OLD, NEW = "mottak@sykehuset.edi.nhn.no", "ny-mottak@sykehuset.edi.nhn.no"


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[Pair]:
    made = make_pair(tmp_path / "sites", gp_database_url=database_url)
    mail = Loopback(channel="smtp")
    mail.engines = {OLD: made.hospital, NEW: made.hospital}  # both addresses reach the hospital
    made.gp.transports = {**made.gp.transports, "smtp": mail}
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()


@pytest.fixture
def register() -> Iterator[tuple[FakeAddressRegister, str]]:
    fake = FakeAddressRegister()
    with serve(fake) as url:
        yield fake, url


def mail(pair: Pair) -> Loopback:
    transport = pair.gp.transports["smtp"]
    assert isinstance(transport, Loopback)
    return transport


def _certificate_document(b64: str) -> dict[str, Any]:
    certificate = x509.load_der_x509_certificate(base64.b64decode(b64))
    return {
        "thumbprint": hashlib.sha1(base64.b64decode(b64)).hexdigest().upper(),
        "validFrom": certificate.not_valid_before_utc.isoformat(),
        "validTo": certificate.not_valid_after_utc.isoformat(),
        "certificateValue": b64,
    }


def publish(pair: Pair, fake: FakeAddressRegister, edi_address: str, **changes: object) -> None:
    """The hospital's entry in the register: its certificates (the ones the GP holds), the EDI
    address and ``changes`` (isActive, validTo, ...)."""
    with pair.gp.store.unit_of_work() as uow:
        row = uow.parties.get(HOSPITAL)
        assert row is not None and row.signing_certificate and row.encryption_certificate
        signing = _certificate_document(row.signing_certificate)
        encryption = _certificate_document(row.encryption_certificate)
        certificate = x509.load_der_x509_certificate(base64.b64decode(row.signing_certificate))
    meta = ("thumbprint", "validFrom", "validTo")
    record = {
        "herId": int(HOSPITAL),
        "name": "Sykehuset poliklinikk",
        "type": "Organization",
        "ediAddress": edi_address,
        "isActive": True,
        "organizationDetails": {"organizationNumber": organisation_number(certificate)},
        "currentSigningCertificate": {k: signing[k] for k in meta},
        "currentEncryptionCertificate": {k: encryption[k] for k in meta},
        **changes,
    }
    fake.put_party(record, signing=signing, encryption=encryption)


def sync(pair: Pair, url: str) -> None:
    client = ArClient(url, StaticToken(""))
    try:
        assert sync_register(pair.gp.store, client).complete
    finally:
        client.close()


def agree_on_register_terms(pair: Pair) -> None:
    """As 'partners add' without a CPA does: terms from the local register entry, then active."""
    with pair.gp.store.unit_of_work() as uow:
        row = uow.parties.get(HOSPITAL)
        assert row is not None
        terms = terms_from_ar(party_from_row(row), GP)
        agreement = PartnerAgreement.from_terms(terms, our_her_id=GP, state=AgreementState.ACTIVE)
        save_agreement(uow, agreement)
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        stored = uow.agreements.for_pair(GP, HOSPITAL)
        assert stored is not None
        assert (stored.source, stored.channel, stored.endpoint) == ("ar", "smtp", OLD)


def note(pair: Pair) -> bytes:
    return dialog_note(pair.gp_site, pair.hospital_site, "Timen er flyttet til tirsdag.")


def outbound_count(pair: Pair) -> int:
    with pair.gp.store.unit_of_work() as uow:
        return len([m for m in uow.messages.search(_everything()) if m.direction == "out"])


def _everything() -> Any:
    from meldingstjener.store.uow import LogFilter

    return LogFilter()


# --- terms from the register follow the register -----------------------------------------------


def test_register_terms_send_to_the_address_the_last_sync_stored(
    pair: Pair, register: tuple[FakeAddressRegister, str]
) -> None:
    fake, url = register
    publish(pair, fake, OLD)
    sync(pair, url)
    agree_on_register_terms(pair)

    publish(pair, fake, NEW)  # the partner moved its mailbox
    sync(pair, url)
    message_id = submit(pair.gp, note(pair), actor="test")
    pair.run()

    assert [d.endpoint for d in mail(pair).sent] == [NEW]
    assert pair.message(pair.gp, message_id).status != "accepted"
    [received] = pair.inbound_messages(pair.hospital)
    assert received.to_her_id == HOSPITAL


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"isActive": False}, "is marked inactive in the address register"),
        ({"validTo": "2020-01-01T00:00:00Z"}, "was valid in the address register only until"),
        ({"validFrom": "2999-01-01T00:00:00Z"}, "is valid in the address register only from"),
    ],
)
def test_a_party_the_register_no_longer_has_usable_is_refused(
    pair: Pair,
    register: tuple[FakeAddressRegister, str],
    changes: dict[str, object],
    reason: str,
) -> None:
    fake, url = register
    publish(pair, fake, OLD)
    sync(pair, url)
    agree_on_register_terms(pair)

    publish(pair, fake, OLD, **changes)
    sync(pair, url)
    with pytest.raises(SubmitRejected) as refused:
        submit(pair.gp, note(pair), actor="test")

    # what the EPJ is told: nothing was sent, to whom, and why; a setup refusal (the folder
    # outbox holds the file, as for an unknown receiver, until the register has it again)
    assert refused.value.code == "receiver-inactive" and refused.value.about_setup
    assert reason in refused.value.message
    assert HOSPITAL in refused.value.message and "nothing was sent" in refused.value.message
    assert outbound_count(pair) == 0 and mail(pair).sent == []

    publish(pair, fake, OLD)  # back in the register: the same message goes
    sync(pair, url)
    submit(pair.gp, note(pair), actor="test")
    pair.run()
    assert [d.endpoint for d in mail(pair).sent] == [OLD]


def test_a_party_deleted_from_the_register_is_refused(
    pair: Pair, register: tuple[FakeAddressRegister, str]
) -> None:
    fake, url = register
    publish(pair, fake, OLD)
    sync(pair, url)
    agree_on_register_terms(pair)

    fake.delete_party(HOSPITAL)  # the register no longer returns it: kept, inactive
    sync(pair, url)
    with pytest.raises(SubmitRejected) as refused:
        submit(pair.gp, note(pair), actor="test")
    assert refused.value.code == "receiver-inactive"
    assert "is marked inactive in the address register" in refused.value.message
    assert outbound_count(pair) == 0 and mail(pair).sent == []


def test_a_party_removed_from_the_register_address_is_not_sent_to_its_old_one(
    pair: Pair, register: tuple[FakeAddressRegister, str]
) -> None:
    fake, url = register
    publish(pair, fake, OLD)
    sync(pair, url)
    agree_on_register_terms(pair)

    publish(pair, fake, "")  # the register names no EDI address any more
    sync(pair, url)
    with pytest.raises(SubmitRejected) as refused:
        submit(pair.gp, note(pair), actor="test")
    assert refused.value.code == "no-agreement" and "no endpoint" in refused.value.message
    assert mail(pair).sent == []


def test_a_cpa_keeps_its_own_endpoint_whatever_the_register_says(
    pair: Pair, register: tuple[FakeAddressRegister, str]
) -> None:
    fake, url = register
    with pair.gp.store.unit_of_work() as uow:
        row = uow.agreements.for_pair(GP, HOSPITAL)
        assert row is not None
        save_agreement(uow, replace(agreement_from_row(row), source=TermsSource.CPA))
        uow.commit()
    publish(pair, fake, NEW)  # the register's EDI address is not the CPA's channel
    sync(pair, url)

    submit(pair.gp, note(pair), actor="test")
    pair.run()
    assert [d.endpoint for d in pair.network.sent][:1] == [pair.hospital_site.endpoint]
    assert mail(pair).sent == []


# --- an agreement's end -------------------------------------------------------------------------


def _cpa_ending(pair: Pair, end: datetime) -> None:
    with pair.gp.store.unit_of_work() as uow:
        row = uow.agreements.for_pair(GP, HOSPITAL)
        assert row is not None
        agreement = replace(agreement_from_row(row), source=TermsSource.CPA, valid_to=end)
        save_agreement(uow, agreement)
        uow.commit()


def test_nothing_is_sent_under_an_agreement_after_its_end(pair: Pair) -> None:
    end = pair.clock() + timedelta(days=1)
    _cpa_ending(pair, end)
    submit(pair.gp, note(pair), actor="test")  # before its end: sent

    pair.clock.advance(days=2)
    with pytest.raises(SubmitRejected) as refused:
        submit(pair.gp, note(pair), actor="test")
    assert refused.value.code == "agreement-not-active" and refused.value.about_setup
    assert f"ended {end.isoformat()}" in refused.value.message
    assert "renew the CPA" in refused.value.message
    assert outbound_count(pair) == 1


# --- certificates ---------------------------------------------------------------------------------


def _forged_like(b64: str) -> str:
    """A certificate with another key that copies ``b64``'s signature value: as long as it and
    with the same last 64 base64 characters."""
    real = asn1_x509.Certificate.load(base64.b64decode(b64))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tbs = real["tbs_certificate"].copy()
    tbs["subject_public_key_info"] = asn1_keys.PublicKeyInfo.load(
        key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    forged = asn1_x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": real["signature_algorithm"],
            "signature_value": real["signature_value"],
        }
    ).dump(force=True)
    return base64.b64encode(forged).decode("ascii")


def test_two_certificates_sharing_their_tail_are_two_certificates(pair: Pair) -> None:
    forger = "8300003"
    with pair.gp.store.unit_of_work() as uow:
        victim = uow.parties.get(HOSPITAL)
        assert victim is not None and victim.encryption_certificate
        real = victim.encryption_certificate
        forged = _forged_like(real)
        assert forged != real and len(forged) == len(real) and forged[-64:] == real[-64:]
        uow.parties.upsert(
            PartyRow(
                her_id=forger,
                party_type="organisation",
                name="Forfalsket",
                signing_certificate=forged,
                encryption_certificate=forged,
                active=True,
                source="ar-file",
            )
        )
        uow.agreements.add(AgreementRow(our_her_id=GP, counterparty_her_id=forger, state="active"))
        uow.commit()
    directory = pair.gp.directory
    with pair.gp.store.unit_of_work() as uow:
        first = directory.partner(uow, forger, our_her_id=GP).encryption_certificate
        then = directory.partner(uow, HOSPITAL, our_her_id=GP).encryption_certificate
    assert first is not None and then is not None
    assert then.public_bytes(Encoding.DER) == base64.b64decode(real)
    assert first.public_bytes(Encoding.DER) == base64.b64decode(forged)
    assert then.public_key() != first.public_key()


def test_a_send_that_works_leaves_open_the_unreachable_alert_of_another_agreements_endpoint(
    pair: Pair,
) -> None:
    """Two HER-ids of ours with agreements with the hospital naming different endpoints: a send
    by one that works resolves the alert of an endpoint no agreement names, not the other's. An
    ended agreement's endpoint is no longer sent to, so its alert is resolved too (else it
    stayed open for ever)."""
    from meldingstjener.engine import transmit
    from meldingstjener.engine.alerts import AlertKind, raise_alert

    service = "8100002"  # a second HER-id of the GP's (a service of its organisation)
    former = "8100003"  # a third, whose agreement with the hospital has ended
    pair.gp.directory.own_her_ids.extend((service, former))
    other_endpoint, gone = "https://sykehuset.example.no/tjeneste", "https://gammel.example.no/"
    ended_endpoint = "https://avsluttet.example.no/ebms"
    now = datetime.now().astimezone()
    with pair.gp.store.unit_of_work() as uow:
        uow.agreements.add(
            AgreementRow(
                our_her_id=service,
                counterparty_her_id=HOSPITAL,
                state="active",
                channel="http",
                endpoint=other_endpoint,
            )
        )
        uow.agreements.add(
            AgreementRow(
                our_her_id=former,
                counterparty_her_id=HOSPITAL,
                state="ended",
                channel="http",
                endpoint=ended_endpoint,
            )
        )
        for endpoint in (other_endpoint, gone, ended_endpoint):
            raise_alert(
                uow,
                AlertKind.PARTNER_UNREACHABLE,
                f"{HOSPITAL} cannot be reached at {endpoint}",
                at=now,
                partner_her_id=HOSPITAL,
                key=transmit._unreachable_key(HOSPITAL, endpoint),
            )
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        partner = pair.gp.directory.partner(uow, HOSPITAL, our_her_id=GP)
        assert partner.endpoint is not None and partner.endpoint != other_endpoint
        transmit._resolve_unreachable(uow, partner, partner.endpoint, now)
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        still = [a.dedup_key for a in uow.alerts.list(open_only=True)]
    assert still == [f"partner-unreachable:{transmit._unreachable_key(HOSPITAL, other_endpoint)}"]
