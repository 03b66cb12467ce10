"""Recipient search: HER-id, organisation number, folded Norwegian letters, typos, filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.registry import (
    CodedValue,
    CommunicationParty,
    PartyIndex,
    PartyType,
    SearchHit,
    parse_party_json,
)
from meldingstjener.registry.search import bounded_edit_distance


def _org(her_id: str, name: str, number: str, **extra: object) -> CommunicationParty:
    return CommunicationParty(
        her_id=her_id,
        party_type=PartyType.ORGANISATION,
        name=name,
        organisation_number=number,
        **extra,  # type: ignore[arg-type]
    )


def _service(her_id: str, name: str, parent: CommunicationParty, code: str) -> CommunicationParty:
    return CommunicationParty(
        her_id=her_id,
        party_type=PartyType.SERVICE,
        name=name,
        parent_her_id=parent.her_id,
        parent_name=parent.name,
        parent_organisation_number=parent.organisation_number,
        service_types=(CodedValue(code, name, "8666"),),
    )


TROMSO = _org("1001", "Tromsø legekontor", "974000001")
BODO = _org("1002", "Bodø kommune", "974000002")
AALESUND = _org("1003", "Ålesund sykehus", "974000003")
TROMSO_MUNICIPALITY = _org("1004", "Tromsø kommune", "974000004")
LEGEVAKT = _service("2001", "Legevakt", BODO, "01")
HOME_CARE = _service("2002", "Hjemmetjenesten", BODO, "02")
TROMSO_LEGEVAKT = _service("2003", "Legevakt", TROMSO_MUNICIPALITY, "01")
DOCTOR = CommunicationParty(
    her_id="3001",
    party_type=PartyType.PERSON,
    name="Kari Nordmann",
    parent_her_id="1001",
    parent_name="Tromsø legekontor",
)
CLOSED = _org("1005", "Tromsø legesenter", "974000005", active=False)
ALL = [
    TROMSO,
    BODO,
    AALESUND,
    TROMSO_MUNICIPALITY,
    LEGEVAKT,
    HOME_CARE,
    TROMSO_LEGEVAKT,
    DOCTOR,
    CLOSED,
]


@pytest.fixture
def index() -> PartyIndex:
    return PartyIndex(ALL)


def _ids(hits: list[SearchHit]) -> list[str]:
    return [hit.party.her_id for hit in hits]


def test_her_id_lookup_comes_first(index: PartyIndex) -> None:
    hits = index.search("2001")
    assert _ids(hits) == ["2001"]
    assert hits[0].matched == "her-id"


def test_organisation_number_finds_the_organisation_then_its_units(index: PartyIndex) -> None:
    hits = index.search("974 000 002")
    assert _ids(hits)[0] == "1002"
    assert set(_ids(hits)) == {"1002", "2001", "2002"}
    assert {h.matched for h in hits} == {"organisation-number"}


@pytest.mark.parametrize("query", ["Tromsø legekontor", "tromso legekontor", "TROMSOE LEGEKONTOR"])
def test_norwegian_letters_fold_both_ways(index: PartyIndex, query: str) -> None:
    assert _ids(index.search(query))[0] == "1001"


@pytest.mark.parametrize("query", ["aalesund", "alesund sykehus", "Ålesund"])
def test_aa_and_a_meet(index: PartyIndex, query: str) -> None:
    assert _ids(index.search(query))[0] == "1003"


def test_typo_and_no_norwegian_letters_still_find_the_party(index: PartyIndex) -> None:
    hits = index.search("tromso legekntor")
    assert _ids(hits)[0] == "1001"
    assert hits[0].score < index.search("tromsø legekontor")[0].score  # fuzzy ranks below exact


def test_swapped_letters_are_a_single_typo(index: PartyIndex) -> None:
    assert _ids(index.search("hjemmetjeensten"))[0] == "2002"


def test_prefix_of_the_word_being_typed(index: PartyIndex) -> None:
    hits = index.search("tromsø leg")
    assert set(_ids(hits)[:2]) == {"1001", "2003"}
    assert _ids(hits)[-1] == "1005"  # the inactive party ranks last


def test_exact_beats_prefix_and_own_name_beats_parent(index: PartyIndex) -> None:
    hits = index.search("legevakt")
    # Both services are called exactly "Legevakt"; the doctor only matches via parent name.
    assert set(_ids(hits)[:2]) == {"2001", "2003"}
    assert "3001" not in _ids(hits)
    hits = index.search("legekontor")
    assert _ids(hits)[0] == "1001"  # own name
    assert _ids(hits)[1] == "3001"  # via parent name "Tromsø legekontor"


def test_every_word_must_match(index: PartyIndex) -> None:
    assert _ids(index.search("bodø legevakt")) == ["2001"]
    assert index.search("bodø xylofon") == []


def test_filters(index: PartyIndex) -> None:
    assert _ids(index.search("legevakt", party_type="service", service_type="01")) in (
        ["2001", "2003"],
        ["2003", "2001"],
    )
    assert index.search("legevakt", service_type="02") == []
    assert _ids(index.search("tromsø", party_type=PartyType.PERSON)) == ["3001"]
    assert _ids(index.search("bodo", service_type="Hjemmetjenesten")) == ["2002"]


def test_limit(index: PartyIndex) -> None:
    assert len(index.search("tromsø", limit=2)) == 2
    assert index.search("tromsø", limit=0) == []


def test_add_update_remove_keep_the_index_consistent(index: PartyIndex) -> None:
    renamed = _org("1001", "Nordlys legekontor", "974000001")
    index.update(renamed)
    assert "1001" not in _ids(index.search("tromsø legekontor"))
    assert _ids(index.search("nordlys")) == ["1001"]
    assert _ids(index.search("nordlis")) == ["1001"]  # typo search sees the new word
    index.remove("1001")
    assert index.search("nordlys") == []
    assert index.search("1001") == []
    assert len(index) == len(ALL) - 1
    index.add(TROMSO)
    assert _ids(index.search("tromso legekontor"))[0] == "1001"


def test_reference_party_found_without_norwegian_letters(reference_dir: Path) -> None:
    sample = reference_dir / "samples" / "ar" / "helsenorge-CommunicationDetailsRest_8141791.json"
    person = parse_party_json(sample.read_bytes())
    index = PartyIndex([*ALL, person])
    assert _ids(index.search("jonny ronhovde"))[0] == "8141791"
    assert _ids(index.search("jony rønhovde"))[0] == "8141791"


@pytest.mark.parametrize(
    "a, b, limit, expected",
    [
        ("tromso", "tromso", 1, 0),
        ("legekontor", "legekntor", 2, 1),
        ("hansen", "hnasen", 1, 1),
        ("abcdef", "badcfe", 2, None),
        ("kari", "karianne", 2, None),
    ],
)
def test_bounded_edit_distance(a: str, b: str, limit: int, expected: int | None) -> None:
    assert bounded_edit_distance(a, b, limit) == expected
