"""The pki and cms commands, run through typer's CliRunner (one e2e run via python -m)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.security.devpki import DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"

runner = CliRunner()


def test_encrypt_then_decrypt_with_pem_key(pki_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.xml").write_bytes(b"<MsgHead/>")
    cert = pki_dir / f"{RECEIVER}-enc.pem"
    result = runner.invoke(
        app,
        [
            "cms",
            "encrypt",
            "--cert",
            str(cert),
            "--gzip",
            str(tmp_path / "in.xml"),
            str(tmp_path / "out.p7m"),
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "cms",
            "decrypt",
            "--key",
            str(pki_dir / f"{RECEIVER}-enc.key"),
            "--cert",
            str(cert),
            str(tmp_path / "out.p7m"),
            str(tmp_path / "back.xml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back.xml").read_bytes() == b"<MsgHead/>"


def test_decrypt_base64_input_with_pkcs12_and_password_env(
    pki: DevPki, pki_dir: Path, tmp_path: Path
) -> None:
    from meldingstjener.security import cms

    der = cms.encrypt(b"payload", pki.parties[RECEIVER].encryption.certificate)
    (tmp_path / "in.b64").write_bytes(base64.encodebytes(der))
    password = (pki_dir / "p12-password.txt").read_text().strip()
    result = runner.invoke(
        app,
        [
            "cms",
            "decrypt",
            "--key",
            str(pki_dir / f"{RECEIVER}-enc.p12"),
            "--password-env",
            "MT_CLI_PW",
            str(tmp_path / "in.b64"),
            str(tmp_path / "out"),
        ],
        env={"MT_CLI_PW": password},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out").read_bytes() == b"payload"


def test_decrypt_with_wrong_password_says_so(pki_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("wrong\n")
    (tmp_path / "in").write_bytes(b"\x30\x00")
    result = runner.invoke(
        app,
        [
            "cms",
            "decrypt",
            "--key",
            str(pki_dir / f"{RECEIVER}-enc.p12"),
            "--password-file",
            str(tmp_path / "pw"),
            str(tmp_path / "in"),
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    assert "wrong-password" in result.output


def test_sign_and_verify_exit_codes(pki_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"signed content")
    result = runner.invoke(
        app,
        [
            "cms",
            "sign",
            "--key",
            str(pki_dir / f"{SENDER}-sign.p12"),
            "--password-file",
            str(pki_dir / "p12-password.txt"),
            str(tmp_path / "in"),
            str(tmp_path / "signed.p7s"),
        ],
    )
    assert result.exit_code == 0, result.output
    ok = runner.invoke(
        app,
        [
            "cms",
            "verify",
            "--cert",
            str(pki_dir / f"{SENDER}-sign.pem"),
            str(tmp_path / "signed.p7s"),
            str(tmp_path / "content"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "signature OK" in ok.output
    assert (tmp_path / "content").read_bytes() == b"signed content"
    wrong = runner.invoke(
        app,
        [
            "cms",
            "verify",
            "--cert",
            str(pki_dir / f"{RECEIVER}-sign.pem"),
            str(tmp_path / "signed.p7s"),
        ],
    )
    assert wrong.exit_code == 1
    assert "signer-mismatch" in wrong.output


def test_pki_init_and_revoke_as_a_process(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    done = subprocess.run(
        [sys.executable, "-m", "meldingstjener", "pki", "init", str(directory), "--her-id", "42"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (directory / "42-sign.p12").exists() and (directory / "crl.pem").exists()
    result = runner.invoke(app, ["pki", "revoke", str(directory / "42-sign.pem")])
    assert result.exit_code == 0, result.output
    assert "lists 1 certificate" in result.output


def test_no_command_takes_a_password_argument() -> None:
    for command in (["cms", "decrypt"], ["cms", "sign"]):
        help_text = runner.invoke(app, [*command, "--help"]).output
        assert "--password-file" in help_text
        assert "--password " not in help_text
