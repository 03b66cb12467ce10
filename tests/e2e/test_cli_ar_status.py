"""``ar status``: where the register sync stands, which no command showed (the state was in
kv_state only): when it last caught up, the event reached, a whole export under way and how
far, the refused parties, and the sync job's next turn and failures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from meldingstjener.bootstrap import open_store
from meldingstjener.cli import registry_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.config import load_settings
from meldingstjener.engine.register_sync import REGISTER_SYNC
from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.fakes import FakeAddressRegister, serve
from meldingstjener.registry.sync import SyncInterrupted, sync_register

runner = CliRunner()


def _status(data_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), "ar", "status", *args])
    return result.exit_code, result.output


def _record(her_id: int, kind: str = "Organization") -> dict[str, Any]:
    return {"herId": her_id, "name": f"Legekontor {her_id}", "type": kind, "ediAddress": "x@edi"}


def test_ar_status_tells_where_the_sync_stands(tmp_path: Path) -> None:
    fake = FakeAddressRegister()
    for her_id in (100001, 100002, 100003):
        fake.put_party(_record(her_id))
    fake.put_party(_record(100004, "Spaceship"))  # a type we do not know: refused
    with serve(fake) as url:
        env = {"MELDINGSTJENER_AR_TOKEN": "t"}
        synced = runner.invoke(
            app, ["--data-dir", str(tmp_path), "ar", "sync", "--url", url], env=env
        )
        assert synced.exit_code == 0, synced.output
        code, output = _status(tmp_path, "--json")
        assert code == 0, output
        status = json.loads(output)
        assert datetime.fromisoformat(status["last_synced_at"]) <= datetime.now(UTC)
        assert status["last_sequence_number"] == 4
        assert status["export_in_progress"] is False and status["job"] is None
        assert list(status["refused"]) == ["100004"]
        assert "unknown type" in status["refused"]["100004"]

        # a whole export under way: the register went down after its first party
        store = open_store(load_settings(data_dir=tmp_path))
        fake.bulk_supported = False
        fake.fail_party_lookups_after = fake.party_lookups + 1
        client = ArClient(url, StaticToken("t"))
        try:
            with pytest.raises(SyncInterrupted):
                sync_register(store, client, full=True, chunk_size=1)
        finally:
            client.close()
    with store.unit_of_work() as uow:
        uow.jobs.schedule(
            REGISTER_SYNC,
            datetime(2030, 1, 1, tzinfo=UTC),
            dedup_key=REGISTER_SYNC,
            data={"failures": 2, "failing_since": "2029-12-31T23:00:00+00:00"},
        )
        uow.commit()
    code, output = _status(tmp_path, "--json")
    status = json.loads(output)
    assert status["export_in_progress"] is True
    assert (status["export_sequence_number"], status["export_done_through_her_id"]) == (
        4,
        "100001",
    )
    assert status["job"]["failures"] == 2 and status["job"]["next_due_at"].startswith("2030-01-01")

    code, output = _status(tmp_path)
    assert code == 0, output
    assert "whole export         in progress (of event 4), done through HER-id 100001" in output
    assert "sync job failures    2 in a row since 2029-12-31T23:00:00+00:00" in output
    assert "refused 100004: " in output
