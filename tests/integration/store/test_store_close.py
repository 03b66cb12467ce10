"""A store closes what it opened: ``Store.close`` and every command of the command line that
opens one. A process that opens stores and goes on (a test worker running thousands of tests, a
script calling the application) kept each one's pooled connections (three files per SQLite
connection, a socket and a server backend per PostgreSQL one) until a full garbage collection,
and a test worker ended the suite with a thousand descriptors."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

import meldingstjener.cli.alerts_cmds
import meldingstjener.cli.mail_cmds
import meldingstjener.cli.store_cmds  # noqa: F401  (each registers its commands)
from meldingstjener.cli.app import app
from meldingstjener.devsites import prepare_sites
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.uow import Store

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="open files are counted in /proc/self/fd"
)


def _files_open_under(directory: Path) -> list[str]:
    """What this process holds open under ``directory``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed already
            continue
        if target.startswith(f"{directory}{os.sep}"):
            found.append(target)
    return found


def _backends(database: Database, name: str) -> int:
    """PostgreSQL's connections of the application name ``name`` (counted from another one)."""
    looking = Database(database.url)
    try:
        with looking.reading() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                    {"name": f"meldingstjener/{name}"},
                ).scalar_one()
            )
    finally:
        looking.dispose()


def test_closing_a_store_closes_its_connections(database_url: str, tmp_path: Path) -> None:
    name = f"close-{uuid.uuid4().hex[:8]}"
    database = Database(database_url, instance=name)
    store = Store(database, PayloadStore(tmp_path / "payloads"))
    with store.unit_of_work() as uow:
        uow.state.get("nothing")
    if database.is_postgresql:
        assert _backends(database, name) == 1
        store.close()
        assert _backends(database, name) == 0
    else:
        assert _files_open_under(tmp_path)  # the database and its WAL, held by the pool
        store.close()
        assert _files_open_under(tmp_path) == []
    with store.unit_of_work() as uow:  # still usable: a new connection
        uow.state.get("nothing")


def test_a_command_closes_the_store_it_opened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for command in (["db", "upgrade"], ["alerts"]):
        result = CliRunner().invoke(app, ["--data-dir", str(data), *command])
        assert result.exit_code == 0, result.output
        assert _files_open_under(data) == [], command


def test_a_command_that_builds_an_engine_closes_its_store(tmp_path: Path) -> None:
    """``mail reprocess`` opens the store through a whole engine, and here ends refusing what
    it was given: the store is closed all the same."""
    _, hospital = prepare_sites(tmp_path)
    config = ["--config", str(hospital.config_path)]
    assert CliRunner().invoke(app, [*config, "db", "upgrade"]).exit_code == 0
    refused = CliRunner().invoke(app, [*config, "mail", "reprocess", "x.eml"])
    assert refused.exit_code == 2, refused.output
    assert _files_open_under(hospital.directory) == []
