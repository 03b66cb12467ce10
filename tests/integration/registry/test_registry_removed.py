"""A party the register stops returning (deleted: an event names it, the lookup has it no more)
is kept by the sync, marked inactive, so nothing is sent to it; its record coming back makes it
what the record says."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.fakes import FakeAddressRegister, serve
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


@pytest.fixture
def bulk_register() -> Iterator[tuple[FakeAddressRegister, ArClient]]:
    """The fake register with its bulk lookup, our client on it."""
    fake = FakeAddressRegister()
    with serve(fake) as url:
        client = ArClient(url, StaticToken(""))
        yield fake, client
        client.close()


def _unreadable_her_id(fake: FakeAddressRegister, her_id: int, name: str) -> None:
    """The party changed (an event names it), its record now with a herId we cannot read."""
    fake.put_party(_record(her_id, name))
    fake.parties[str(her_id)]["herId"] = f"{her_id}x"


def test_a_record_whose_her_id_cannot_be_read_does_not_make_its_party_gone(
    store: Store, bulk_register: tuple[FakeAddressRegister, ArClient]
) -> None:
    # The bulk answer's record is refused as "entry 0", so the HER-id asked for is missing
    # from what was read: the register has it all the same, and a party marked inactive has
    # every message queued to it given up.
    fake, client = bulk_register
    fake.put_party(_record(100001, "Legekontor A"))
    fake.put_party(_record(100002, "Legekontor B"))
    sync_register(store, client)

    _unreadable_her_id(fake, 100001, "Legekontor A Ny")
    report = sync_register(store, client)
    assert report.not_found == [] and report.deactivated == []
    assert "100001" in report.refused  # its own lookup names it
    assert _stored(store) == {"100001": ("Legekontor A", True), "100002": ("Legekontor B", True)}


def test_a_party_a_bulk_answer_leaves_out_is_asked_for_alone(
    store: Store, bulk_register: tuple[FakeAddressRegister, ArClient], monkeypatch: Any
) -> None:
    fake, client = bulk_register
    fake.put_party(_record(100001, "Legekontor A"))
    fake.put_party(_record(100002, "Legekontor B"))
    sync_register(store, client)

    bulk = fake._bulk

    def forgetful(request: Any) -> Any:  # leaves 100001 out by mistake
        reply = bulk(request)
        kept = [r for r in json.loads(reply.body) if r["herId"] != 100001]
        return type(reply).json(kept)

    monkeypatch.setattr(fake, "_bulk", forgetful)
    fake.put_party(_record(100001, "Legekontor A Ny"))
    fake.put_party(_record(100002, "Legekontor B Ny"))
    report = sync_register(store, client)
    assert report.not_found == [] and report.deactivated == [] and report.refused == {}
    assert _stored(store) == {
        "100001": ("Legekontor A Ny", True),
        "100002": ("Legekontor B Ny", True),
    }
    assert "GET /api/v1/communicationparty/100001" in fake.requests

    fake.delete_party(100002)  # really gone: its own lookup does not find it either
    report = sync_register(store, client)
    assert report.not_found == ["100002"] and report.deactivated == ["100002"]
    assert _stored(store)["100002"] == ("Legekontor B Ny", False)


def test_no_party_is_marked_gone_from_a_bulk_answer_with_a_record_it_cannot_attribute(
    store: Store, bulk_register: tuple[FakeAddressRegister, ArClient]
) -> None:
    fake, client = bulk_register
    fake.put_party(_record(100001, "Legekontor A"))
    fake.put_party(_record(100002, "Legekontor B"))
    sync_register(store, client)

    _unreadable_her_id(fake, 100001, "Legekontor A Ny")
    fake.delete_party(100002)  # in the same chunk: not told apart from the unreadable one here
    report = sync_register(store, client)
    assert report.deactivated == []
    assert _stored(store)["100002"] == ("Legekontor B", True)


def test_a_full_sync_notices_a_party_deleted_before_its_export(
    store: Store,
    register: tuple[FakeAddressRegister, ArClient],
) -> None:
    """``ar sync --full`` (what the register alerts advise): the deletion's event comes before
    the export's sequence number and is never read as an event; the party the export no longer
    lists is asked for alone and, not found, marked inactive. One it still lists (deactivated
    parties included) and a [[partners]] party are left as they are."""
    fake, client = register
    fake.put_party(_record(100001, "Legekontor A"))
    fake.put_party(_record(100002, "Legekontor B"))
    fake.put_party(_record(100003, "Legekontor C"))
    sync_register(store, client)
    with store.unit_of_work() as uow:
        configured = uow.parties.get("100002")
        assert configured is not None
        configured.source = "config"  # as a [[partners]] entry keeps it
        uow.commit()

    fake.delete_party(100001)
    fake.delete_party(100002)
    fake.deactivated.add("100003")  # listed with includeDeactivated only: still in the register
    fake.put_party(_record(100003, "Legekontor C2"))
    report = sync_register(store, client, full=True)
    assert report.mode == "full" and report.deactivated == ["100001"]
    assert _stored(store) == {
        "100001": ("Legekontor A", False),
        "100002": ("Legekontor B", True),
        "100003": ("Legekontor C2", True),
    }
    # the gone one was asked for alone once (a lookup), not guessed from the export
    assert "GET /api/v1/communicationparty/100001" in fake.requests
    again = sync_register(store, client)  # nothing left over for the events
    assert again.deactivated == [] and again.last_sequence_number == report.last_sequence_number


def test_a_full_sync_goes_on_from_the_unlisted_parties_it_checked(
    store: Store, register: tuple[FakeAddressRegister, ArClient], monkeypatch: Any
) -> None:
    """More stored parties the export does not list than one run's budget can look up alone:
    each run goes on after the last it checked, and the export completes (it began again from
    the first each run, never completed, and the events were never applied)."""
    fake, client = register
    her_ids = [100001, 100002, 100003, 100004]
    for her_id in her_ids:
        fake.put_party(_record(her_id, f"Legekontor {her_id}"))
    sync_register(store, client)

    export = fake._export

    def listing_none(request: Any) -> Any:  # the parties are found alone all the same
        reply = export(request)
        body = json.loads(reply.body)
        return type(reply).json({**body, "count": 0, "communicationParties": []})

    monkeypatch.setattr(fake, "_export", listing_none)
    fake.requests.clear()
    runs = []
    for _ in range(len(her_ids) + 2):  # one party a run, and the run that finds none left
        report = sync_register(store, client, full=not runs, chunk_size=1, budget_seconds=0)
        runs.append(report)
        if report.complete:
            break
    assert runs[-1].complete and runs[-1].mode == "full"
    for her_id in her_ids:  # each looked up alone once
        assert fake.requests.count(f"GET /api/v1/communicationparty/{her_id}") == 1
    assert all(active for _, active in _stored(store).values())
