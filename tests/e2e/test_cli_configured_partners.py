"""A partner of ``[[partners]]`` as an operator handles it: the file gives its terms, the
operator's ``partners set --state`` decides whether it is sent to, and survives each start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meldingstjener.bootstrap import open_store
from meldingstjener.cli import engine_cmds, registry_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.config import load_settings
from meldingstjener.devsites import Site, dialog_note, prepare_sites

runner = CliRunner()


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


@pytest.fixture
def gp(tmp_path: Path) -> tuple[Site, Path]:
    """The GP site's configuration (the hospital's service in ``[[partners]]``) and a note to
    the hospital."""
    gp_site, hospital = prepare_sites(tmp_path / "sites")
    open_store(load_settings(gp_site.config_path)).database.dispose()  # send never makes one
    note = tmp_path / "note.xml"
    note.write_bytes(dialog_note(gp_site, hospital, "Innkalling?"))
    return gp_site, note


def test_a_suspended_configured_partner_stays_suspended(gp: tuple[Site, Path]) -> None:
    site, note = gp
    config = site.config_path
    code, output = invoke(config, "send", str(note))  # the first start writes the partner
    assert code == 0, output
    code, output = invoke(config, "partners", "set", "8200002", "--state", "suspended")
    assert code == 0, output

    code, output = invoke(config, "send", str(note))  # a start that syncs [[partners]] again
    assert code == 1, output
    assert "agreement-not-active" in output
    code, output = invoke(config, "partners", "show", "8200002", "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert (shown["state"], shown["source"]) == ("suspended", "config")
    code, output = invoke(config, "partners", "list")
    assert "suspended" in output and "config" in output

    # lifted by hand, the file's terms are still the ones sent by
    code, output = invoke(config, "partners", "set", "8200002", "--state", "active")
    assert code == 0, output
    code, output = invoke(config, "send", str(note))
    assert code == 0, output
    code, output = invoke(config, "partners", "show", "8200002", "--json")
    assert json.loads(output)["endpoint"].startswith("http://127.0.0.1:")


def test_terms_set_by_hand_are_the_files_again_at_the_next_start(gp: tuple[Site, Path]) -> None:
    site, note = gp
    config = site.config_path
    assert invoke(config, "send", str(note))[0] == 0
    code, output = invoke(
        config, "partners", "set", "8200002", "--endpoint", "http://elsewhere.invalid/ebms"
    )
    assert code == 0, output
    assert "[[partners]]" in output  # the operator is told the file wins at the next start
    assert invoke(config, "send", str(note))[0] == 0
    code, output = invoke(config, "partners", "show", "8200002", "--json")
    assert json.loads(output)["endpoint"] != "http://elsewhere.invalid/ebms"


@pytest.mark.parametrize("steps", [(), ("testing",), ("ended",)])
def test_a_partner_the_file_takes_over_keeps_the_operators_state(
    gp: tuple[Site, Path], steps: tuple[str, ...]
) -> None:
    """An agreement added by hand before the partner came into ``[[partners]]`` keeps its
    onboarding state, or ended, across the start that takes it over, instead of that start
    making it active without any evidence."""
    site, note = gp
    config = site.config_path
    code, output = invoke(
        config, "partners", "add", "8200002", "--channel", "http", "--endpoint", "http://x.invalid/"
    )
    assert code == 0, output
    for state in steps:
        code, output = invoke(config, "partners", "set", "8200002", "--state", state)
        assert code == 0, output
    kept = steps[-1] if steps else "ordered"

    code, output = invoke(config, "send", str(note))  # the start takes the agreement over
    assert code == 1, output
    assert "agreement-not-active" in output and kept in output
    code, output = invoke(config, "partners", "show", "8200002", "--json")
    shown = json.loads(output)
    assert (shown["state"], shown["source"]) == (kept, "config")
