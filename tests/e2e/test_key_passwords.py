"""Our keys' passwords as the configuration gives them: one shared by every key, or one of a
key's own (``<key>_password_file``/``_env``: the old encryption key kept after a renewal has
the old PKCS#12 password); and the errors ``serve`` stops with when a key file and its password
do not go together, each naming the key to mend."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from typer.testing import CliRunner

from meldingstjener.bootstrap import load_own_keys
from meldingstjener.cli import engine_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.config import ConfigError, load_settings
from meldingstjener.devsites import free_port
from meldingstjener.security.devpki import DevPki, init_pki

OURS, OLD = "8142987", "8142520"  # OLD's encryption key stands in for our key before renewal


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    made = init_pki(tmp_path_factory.mktemp("pki"), [OURS, OLD])
    # the old key as it was handed out: a PKCS#12 file with a password of its own
    old = made.parties[OLD].encryption
    (made.directory / "old-enc.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"old", old.key, old.certificate, None, BestAvailableEncryption(b"old password")
        )
    )
    (made.directory / "old-password.txt").write_text("old password\n")
    (made.directory / "wrong-password.txt").write_text("not it\n")
    return made


def configured(tmp_path: Path, keys: str) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {free_port()}\n'
        f'[identity]\norganisation_her_id = "{OURS}"\n[keys]\n{keys}'
    )
    return config


def new_keys(pki: DevPki) -> str:
    """Our current keys as PKCS#12 files, with the shared password."""
    directory = pki.directory
    return (
        f'signing_pkcs12 = "{directory / f"{OURS}-sign.p12"}"\n'
        f'encryption_pkcs12 = "{directory / f"{OURS}-enc.p12"}"\n'
        f'password_file = "{directory / "p12-password.txt"}"\n'
    )


def test_the_old_encryption_key_with_its_own_password_loads_beside_the_new_ones(
    pki: DevPki, tmp_path: Path
) -> None:
    old = pki.directory / "old-enc.p12"
    config = configured(
        tmp_path,
        new_keys(pki) + f'previous_encryption_pkcs12 = "{old}"\n'
        f'previous_encryption_password_file = "{pki.directory / "old-password.txt"}"\n',
    )
    keys = load_own_keys(load_settings(config))
    assert keys.signing_certificate == pki.parties[OURS].signing.certificate
    assert [certificate for _, certificate in keys.decryption_candidates] == [
        pki.parties[OURS].encryption.certificate,
        pki.parties[OLD].encryption.certificate,
    ]


def test_the_old_keys_own_password_wrong_or_alone_is_named(
    pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = pki.directory / "old-enc.p12"
    wrong = configured(
        tmp_path,
        new_keys(pki) + f'previous_encryption_pkcs12 = "{old}"\n'
        f'previous_encryption_password_file = "{pki.directory / "wrong-password.txt"}"\n',
    )
    with pytest.raises(ConfigError, match=r"keys\.previous_encryption_password_file: wrong"):
        load_own_keys(load_settings(wrong))
    monkeypatch.delenv("MT_TEST_OLD_KEY_PASSWORD", raising=False)
    unset = configured(
        tmp_path,
        new_keys(pki) + f'previous_encryption_pkcs12 = "{old}"\n'
        'previous_encryption_password_env = "MT_TEST_OLD_KEY_PASSWORD"\n',
    )
    with pytest.raises(ConfigError, match=r"keys\.previous_encryption_password_env: .*not set"):
        load_own_keys(load_settings(unset))
    left_behind = configured(
        tmp_path,
        new_keys(pki) + 'previous_encryption_password_env = "MT_TEST_OLD_KEY_PASSWORD"\n',
    )
    with pytest.raises(ConfigError, match=r"previous_encryption_password_env: there is no"):
        load_settings(left_behind)


def serve_stops(config: Path) -> str:
    """What ``serve`` says as it stops at start with a configuration error, as one line."""
    result = CliRunner().invoke(app, ["--config", str(config), "serve"])
    assert result.exit_code == 2, (result.output, result.exception)
    return " ".join(result.output.split())


def test_serve_says_a_pkcs12_file_needs_a_password_when_none_is_configured(
    pki: DevPki, tmp_path: Path
) -> None:
    directory = pki.directory
    said = serve_stops(
        configured(
            tmp_path,
            f'signing_pkcs12 = "{directory / f"{OURS}-sign.p12"}"\n'
            f'encryption_pkcs12 = "{directory / f"{OURS}-enc.p12"}"\n',
        )
    )
    assert "keys.password_file: the PKCS#12 file" in said and "a password is needed" in said
    assert "wrong password" not in said


def test_serve_says_a_pem_key_named_as_pkcs12_goes_as_key_and_certificate(
    pki: DevPki, tmp_path: Path
) -> None:
    directory = pki.directory
    said = serve_stops(
        configured(
            tmp_path,
            f'signing_pkcs12 = "{directory / f"{OURS}-sign.key"}"\n'
            f'encryption_pkcs12 = "{directory / f"{OURS}-enc.p12"}"\n'
            f'password_file = "{directory / "p12-password.txt"}"\n',
        )
    )
    assert "keys.signing_pkcs12:" in said and "is a PEM key, not a PKCS#12 file" in said
    assert "not encrypted" not in said
