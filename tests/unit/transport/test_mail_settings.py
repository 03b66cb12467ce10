"""The [smtp] and [mailbox] settings and what the mail channel builds from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.config import ConfigError, load_settings
from meldingstjener.engine.mail_channel import (
    MailSettingsError,
    build_mailbox_collector,
    build_smtp_transport,
)


def test_unconfigured_means_no_mail_channel(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    assert settings.smtp.max_mail_bytes == 51_200_000
    assert settings.smtp.test_domains == ["testedi.nhn.no", "samsvar.nhn.no"]
    assert settings.smtp.prod_domains == ["edi.nhn.no"]
    assert build_smtp_transport(settings) is None
    assert build_mailbox_collector(settings) is None


def test_smtp_from_settings_reads_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = load_settings(
        _write(
            tmp_path,
            f'[smtp]\nhost = "mail.example.no"\nedi_address = "8100001@testedi.nhn.no"\n'
            f'username = "u"\npassword_file = "{secret}"\n',
            environment="prod",
        )
    )
    transport = build_smtp_transport(settings)
    assert transport is not None
    assert transport.password == "s3cret"
    assert "s3cret" not in repr(transport)
    assert transport.guard.environment == "prod"
    assert transport.channel == "smtp"


def test_mailbox_from_settings_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MT_BOX_PW", "pw2")
    settings = load_settings(
        _write(
            tmp_path,
            '[mailbox]\nprotocol = "pop3"\nhost = "h"\nusername = "u"\n'
            'password_env = "MT_BOX_PW"\n',
        )
    )
    collector = build_mailbox_collector(settings)
    assert collector is not None
    assert (collector.protocol, collector.password, collector.where) == (
        "pop3",
        "pw2",
        "pop3://h:995",
    )


def test_a_missing_password_source_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(
        _write(
            tmp_path,
            '[mailbox]\nhost = "h"\nusername = "u"\npassword_env = "MT_NOT_SET_ANYWHERE"\n',
        )
    )
    with pytest.raises(MailSettingsError, match="MT_NOT_SET_ANYWHERE"):
        build_mailbox_collector(settings)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[smtp]\nhost = "h"\n', "edi_address"),
        ('[smtp]\nhost = "h"\nedi_address = "a@b"\npassword = "x"\n', "unknown key"),
        ('[mailbox]\nhost = "h"\n', "username"),
        ('[mailbox]\nprotocol = "smtp"\n', "protocol"),
        ('[smtp]\nsecurity = "ssl"\n', "security"),
    ],
)
def test_bad_mail_settings_are_named(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(_write(tmp_path, text))


def _write(tmp_path: Path, text: str, environment: str = "test") -> Path:
    config = tmp_path / "c.toml"
    config.write_text(f'environment = "{environment}"\ndata_dir = "{tmp_path}"\n' + text)
    return config
