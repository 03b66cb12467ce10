"""The development PKI: certificate shape, CRL, revocation, re-running init."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from meldingstjener.security.certs import organisation_number, usage_allowed
from meldingstjener.security.devpki import (
    DevPki,
    DevPkiError,
    init_pki,
    load_dev_party,
    organisation_number_for,
    revoke,
)

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for


def _mod11_ok(number: str) -> bool:
    weights = (3, 2, 7, 6, 5, 4, 3, 2)
    remainder = sum(w * int(d) for w, d in zip(weights, number[:8], strict=True)) % 11
    check = 0 if remainder == 0 else 11 - remainder
    return check == int(number[8])


def test_certificates_look_like_norwegian_enterprise_certificates(pki: DevPki) -> None:
    party = pki.parties[SENDER]
    for cert in (party.signing.certificate, party.encryption.certificate):
        subject = cert.subject
        assert subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "NO"
        assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value == (
            f"NTRNO-{party.organisation_number}"
        )
        assert organisation_number(cert) == party.organisation_number
        assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
        cert.verify_directly_issued_by(pki.ca_certificate)
    signing = party.signing.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert signing.content_commitment and signing.digital_signature and not signing.key_encipherment
    encryption = party.encryption.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert encryption.value.key_encipherment and encryption.value.data_encipherment
    assert not encryption.value.content_commitment
    assert usage_allowed(party.signing.certificate, "signing")
    assert not usage_allowed(party.signing.certificate, "encryption")
    assert _mod11_ok(party.organisation_number)


@pytest.mark.parametrize("her_id", ["1", "79768", "8141253", "99999999"])
def test_organisation_numbers_are_valid(her_id: str) -> None:
    number = organisation_number_for(her_id)
    assert len(number) == 9 and _mod11_ok(number)


def test_no_crl_url_by_default_and_configurable(pki: DevPki, tmp_path: Path) -> None:
    cert = pki.parties[SENDER].signing.certificate
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    other = init_pki(tmp_path, ["5"], crl_url="http://127.0.0.1:1/dev.crl")
    points = other.parties["5"].signing.certificate.extensions.get_extension_for_class(
        x509.CRLDistributionPoints
    )
    assert points.value[0].full_name[0].value == "http://127.0.0.1:1/dev.crl"  # type: ignore[index]


def test_revoke_updates_the_signed_crl(tmp_path: Path) -> None:
    pki = init_pki(tmp_path, ["7"])
    assert len(pki.crl()) == 0
    revoke(tmp_path, tmp_path / "7-enc.pem")
    crl = pki.crl()
    assert crl.is_signature_valid(pki.ca_certificate.public_key())  # type: ignore[arg-type]
    serial = pki.parties["7"].encryption.certificate.serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    revoke(tmp_path, tmp_path / "7-enc.pem")  # revoking twice keeps one entry
    assert len(pki.crl()) == 1


def test_revoking_a_foreign_certificate_is_refused(pki: DevPki, tmp_path: Path) -> None:
    init_pki(tmp_path, [])
    with pytest.raises(DevPkiError) as caught:
        revoke(tmp_path, pki.parties[SENDER].signing.certificate)
    assert caught.value.code == "not-issued-here"


def test_init_again_reuses_the_ca_and_adds_parties(tmp_path: Path) -> None:
    first = init_pki(tmp_path, ["11"])
    second = init_pki(tmp_path, ["11", "12"])
    assert second.ca_certificate == first.ca_certificate
    assert second.parties["11"].signing.certificate == first.parties["11"].signing.certificate
    assert load_dev_party(tmp_path, "12").her_id == "12"


def test_her_id_must_be_numeric(tmp_path: Path) -> None:
    with pytest.raises(DevPkiError):
        init_pki(tmp_path, ["abc"])


def test_private_keys_are_not_world_readable(pki: DevPki) -> None:
    for path in pki.directory.glob("*.key"):
        assert path.stat().st_mode & 0o077 == 0
