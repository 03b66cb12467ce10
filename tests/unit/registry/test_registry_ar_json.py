"""Address-register JSON samples parse to the right parties, certificates and queues."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meldingstjener.registry import (
    ArFormatError,
    PartyType,
    ar_json,
    parse_certificate_json,
    parse_parties_json,
    parse_party_json,
    with_certificates,
)
from meldingstjener.registry.ar_json import read_records
from meldingstjener.registry.isotime import NORWAY
from meldingstjener.registry.parties import CommunicationParty


@pytest.fixture
def ar_dir(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "ar"


def test_helsenorge_service_record(ar_dir: Path) -> None:
    party = parse_party_json(
        (ar_dir / "helsenorge-CommunicationDetailsRest_8141705.json").read_bytes()
    )
    assert party.her_id == "8141705"
    assert party.party_type is PartyType.SERVICE
    assert party.name == "Allmennlege"
    assert party.parent_her_id == "8141703"
    assert party.parent_name == "TestsenteretHN"
    assert party.parent_organisation_number == "999988891"
    assert [c.code for c in party.service_types] == ["05"]
    assert [c.code for c in party.business_types] == ["103"]
    assert party.municipality == "Oslo"
    assert party.active and party.valid
    # The queues are inherited from the organisation (8141703); the dead-letter queue is derived.
    assert party.amqp_queues == {
        "async": "tb.test.nhn.no/NHNTESTServiceBus/8141703_async",
        "sync": "tb.test.nhn.no/NHNTESTServiceBus/8141703_sync",
        "error": "tb.test.nhn.no/NHNTESTServiceBus/8141703_error",
        "syncreply": "tb.test.nhn.no/NHNTESTServiceBus/8141703_syncreply",
        "dl": "tb.test.nhn.no/NHNTESTServiceBus/8141703_dl",
    }
    assert party.certificate_ldap_url is not None
    assert "certificateSerialNumber=1962180325571982850481203" in party.certificate_ldap_url
    assert party.valid_from is not None and party.valid_from.year == 2023
    assert party.edi_address is None


def test_helsenorge_person_record(ar_dir: Path) -> None:
    party = parse_party_json(
        (ar_dir / "helsenorge-CommunicationDetailsRest_8141791.json").read_bytes()
    )
    assert party.her_id == "8141791"
    assert party.party_type is PartyType.PERSON
    assert party.name == "Jonny Karl Rønhovde"
    assert party.parent_her_id == "8141703"
    assert party.queue("async") == "tb.test.nhn.no/NHNTESTServiceBus/8141703_async"
    assert party.valid_to == datetime(2057, 5, 24, tzinfo=NORWAY)


def test_nav_organisation_record(ar_dir: Path) -> None:
    party = parse_party_json((ar_dir / "nav-NavCommunicationParty.json").read_bytes())
    assert party.her_id == "79768"
    assert party.party_type is PartyType.ORGANISATION
    assert party.name == "NAV IKT"
    assert party.display_name == "NAV"
    assert party.organisation_number == "990983291"
    assert party.edi_address == "mottak-qass@test-es.nav.no"
    assert party.amqp_queues == {}  # amqpTransportStatus is Disabled
    assert party.signing_certificate is not None
    assert party.signing_certificate.thumbprint == "42B5D65754297E5417182530CD2FE473D45CF7D5"
    assert party.signing_certificate.der is None
    assert party.encryption_certificate is not None
    assert party.encryption_certificate.not_after == datetime(2028, 8, 25, 21, 59, tzinfo=UTC)
    assert party.parent_her_id is None


def test_nav_speare_record(ar_dir: Path) -> None:
    party = parse_party_json((ar_dir / "nav-Speare_CommunicationParty.json").read_bytes())
    assert (party.her_id, party.organisation_number) == ("8141253", "993954896")
    assert party.edi_address == "meldingstjener-api@testedi.nhn.no"
    assert [c.code for c in party.business_types] == ["103"]


def test_certificate_json_gives_der_subject_and_usage(ar_dir: Path) -> None:
    signing = parse_certificate_json((ar_dir / "nav-NavSignCert.json").read_bytes())
    encryption = parse_certificate_json((ar_dir / "nav-NavEncryptCert.json").read_bytes())
    assert signing.der is not None and signing.der[:1] == b"\x30"
    assert signing.thumbprint == "42B5D65754297E5417182530CD2FE473D45CF7D5"
    assert signing.subject is not None
    assert "CN=ARBEIDS- OG VELFERDSETATEN TEST" in signing.subject
    assert "NTRNO-889640782" in signing.subject
    assert signing.for_signing and not signing.for_encryption
    assert encryption.for_encryption
    assert encryption.not_before == datetime(2025, 8, 25, 13, 41, 36, tzinfo=UTC)


def test_certificates_attach_to_the_party_that_names_them(ar_dir: Path) -> None:
    party = parse_party_json((ar_dir / "nav-NavCommunicationParty.json").read_bytes())
    signing = parse_certificate_json((ar_dir / "nav-NavSignCert.json").read_bytes())
    encryption = parse_certificate_json((ar_dir / "nav-NavEncryptCert.json").read_bytes())
    full = with_certificates(party, signing=signing, encryption=encryption)
    assert full.signing_certificate_der == signing.der
    assert full.encryption_certificate_der == encryption.der
    with pytest.raises(ArFormatError, match="does not match"):
        with_certificates(party, signing=encryption)


def test_certificate_with_wrong_thumbprint_is_refused(ar_dir: Path) -> None:
    document = json.loads((ar_dir / "nav-NavSignCert.json").read_text())
    document["thumbprint"] = "00" * 20
    with pytest.raises(ArFormatError, match="thumbprint"):
        parse_certificate_json(json.dumps(document))


def test_certificate_record_is_not_a_party(ar_dir: Path) -> None:
    with pytest.raises(ArFormatError, match="no HER-id"):
        parse_party_json((ar_dir / "nav-NavSignCert.json").read_bytes())


@pytest.mark.parametrize(
    "document, message",
    [
        ("[1, 2]", "expected an object"),
        ("{not json", "not valid JSON"),
        ('{"herId": 5, "type": "Spaceship"}', "unknown type"),
        ('{"herId": 5}', "no type"),
    ],
)
def test_unusable_documents_give_clear_errors(document: str, message: str) -> None:
    with pytest.raises(ArFormatError, match=message):
        parse_party_json(document)


def test_missing_fields_become_none() -> None:
    party = parse_party_json('{"herId": 1234, "type": "Organization", "ParentHerId": -1}')
    assert party.her_id == "1234"
    assert party.name == ""
    assert party.parent_her_id is None
    assert party.edi_address is None
    assert party.amqp_queues == {}
    assert party.valid_from is None


def test_enabled_amqp_derives_queue_names_from_the_her_id() -> None:
    party = parse_party_json(
        '{"herId": 555, "type": "Organization", "amqpTransportStatus": "Enabled"}'
    )
    assert party.amqp_queues["async"] == "555_async"
    assert party.amqp_queues["dl"] == "555_dl"


def test_export_array_parses_every_party(ar_dir: Path) -> None:
    records = [
        json.loads((ar_dir / name).read_text())
        for name in ("nav-NavCommunicationParty.json", "nav-Speare_CommunicationParty.json")
    ]
    parties = parse_parties_json(json.dumps(records))
    assert [p.her_id for p in parties] == ["79768", "8141253"]


def test_json_nested_too_deeply_is_a_format_error() -> None:
    # not the interpreter's RecursionError, which a sync or an import would not expect
    with pytest.raises(ArFormatError, match="nested too deeply"):
        parse_parties_json(b"[" * 200_000)
    with pytest.raises(ArFormatError, match="nested too deeply"):
        parse_party_json('{"herId": 1, "name": ' + "[" * 200_000)


@pytest.mark.parametrize(
    "field",
    [{"herId": "\u00b2"}, {"herId": "\u0668\u0661\u0664"}],
    ids=["superscript", "arabic-indic"],
)
def test_a_her_id_in_other_digits_than_ascii_is_none(field: dict[str, str]) -> None:
    parties, refused = read_records([{"type": "Organization", "name": "X", **field}])
    assert parties == [] and list(refused) == ["entry 0"]
    assert "no HER-id" in refused["entry 0"]


def test_identifiers_in_other_digits_than_ascii_are_no_identifiers() -> None:
    party = parse_party_json(
        {
            "herId": 8141253,
            "type": "Service",
            "parentHerId": "\u00b9\u00b2",
            "organizationDetails": {"organizationNumber": "\u00b3"},
        }
    )
    assert party.parent_her_id is None and party.organisation_number is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validTo", "9999-12-31T23:59:59-05:00"),
        ("validFrom", "0001-01-01T00:00:00+05:00"),
        ("lastChanged", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_a_time_with_no_utc_equivalent_refuses_the_record(field: str, value: str) -> None:
    record = {"herId": 100002, "type": "Organization", "name": "X", field: value}
    parties, refused = read_records([record, {"herId": 100003, "type": "Organization"}])
    assert [p.her_id for p in parties] == ["100003"]
    assert "out of range once converted to UTC" in refused["100002"]


def test_any_other_error_mapping_one_record_refuses_that_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a value no check foresaw must not escape as a plain ValueError and stop every sync
    real = ar_json.party_from_record

    def mapper(data: Mapping[str, Any]) -> CommunicationParty:
        if data.get("herId") == 100002:
            raise OverflowError("date value out of range")
        return real(data)

    monkeypatch.setattr(ar_json, "party_from_record", mapper)
    parties, refused = read_records(
        [{"herId": 100002, "type": "Organization"}, {"herId": 100003, "type": "Organization"}]
    )
    assert [p.her_id for p in parties] == ["100003"]
    assert refused == {
        "100002": "the record cannot be read (OverflowError: date value out of range)"
    }
