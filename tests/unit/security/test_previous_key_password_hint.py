"""After a renewal the old encryption key is kept beside the new ones, often in a PKCS#12 file
with the old password. Given only the shared password (the new keys'), the error must not send
the operator to change that one alone, which would break the new keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from meldingstjener.bootstrap import load_own_keys
from meldingstjener.config import ConfigError, load_settings
from meldingstjener.security.devpki import init_pki

OURS, OLD = "8142987", "8142520"  # OLD's encryption key stands in for ours before renewal


def test_the_old_key_without_its_own_password_is_told_to_get_one(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", [OURS, OLD])
    old = pki.parties[OLD].encryption
    old_file = pki.directory / "old-enc.p12"
    old_file.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"old", old.key, old.certificate, None, BestAvailableEncryption(b"old password")
        )
    )
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[identity]\norganisation_her_id = "{OURS}"\n[keys]\n'
        f'signing_pkcs12 = "{pki.directory / f"{OURS}-sign.p12"}"\n'
        f'encryption_pkcs12 = "{pki.directory / f"{OURS}-enc.p12"}"\n'
        f'password_file = "{pki.directory / "p12-password.txt"}"\n'
        f'previous_encryption_pkcs12 = "{old_file}"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_own_keys(load_settings(config))
    said = str(refused.value)
    assert said.startswith("keys.password_file (or give it its own: ")
    assert "keys.previous_encryption_password_file)" in said
