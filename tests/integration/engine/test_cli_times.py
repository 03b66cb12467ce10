"""Every time the command line prints says that it is UTC, and ``--since`` says in its help that
a time without a zone is UTC: an operator in Europe/Oslo read "last seen 08:00" as local time,
and typed local time into ``log --since``, which found nothing for an hour."""

from __future__ import annotations

import re
from typing import Any

import typer
from engine_pair import Pair
from typer.testing import CliRunner

import meldingstjener.cli.alerts_cmds
import meldingstjener.cli.api_cmds
import meldingstjener.cli.store_cmds  # noqa: F401  (each registers its commands)
from meldingstjener.cli.app import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit

# a time printed to the minute or the second, and what follows it
_PRINTED_TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d)?(.{0,4})")


def _cli(pair: Pair, *args: str) -> str:
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_alerts_table_and_the_status_timeline_say_their_times_are_utc(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    with pair.gp.store.unit_of_work() as uow:
        uow.alerts.raise_alert(
            "test-alert", severity="warning", dedup_key="test-alert", summary="looked at"
        )
        uow.commit()
    alerts = _cli(pair, "alerts")
    assert "last seen (UTC)" in alerts
    status = _cli(pair, "status", message_id)
    printed = _PRINTED_TIME.findall(status)
    assert printed  # its receipts, each with its time
    assert all(after.startswith(" UTC") for after in printed), status


def _since_help(command: str) -> str:
    commands: dict[str, Any] = getattr(typer.main.get_command(app), "commands")  # noqa: B009
    [since] = [p for p in commands[command].params if "--since" in p.opts]
    return str(since.help)


def test_since_says_a_time_without_a_zone_is_utc() -> None:
    for command in ("log", "audit"):
        assert "without a zone is UTC" in _since_help(command), command
