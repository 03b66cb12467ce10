"""The store commands as an operator runs them: db upgrade, log, show, --help, --version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from meldingstjener.bootstrap import open_store
from meldingstjener.config import load_settings
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.types import utcnow


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    return subprocess.run(
        [sys.executable, "-m", "meldingstjener", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, str]:
    store = open_store(load_settings(data_dir=tmp_path))
    with store.unit_of_work() as uow:
        row = uow.messages.add(
            MessageRow(
                direction="out",
                msg_type="DIALOG_NOTAT",
                ebxml_message_id="e1@x",
                msg_id="msg-1",
                from_her_id="8142987",
                to_her_id="8142520",
            ),
            actor="cli-test",
        )
        uow.messages.set_status(row, "sent", actor="worker")
        uow.messages.set_status(row, "transport-acknowledged", actor="worker")
        other = uow.messages.add(
            MessageRow(
                direction="in",
                msg_type="APPREC",
                ebxml_message_id="e2@x",
                from_her_id="90001",
                to_her_id="8142987",
            ),
            actor="cli-test",
        )
        uow.commit()
    assert other.id
    return tmp_path, row.id


def test_version_and_help(tmp_path: Path) -> None:
    result = run(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("meldingstjener ")
    for command in ([], ["db"], ["db", "upgrade"], ["log"], ["show"]):
        result = run(tmp_path, *command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout


def test_db_upgrade_creates_the_database(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    from meldingstjener.store.migrate import head_revision

    assert f"revision {head_revision()}" in result.stdout
    assert (tmp_path / "meldingstjener.db").exists()


def test_log_json_prints_one_object_per_event(populated: tuple[Path, str]) -> None:
    data_dir, message_id = populated
    result = run(data_dir, "log", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 4
    mine = [e for e in events if e["message_id"] == message_id]
    assert [e["to_status"] for e in mine] == ["accepted", "sent", "transport-acknowledged"]
    assert {e["actor"] for e in mine} == {"cli-test", "worker"}

    filtered = [
        json.loads(x)
        for x in run(data_dir, "log", "--json", "--her-id", "90001").stdout.splitlines()
    ]
    assert [e["msg_type"] for e in filtered] == ["APPREC"]
    by_type = run(
        data_dir, "log", "--json", "--type", "DIALOG_NOTAT", "--status", "transport-acknowledged"
    )
    assert len(by_type.stdout.splitlines()) == 3
    assert run(data_dir, "log", "--json", "--since", "2999-01-01").stdout == ""
    assert run(data_dir, "log", "--since", "yesterday").returncode == 2


def test_log_and_audit_with_a_limit_show_the_newest_oldest_first(
    populated: tuple[Path, str],
) -> None:
    # Both took the oldest --limit rows: without --since, an operator of a server a year old
    # never saw today's events (the default limit is 1000).
    from meldingstjener.store.audit import Outcome, add

    data_dir, message_id = populated
    store = open_store(load_settings(data_dir=data_dir))
    with store.unit_of_work() as uow:
        for number in range(3):
            add(uow, client="epj", person=None, action=f"read-{number}", outcome=Outcome.OK)
        uow.commit()
    store.database.dispose()
    newest = [
        json.loads(x) for x in run(data_dir, "log", "--json", "--limit", "2").stdout.splitlines()
    ]
    assert [e["to_status"] for e in newest] == ["transport-acknowledged", "received"]
    assert newest[0]["message_id"] == message_id and newest[1]["message_id"] != message_id
    first = run(data_dir, "log", "--json", "--limit", "2", "--since", "2000-01-01")
    assert [json.loads(x)["to_status"] for x in first.stdout.splitlines()] == ["accepted", "sent"]
    audited = run(data_dir, "audit", "--json", "--limit", "2")
    assert audited.returncode == 0, audited.stderr
    assert [json.loads(x)["action"] for x in audited.stdout.splitlines()] == ["read-1", "read-2"]


def test_log_table(populated: tuple[Path, str]) -> None:
    result = run(populated[0], "log")
    assert result.returncode == 0
    assert "DIALOG_NOTAT" in result.stdout and "transport-acknowledged" in result.stdout


def test_show_by_any_id(populated: tuple[Path, str]) -> None:
    data_dir, message_id = populated
    for identifier in (message_id, "e1@x", "msg-1"):
        result = run(data_dir, "show", identifier, "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["message_id"] == message_id
        assert [e["to_status"] for e in document["events"]][-1] == "transport-acknowledged"
    assert run(data_dir, "show", message_id).returncode == 0
    missing = run(data_dir, "show", "nope")
    assert missing.returncode == 1 and "no message" in missing.stderr


def test_bad_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nport = -1\n")
    result = run(tmp_path, "--config", str(config), "log")
    assert result.returncode == 2
    assert "server.port" in result.stderr


READING = (
    ["log"],
    ["show", "abc"],
    ["status", "abc"],
    ["alerts"],
    ["alerts", "ack", "1"],
    ["audit"],
    ["instances"],
    ["sweep"],
    ["partners", "list"],
    ["partners", "show", "8142520", "--our", "8142987"],
    ["ar", "search", "Sykehus"],
    ["ar", "show", "8142520"],
    ["clients", "list"],
)


def test_commands_that_read_make_no_store_where_there_is_none(tmp_path: Path) -> None:
    # The operator runs from another directory than the server's: the configuration's relative
    # data_dir names an empty place, which must not become an empty store reported as "no events".
    server = tmp_path / "server"
    server.mkdir()
    (server / "op.toml").write_text('data_dir = "data"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}

    def run_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meldingstjener", "--config", str(server / "op.toml"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=directory,
            timeout=60,
            check=False,
        )

    assert run_in(server, "db", "upgrade").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in READING:
        result = run_in(elsewhere, *command)
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert f"no database at {elsewhere / 'data' / 'meldingstjener.db'}" in result.stderr
        assert "meldingstjener db upgrade" in result.stderr
    assert list(elsewhere.iterdir()) == []  # nothing made
    found = run_in(server, "log")  # where the server runs, the store is found
    assert found.returncode == 0 and "no events match" in found.stdout


def test_show_and_status_take_the_start_of_an_id_as_log_prints_it(
    populated: tuple[Path, str],
) -> None:
    data_dir, message_id = populated
    shown = run(data_dir, "log").stdout
    assert message_id[:8] in shown  # what an operator copies from the log
    for command in ("show", "status"):
        result = run(data_dir, command, message_id[:8], "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["message_id"] == message_id
    assert run(data_dir, "show", message_id[:13].upper(), "--json").returncode == 0
    too_short = run(data_dir, "show", message_id[:7])
    assert too_short.returncode == 1 and "no message" in too_short.stderr


def test_the_start_of_several_ids_is_refused_with_their_ids(tmp_path: Path) -> None:
    store = open_store(load_settings(data_dir=tmp_path))
    with store.unit_of_work() as uow:
        for tail in ("0000", "1111"):
            uow.messages.add(
                MessageRow(
                    id=f"abcdef01-{tail}-4000-8000-000000000000",
                    direction="out",
                    msg_type="DIALOG_NOTAT",
                    from_her_id="8142987",
                    to_her_id="8142520",
                ),
                actor="cli-test",
            )
        uow.commit()
    result = run(tmp_path, "status", "abcdef01")
    assert result.returncode == 2
    assert "abcdef01-0000-" in result.stderr and "abcdef01-1111-" in result.stderr
    assert "give more" in result.stderr
    found = run(tmp_path, "show", "abcdef01-1", "--json")
    assert json.loads(found.stdout)["message_id"].startswith("abcdef01-1111-")


def test_log_apprec_owed_lists_the_taken_messages_not_answered(
    populated: tuple[Path, str],
) -> None:
    data_dir, _ = populated
    store = open_store(load_settings(data_dir=data_dir))
    two_days_ago = utcnow() - timedelta(days=2)
    with store.unit_of_work() as uow:
        # an AppRec received and taken is answered by nobody: never owed
        for her_id, msg_type in (
            ("8142987", "DIALOG_NOTAT"),
            ("8142988", "DIALOG_NOTAT"),
            ("8142989", "APPREC"),
        ):
            owed = uow.messages.add(
                MessageRow(
                    direction="in",
                    msg_type=msg_type,
                    ebxml_message_id=f"owed-{her_id}@x",
                    from_her_id="90001",
                    to_her_id=her_id,
                    created_at=two_days_ago - timedelta(hours=1),
                ),
                actor="cli-test",
            )
            for status in ("acknowledged", "delivered"):
                # delivered longer than [alerts] apprec_owed_hours (24) ago: what the alert counts
                uow.messages.set_status(owed, status, actor="worker", at=two_days_ago)
        uow.commit()
    store.database.dispose()
    listed = run(data_dir, "log", "--json", "--apprec-owed")
    assert listed.returncode == 0, listed.stderr
    found = {
        (json.loads(line)["to_her_id"], json.loads(line)["to_status"])
        for line in listed.stdout.splitlines()
    }
    assert {her_id for her_id, _ in found} == {"8142987", "8142988"}
    one = run(data_dir, "log", "--json", "--apprec-owed", "--her-id", "8142988")
    assert {json.loads(line)["to_her_id"] for line in one.stdout.splitlines()} == {"8142988"}
