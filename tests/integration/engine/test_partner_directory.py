"""The partner directory as the engine reads it, on SQLite and PostgreSQL: nothing is sent under
an agreement after its end; certificates are told apart by their whole bytes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from engine_pair import Pair, make_pair

from meldingstjener.devsites import dialog_note
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.outbound import submit
from meldingstjener.registry.store import agreement_from_row, save_agreement
from meldingstjener.registry.terms import TermsSource
from meldingstjener.store.tables import AgreementRow, PartyRow

GP, HOSPITAL = "8100001", "8200002"


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[Pair]:
    made = make_pair(tmp_path / "sites", gp_database_url=database_url)
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()


def note(pair: Pair) -> bytes:
    return dialog_note(pair.gp_site, pair.hospital_site, "Timen er flyttet til tirsdag.")


def outbound_count(pair: Pair) -> int:
    with pair.gp.store.unit_of_work() as uow:
        return len([m for m in uow.messages.search(_everything()) if m.direction == "out"])


def _everything() -> Any:
    from meldingstjener.store.uow import LogFilter

    return LogFilter()


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
