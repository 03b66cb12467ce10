"""A store restored from an older backup beside its newer payload directory: the files of the
messages received after the backup are the only copies of them, and nothing refers to them.
``sweep --move-to`` puts them aside before the restored server's daily sweep would remove them
(docs/OPERATIONS.md, "Backup and restore")."""

from __future__ import annotations

import json
from pathlib import Path

from engine_pair import Pair
from restore import restore_hospital, sqlite_backup
from sqlalchemy import select
from typer.testing import CliRunner

import meldingstjener.cli.store_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.store.orphans import sweep
from meldingstjener.store.tables import MessageRow


def _receive_note(pair: Pair) -> None:
    submit(
        pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Etter sikkerhetskopien"), actor="t"
    )
    pair.run()


def _messages(ctx: EngineContext) -> list[MessageRow]:
    with ctx.store.unit_of_work() as uow:
        return list(uow.session.scalars(select(MessageRow)))


def _files_of_received(pair: Pair) -> dict[str, bytes]:
    """The payload files of the hospital's received messages (decrypted and as they came), by
    their path in the payload directory, with their bytes."""
    payloads = pair.hospital.store.payloads
    files: dict[str, bytes] = {}
    for message in pair.inbound_messages(pair.hospital):
        for key in (message.payload_ref, message.wire_ref):
            assert key is not None
            path = payloads.path(key)
            files[str(path.relative_to(payloads.root))] = path.read_bytes()
    return files


def test_the_files_of_messages_received_after_the_backup_are_moved_aside_not_swept(
    pair: Pair, tmp_path: Path
) -> None:
    _receive_note(pair)
    backup = tmp_path / "backup.db"
    sqlite_backup(pair.hospital, backup)
    kept = _files_of_received(pair)
    for _ in range(2):
        _receive_note(pair)
    newer = {path: data for path, data in _files_of_received(pair).items() if path not in kept}
    assert len(newer) == 4  # two messages, each decrypted and as it came

    restored = restore_hospital(pair, backup)
    # what is lost without a word: the GP holds all three as taken, the hospital knows one
    sent = [m for m in _messages(pair.gp) if m.direction == "out"]
    assert [m.status for m in sent] == ["transport-acknowledged"] * 3
    assert len(pair.inbound_messages(restored)) == 1
    with restored.store.unit_of_work() as uow:
        assert uow.alerts.list(open_only=True) == []
    aside = tmp_path / "after-the-backup"
    moved = CliRunner().invoke(
        app,
        [
            "--config",
            str(pair.hospital_site.config_path),
            "sweep",
            "--older-than",
            "0",
            "--move-to",
            str(aside),
            "--json",
        ],
    )
    assert moved.exit_code == 0, moved.output
    figures = json.loads(moved.output)
    assert figures["removed"] == 0 and figures["moved"] == figures["orphans"] >= 4
    for path, data in newer.items():
        assert (aside / path).read_bytes() == data  # where they were, under the directory given
        assert not (restored.store.payloads.root / path).exists()
    for path in kept:  # the restored database's own files stay
        assert (restored.store.payloads.root / path).exists()
    # what the daily sweep then finds, once every file is past its grace period: nothing
    assert sweep(restored.store, now=float("inf"), dry_run=True).orphans == []


def test_a_sweep_moves_only_out_of_the_payload_directory_and_removes_young_files_never(
    pair: Pair,
) -> None:
    config = str(pair.hospital_site.config_path)
    root = pair.hospital.store.payloads.root
    young = pair.hospital.store.payloads.put(b"a unit of work still in flight")

    def run(*args: str) -> int:
        return CliRunner().invoke(app, ["--config", config, "sweep", *args]).exit_code

    assert run("--older-than", "0") == 2  # removed, a file still being committed would be lost
    assert run("--older-than", "0", "--dry-run") == 0  # counted only
    assert run("--older-than", "0", "--move-to", str(root / "aside")) == 2
    assert pair.hospital.store.payloads.exists(young.key)
