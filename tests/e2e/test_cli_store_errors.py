"""A store that cannot be used, as an operator meets it: one line that names the database
(never its password) or the directory and the reason, and exit 3; a database URL of the wrong
form is a configuration error (exit 2). Never a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import meldingstjener
from meldingstjener.devsites import free_port
from meldingstjener.store.database import Database
from meldingstjener.store.migrate import alembic_config, current_revision, head_revision


def run(
    data_dir: Path | None, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it; without ``data_dir``, the default (relative) one."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    # this package, wherever the command runs (a relative PYTHONPATH would miss it from cwd)
    clean["PYTHONPATH"] = str(Path(meldingstjener.__file__).resolve().parents[1])
    where = [] if data_dir is None else ["--data-dir", str(data_dir)]
    return subprocess.run(
        [sys.executable, "-m", "meldingstjener", *where, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**clean, "MELDINGSTJENER_IDENTITY__ORGANISATION_HER_ID": "8100001", **(env or {})},
        timeout=60,
        check=False,
    )


def commands(tmp_path: Path) -> list[list[str]]:
    note = tmp_path / "note.xml"
    note.write_text("<MsgHead/>")
    return [["db", "upgrade"], ["log"], ["send", str(note)], ["serve", "--port", str(free_port())]]


def assert_said(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_a_database_url_of_the_wrong_form_is_a_configuration_error(tmp_path: Path) -> None:
    for url, said in (
        ("not-a-url", "not a database URL"),
        ("mysql://kari:hemmelig@db/meldinger", "'mysql' is not a database this server uses"),
        ("postgresql://kari:hemmelig@db:5432", "names no database"),
    ):
        result = run(tmp_path, "log", env={"MELDINGSTJENER_DATABASE__URL": url})
        assert_said(result, 2, "database.url", said)
        assert "hemmelig" not in result.stderr


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    # nothing listens on a port just found free: the connection is refused at once
    url = f"postgresql://kari:hemmelig@127.0.0.1:{free_port()}/meldinger"
    for command in commands(tmp_path):
        result = run(tmp_path, *command, env={"MELDINGSTJENER_DATABASE__URL": url})
        assert_said(result, 3, "cannot open the database postgresql://kari:***@127.0.0.1:")
        assert "hemmelig" not in result.stderr + result.stdout


def test_a_data_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    for command in commands(tmp_path):
        result = run(tmp_path / "a-file" / "data", *command)
        if command[0] in ("log", "send"):  # they never make a store: they find none
            assert_said(result, 3, "no database at")
        else:
            assert_said(result, 3, "cannot open the database sqlite:///", "Not a directory")


def test_a_payload_directory_that_cannot_be_made(tmp_path: Path) -> None:
    assert run(tmp_path, "db", "upgrade").returncode == 0
    (tmp_path / "payloads").rmdir()
    (tmp_path / "payloads").write_text("not a directory")
    for command in commands(tmp_path):
        result = run(tmp_path, *command)
        assert_said(result, 3, f"cannot write the payload directory {tmp_path / 'payloads'}")


def test_a_migration_that_fails_on_what_is_stored_is_not_said_to_be_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every database error of the upgrade became "cannot open the database" and exit 3, which
    # a service manager restarts on (the database may be back): a migration refused by the
    # rows it met would be retried for ever, under the wrong name, without its traceback.
    from sqlalchemy.exc import IntegrityError

    from meldingstjener import bootstrap
    from meldingstjener.config import load_settings
    from meldingstjener.store.opening import StoreUnavailable

    def refused(database: object) -> None:
        raise IntegrityError("UPDATE messages ...", {}, Exception("duplicate key value"))

    monkeypatch.setattr(bootstrap, "upgrade", refused)
    settings = load_settings(data_dir=tmp_path)
    with pytest.raises(IntegrityError):
        bootstrap.open_store(settings)

    def unreachable(database: object) -> None:
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(bootstrap, "upgrade", unreachable)
    with pytest.raises(StoreUnavailable, match="cannot open the database"):
        bootstrap.open_store(settings)


def test_send_where_there_is_no_store_makes_none(tmp_path: Path) -> None:
    # A cron job or an EPJ's script running send from its own directory, with the default
    # relative data_dir: a new store there took the message (exit 0, its id printed), and no
    # server ever sent it.
    note = tmp_path / "note.xml"
    note.write_text("<MsgHead/>")
    result = run(None, "send", str(note), cwd=tmp_path)
    assert_said(result, 3, "no database at", "relative paths")
    assert result.stdout == ""
    assert not (tmp_path / "meldingstjener-data").exists()


def _database(data_dir: Path) -> Database:
    return Database(f"sqlite:///{data_dir / 'meldingstjener.db'}")


def test_a_schema_newer_than_this_versions_is_refused_in_one_line(tmp_path: Path) -> None:
    # What an older node meets in a rolling upgrade, or any node after a package rolled back:
    # Alembic's 40-line traceback and exit 1, from every command, restarted for ever.
    assert run(tmp_path, "db", "upgrade").returncode == 0
    with sqlite3.connect(tmp_path / "meldingstjener.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    said = f"the database is at revision 0099, newer than this version's (head {head_revision()})"
    result = run(tmp_path, "alerts")
    assert_said(result, 3, said, "run the newer meldingstjener")
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    for command in commands(tmp_path):
        assert_said(run(tmp_path, *command), 3, said)
    database = _database(tmp_path)
    assert current_revision(database) == "0099"
    database.dispose()


def test_a_command_that_only_reads_leaves_an_older_schema_as_it_is(tmp_path: Path) -> None:
    # A help desk's newer CLI migrated the store under the running (older) servers. The code
    # reads the newest schema only (a message's row names the newest columns), so an older one
    # is refused rather than read; db upgrade and serve migrate it.
    from alembic import command

    assert run(tmp_path, "db", "upgrade").returncode == 0
    database = _database(tmp_path)
    config = alembic_config(database)
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0018")
    note = tmp_path / "note.xml"
    note.write_text("<MsgHead/>")
    for args in (["alerts"], ["log"], ["send", str(note)]):
        result = run(tmp_path, *args)
        assert_said(result, 3, "the database is at revision 0018, older than", "db upgrade")
        assert current_revision(database) == "0018"
    assert run(tmp_path, "db", "upgrade").returncode == 0
    assert current_revision(database) == head_revision()
    assert run(tmp_path, "alerts").returncode == 0
    database.dispose()
