"""A party the register stops returning (deleted: an event names it, the lookup has it no more)
is kept by the sync, marked inactive, so nothing is sent to it; its record coming back makes it
what the record says."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.fakes import FakeAddressRegister
from meldingstjener.registry.store import load_parties
from meldingstjener.registry.sync import last_synced_sequence, sync_register
from meldingstjener.store.uow import Store


def _record(her_id: int, name: str) -> dict[str, Any]:
    return {"herId": her_id, "name": name, "type": "Organization", "ediAddress": f"{her_id}@edi"}


def _stored(store: Store) -> dict[str, tuple[str, bool]]:
    with store.unit_of_work() as uow:
        return {p.her_id: (p.name, p.active) for p in load_parties(uow)}


def test_a_party_the_register_deletes_is_kept_inactive(
    store: Store,
    register: tuple[FakeAddressRegister, ArClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, client = register
    fake.put_party(_record(100001, "Legekontor A"))
    fake.put_party(_record(100002, "Legekontor B"))
    sync_register(store, client)

    fake.delete_party(100001)
    with caplog.at_level(logging.WARNING, logger="meldingstjener.registry.sync"):
        report = sync_register(store, client)
    assert report.not_found == ["100001"] and report.deactivated == ["100001"]
    assert report.last_sequence_number == 3
    assert _stored(store) == {"100001": ("Legekontor A", False), "100002": ("Legekontor B", True)}
    with store.unit_of_work() as uow:
        [party] = [p for p in load_parties(uow) if p.her_id == "100001"]
        assert not party.usable_at(datetime.now(UTC))
        assert last_synced_sequence(uow) == 3
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == (
        "HER-id 100001 is no longer in the address register (event CommunicationPartyDeleted): "
        "kept, marked inactive"
    )

    fake.put_party(_record(100002, "Legekontor B Ny"))  # nothing more to do for the gone one
    again = sync_register(store, client)
    assert again.deactivated == [] and _stored(store)["100001"] == ("Legekontor A", False)

    fake.put_party(_record(100001, "Legekontor A"))  # back in the register
    assert sync_register(store, client).deactivated == []
    assert _stored(store)["100001"] == ("Legekontor A", True)
