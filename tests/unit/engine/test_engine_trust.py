"""``trust.certificate_problem`` with the organisation numbers a party's certificate may carry:
one of another organisation is not acceptable, whatever else is right with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meldingstjener.engine.trust import certificate_problem

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _certificate(organisation_number: str | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "Legekontor")]
    if organisation_number is not None:
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, f"NTRNO-{organisation_number}")
        )
    name = x509.Name(attributes)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


def test_a_certificate_of_another_organisation_is_a_problem() -> None:
    ours = _certificate("901000018")
    assert certificate_problem(None, ours, "encryption", NOW) is None  # nothing to hold it to
    allowed = {"901000018", "903000058"}  # the party's own and its parent organisation's
    assert certificate_problem(None, ours, "encryption", NOW, organisation_numbers=allowed) is None
    other = _certificate("902000038")
    problem = certificate_problem(None, other, "signing", NOW, organisation_numbers=allowed)
    assert problem == (
        "the certificate belongs to organisation 902000038, not to the party's "
        "(901000018, 903000058)"
    )
    # a certificate that carries no number is judged by the rest
    unnamed = _certificate(None)
    assert certificate_problem(None, unnamed, "signing", NOW, organisation_numbers=allowed) is None
