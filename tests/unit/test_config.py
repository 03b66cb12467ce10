"""Configuration: defaults, TOML, environment overrides and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.config import ConfigError, load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MELDINGSTJENER_"):
            monkeypatch.delenv(key)


def test_embedded_default_needs_no_file(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{(tmp_path / 'meldingstjener.db').resolve()}"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.payload_dir == tmp_path / "payloads"
    assert settings.environment == "test"


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MELDINGSTJENER_DATA_DIR", str(tmp_path / "x"))
    assert load_settings().data_dir == tmp_path / "x"


def test_precedence_cli_over_env_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('environment = "qa"\n[server]\nhost = "0.0.0.0"\nport = 7000\n')
    assert load_settings(config).server.port == 7000
    monkeypatch.setenv("MELDINGSTJENER_SERVER__PORT", "7100")
    settings = load_settings(config)
    assert (settings.server.host, settings.server.port, settings.environment) == (
        "0.0.0.0",
        7100,
        "qa",
    )
    assert load_settings(config, server_port=7200).server.port == 7200


def test_identity_her_ids(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[identity]\norganisation_her_id = "8142987"\n'
        '[[identity.services]]\nher_id = 8142988\nname = "Legevakt"\n'
    )
    assert load_settings(config).identity.her_ids == ["8142987", "8142988"]


def test_errors_name_every_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'environment = "production"\n[server]\nport = 70000\ncolour = "blue"\n'
        '[identity]\norganisation_her_id = "12ab"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    text = str(caught.value)
    for key in ("environment", "server.port", "server.colour", "identity.organisation_her_id"):
        assert key in text
    assert "unknown key" in text


def test_environment_value_error_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELDINGSTJENER_WORKERS__COUNT", "many")
    with pytest.raises(ConfigError, match=r"workers\.count"):
        load_settings()


def test_worker_threads_on_either_database() -> None:
    assert load_settings(workers={"count": 4}).workers.count == 4
    settings = load_settings(workers={"count": 4}, database={"url": "postgresql://h/db"})
    assert settings.workers.count == 4
    with pytest.raises(ConfigError, match=r"workers\.count"):
        load_settings(workers={"count": 0})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "b.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken)


def test_the_example_file_is_valid_and_complete() -> None:
    """config.example.toml loads, and every key of the settings appears in it."""
    from meldingstjener.config import Settings

    example = PROJECT_ROOT / "config.example.toml"
    settings = load_settings(example)
    text = example.read_text()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            assert f"[{name}]" in text, f"section [{name}] missing from the example"
            for key in annotation.model_fields:
                assert f"{key} =" in text or f"# {key} =" in text, f"{name}.{key} not explained"
        else:
            named = (f"{name} =", f"# {name} =", f"# [[{name}]]")  # an array of tables
            assert any(form in text for form in named), f"{name} not explained"
    assert settings.environment in ("test", "qa", "prod")


def test_the_example_partner_can_be_uncommented(tmp_path: Path) -> None:
    """An operator uncomments the example [[partners]] table (its "# # " lines stay comments):
    valid TOML and a valid configuration, with one partner."""
    lines = (PROJECT_ROOT / "config.example.toml").read_text().splitlines()
    start = lines.index("# [[partners]]")
    end = lines.index("", start)
    block = [line.removeprefix("# ") for line in lines[start:end]]
    config = tmp_path / "meldingstjener.toml"
    config.write_text("\n".join(lines[:start] + block + lines[end:]) + "\n")
    assert [partner.her_id for partner in load_settings(config).partners] == ["8142520"]


def test_every_commented_setting_of_the_example_can_be_uncommented() -> None:
    import re
    import tomllib

    text = (PROJECT_ROOT / "config.example.toml").read_text()
    settings = [line[2:] for line in text.splitlines() if re.match(r"# [a-z_]+ = ", line)]
    assert len(settings) > 50
    for line in settings:
        try:
            tomllib.loads(line)
        except tomllib.TOMLDecodeError as exc:
            raise AssertionError(f"{line!r} is not TOML once uncommented: {exc}") from None


def test_the_example_says_workers_run_on_sqlite_too() -> None:
    text = (PROJECT_ROOT / "config.example.toml").read_text()
    assert "one worker" not in text  # workers.count is threads in one process, on either database


def test_a_jwt_issuer_needs_an_audience_and_a_key(tmp_path: Path) -> None:
    """Without an audience, a token the same issuer made for another API would be accepted."""
    issuer = {"jwt_issuer": "https://helseid.test", "jwt_jwks_url": "https://helseid.test/jwks"}
    with pytest.raises(ConfigError, match=r"jwt_audience"):
        load_settings(api=issuer)
    with pytest.raises(ConfigError, match=r"jwt_jwks_url or jwt_public_key_file"):
        load_settings(api={"jwt_issuer": "https://helseid.test", "jwt_audience": "msh"})
    settings = load_settings(api={**issuer, "jwt_audience": "msh"})
    assert settings.api.jwt_audience == "msh"
    assert load_settings().api.jwt_issuer is None  # no issuer: API keys only, nothing needed


def test_the_register_sync_needs_a_way_to_sign_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """A register the server cannot sign in to is a configuration error at start, not a
    failed sync every turn and an alert three turns later."""
    from meldingstjener.bootstrap import build_register_sync

    with pytest.raises(ConfigError, match=r"client_id and key_file need token_url"):
        load_settings(helseid={"client_id": "msh"})
    with pytest.raises(ConfigError, match=r"token_url needs client_id and key_file"):
        load_settings(helseid={"token_url": "https://sts.test/connect/token"})
    monkeypatch.delenv("MELDINGSTJENER_AR_TOKEN", raising=False)
    settings = load_settings(address_register={"url": "https://ar.test"})
    with pytest.raises(ConfigError, match=r"needs a HelseID client"):
        build_register_sync(settings)
    monkeypatch.setenv("MELDINGSTJENER_AR_TOKEN", "t")
    sync = build_register_sync(settings)
    assert sync is not None and sync.url == "https://ar.test"
    assert build_register_sync(load_settings()) is None


def test_every_alert_kind_is_explained_in_the_readme() -> None:
    """The help desk reads the table of alerts: a new kind must not be missing from it."""
    from meldingstjener.engine.alerts import SEVERITY, AlertKind

    readme = (PROJECT_ROOT / "README.md").read_text()
    for kind in AlertKind:
        assert f"| `{kind}` | {SEVERITY[kind]} |" in readme, f"{kind} missing from README.md"


def test_the_instance_is_named_by_host_and_port_unless_named(tmp_path: Path) -> None:
    import socket

    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = 8181\n")
    assert load_settings(config).server.instance == f"{socket.gethostname()}:8181"
    config.write_text('[server]\nport = 8181\ninstance_name = "msh-a.1"\n')
    assert load_settings(config).server.instance == "msh-a.1"
    # a "/" would run into the workers' names, which are "<instance>/<number>"
    config.write_text('[server]\ninstance_name = "msh/a"\n')
    with pytest.raises(ConfigError, match=r"server\.instance_name"):
        load_settings(config)


def test_a_prod_server_never_logs_in_to_a_mail_server_unencrypted(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    mailbox = '[mailbox]\nhost = "mail.example"\nusername = "u"\nsecurity = "none"\n'
    config.write_text('environment = "prod"\n' + mailbox)
    with pytest.raises(ConfigError, match=r"mailbox\.security"):
        load_settings(config)
    config.write_text('environment = "test"\n' + mailbox)  # a local test server: allowed
    assert load_settings(config).mailbox.security == "none"
    smtp = '[smtp]\nhost = "smtp.example"\nedi_address = "1@edi.nhn.no"\nusername = "u"\n'
    config.write_text('environment = "prod"\n' + smtp + 'security = "none"\n')
    with pytest.raises(ConfigError, match=r"smtp\.security"):
        load_settings(config)


def test_database_url_must_be_one_the_store_opens() -> None:
    assert load_settings(database={"url": "postgresql://u@db:5432/m"}).database.url
    assert load_settings(database={"url": "sqlite:///x.db"}).database.url
    for url, problem in (
        ("not-a-url", "not a database URL"),
        ("mysql://kari:hemmelig@db/m", "'mysql' is not a database this server uses"),
        ("postgresql://kari:hemmelig@db", "names no database"),
    ):
        with pytest.raises(ConfigError, match=r"database\.url") as caught:
            load_settings(database={"url": url})
        assert problem in str(caught.value)
        assert "hemmelig" not in str(caught.value)  # the password is never shown


def test_the_schema_directory_must_be_one(tmp_path: Path) -> None:
    assert load_settings(formats={"schema_dir": str(tmp_path)}).formats.schema_dir == tmp_path
    (tmp_path / "a-file.xsd").write_text("<xs:schema/>")
    for wrong, problem in (
        (tmp_path / "nope", "does not exist"),
        (tmp_path / "a-file.xsd", "is not a directory"),
    ):
        with pytest.raises(ConfigError, match=r"formats\.schema_dir") as caught:
            load_settings(formats={"schema_dir": str(wrong)})
        assert problem in str(caught.value)


def test_the_readme_tells_which_helseid_variables_serve_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # serve's client is the [helseid] section, set from the environment with two underscores;
    # the one-underscore variables are only the options of ar sync and partners add
    key = tmp_path / "client.jwk"
    key.write_text("{}")
    monkeypatch.setenv("MELDINGSTJENER_HELSEID__TOKEN_URL", "https://helseid.example/connect/token")
    monkeypatch.setenv("MELDINGSTJENER_HELSEID__CLIENT_ID", "meldingstjener")
    monkeypatch.setenv("MELDINGSTJENER_HELSEID__KEY_FILE", str(key))
    monkeypatch.setenv("MELDINGSTJENER_HELSEID_TOKEN_URL", "https://ignored.example/token")
    helseid = load_settings().helseid
    assert helseid.token_url == "https://helseid.example/connect/token"
    readme = " ".join((PROJECT_ROOT / "README.md").read_text().split())
    for name in ("TOKEN_URL", "CLIENT_ID", "KEY_FILE"):
        assert f"MELDINGSTJENER_HELSEID__{name}" in readme
    assert "`serve` never reads the one-underscore variables" in readme


def test_the_public_url_must_name_a_host_a_message_id_can_carry() -> None:
    from meldingstjener.bootstrap import message_id_host
    from meldingstjener.ebxml.ids import new_message_id

    for url, host in (
        ("https://msh.example.no", "msh.example.no"),
        ("http://10.0.0.1:8080/ebms", "10.0.0.1"),
    ):
        assert message_id_host(load_settings(server={"public_url": url})) == host
        assert new_message_id(host).endswith(f"@{host}")
    for url in (
        "https://msh<1>.example.no",
        "msh.example.no",
        "https://msh example.no",
        "https://msh.example.no:https",
        "ftp://msh.example.no",
        "https://",
        "https://[2001:db8::1]:8443/",  # a message id cannot end in an IPv6 address
    ):
        with pytest.raises(ConfigError, match=r"server\.public_url"):
            load_settings(server={"public_url": url})


def _partner(her_id: str, endpoint: str, our: str | None = None) -> str:
    return (
        f'[[partners]]\nher_id = "{her_id}"\nendpoint = "{endpoint}"\n'
        'signing_cert = "s.pem"\nencryption_cert = "e.pem"\n'
        + (f'our_her_id = "{our}"\n' if our else "")
    )


def test_a_partner_is_configured_once_and_is_not_one_of_us(tmp_path: Path) -> None:
    # Two tables for one partner (a copy-paste, the old address left in) were both accepted,
    # and the last one silently won; so was a partner with one of our own HER-ids.
    config = tmp_path / "c.toml"
    identity = (
        '[identity]\norganisation_her_id = "8100001"\n[[identity.services]]\nher_id = "8100002"\n'
    )
    new, old = "https://msh.hospital.example/ebms", "http://10.99.99.99:8080/ebms"
    config.write_text(identity + _partner("8200002", new) + _partner("8200002", old))
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "  partners[1].her_id: 8200002 is also partners[0]" in str(caught.value).splitlines()
    # naming the organisation's HER-id is naming the default: the same pair
    config.write_text(identity + _partner("8200002", new) + _partner("8200002", old, "8100001"))
    with pytest.raises(ConfigError, match=r"partners\[1\]\.her_id: 8200002 is also partners\[0\]"):
        load_settings(config)
    # one partner for each of two HER-ids of ours is two agreements
    config.write_text(identity + _partner("8200002", new) + _partner("8200002", new, "8100002"))
    assert len(load_settings(config).partners) == 2
    # of one party, though: an old certificate left in one of the tables was the last one's
    stale = _partner("8200002", new, "8100002").replace('"e.pem"', '"e-2025.pem"')
    config.write_text(identity + _partner("8200002", new) + stale)
    with pytest.raises(ConfigError, match=r"partners\[1\]\.encryption_cert: partner 8200002 is"):
        load_settings(config)
    for ours in ("8100001", "8100002"):
        config.write_text(identity + _partner("8200002", new) + _partner(ours, new))
        with pytest.raises(ConfigError, match=rf"partners\[1\]\.her_id: {ours} is one of our own"):
            load_settings(config)


def test_a_sections_key_with_one_underscore_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MELDINGSTJENER_DATABASE_URL was ignored without a word: db upgrade and serve ran on a new
    # local SQLite file instead of the PostgreSQL database it named.
    monkeypatch.setenv("MELDINGSTJENER_DATABASE_URL", "postgresql://u@db:5432/m")
    monkeypatch.setenv("MELDINGSTJENER_ADDRESS_REGISTER_SYNC_MINUTES", "5")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    said = str(caught.value)
    assert "MELDINGSTJENER_DATABASE_URL: not read" in said
    assert "two underscores: MELDINGSTJENER_DATABASE__URL" in said
    assert "MELDINGSTJENER_ADDRESS_REGISTER__SYNC_MINUTES" in said
    monkeypatch.delenv("MELDINGSTJENER_DATABASE_URL")
    monkeypatch.delenv("MELDINGSTJENER_ADDRESS_REGISTER_SYNC_MINUTES")
    # what is documented with one underscore still works: the options' variables, a
    # password_env's, the top-level keys
    for name in (
        "MELDINGSTJENER_HELSEID_TOKEN_URL",
        "MELDINGSTJENER_HELSEID_CLIENT_ID",
        "MELDINGSTJENER_HELSEID_KEY_FILE",
        "MELDINGSTJENER_HELSEID_AUDIENCE",
        "MELDINGSTJENER_HELSEID_CLIENT_SECRET",
        "MELDINGSTJENER_HELSEID_SCOPE",
        "MELDINGSTJENER_AR_TOKEN",
        "MELDINGSTJENER_AR_URL",
        "MELDINGSTJENER_CPPA_URL",
        "MELDINGSTJENER_SMTP_PASSWORD",
        "MELDINGSTJENER_MAILBOX_PASSWORD",
        "MELDINGSTJENER_KEY_PASSWORD",
    ):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("MELDINGSTJENER_ENVIRONMENT", "qa")
    monkeypatch.setenv("MELDINGSTJENER_DATABASE__URL", "postgresql://u@db:5432/m")
    settings = load_settings()
    assert (settings.environment, settings.database.url) == ("qa", "postgresql://u@db:5432/m")


def test_the_hours_an_apprec_may_be_owed_are_checked(tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path).alerts.apprec_owed_hours == 24
    assert load_settings(alerts={"apprec_owed_hours": 0}).alerts.apprec_owed_hours == 0  # off
    for wrong in (-1, 24 * 366 + 1, "a day"):
        with pytest.raises(ConfigError, match=r"alerts\.apprec_owed_hours"):
            load_settings(alerts={"apprec_owed_hours": wrong})
    assert load_settings(data_dir=tmp_path).alerts.apprec_owed_days == 14
    for wrong in (0, 367):
        with pytest.raises(ConfigError, match=r"alerts\.apprec_owed_days"):
            load_settings(alerts={"apprec_owed_days": wrong})
