"""One party's register record that cannot be used stops nobody else's: the sync refuses that
party (its stored copy stays), names it with the reason, goes on and advances; a later sync that
reads the record takes it off the list. Only an answer malformed as a whole stops the sync.
``ar import`` of an export treats its entries the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.fakes import FakeAddressRegister, Reply, Request, serve
from meldingstjener.registry.store import import_files
from meldingstjener.registry.sync import (
    SyncInterrupted,
    last_synced_sequence,
    refused_parties,
    sync_register,
)
from meldingstjener.store.uow import Store

NAV = "79768"


def _record(her_id: int, name: str, party_type: str = "Organization") -> dict[str, Any]:
    return {"herId": her_id, "name": name, "type": party_type, "ediAddress": f"{her_id}@edi"}


def _names(store: Store) -> dict[str, str]:
    with store.unit_of_work() as uow:
        return {row.her_id: row.name for row in uow.parties.all()}


def _standing(store: Store) -> dict[str, str]:
    with store.unit_of_work() as uow:
        return refused_parties(uow)


def test_a_record_that_cannot_be_read_is_refused_alone_and_the_sync_goes_on(
    store: Store, register: tuple[FakeAddressRegister, ArClient]
) -> None:
    fake, client = register
    fake.put_party(_record(1001, "Legekontor A"))
    fake.put_party(_record(1002, "Legekontor B"))
    sync_register(store, client)

    fake.put_party(_record(1002, "Legekontor B", party_type="ExternalService"))  # a new kind
    fake.put_party(_record(1003, "Ny tjeneste", party_type="ExternalService"))
    fake.put_party(_record(1001, "Legekontor A Flyttet"))  # a change after them
    report = sync_register(store, client)  # no SyncInterrupted
    assert report.last_sequence_number == 5 and report.events_applied == 3
    assert sorted(report.refused) == ["1002", "1003"]
    assert "unknown type 'ExternalService'" in report.refused["1003"]
    assert report.parties_written == 1
    # the refused party keeps its stored copy; the unreadable new one is not stored
    assert _names(store) == {"1001": "Legekontor A Flyttet", "1002": "Legekontor B"}
    assert sorted(_standing(store)) == ["1002", "1003"]
    with store.unit_of_work() as uow:
        assert last_synced_sequence(uow) == 5

    again = sync_register(store, client)  # nothing new: the list stays
    assert again.refused == {} and again.no_longer_refused == []
    assert sorted(_standing(store)) == ["1002", "1003"]

    fake.put_party(_record(1002, "Legekontor B Ny"))  # the register mends one record
    mended = sync_register(store, client)
    assert mended.no_longer_refused == ["1002"] and mended.refused == {}
    assert list(_standing(store)) == ["1003"]
    assert _names(store)["1002"] == "Legekontor B Ny"


def test_a_record_with_odd_digits_or_an_unconvertible_time_does_not_stop_the_sync(
    store: Store, register: tuple[FakeAddressRegister, ArClient]
) -> None:
    fake, client = register
    for her_id in (1001, 1002, 1003):
        fake.put_party(_record(her_id, f"Legekontor {her_id}"))
    sync_register(store, client)

    # "¹²".isdigit() is True and int("¹²") a ValueError; the end of year 9999 at -05:00 is
    # past datetime's range in UTC: each stopped every later run on the same event
    fake.put_party({**_record(1002, "Legekontor 1002 Ny"), "parentHerId": "\u00b9\u00b2"})
    fake.put_party({**_record(1003, "Legekontor 1003 Ny"), "validTo": "9999-12-31T23:59:59-05:00"})
    fake.put_party(_record(1001, "Legekontor 1001 Flyttet"))  # an ordinary change after them
    report = sync_register(store, client)
    assert report.last_sequence_number == 6 and report.events_applied == 3
    assert list(report.refused) == ["1003"] and "UTC" in report.refused["1003"]
    assert list(_standing(store)) == ["1003"]
    # no parent is what any other value that is not a HER-id gives
    assert _names(store) == {
        "1001": "Legekontor 1001 Flyttet",
        "1002": "Legekontor 1002 Ny",
        "1003": "Legekontor 1003",
    }
    with store.unit_of_work() as uow:
        assert last_synced_sequence(uow) == 6
        row = uow.parties.get("1002")
        assert row is not None and row.parent_her_id is None

    fake.put_party(_record(1002, "Legekontor 1002 Igjen"))  # later changes are applied
    assert sync_register(store, client).last_sequence_number == 7
    assert _names(store)["1002"] == "Legekontor 1002 Igjen"


def _nav(ar_samples: Path, fake: FakeAddressRegister, *, signing: dict[str, Any]) -> None:
    record = json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8"))
    encryption = json.loads((ar_samples / "nav-NavEncryptCert.json").read_text("utf-8"))
    fake.put_party(record, signing=signing, encryption=encryption)


def _sign_cert(ar_samples: Path) -> dict[str, Any]:
    document = json.loads((ar_samples / "nav-NavSignCert.json").read_text("utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ({"certificateValue": "bm90IGEgY2VydGlmaWNhdGU="}, "not a DER X.509 certificate"),
        ({"thumbprint": "00" * 20}, "does not match its bytes"),
        ("encryption", "does not match the one the register names"),
    ],
    ids=["unreadable", "thumbprint-not-its-bytes", "not-the-one-named"],
)
def test_a_certificate_that_cannot_be_used_refuses_its_party_alone(
    store: Store,
    register: tuple[FakeAddressRegister, ArClient],
    ar_samples: Path,
    damage: dict[str, str] | str,
    reason: str,
) -> None:
    fake, client = register
    fake.put_party(_record(1001, "Legekontor A"))
    signing = _sign_cert(ar_samples)
    if damage == "encryption":  # a good certificate, but another than the record names
        signing = json.loads((ar_samples / "nav-NavEncryptCert.json").read_text("utf-8"))
    elif isinstance(damage, dict):
        signing = {**signing, **damage}
    _nav(ar_samples, fake, signing=signing)
    fake.put_party(_record(1001, "Legekontor A Flyttet"))

    report = sync_register(store, client)
    assert list(report.refused) == [NAV] and reason in report.refused[NAV]
    assert "signing certificate" in report.refused[NAV]
    assert _names(store) == {"1001": "Legekontor A Flyttet"}
    assert list(_standing(store)) == [NAV]

    _nav(ar_samples, fake, signing=_sign_cert(ar_samples))  # the register mends it
    mended = sync_register(store, client)
    assert mended.no_longer_refused == [NAV] and _standing(store) == {}
    assert _names(store)[NAV] == "NAV IKT"


def test_a_certificate_named_without_bytes_refuses_its_party_and_the_old_one_stays(
    store: Store, register: tuple[FakeAddressRegister, ArClient], ar_samples: Path
) -> None:
    fake, client = register
    _nav(ar_samples, fake, signing=_sign_cert(ar_samples))
    sync_register(store, client)
    with store.unit_of_work() as uow:
        row = uow.parties.get(NAV)
        assert row is not None and row.signing_certificate is not None
        held = row.signing_certificate

    # the register names a new signing certificate and its certificate endpoint has none (404)
    record = json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8"))
    record["name"] = "NAV IKT Ny"
    record["currentSigningCertificate"] = {**record["currentSigningCertificate"]}
    record["currentSigningCertificate"]["thumbprint"] = "AB" * 20
    del fake.certificates[(NAV, "signing")]
    fake.put_party(record)
    report = sync_register(store, client)
    assert list(report.refused) == [NAV]
    assert "names signing certificate " + "AB" * 20 + " and has no bytes" in report.refused[NAV]
    assert list(_standing(store)) == [NAV]
    with store.unit_of_work() as uow:
        row = uow.parties.get(NAV)
        assert row is not None
        assert (row.name, row.signing_certificate) == ("NAV IKT", held)  # still current


def test_an_answer_malformed_as_a_whole_still_stops_the_sync(store: Store) -> None:
    fake = FakeAddressRegister()
    fake.put_party(_record(1001, "Legekontor A"))

    def app(request: Request) -> Reply:
        if request.method == "POST":
            return Reply.json({"not": "a list"})
        return fake(request)

    with serve(app) as url:
        client = ArClient(url, StaticToken(""))
        with pytest.raises(SyncInterrupted) as stopped:
            sync_register(store, client)
        client.close()
    assert "did not answer a list of parties" in str(stopped.value)
    assert _names(store) == {} and _standing(store) == {}


def test_an_import_takes_the_entries_it_can_read(
    store: Store, tmp_path: Path, ar_samples: Path
) -> None:
    nav = json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8"))
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([nav, _record(1003, "Ny tjeneste", party_type="ExternalService"), "oops"])
    )
    with store.unit_of_work() as uow:
        report = import_files(uow, [export])
        uow.commit()
    assert report.imported == {str(export): 1} and report.refused == {}
    refused = report.refused_parties[str(export)]
    assert sorted(refused) == ["1003", "entry 2"]
    assert "unknown type" in refused["1003"] and "not a JSON object" in refused["entry 2"]
    assert report.her_ids == [NAV]
    assert _names(store) == {NAV: "NAV IKT"}
