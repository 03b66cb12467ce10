"""Following up alerts by hand as operators do: who acknowledged and who resolved an alert are
both told, and both are in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from meldingstjener.bootstrap import open_store
from meldingstjener.cli import app
from meldingstjener.config import load_settings

runner = CliRunner()


def invoke(data_dir: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args])
    return result.exit_code, result.output


def test_resolve_names_who_resolved_it(tmp_path: Path) -> None:
    store = open_store(load_settings(data_dir=tmp_path))
    with store.unit_of_work() as uow:
        uow.alerts.raise_alert(
            "partner-unreachable",
            severity="warning",
            dedup_key="partner-unreachable:8142520",
            summary="8142520 did not answer",
            partner_her_id="8142520",
        )
        uow.commit()
        [alert] = uow.alerts.list()
    store.database.dispose()
    number = str(alert.id)

    assert invoke(tmp_path, "alerts", "ack", number, "--by", "ops2") == (
        0,
        f"alert {number} acknowledged by ops2\n",
    )
    code, output = invoke(tmp_path, "alerts", "ack", number, "--by", "kari")
    assert (code, output) == (0, f"alert {number} was acknowledged by ops2 already\n")
    code, output = invoke(tmp_path, "alerts", "resolve", number, "--by", "kari")
    assert (code, output) == (0, f"alert {number} resolved by kari (acknowledged by ops2 before)\n")
    code, output = invoke(tmp_path, "alerts", "resolve", number, "--by", "per")
    assert (code, output) == (0, f"alert {number} was resolved already\n")

    code, output = invoke(tmp_path, "audit", "--client", "cli", "--json")
    assert code == 0, output
    entries = [json.loads(line) for line in output.splitlines()]
    assert [(e["action"], e["person"]) for e in entries] == [
        ("alert-acknowledge", "ops2"),
        ("alert-resolve", "kari"),
    ]
    assert all(e["herId"] == "8142520" for e in entries)

    assert invoke(tmp_path, "alerts", "resolve", "0")[0] == 2  # not an id
    assert invoke(tmp_path, "alerts", "resolve", "99")[0] == 1  # no such alert


def test_the_listing_tells_resolved_from_acknowledged(tmp_path: Path) -> None:
    """Resolving puts the resolver in ``acknowledged_by``: the ack column said the name, as if
    the alert were open and someone were on it."""
    store = open_store(load_settings(data_dir=tmp_path))
    with store.unit_of_work() as uow:
        for her_id in ("8100001", "8100002", "8100003"):
            uow.alerts.raise_alert(
                "partner-unreachable",
                severity="warning",
                dedup_key=f"partner-unreachable:{her_id}",
                summary=f"{her_id} did not answer",
                partner_her_id=her_id,
            )
        uow.commit()
        numbers = {alert.summary[:7]: str(alert.id) for alert in uow.alerts.list()}
    store.database.dispose()
    assert invoke(tmp_path, "alerts", "ack", numbers["8100002"], "--by", "ops2")[0] == 0
    assert invoke(tmp_path, "alerts", "resolve", numbers["8100003"], "--by", "kari")[0] == 0

    code, output = invoke(tmp_path, "alerts")
    assert code == 0, output
    lines = {her_id: _line_of(output, her_id) for her_id in numbers}
    assert "acknowledged" not in lines["8100001"] and "resolved" not in lines["8100001"]
    assert "acknowledged by ops2" in lines["8100002"] and "resolved" not in lines["8100002"]
    assert "resolved" in lines["8100003"] and "kari" not in lines["8100003"]


def _line_of(output: str, her_id: str) -> str:
    [line] = [line for line in output.splitlines() if f"{her_id} did not answer" in line]
    return line
