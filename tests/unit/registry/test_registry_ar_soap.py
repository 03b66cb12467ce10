"""The address register's older SOAP responses parse like the JSON ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.registry import (
    ArFormatError,
    ArPartyNotFound,
    PartyType,
    parse_ar_soap,
    parse_ar_soap_all,
)

PREFIX = "ks-soap-get-communication-party-details-"


def _read(reference_dir: Path, name: str) -> bytes:
    return (reference_dir / "samples" / "ar" / f"{PREFIX}{name}-response.xml").read_bytes()


def test_service_response(reference_dir: Path) -> None:
    party = parse_ar_soap(_read(reference_dir, "service"))
    assert party.her_id == "8094866"
    assert party.party_type is PartyType.SERVICE
    assert party.name == "Meldingsvalidering"
    assert party.parent_her_id == "112374"
    assert party.parent_name == "Norsk Helsenett SF"
    assert party.parent_organisation_number == "994598759"
    assert party.edi_address == "meldingsvalidator@samsvar.nhn.no"
    assert [(c.code, c.code_list) for c in party.service_types] == [("6", "8658")]
    assert party.municipality == "TRONDHEIM"


def test_organisation_response_with_services(reference_dir: Path) -> None:
    parties = parse_ar_soap_all(_read(reference_dir, "organzation"))
    organisation, *services = parties
    assert organisation.her_id == "8142987"
    assert organisation.organisation_number == "931796003"
    assert organisation.edi_address == "meldingstjener-api@testedi.nhn.no"
    assert organisation.valid is False  # IsValidCommunicationParty false in the sample
    assert [(s.her_id, s.active) for s in services] == [("8143040", False), ("8143060", True)]
    assert all(s.parent_her_id == "8142987" for s in services)


def test_person_response(reference_dir: Path) -> None:
    person, organisation = parse_ar_soap_all(_read(reference_dir, "person"))
    assert person.her_id == "115522"
    assert person.party_type is PartyType.PERSON
    assert person.name == "Anne-Marie Bach"
    assert person.parent_her_id == "84556"
    assert person.edi_address == "tysnes-kommune@edi.nhn.no"
    assert organisation.her_id == "84556"
    assert organisation.organisation_number == "973942425"


def test_parent_given_or_absent(reference_dir: Path) -> None:
    with_parent = parse_ar_soap(_read(reference_dir, "with-parent"))
    without = parse_ar_soap(_read(reference_dir, "no-parent"))
    assert (with_parent.her_id, with_parent.parent_her_id) == ("55555", "987654")
    assert with_parent.organisation_number == "888333444"
    assert (without.her_id, without.parent_her_id, without.parent_name) == ("12345", None, None)


def test_not_found_fault(reference_dir: Path) -> None:
    with pytest.raises(ArPartyNotFound, match="InvalidHerIdSupplied") as caught:
        parse_ar_soap(_read(reference_dir, "not-found"))
    assert caught.value.code == "ar-party-not-found"


def test_other_xml_is_refused() -> None:
    with pytest.raises(ArFormatError, match="not a communication party response"):
        parse_ar_soap(b"<a><b/></a>")
    with pytest.raises(ArFormatError, match="not usable XML"):
        parse_ar_soap(b"<a>")
