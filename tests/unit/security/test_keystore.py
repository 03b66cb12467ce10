"""Key store: loading own keys from PEM and PKCS#12, and each way it refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meldingstjener.security.devpki import DevPki, init_pki
from meldingstjener.security.keystore import (
    KeyCertificateMismatch,
    KeyFileMissing,
    KeySource,
    KeyStore,
    PasswordMissing,
    WrongKeyUsage,
    WrongPassword,
    load_key_pair,
)

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"


def _p12(pki_dir: Path, her: str, role: str) -> KeySource:
    return KeySource.pkcs12(
        pki_dir / f"{her}-{role}.p12", password_file=pki_dir / "p12-password.txt"
    )


def test_load_from_pkcs12_with_password_file(pki: DevPki, pki_dir: Path) -> None:
    store = KeyStore.load(_p12(pki_dir, SENDER, "sign"), _p12(pki_dir, SENDER, "enc"))
    party = pki.parties[SENDER]
    assert store.signing_certificate == party.signing.certificate
    assert store.encryption_certificate == party.encryption.certificate
    assert store.decryption_candidates == [(store.encryption_key, store.encryption_certificate)]


def test_load_from_pem_with_password_from_environment(
    pki_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MT_TEST_P12_PASSWORD", (pki_dir / "p12-password.txt").read_text().strip())
    signing = KeySource.pem(pki_dir / f"{SENDER}-sign.key", pki_dir / f"{SENDER}-sign.pem")
    encryption = KeySource.pkcs12(
        pki_dir / f"{SENDER}-enc.p12", password_env="MT_TEST_P12_PASSWORD"
    )
    store = KeyStore.load(signing, encryption)
    assert store.signing_key.key_size == 2048


def test_previous_encryption_key_is_a_second_candidate(pki_dir: Path) -> None:
    store = KeyStore.load(
        _p12(pki_dir, SENDER, "sign"),
        _p12(pki_dir, SENDER, "enc"),
        previous_encryption=_p12(pki_dir, RECEIVER, "enc"),
    )
    certs = [cert for _, cert in store.decryption_candidates]
    assert len(certs) == 2
    assert certs[0] == store.encryption_certificate


def test_wrong_pkcs12_password(pki_dir: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "pw"
    wrong.write_text("not-the-password\n")
    source = KeySource.pkcs12(pki_dir / f"{SENDER}-sign.p12", password_file=wrong)
    with pytest.raises(WrongPassword) as caught:
        load_key_pair(source)
    assert caught.value.code == "wrong-password"


def test_missing_password_variable(pki_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MT_TEST_NOT_SET", raising=False)
    source = KeySource.pkcs12(pki_dir / f"{SENDER}-sign.p12", password_env="MT_TEST_NOT_SET")
    with pytest.raises(PasswordMissing, match="MT_TEST_NOT_SET"):
        load_key_pair(source)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing) as caught:
        load_key_pair(KeySource.pkcs12(tmp_path / "absent.p12"))
    assert caught.value.code == "key-missing"


def test_pem_file_without_a_key(pki_dir: Path) -> None:
    source = KeySource.pem(pki_dir / f"{SENDER}-sign.pem", pki_dir / f"{SENDER}-sign.pem")
    with pytest.raises(KeyFileMissing):
        load_key_pair(source)


def test_key_that_does_not_match_its_certificate(pki_dir: Path) -> None:
    source = KeySource.pem(pki_dir / f"{SENDER}-sign.key", pki_dir / f"{RECEIVER}-sign.pem")
    with pytest.raises(KeyCertificateMismatch) as caught:
        load_key_pair(source)
    assert caught.value.code == "key-certificate-mismatch"


def test_encryption_certificate_refused_for_signing(pki_dir: Path) -> None:
    with pytest.raises(WrongKeyUsage) as caught:
        KeyStore.load(_p12(pki_dir, SENDER, "enc"), _p12(pki_dir, SENDER, "enc"))
    assert caught.value.code == "wrong-key-usage"
    assert "signing" in caught.value.message


def test_signing_certificate_refused_for_encryption(pki_dir: Path) -> None:
    with pytest.raises(WrongKeyUsage):
        KeyStore.load(_p12(pki_dir, SENDER, "sign"), _p12(pki_dir, SENDER, "sign"))


def test_encrypted_pem_key_with_wrong_password(pki_dir: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pair = load_key_pair(_p12(pki_dir, SENDER, "sign"))
    key_file = tmp_path / "enc.key"
    key_file.write_bytes(
        pair.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
    )
    shutil.copy(pki_dir / f"{SENDER}-sign.pem", tmp_path / "c.pem")
    (tmp_path / "good").write_text("right\n")
    (tmp_path / "bad").write_text("wrong\n")
    good = KeySource.pem(key_file, tmp_path / "c.pem", password_file=tmp_path / "good")
    assert load_key_pair(good).certificate == pair.certificate
    with pytest.raises(WrongPassword):
        load_key_pair(KeySource.pem(key_file, tmp_path / "c.pem", password_file=tmp_path / "bad"))
    with pytest.raises(PasswordMissing):
        load_key_pair(KeySource.pem(key_file, tmp_path / "c.pem"))


def test_password_from_file_and_variable_at_once_is_refused(pki_dir: Path) -> None:
    source = KeySource(
        pki_dir / f"{SENDER}-sign.p12",
        None,
        password_file=pki_dir / "p12-password.txt",
        password_env="X",
    )
    with pytest.raises(PasswordMissing, match="not both"):
        load_key_pair(source)


def test_fresh_pki_p12_roundtrip(tmp_path: Path) -> None:
    pki = init_pki(tmp_path, ["123"])
    pair = load_key_pair(_p12(tmp_path, "123", "sign"), usage="signing")
    assert pair.certificate == pki.parties["123"].signing.certificate
    assert pair.chain and pair.chain[0] == pki.ca_certificate
