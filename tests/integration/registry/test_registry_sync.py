"""Sync from a fake address register over HTTP with HelseID tokens: full export, events, and a
sync that breaks half-way and resumes where it stopped without wiping anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import ClientCredentialsTokenProvider
from meldingstjener.registry.fakes import FakeAddressRegister, FakeHelseId, serve
from meldingstjener.registry.store import load_parties, party_from_row
from meldingstjener.registry.sync import (
    LAST_SEQUENCE_KEY,
    SyncInterrupted,
    last_synced_sequence,
    sync_register,
)
from meldingstjener.store.uow import Store


def _record(her_id: int, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "herId": her_id,
        "name": name,
        "type": "Organization",
        "ediAddress": f"post-{her_id}@edi.example.no",
        "amqpTransportStatus": "Disabled",
        **extra,
    }


@pytest.fixture
def register() -> Iterator[tuple[FakeAddressRegister, ArClient]]:
    helseid = FakeHelseId({"msh-test": "s3cret"})
    fake = FakeAddressRegister(guard=helseid.guard)
    with serve(helseid) as helseid_url, serve(fake) as ar_url:
        tokens = ClientCredentialsTokenProvider(
            f"{helseid_url}/connect/token", "msh-test", client_secret="s3cret"
        )
        client = ArClient(ar_url, tokens)
        yield fake, client
        client.close()


def test_full_export_then_events(
    store: Store, register: tuple[FakeAddressRegister, ArClient], ar_samples: Path
) -> None:
    fake, client = register
    nav = json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8"))
    fake.put_party(
        nav,
        signing=json.loads((ar_samples / "nav-NavSignCert.json").read_text("utf-8")),
        encryption=json.loads((ar_samples / "nav-NavEncryptCert.json").read_text("utf-8")),
    )
    for her_id in range(100001, 100006):
        fake.put_party(_record(her_id, f"Legekontor {her_id}"))

    first = sync_register(store, client, chunk_size=2)
    assert (first.mode, first.parties_written, first.last_sequence_number) == ("full", 6, 6)
    with store.unit_of_work() as uow:
        row = uow.parties.get("79768")
        assert row is not None
        nav_party = party_from_row(row)
        assert last_synced_sequence(uow) == 6
    assert nav_party.signing_certificate_der is not None  # fetched from the certificate API
    assert nav_party.edi_address == "mottak-qass@test-es.nav.no"

    fake.put_party(_record(100002, "Legekontor Ny Adresse"))
    fake.put_party(_record(100007, "Helsestasjon Øvre"))
    second = sync_register(store, client)
    assert (second.mode, second.events_applied, second.last_sequence_number) == ("events", 2, 8)
    with store.unit_of_work() as uow:
        names = {p.her_id: p.name for p in load_parties(uow)}
    assert names["100002"] == "Legekontor Ny Adresse"
    assert names["100007"] == "Helsestasjon Øvre"
    assert len(names) == 7


def _calls(fake: FakeAddressRegister, since: int) -> dict[str, int]:
    """The register calls made since request number ``since``, by kind."""
    kinds = {"bulk": 0, "party": 0, "certificate": 0, "other": 0}
    for call in fake.requests[since:]:
        if call == "POST /api/v1/communicationparty":
            kinds["bulk"] += 1
        elif call.startswith("GET /api/v1/certificate/"):
            kinds["certificate"] += 1
        elif call.startswith("GET /api/v1/communicationparty/") and "export" not in call:
            kinds["party"] += 1
        else:
            kinds["other"] += 1
    return kinds


def _nav_party(ar_samples: Path, fake: FakeAddressRegister, *, new_signing: bool = False) -> None:
    """The NAV sample party with its certificates; ``new_signing``: its signing certificate
    replaced (by its encryption certificate's, the one other sample we have)."""
    nav = json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8"))
    signing = json.loads((ar_samples / "nav-NavSignCert.json").read_text("utf-8"))
    encryption = json.loads((ar_samples / "nav-NavEncryptCert.json").read_text("utf-8"))
    if new_signing:
        signing = encryption
        nav["currentSigningCertificate"] = nav["currentEncryptionCertificate"]
    fake.put_party(nav, signing=signing, encryption=encryption)


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "one-by-one"])
def test_parties_are_asked_for_in_bulk_and_only_new_certificates_are_fetched(
    store: Store, register: tuple[FakeAddressRegister, ArClient], ar_samples: Path, bulk: bool
) -> None:
    fake, client = register
    fake.bulk_supported = bulk  # an older register without the bulk lookup: one by one
    _nav_party(ar_samples, fake)
    for her_id in range(500001, 500150):
        fake.put_party(_record(her_id, f"Legekontor {her_id}"))
    first = sync_register(store, client, chunk_size=200)
    assert first.parties_written == 150 and first.not_found == []
    calls = _calls(fake, 0)
    if bulk:
        # 150 parties: two lookups of at most 100; NAV's two certificates
        assert calls == {"bulk": 2, "party": 0, "certificate": 2, "other": 2}
    else:  # asked once whether it has the bulk lookup
        assert calls == {"bulk": 1, "party": 150, "certificate": 2, "other": 2}

    # the whole register again: nothing new, so no certificate is fetched
    before = len(fake.requests)
    again = sync_register(store, client, full=True, chunk_size=200)
    assert again.parties_written == 150
    calls = _calls(fake, before)
    assert calls["certificate"] == 0  # one by one too: the bytes held are kept
    assert calls["bulk"] == (2 if bulk else 0)
    with store.unit_of_work() as uow:
        row = uow.parties.get("79768")
        assert row is not None
        kept = party_from_row(row)
    assert kept.signing_certificate_der is not None and kept.encryption_certificate_der

    # NAV's signing certificate changes: that one certificate is fetched, nothing else
    _nav_party(ar_samples, fake, new_signing=True)
    fake.put_party(_record(499999, "Borte"))
    fake.parties.pop("499999")  # an event for a party the register no longer has
    before = len(fake.requests)
    events = sync_register(store, client)
    assert events.mode == "events" and events.parties_written == 1
    assert events.not_found == ["499999"]
    calls = _calls(fake, before)
    assert calls["certificate"] == 1
    with store.unit_of_work() as uow:
        row = uow.parties.get("79768")
        assert row is not None
        changed = party_from_row(row)
    assert changed.signing_certificate_der == changed.encryption_certificate_der
    assert changed.signing_certificate_der != kept.signing_certificate_der


def test_a_stored_certificate_that_cannot_be_read_is_fetched_again(
    store: Store, register: tuple[FakeAddressRegister, ArClient], ar_samples: Path
) -> None:
    # A row damaged outside the server (its certificate column is not base64) must not stop
    # the sync: the certificate is fetched again and the row mended.
    from sqlalchemy import update

    from meldingstjener.store.tables import PartyRow

    fake, client = register
    _nav_party(ar_samples, fake)
    sync_register(store, client)
    with store.unit_of_work() as uow:
        uow.session.execute(
            update(PartyRow)
            .where(PartyRow.her_id == "79768")
            .values(signing_certificate="not base64!")
        )
        uow.commit()
    before = len(fake.requests)
    report = sync_register(store, client, full=True)
    assert report.parties_written == 1
    assert _calls(fake, before)["certificate"] == 1  # the damaged one, not the good one
    with store.unit_of_work() as uow:
        row = uow.parties.get("79768")
        assert row is not None
        mended = party_from_row(row)
    signing = json.loads((ar_samples / "nav-NavSignCert.json").read_text("utf-8"))
    assert mended.signing_certificate is not None
    assert mended.signing_certificate.thumbprint == signing["thumbprint"].upper()
    assert mended.signing_certificate_der is not None


def test_export_interrupted_half_way_resumes_where_it_stopped(
    store: Store, register: tuple[FakeAddressRegister, ArClient]
) -> None:
    fake, client = register
    for her_id in range(200001, 200011):
        fake.put_party(_record(her_id, f"Sykehus {her_id}"))
    fake.fail_party_lookups_after = 5  # the register goes down during the sixth lookup

    with pytest.raises(SyncInterrupted) as stopped:
        sync_register(store, client, chunk_size=2)
    assert stopped.value.code == "ar-sync-interrupted"
    assert stopped.value.report.parties_written == 4  # two whole chunks were committed
    with store.unit_of_work() as uow:
        assert sorted(p.her_id for p in load_parties(uow)) == [
            str(h) for h in range(200001, 200005)
        ]
        assert uow.state.get(LAST_SEQUENCE_KEY) is None  # the export has not finished

    fake.fail_party_lookups_after = None
    lookups_before = fake.party_lookups
    resumed = sync_register(store, client, chunk_size=2)
    assert resumed.resumed and resumed.mode == "full"
    # Only the six parties not yet stored were fetched again.
    assert fake.party_lookups - lookups_before == 6
    with store.unit_of_work() as uow:
        assert len(load_parties(uow)) == 10
        assert last_synced_sequence(uow) == 10


def test_event_sync_interrupted_keeps_applied_events_and_never_wipes(
    store: Store, register: tuple[FakeAddressRegister, ArClient]
) -> None:
    fake, client = register
    for her_id in (300001, 300002):
        fake.put_party(_record(her_id, f"Kommune {her_id}"))
    sync_register(store, client)
    for her_id in range(300003, 300009):
        fake.put_party(_record(her_id, f"Legevakt {her_id}"))
    fake.fail_party_lookups_after = fake.party_lookups + 3

    with pytest.raises(SyncInterrupted):
        sync_register(store, client, chunk_size=1)
    with store.unit_of_work() as uow:
        assert last_synced_sequence(uow) == 5  # events 3, 4, 5 applied and remembered
        assert len(load_parties(uow)) == 5

    # A party disappears from the register: our copy keeps it (the register is not the only
    # place that decides what we can still send to).
    del fake.parties["300001"]
    fake.fail_party_lookups_after = None
    report = sync_register(store, client, chunk_size=1)
    assert report.events_applied == 3 and report.last_sequence_number == 8
    with store.unit_of_work() as uow:
        assert len(load_parties(uow)) == 8


def test_sync_without_a_valid_token_is_refused_and_changes_nothing(
    store: Store, register: tuple[FakeAddressRegister, ArClient]
) -> None:
    from meldingstjener.registry.auth import StaticToken

    fake, _ = register
    fake.put_party(_record(400001, "Fastlege"))
    with serve(fake) as url:
        client = ArClient(url, StaticToken("forged"))
        with pytest.raises(SyncInterrupted) as refused:
            sync_register(store, client)
        client.close()
    assert "refused our token" in str(refused.value)
    with store.unit_of_work() as uow:
        assert load_parties(uow) == []
