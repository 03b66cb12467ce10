"""Configuration that cannot be used, as an operator meets it: each mistake is a configuration
error that names the key to mend, and the command exits 2 (no traceback)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meldingstjener.bootstrap import open_store
from meldingstjener.cli import engine_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.config import load_settings
from meldingstjener.devsites import free_port
from meldingstjener.security.devpki import init_pki

runner = CliRunner()
OURS, THEIRS = "8142987", "8142520"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, [OURS, THEIRS])
    (directory / "wrong-password.txt").write_text("not the password\n")
    (directory / "not-a-certificate.pem").write_text("hello\n")
    return directory


def keys_pkcs12(pki: Path, *, signing: str = f"{OURS}-sign.p12", password: str = "") -> str:
    """``[keys]`` by PKCS#12 files, the password as ``password`` says (a TOML line)."""
    return (
        f'[keys]\nsigning_pkcs12 = "{pki / signing}"\n'
        f'encryption_pkcs12 = "{pki / f"{OURS}-enc.p12"}"\n{password}'
    )


def password_file(pki: Path, name: str = "p12-password.txt") -> str:
    return f'password_file = "{pki / name}"\n'


def keys_pem(pki: Path, *, signing_cert: str) -> str:
    return (
        f'[keys]\nsigning_key = "{pki / f"{OURS}-sign.key"}"\n'
        f'signing_cert = "{pki / signing_cert}"\n'
        f'encryption_key = "{pki / f"{OURS}-enc.key"}"\n'
        f'encryption_cert = "{pki / f"{OURS}-enc.pem"}"\n'
    )


def partner(pki: Path, *, signing_cert: str) -> str:
    return (
        f'[[partners]]\nher_id = "{THEIRS}"\nendpoint = "http://127.0.0.1:9/ebms"\n'
        f'signing_cert = "{pki / signing_cert}"\n'
        f'encryption_cert = "{pki / f"{THEIRS}-enc.pem"}"\n'
    )


def security(pki: Path, *, anchor: str, crl: str | None = None) -> str:
    crls = f'crl_files = ["{pki / crl}"]\n' if crl else ""
    return f'[security]\ntrust_anchors = ["{pki / anchor}"]\n{crls}'


# name: (the configuration after [identity], the key its error must name)
CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "pkcs12 missing": (
        lambda pki: keys_pkcs12(pki, signing="nope.p12", password=password_file(pki)),
        "keys.signing_pkcs12",
    ),
    "wrong password": (
        lambda pki: keys_pkcs12(pki, password=password_file(pki, "wrong-password.txt")),
        "keys.password_file",
    ),
    "password variable unset": (
        lambda pki: keys_pkcs12(pki, password='password_env = "MELDINGSTJENER_TEST_UNSET"\n'),
        "keys.password_env",
    ),
    "pem certificate not one": (
        lambda pki: keys_pem(pki, signing_cert="not-a-certificate.pem"),
        "keys.signing_cert",
    ),
    "partner certificate missing": (
        lambda pki: partner(pki, signing_cert="missing-sign.pem"),
        "partners[0].signing_cert",
    ),
    "partner certificate not one": (
        lambda pki: partner(pki, signing_cert="not-a-certificate.pem"),
        "partners[0].signing_cert",
    ),
    "trust anchor not a certificate": (
        lambda pki: security(pki, anchor="not-a-certificate.pem"),
        "security.trust_anchors[0]",
    ),
    "crl missing": (
        lambda pki: security(pki, anchor="ca.pem", crl="nope.crl"),
        "security.crl_files[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["send", "serve"])
def test_a_key_or_certificate_file_that_cannot_be_used_is_a_configuration_error(
    pki: Path, tmp_path: Path, case: str, command: str
) -> None:
    make, key = CASES[case]
    body = make(pki)
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {free_port()}\n'
        f'[identity]\norganisation_her_id = "{OURS}"\n{body}'
    )
    note = tmp_path / "note.xml"
    note.write_text("<MsgHead/>")
    args = ["send", str(note)] if command == "send" else ["serve"]
    if command == "send":  # which opens the store there is, never makes one
        open_store(load_settings(data_dir=tmp_path / "data")).database.dispose()
    result = runner.invoke(app, ["--config", str(config), *args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "configuration error" in result.output
    assert key in result.output, result.output


def test_a_schema_directory_that_is_not_one_stops_every_command(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[formats]\nschema_dir = "{tmp_path / "kith-xsd"}"\n'
    )
    for args in (["log"], ["serve", "--port", str(free_port())]):
        result = runner.invoke(app, ["--config", str(config), *args])
        assert result.exit_code == 2, (result.output, result.exception)
        assert "formats.schema_dir" in result.output and "does not exist" in result.output
