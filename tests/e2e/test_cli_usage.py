"""Usage errors as an operator makes them: a value no command can use is refused with exit 2
and a word on what is wrong, before any store is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from meldingstjener.cli import app

runner = CliRunner()

MISTAKES = {
    "log --limit -1": (["log", "--limit", "-1"], "--limit"),
    "audit --limit -5": (["audit", "--limit", "-5"], "--limit"),
    "partners show abc": (["partners", "show", "abc"], "not a HER-id"),
    "partners set abc": (["partners", "set", "abc", "--state", "active"], "not a HER-id"),
    "partners show --our x": (["partners", "show", "8142520", "--our", "x"], "not a HER-id"),
    "ar show abc": (["ar", "show", "abc"], "not a HER-id"),
    "ar forget abc": (["ar", "forget-previous-certificate", "abc"], "not a HER-id"),
    "apprec status 5": (["apprec", "build", "--original", "m.xml", "--status", "5"], "--status"),
    "apprec version 2.0": (
        ["apprec", "build", "--original", "m.xml", "--version", "2.0"],
        "not 1.0 or 1.1",
    ),
    "alerts resolve 0": (["alerts", "resolve", "0"], "alert_id"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_value_no_command_can_use_is_a_usage_error(tmp_path: Path, mistake: str) -> None:
    args, said = MISTAKES[mistake]
    result = runner.invoke(app, ["--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2, (result.output, result.exception)
    assert said in result.output
    assert not (tmp_path / "meldingstjener.db").exists()  # refused before the store is opened
