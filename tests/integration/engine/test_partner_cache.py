"""The partner directory's cache: never stale for this process's own changes, bounded in time for
changes made by another process (written here with the plain sqlite3 driver, as a CLI in another
process would)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypeVar

import pytest
from engine_pair import Pair
from sqlalchemy.engine import make_url

from meldingstjener.engine.directory import PartnerUnknown, PartyDirectory

GP, HOSPITAL_SERVICE = "8100001", "8200002"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _directory(pair: Pair, seconds: float, clock: FakeMonotonic) -> PartyDirectory:
    return PartyDirectory(
        pair.gp.store, sorted(pair.gp.own_her_ids), cache_seconds=seconds, monotonic=clock
    )


def _outside_process_update(pair: Pair, endpoint: str) -> None:
    path = make_url(pair.gp.store.database.url).database
    assert path is not None
    with sqlite3.connect(Path(path)) as connection:
        connection.execute(
            "UPDATE partner_agreements SET endpoint = ? WHERE counterparty_her_id = ?",
            (endpoint, HOSPITAL_SERVICE),
        )


R = TypeVar("R")


def _copy(row: R, **changes: object) -> R:
    """A new row of the same table with the same columns (but its own id) and ``changes``."""
    table = row.__table__  # type: ignore[attr-defined]
    values = {c.name: getattr(row, c.name) for c in table.columns if c.name != "id"}
    return type(row)(**{**values, **changes})


def test_own_changes_are_seen_at_once(pair: Pair) -> None:
    directory = _directory(pair, 3600, FakeMonotonic())
    with pair.gp.store.unit_of_work() as uow:
        before = directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair(GP, HOSPITAL_SERVICE)
        assert agreement is not None
        agreement.endpoint = "http://changed.example/ebms"
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        after = directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    assert before.endpoint != after.endpoint == "http://changed.example/ebms"


def test_a_rolled_back_change_keeps_the_cache(pair: Pair) -> None:
    directory = _directory(pair, 3600, FakeMonotonic())
    with pair.gp.store.unit_of_work() as uow:
        directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    generation = pair.gp.store.database.generation()
    with pair.gp.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair(GP, HOSPITAL_SERVICE)
        assert agreement is not None
        agreement.endpoint = "http://never.example/ebms"
        uow.session.flush()  # the UPDATE reaches the database, then is rolled back
    assert pair.gp.store.database.generation() == generation


def test_another_process_change_is_seen_when_the_cache_time_runs_out(pair: Pair) -> None:
    clock = FakeMonotonic()
    directory = _directory(pair, 10, clock)
    with pair.gp.store.unit_of_work() as uow:
        first = directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    _outside_process_update(pair, "http://elsewhere.example/ebms")
    clock.now += 9
    with pair.gp.store.unit_of_work() as uow:
        assert directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP).endpoint == first.endpoint
    clock.now += 2
    with pair.gp.store.unit_of_work() as uow:
        fresh = directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    assert fresh.endpoint == "http://elsewhere.example/ebms"


def test_no_cache_reads_every_time(pair: Pair) -> None:
    directory = _directory(pair, 0, FakeMonotonic())
    with pair.gp.store.unit_of_work() as uow:
        directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    _outside_process_update(pair, "http://elsewhere.example/ebms")
    with pair.gp.store.unit_of_work() as uow:
        fresh = directory.partner(uow, HOSPITAL_SERVICE, our_her_id=GP)
    assert fresh.endpoint == "http://elsewhere.example/ebms"


def test_an_unknown_partner_is_found_once_this_process_adds_it(pair: Pair) -> None:
    directory = _directory(pair, 3600, FakeMonotonic())
    with pair.gp.store.unit_of_work() as uow:
        with pytest.raises(PartnerUnknown) as unknown:
            directory.partner(uow, "8300003", our_her_id=GP)
        assert unknown.value.what == "no communication party"
        with pytest.raises(PartnerUnknown):  # the cached answer is raised again, fresh
            directory.partner(uow, "8300003", our_her_id=GP)
    with pair.gp.store.unit_of_work() as uow:
        known = uow.parties.get(HOSPITAL_SERVICE)
        agreement = uow.agreements.for_pair(GP, HOSPITAL_SERVICE)
        assert known is not None and agreement is not None
        uow.parties.upsert(_copy(known, her_id="8300003"))
        uow.agreements.add(_copy(agreement, counterparty_her_id="8300003"))
        uow.commit()
    with pair.gp.store.unit_of_work() as uow:
        assert directory.partner(uow, "8300003", our_her_id=GP).her_id == "8300003"
