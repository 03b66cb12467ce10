"""The organisation number a certificate names: the whole attribute value, never the tail of a
longer number; and a rollover to a certificate naming none is not within one organisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from meldingstjener.engine.directory import SigningCertificates
from meldingstjener.security.certs import organisation_number
from meldingstjener.security.devpki import DevPki, issue_certificate, party_name

NOW = datetime.now(UTC)
NON_REPUDIATION = x509.KeyUsage(False, True, False, False, False, False, False, False, False)


def _certificate(pki: DevPki, subject: x509.Name) -> x509.Certificate:
    key = pki.parties["8141253"].signing.key
    return issue_certificate(
        pki.ca,
        key.public_key(),
        subject,
        NON_REPUDIATION,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
    )


def _named(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "X")]
        + [x509.NameAttribute(oid, value) for oid, value in attributes]
    )


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ([(NameOID.ORGANIZATION_IDENTIFIER, "NTRNO-993954896")], "993954896"),
        ([(NameOID.SERIAL_NUMBER, "983544622")], "983544622"),
        ([(NameOID.SERIAL_NUMBER, " 983544622 ")], "983544622"),
        ([(NameOID.SERIAL_NUMBER, "9578-4050-127091783")], None),  # a person's PID
        ([(NameOID.SERIAL_NUMBER, "01017012345")], None),  # a national identity number
        ([(NameOID.ORGANIZATION_IDENTIFIER, "NTRNO-1993954896")], None),
        ([(NameOID.ORGANIZATION_IDENTIFIER, "VATNO-993954896")], None),
        (
            [
                (NameOID.ORGANIZATION_IDENTIFIER, "PSDNO-FSA-12345"),
                (NameOID.SERIAL_NUMBER, "983544622"),
            ],
            "983544622",
        ),
        ([], None),
    ],
)
def test_the_organisation_number_is_the_whole_value(
    pki: DevPki, attributes: list[tuple[x509.ObjectIdentifier, str]], expected: str | None
) -> None:
    assert organisation_number(_certificate(pki, _named(*attributes))) == expected


def test_a_rollover_between_certificates_naming_no_organisation_is_not_accepted(
    pki: DevPki,
) -> None:
    grace = timedelta(days=7)
    same = SigningCertificates(
        _certificate(pki, party_name("NEW", "974760673")),
        _certificate(pki, party_name("OLD", "974760673")),
        NOW,
    )
    assert len(same.candidates(NOW, grace)) == 2
    other = SigningCertificates(
        _certificate(pki, party_name("NEW", "974760673")),
        _certificate(pki, party_name("OLD", "993954896")),
        NOW,
    )
    assert len(other.candidates(NOW, grace)) == 1
    nameless = SigningCertificates(
        _certificate(pki, _named((NameOID.ORGANIZATION_NAME, "Org A"))),
        _certificate(pki, _named((NameOID.ORGANIZATION_NAME, "Org B"))),
        NOW,
    )
    assert nameless.candidates(NOW, grace) == [nameless.current]
    # a PID's last nine digits are not an organisation number either
    pids = SigningCertificates(
        _certificate(pki, _named((NameOID.SERIAL_NUMBER, "9578-4050-127091783"))),
        _certificate(pki, _named((NameOID.SERIAL_NUMBER, "9578-4050-127091783"))),
        NOW,
    )
    assert pids.candidates(NOW, grace) == [pids.current]
