"""Key store errors that point the right way: a PKCS#12 file given no password is told it needs
one (not that the password is wrong), a PEM key named as a PKCS#12 file is told so (not that it
needs no password), and a PKCS#12 file cut short is not readable (not a wrong password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.security.keystore import (
    KeySource,
    KeyUnreadable,
    PasswordMissing,
    WrongPassword,
    load_key_pair,
)

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for


def test_a_pkcs12_file_given_no_password_needs_one(pki_dir: Path) -> None:
    with pytest.raises(PasswordMissing, match="a password is needed"):
        load_key_pair(KeySource.pkcs12(pki_dir / f"{SENDER}-sign.p12"))


def test_a_pem_key_named_as_pkcs12_is_told_to_go_as_key_and_certificate(pki_dir: Path) -> None:
    # with the keys' password given, as a [keys] with PKCS#12 files beside it would
    source = KeySource.pkcs12(
        pki_dir / f"{SENDER}-sign.key", password_file=pki_dir / "p12-password.txt"
    )
    with pytest.raises(KeyUnreadable, match=r"is a PEM key, not a PKCS#12 file.*_key and \*_cert"):
        load_key_pair(source)
    with pytest.raises(KeyUnreadable, match="is a PEM key"):
        load_key_pair(KeySource.pkcs12(pki_dir / f"{SENDER}-sign.key"))


def test_a_pem_file_with_key_and_certificate_still_goes_alone(
    pki_dir: Path, tmp_path: Path
) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(
        (pki_dir / f"{SENDER}-sign.key").read_bytes()
        + (pki_dir / f"{SENDER}-sign.pem").read_bytes()
    )
    assert load_key_pair(KeySource.pkcs12(both), usage="signing").certificate is not None


def test_a_pkcs12_file_cut_short_is_not_readable_whatever_the_password(
    pki_dir: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.p12"
    short.write_bytes((pki_dir / f"{SENDER}-sign.p12").read_bytes()[:500])
    password = pki_dir / "p12-password.txt"
    for source in (KeySource.pkcs12(short, password_file=password), KeySource.pkcs12(short)):
        with pytest.raises(KeyUnreadable, match="not a readable PKCS#12 file"):
            load_key_pair(source)
    # the whole file with another password is still a wrong one
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(WrongPassword):
        load_key_pair(KeySource.pkcs12(pki_dir / f"{SENDER}-sign.p12", password_file=wrong))
