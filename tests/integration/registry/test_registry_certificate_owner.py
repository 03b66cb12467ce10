"""A certificate the register (or an imported file) gives a party must be of the party's
organisation: one that carries another organisation number than the party's own, its parent
organisation's or the one of the certificate held for it before refuses that party (its stored
copy stays). The first certificate of a party is taken as given: a party may be registered
under a subunit's number and use its main unit's certificate (NAV IKT does), which the record
does not say. A party without a number of its own (a service, a person) is held to its parent
organisation's and the one of the certificates held for it."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.fakes import FakeAddressRegister
from meldingstjener.registry.store import import_files
from meldingstjener.registry.sync import refused_parties, sync_register
from meldingstjener.security.devpki import DevPki, init_pki
from meldingstjener.store.uow import Store

OURS, OURS_LATER, OTHER, PARENT, UNIT = "100001", "100002", "200002", "300003", "400004"
ORG = {
    OURS: "901000018",
    OURS_LATER: "901000018",  # the same organisation's next certificates
    OTHER: "902000038",
    PARENT: "903000058",
    UNIT: "904000078",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_pki(tmp_path_factory.mktemp("pki"), list(ORG), organisation_numbers=ORG)


def _document(certificate: x509.Certificate) -> dict[str, Any]:
    der = certificate.public_bytes(Encoding.DER)
    return {
        "thumbprint": hashlib.sha1(der).hexdigest().upper(),
        "validFrom": certificate.not_valid_before_utc.isoformat(),
        "validTo": certificate.not_valid_after_utc.isoformat(),
        "certificateValue": base64.b64encode(der).decode("ascii"),
    }


def _put(
    fake: FakeAddressRegister,
    pki: DevPki,
    her_id: str,
    certificates_of: str,
    *,
    name: str = "Legekontor",
    organisation: str | None = "own",
    parent: str | None = None,
    party_type: str = "Organization",
) -> None:
    """``her_id`` in the register with the certificates of ``certificates_of``."""
    keys = pki.parties[certificates_of]
    signing, encryption = (
        _document(keys.signing.certificate),
        _document(keys.encryption.certificate),
    )
    record: dict[str, Any] = {
        "herId": int(her_id),
        "name": name,
        "type": party_type,
        "ediAddress": f"{her_id}@edi",
        "currentSigningCertificate": {k: signing[k] for k in ("thumbprint", "validTo")},
        "currentEncryptionCertificate": {k: encryption[k] for k in ("thumbprint", "validTo")},
    }
    if organisation is not None:
        number = ORG[her_id] if organisation == "own" else organisation
        record["organizationDetails"] = {"organizationNumber": number}
    if parent is not None:
        record["parentHerId"] = int(parent)
    fake.put_party(record, signing=signing, encryption=encryption)


def _stored(store: Store, her_id: str) -> tuple[str | None, str | None, str | None]:
    """The stored name and the organisation numbers of the stored certificates."""
    from meldingstjener.security.certs import organisation_number

    with store.unit_of_work() as uow:
        row = uow.parties.get(her_id)
        assert row is not None
        numbers = [
            organisation_number(x509.load_der_x509_certificate(base64.b64decode(value)))
            if value
            else None
            for value in (row.signing_certificate, row.encryption_certificate)
        ]
        return row.name, numbers[0], numbers[1]


def test_a_certificate_of_another_organisation_refuses_the_party(
    store: Store, register: tuple[FakeAddressRegister, ArClient], pki: DevPki
) -> None:
    fake, client = register
    _put(fake, pki, OURS, OURS)
    assert sync_register(store, client).refused == {}
    assert _stored(store, OURS) == ("Legekontor", ORG[OURS], ORG[OURS])

    _put(fake, pki, OURS, OTHER, name="Legekontor Ny")  # another organisation's keys
    report = sync_register(store, client)
    reason = report.refused[OURS]
    assert f"signing certificate belongs to organisation {ORG[OTHER]}" in reason
    assert f"not to the party's own ({ORG[OURS]})" in reason
    assert _stored(store, OURS) == ("Legekontor", ORG[OURS], ORG[OURS])  # as it was
    with store.unit_of_work() as uow:
        assert list(refused_parties(uow)) == [OURS]

    _put(fake, pki, OURS, OURS_LATER, name="Legekontor Ny")  # its own organisation's new keys
    report = sync_register(store, client)
    assert report.refused == {} and report.no_longer_refused == [OURS]
    assert _stored(store, OURS) == ("Legekontor Ny", ORG[OURS], ORG[OURS])


def test_the_parent_organisations_certificate_is_the_partys_too(
    store: Store, register: tuple[FakeAddressRegister, ArClient], pki: DevPki
) -> None:
    fake, client = register
    _put(fake, pki, PARENT, PARENT, name="Helseforetak")
    _put(fake, pki, UNIT, UNIT, name="Avdeling", parent=PARENT)
    sync_register(store, client)
    # the unit's record names its parent's HER-id, not the parent's number: it is looked up
    _put(fake, pki, UNIT, PARENT, name="Avdeling Ny", parent=PARENT)
    assert sync_register(store, client).refused == {}
    assert _stored(store, UNIT) == ("Avdeling Ny", ORG[PARENT], ORG[PARENT])
    _put(fake, pki, UNIT, OTHER, name="Avdeling Annen", parent=PARENT)
    assert list(sync_register(store, client).refused) == [UNIT]
    assert _stored(store, UNIT) == ("Avdeling Ny", ORG[PARENT], ORG[PARENT])


def test_the_first_certificate_is_taken(
    store: Store, register: tuple[FakeAddressRegister, ArClient], pki: DevPki, ar_samples: Path
) -> None:
    fake, client = register
    # NAV IKT (990983291) uses the certificate of Arbeids- og velferdsetaten (889640782)
    nav = json.loads((ar_samples / "nav-NavCommunicationParty.json").read_text("utf-8"))
    fake.put_party(
        nav,
        signing=json.loads((ar_samples / "nav-NavSignCert.json").read_text("utf-8")),
        encryption=json.loads((ar_samples / "nav-NavEncryptCert.json").read_text("utf-8")),
    )
    _put(fake, pki, OURS, OURS, organisation=None)
    assert sync_register(store, client).refused == {}
    assert _stored(store, "79768") == ("NAV IKT", "889640782", "889640782")
    _put(fake, pki, OTHER, OTHER, organisation=None)  # no number, no certificate held
    assert sync_register(store, client).refused == {}
    assert _stored(store, OTHER) == ("Legekontor", ORG[OTHER], ORG[OTHER])


def test_a_party_without_a_number_of_its_own_is_held_to_its_parents_and_its_certificates(
    store: Store, register: tuple[FakeAddressRegister, ArClient], pki: DevPki
) -> None:
    fake, client = register
    _put(fake, pki, PARENT, PARENT, name="Helseforetak")
    # a service has no organisation number of its own: the parent's and the held ones count
    _put(
        fake,
        pki,
        UNIT,
        PARENT,
        name="Legevakt",
        organisation=None,
        parent=PARENT,
        party_type="Service",
    )
    _put(fake, pki, OURS, OURS, organisation=None)  # no number, no parent
    assert sync_register(store, client).refused == {}

    _put(
        fake,
        pki,
        UNIT,
        OTHER,
        name="Legevakt Ny",
        organisation=None,
        parent=PARENT,
        party_type="Service",
    )
    _put(fake, pki, OURS, OTHER, name="Legekontor Ny", organisation=None)
    report = sync_register(store, client)
    assert sorted(report.refused) == [OURS, UNIT]
    assert f"belongs to organisation {ORG[OTHER]}" in report.refused[UNIT]
    assert f"({ORG[PARENT]})" in report.refused[UNIT]
    assert _stored(store, UNIT) == ("Legevakt", ORG[PARENT], ORG[PARENT])  # as it was
    assert _stored(store, OURS) == ("Legekontor", ORG[OURS], ORG[OURS])

    # its parent's next certificates, or the ones it holds, are taken
    _put(
        fake,
        pki,
        UNIT,
        PARENT,
        name="Legevakt Ny",
        organisation=None,
        parent=PARENT,
        party_type="Service",
    )
    _put(fake, pki, OURS, OURS_LATER, name="Legekontor Ny", organisation=None)
    assert sync_register(store, client).refused == {}
    assert _stored(store, UNIT) == ("Legevakt Ny", ORG[PARENT], ORG[PARENT])
    assert _stored(store, OURS) == ("Legekontor Ny", ORG[OURS], ORG[OURS])


def test_an_import_refuses_a_certificate_of_another_organisation(
    store: Store, pki: DevPki, tmp_path: Path
) -> None:
    def record(certificates_of: str, name: str) -> dict[str, Any]:
        keys = pki.parties[certificates_of]
        return {
            "herId": int(OURS),
            "name": name,
            "type": "Organization",
            "organizationDetails": {"organizationNumber": ORG[OURS]},
            "currentSigningCertificate": _document(keys.signing.certificate),
            "currentEncryptionCertificate": _document(keys.encryption.certificate),
        }

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps([record(OURS, "Legekontor")]))
    second.write_text(
        json.dumps([record(OTHER, "Legekontor Ny"), record(OURS, "x") | {"herId": 5}])
    )
    with store.unit_of_work() as uow:
        import_files(uow, [first])
        report = import_files(uow, [second])
        uow.commit()
    assert report.imported == {str(second): 1}  # the other party of the file went in
    assert list(report.refused_parties[str(second)]) == [OURS]
    assert ORG[OTHER] in report.refused_parties[str(second)][OURS]
    assert _stored(store, OURS) == ("Legekontor", ORG[OURS], ORG[OURS])
