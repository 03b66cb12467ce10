"""A certificate the register withdraws (the party's record names none for the role any more)
is not used after the next sync: the encryption certificate is gone, and the signing one stays
only as the one replaced, accepted for the rollover's grace period. A register file that names
no certificates (a SOAP answer, CommunicationDetails) says nothing of them: an import keeps the
stored ones."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from meldingstjener.engine.directory import PartyDirectory
from meldingstjener.registry import parse_certificate_json, parse_party_json, with_certificates
from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.fakes import FakeAddressRegister
from meldingstjener.registry.store import import_files, party_from_row, save_parties
from meldingstjener.registry.sync import sync_register
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

NAV = "79768"
GRACE = timedelta(days=7)


def _json(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text("utf-8"))
    assert isinstance(document, dict)
    return document


def _stored(store: Store) -> tuple[str | None, str | None, str | None]:
    """NAV's stored signing, encryption and previous signing certificate (base64 DER)."""
    with store.unit_of_work() as uow:
        row = uow.parties.get(NAV)
        assert row is not None
        return row.signing_certificate, row.encryption_certificate, row.previous_signing_certificate


def test_a_certificate_the_register_withdraws_is_dropped_at_the_next_sync(
    store: Store, register: tuple[FakeAddressRegister, ArClient], ar_samples: Path
) -> None:
    fake, client = register
    record = _json(ar_samples / "nav-NavCommunicationParty.json")
    fake.put_party(
        record,
        signing=_json(ar_samples / "nav-NavSignCert.json"),
        encryption=_json(ar_samples / "nav-NavEncryptCert.json"),
    )
    sync_register(store, client)
    signing, encryption, previous = _stored(store)
    assert signing and encryption and previous is None

    del record["currentEncryptionCertificate"]  # the register withdraws one of them
    fake.put_party(record)
    sync_register(store, client)
    assert _stored(store) == (signing, None, None)

    del record["currentSigningCertificate"]  # and then the other
    fake.put_party(record)
    sync_register(store, client)
    assert _stored(store) == (None, None, signing)  # kept only as the one replaced
    with store.unit_of_work() as uow:
        row = uow.parties.get(NAV)
        assert row is not None
        party = party_from_row(row)
        assert party.signing_certificate is None and party.encryption_certificate is None
        directory = PartyDirectory(store, ["8142987"], cache_seconds=0)
        certificates = directory.signing_certificates(uow, NAV)
    assert certificates.current is None and certificates.previous is not None
    now = utcnow()
    assert certificates.candidates(now, GRACE) == [certificates.previous]
    assert certificates.candidates(now + GRACE + timedelta(minutes=1), GRACE) == []


def test_an_imported_file_that_names_no_certificates_keeps_the_stored_ones(
    store: Store, ar_samples: Path, tmp_path: Path
) -> None:
    record = _json(ar_samples / "nav-NavCommunicationParty.json")
    full = with_certificates(
        parse_party_json(record),
        signing=parse_certificate_json((ar_samples / "nav-NavSignCert.json").read_bytes()),
        encryption=parse_certificate_json((ar_samples / "nav-NavEncryptCert.json").read_bytes()),
    )
    with store.unit_of_work() as uow:
        save_parties(uow, [full])
        uow.commit()
    held = _stored(store)
    del record["currentSigningCertificate"], record["currentEncryptionCertificate"]
    silent = tmp_path / "nav-without-certificates.json"
    silent.write_text(json.dumps({**record, "name": "NAV IKT (renamed)"}))
    with store.unit_of_work() as uow:
        report = import_files(uow, [silent])
        uow.commit()
    assert report.imported == {str(silent): 1}
    assert _stored(store) == held
    with store.unit_of_work() as uow:
        row = uow.parties.get(NAV)
        assert row is not None
        kept = party_from_row(row)
    assert kept.name == "NAV IKT (renamed)"
    assert kept == replace(full, name="NAV IKT (renamed)", last_changed=kept.last_changed)
