"""The certificate check's alerts as an operator lives with them: an expiring certificate is told
once (and again at 7 days, 1 day and at its end), not every day and every start; a renewal
(another serial in use) resolves the alerts of the certificate before; a partner's alert says
that the partner renews it."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from engine_pair import Pair

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, HOSPITAL_SERVICE_HER
from meldingstjener.engine.certificates import check_certificates
from meldingstjener.registry.certificates import certificate_from_der
from meldingstjener.registry.store import party_from_row, save_parties
from meldingstjener.security.devpki import issue_certificate, load_pki
from meldingstjener.store.tables import AlertRow


def pki_of(pair: Pair) -> Path:
    return pair.gp_site.directory.parent / "pki"


def renewed(pair: Pair, old: x509.Certificate, *, not_after: datetime) -> x509.Certificate:
    """A certificate like ``old`` (its subject, key and usage) with another serial and end, as
    a renewal brings (the same key: no RSA key to make)."""
    usage = old.extensions.get_extension_for_class(x509.KeyUsage).value
    return issue_certificate(
        load_pki(pki_of(pair)).ca,
        old.public_key(),  # type: ignore[arg-type]
        old.subject,
        usage,
        not_before=pair.clock() - timedelta(hours=1),
        not_after=not_after,
    )


def alert(pair: Pair, dedup_key: str) -> AlertRow:
    with pair.gp.store.unit_of_work() as uow:
        row = uow.alerts.by_key(dedup_key)
        assert row is not None, dedup_key
        return row


def open_certificate_alerts(pair: Pair, holder: str) -> list[str]:
    with pair.gp.store.unit_of_work() as uow:
        return [
            row.dedup_key
            for row in uow.alerts.list(open_only=True)
            if row.dedup_key.split(":", 1)[1].startswith(f"{holder}:")
        ]


def test_an_expiring_certificate_is_told_once_and_again_at_7_days_1_day_and_its_end(
    pair: Pair,
) -> None:
    certificate = pair.gp.keys.signing_certificate
    serial = f"{certificate.serial_number:x}"
    expiring = f"certificate-expiring:our signing:{serial}"
    end = certificate.not_valid_after_utc
    pair.clock.now = end - timedelta(days=20)
    check_certificates(pair.gp)
    told = alert(pair, expiring).changed_at
    for _ in range(3):  # daily, and a start of serve the same day (the same check)
        pair.clock.advance(days=1)
        check_certificates(pair.gp)
    check_certificates(pair.gp)
    row = alert(pair, expiring)
    assert (row.count, row.changed_at) == (5, told)  # counted, not told again
    assert "within 30 days" in row.summary and "Renewing our certificates" in row.summary

    pair.clock.now = end - timedelta(days=6)
    check_certificates(pair.gp)
    row = alert(pair, expiring)
    assert row.changed_at == pair.clock() and "within 7 days" in row.summary
    pair.clock.now = end - timedelta(hours=20)
    check_certificates(pair.gp)
    assert "within a day" in alert(pair, expiring).summary

    pair.clock.now = end + timedelta(minutes=1)
    check_certificates(pair.gp)
    assert alert(pair, expiring).resolved_at == pair.clock()  # it has become the invalid one
    invalid = alert(pair, f"certificate-invalid:our signing:{serial}")
    assert invalid.resolved_at is None and "has expired" in invalid.summary


def test_a_renewal_resolves_the_alerts_of_the_certificate_before_ours_and_a_partners(
    pair: Pair,
) -> None:
    partners = pair.gp.keys.encryption_certificate.not_valid_after_utc  # all made in one run
    pair.clock.now = partners - timedelta(days=10)
    check_certificates(pair.gp)
    theirs = f"{HOSPITAL_SERVICE_HER}'s encryption"
    [partner_alert] = open_certificate_alerts(pair, theirs)
    summary = alert(pair, partner_alert).summary
    assert f"Only {HOSPITAL_SERVICE_HER} can renew it" in summary and "register sync" in summary
    assert "Renewing our certificates" not in summary
    pair.clock.now = partners + timedelta(days=1)
    check_certificates(pair.gp)
    assert open_certificate_alerts(pair, theirs)[0].startswith("certificate-invalid:")

    # ours: a renewed signing certificate installed and the server started again (which
    # writes the [[partners]] certificates again: the partner's renewal comes after)
    new_ours = renewed(
        pair, pair.gp.keys.signing_certificate, not_after=pair.clock() + timedelta(days=700)
    )
    new_ours_file = pki_of(pair) / f"{GP_HER}-sign-renewed.pem"
    new_ours_file.write_bytes(new_ours.public_bytes(Encoding.PEM))
    config = pair.gp_site.config_path
    text = config.read_text()
    old_line = f'signing_cert = "{pki_of(pair) / f"{GP_HER}-sign.pem"}"'
    assert old_line in text
    config.write_text(text.replace(old_line, f'signing_cert = "{new_ours_file}"', 1))
    pair.gp.store.database.dispose()
    pair.gp = build_engine(load_settings(config), clock=pair.clock)
    # the partner's renewal, as the register sync writes it (this one expires soon as well)
    old_theirs = load_pki(pki_of(pair)).parties[HOSPITAL_HER].encryption.certificate
    new = renewed(pair, old_theirs, not_after=pair.clock() + timedelta(days=20))
    with pair.gp.store.unit_of_work() as uow:
        row = uow.parties.get(HOSPITAL_SERVICE_HER)
        assert row is not None
        renewal = certificate_from_der(new.public_bytes(Encoding.DER))
        party = dataclasses.replace(party_from_row(row), encryption_certificate=renewal)
        save_parties(uow, [party])
        uow.commit()

    check_certificates(pair.gp)
    assert open_certificate_alerts(pair, "our signing") == []
    assert open_certificate_alerts(pair, theirs) == [
        f"certificate-expiring:{theirs}:{new.serial_number:x}"
    ]
    # our encryption certificate, not renewed, is still told
    assert open_certificate_alerts(pair, "our encryption")


def test_an_expiring_certificate_of_ours_says_which_one_for_whom_its_key_and_the_days_left(
    pair: Pair,
) -> None:
    certificate = pair.gp.keys.signing_certificate
    expiring = f"certificate-expiring:our signing:{certificate.serial_number:x}"
    end = certificate.not_valid_after_utc
    pair.clock.now = end - timedelta(days=10, hours=2)
    check_certificates(pair.gp)
    summary = alert(pair, expiring).summary
    told = f"{pair.clock():%Y-%m-%d}"
    assert summary.startswith(
        f"our signing certificate (serial {certificate.serial_number:x}; for HER-id "
        f"{', '.join(sorted(pair.gp.own_her_ids, key=int))}; key file "
    ), summary
    assert "-sign.key, from [keys] signing_key) expires" in summary
    assert f"expires within 30 days, on {end:%Y-%m-%d}: 10 days were left on {told}" in summary
    assert "the our" not in summary
    pair.clock.advance(days=1)  # a day less left: kept as told, not told again
    check_certificates(pair.gp)
    assert alert(pair, expiring).summary == summary
    encryption = pair.gp.keys.encryption_certificate
    summary = alert(
        pair, f"certificate-expiring:our encryption:{encryption.serial_number:x}"
    ).summary
    assert summary.startswith("our encryption certificate (serial ")
    theirs = f"certificate-expiring:{HOSPITAL_SERVICE_HER}'s encryption:"
    with pair.gp.store.unit_of_work() as uow:
        [partner] = [a for a in uow.alerts.list(open_only=True) if a.dedup_key.startswith(theirs)]
    assert partner.summary.startswith(
        f"the encryption certificate of HER-id {HOSPITAL_SERVICE_HER} (serial "
    )


def test_our_key_files_from_keys_are_named_by_the_setting_that_names_them(
    tmp_path: Path,
) -> None:
    from meldingstjener.bootstrap import _key_file
    from meldingstjener.config import KeySettings

    keys = KeySettings(
        signing_pkcs12=tmp_path / "sign.p12",
        encryption_key=tmp_path / "enc.key",
        encryption_cert=tmp_path / "enc.pem",
    )
    assert (
        _key_file(keys, "signing")
        == f"key file {tmp_path / 'sign.p12'}, from [keys] signing_pkcs12"
    )
    assert (
        _key_file(keys, "encryption")
        == f"key file {tmp_path / 'enc.key'}, from [keys] encryption_key"
    )
