"""Organisations read from the register's SOAP answers are receivers like any other.

The register writes IsValidCommunicationParty as Type == Service || Type == Person: false for
every organisation, also for one that takes messages (8142987 and 84556 have EDI addresses).
Read as "not valid", it refused every message to such an organisation, and to a person or
service at it (the agreement is the organisation's), and listed it as inactive. Sendability is
the register's Active and the validity period alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meldingstjener.engine.directory import PartyDirectory
from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
from meldingstjener.registry.lookup import resolve_receiver
from meldingstjener.registry.store import import_files, load_index, party_from_row, save_agreement
from meldingstjener.registry.terms import terms_from_ar
from meldingstjener.store.uow import Store

OURS = "8100001"
ORGANISATION_SAMPLE = "ks-soap-get-communication-party-details-organzation-response.xml"
PERSON_SAMPLE = "ks-soap-get-communication-party-details-person-response.xml"


@pytest.fixture
def soap_imported(store: Store, ar_samples: Path) -> Store:
    with store.unit_of_work() as uow:
        report = import_files(uow, [ar_samples / ORGANISATION_SAMPLE, ar_samples / PERSON_SAMPLE])
        for her_id in ("8142987", "84556"):
            row = uow.parties.get(her_id)
            assert row is not None
            party = party_from_row(row)
            # as the register has them: organisations, flag false, active, with an EDI address
            assert (party.party_type.value, party.valid, party.active) == (
                "organisation",
                False,
                True,
            )
            assert party.edi_address
            terms = terms_from_ar(party, OURS)
            save_agreement(
                uow,
                PartnerAgreement.from_terms(terms, our_her_id=OURS, state=AgreementState.ACTIVE),
            )
        uow.commit()
    assert sum(report.imported.values()) == 5, report
    return store


@pytest.mark.parametrize("her_id", ["8142987", "84556"])
def test_a_soap_organisation_is_a_receiver(soap_imported: Store, her_id: str) -> None:
    directory = PartyDirectory(soap_imported, [OURS], cache_seconds=0)
    with soap_imported.unit_of_work() as uow:
        partner = directory.partner(uow, her_id, our_her_id=OURS)
    assert partner.unusable_because(datetime.now(UTC)) is None


def test_a_person_at_a_soap_organisation_is_a_receiver(soap_imported: Store) -> None:
    """The GP (a person, flag true) at Tysnes: the message goes to the organisation's agreement."""
    directory = PartyDirectory(soap_imported, [OURS], cache_seconds=0)
    with soap_imported.unit_of_work() as uow:
        receiver = resolve_receiver(uow, "115522")
        assert receiver.person is not None and receiver.her_id == "84556"
        partner = directory.partner(uow, receiver.her_id, our_her_id=OURS)
    assert partner.unusable_because(datetime.now(UTC)) is None


def test_inactive_and_out_of_period_still_refuse(soap_imported: Store) -> None:
    directory = PartyDirectory(soap_imported, [OURS], cache_seconds=0)
    with soap_imported.unit_of_work() as uow:
        row = uow.parties.get("84556")
        assert row is not None
        row.valid_to = datetime(2020, 1, 1, tzinfo=UTC)
        uow.commit()
    with soap_imported.unit_of_work() as uow:
        ended = directory.partner(uow, "84556", our_her_id=OURS).unusable_because(datetime.now(UTC))
        row = uow.parties.get("84556")
        assert row is not None
        row.valid_to, row.active = None, False
        uow.commit()
    with soap_imported.unit_of_work() as uow:
        inactive = directory.partner(uow, "84556", our_her_id=OURS).unusable_because(
            datetime.now(UTC)
        )
    assert ended is not None and "only until 2020-01-01" in ended
    assert inactive == "is marked inactive in the address register"


def test_a_soap_organisation_is_not_ranked_as_unusable(soap_imported: Store) -> None:
    with soap_imported.unit_of_work() as uow:
        index = load_index(uow)
    [hit] = index.search("84556")
    assert hit.party.her_id == "84556" and hit.score == 100.0  # an exact HER-id, no penalty
    # its organisation number: the organisation first, then its services (no penalty either)
    hits = [(h.party.her_id, h.score) for h in index.search("931796003")]
    assert hits[0] == ("8142987", 90.0), hits
