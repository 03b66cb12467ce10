"""The party cache: entries expire, and cached certificates are validated again before use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from meldingstjener.registry import CommunicationParty, PartyType
from meldingstjener.registry.certificates import certificate_from_der
from meldingstjener.registry.lookup import CertificateRejected, PartyCache
from meldingstjener.security.devpki import DevPki, init_pki
from meldingstjener.security.validation import CertificateValidator


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    directory: Path = tmp_path_factory.mktemp("pki")
    init_pki(directory, ["1001"], valid_days=2)  # a certificate about to expire
    return init_pki(directory, ["1002"], valid_days=400)  # its renewal, same CA


def _party(pki: DevPki, dev_her_id: str) -> CommunicationParty:
    dev = pki.parties[dev_her_id]
    return CommunicationParty(
        her_id="8141253",
        party_type=PartyType.ORGANISATION,
        name="Speare",
        signing_certificate=certificate_from_der(
            dev.signing.certificate.public_bytes(Encoding.DER)
        ),
        encryption_certificate=certificate_from_der(
            dev.encryption.certificate.public_bytes(Encoding.DER)
        ),
    )


class Clock:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.moment = datetime.now(UTC)

    def advance(self, delta: timedelta) -> None:
        self.seconds += delta.total_seconds()
        self.moment += delta


def _cache(pki: DevPki, loader: object, clock: Clock, ttl: float = 3600.0) -> PartyCache:
    validator = CertificateValidator(
        [pki.ca_certificate], check_revocation=False, clock=lambda: clock.moment
    )
    return PartyCache(
        loader,  # type: ignore[arg-type]
        ttl_seconds=ttl,
        validator=validator,
        clock=lambda: clock.seconds,
        now=lambda: clock.moment,
    )


def test_entries_are_reused_until_they_expire(pki: DevPki) -> None:
    clock = Clock()
    party = _party(pki, "1002")
    cache = _cache(pki, lambda her_id: party if her_id == "8141253" else None, clock, ttl=60)
    assert cache.get("8141253") is party
    assert cache.get("8141253") is party
    assert cache.loads == 1
    clock.advance(timedelta(seconds=61))
    assert cache.get("8141253") is party
    assert cache.loads == 2
    assert cache.get("404") is None


def test_expired_cached_certificate_is_fetched_again(pki: DevPki) -> None:
    clock = Clock()
    answers = [_party(pki, "1001"), _party(pki, "1002")]
    cache = _cache(pki, lambda her_id: answers[0], clock, ttl=30 * 24 * 3600)
    first = cache.get("8141253")
    assert first is answers[0]
    clock.advance(timedelta(days=3))  # still within the TTL, but the certificate has expired
    answers.pop(0)  # the register now has the renewed certificate
    renewed = cache.get("8141253")
    assert renewed is not None and renewed is not first
    assert cache.loads == 2


def test_certificate_still_expired_after_refetch_is_rejected(pki: DevPki) -> None:
    clock = Clock()
    stale = _party(pki, "1001")
    cache = _cache(pki, lambda her_id: stale, clock)
    assert cache.get("8141253") is stale
    clock.advance(timedelta(days=3))
    with pytest.raises(CertificateRejected) as rejected:
        cache.get("8141253")
    assert rejected.value.code == "certificate-rejected"
    assert "expired" in str(rejected.value)


def test_untrusted_certificate_is_rejected_and_unvalidated_cache_checks_dates(
    pki: DevPki, tmp_path: Path
) -> None:
    other = init_pki(tmp_path / "other", ["2001"])
    clock = Clock()
    stranger = _party(other, "2001")
    with pytest.raises(CertificateRejected) as rejected:
        _cache(pki, lambda her_id: stranger, clock).get("8141253")
    assert "trust" in str(rejected.value)
    # With no validator the cache still refuses a certificate outside its validity period.
    stale = _party(pki, "1001")
    plain = PartyCache(lambda her_id: stale, now=lambda: clock.moment + timedelta(days=3))
    with pytest.raises(CertificateRejected):
        plain.get("8141253")
