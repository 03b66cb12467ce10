"""What starting the command line loads: only what the command asked for uses.

Every command module registers its commands on the one typer app when the command line is
imported, so a module-level import of the store, the configuration or the ebXML and formats
packages is paid by every command, ``--help`` and ``--version`` included (it was 0.8 s).
These tests run the command line in a fresh interpreter and look at ``sys.modules``: a heavy
import brought back to module level fails them, without timing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import meldingstjener

# Third-party packages (and ours) that no command needs before it runs: the store, the
# configuration, the ebXML and formats packages, the server, the HTTP clients, rich's tables.
HEAVY = (
    "alembic",
    "cryptography",
    "fastapi",
    "httpx",
    "lxml",
    "pydantic",
    "pydantic_settings",
    "rich",
    "sqlalchemy",
    "uvicorn",
    "meldingstjener.api",
    "meldingstjener.bootstrap",
    "meldingstjener.config",
    "meldingstjener.ebxml",
    "meldingstjener.engine",
    "meldingstjener.formats",
    "meldingstjener.registry",
    "meldingstjener.store",
    "meldingstjener.views",
)

# Imports the command line, runs it with the arguments given (if any) as the console script
# does, and prints the exit code and the modules loaded as the last line.
_PROBE = """
import json, sys
import meldingstjener.cli
code = None
if len(sys.argv) > 1:
    sys.argv[0] = "meldingstjener"
    try:
        meldingstjener.cli.main()
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


def _run(*args: str) -> tuple[object, set[str]]:
    environment = dict(os.environ)
    # this tree's package, wherever the interpreter runs
    environment["PYTHONPATH"] = str(Path(meldingstjener.__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    return probe["exit"], set(probe["modules"])


def _heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> list[str]:
    def among(name: str, packages: tuple[str, ...]) -> bool:
        return any(name == package or name.startswith(f"{package}.") for package in packages)

    return sorted(m for m in modules if among(m, HEAVY) and not among(m, allowed))


def test_importing_the_command_line_loads_no_heavy_package() -> None:
    _, modules = _run()
    assert "meldingstjener.cli.store_cmds" in modules  # the commands are registered
    assert _heavy(modules) == []


def test_version_loads_no_heavy_package() -> None:
    # main() tells the store's failures apart (exit 3) without importing the store to do so
    code, modules = _run("--version")
    assert code in (0, None)
    assert _heavy(modules) == []


@pytest.mark.parametrize(
    "command",
    [
        ["log"],
        ["show", "x"],
        ["status", "x"],
        ["sweep"],
        ["retention"],
        ["instances"],
        ["audit"],
        ["clients", "list"],
        ["webhooks", "list"],
        ["partners", "list"],
        ["send", "x.xml", "--to", "1"],
    ],
    ids=lambda command: "-".join(command[:2]),
)
def test_a_missing_configuration_is_said_before_the_store_is_loaded(
    tmp_path: Path, command: list[str]
) -> None:
    # a store command reads the settings first: an operator's typo costs the configuration's
    # import (pydantic), not the store's
    code, modules = _run("--config", str(tmp_path / "missing.toml"), *command)
    assert code == 2
    assert _heavy(modules, allowed=("pydantic", "pydantic_settings", "meldingstjener.config")) == []


def test_a_store_command_on_a_current_schema_loads_no_alembic(tmp_path: Path) -> None:
    # the schema's revision is read from Alembic's table and the migration files' names;
    # Alembic (a tenth of a second) is loaded only when there is something to migrate
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings

    open_store(load_settings(data_dir=tmp_path)).database.dispose()
    code, modules = _run("--data-dir", str(tmp_path), "log")
    assert code in (0, None)
    assert "meldingstjener.store" in modules  # the command did open the store
    assert [name for name in modules if name.split(".")[0] == "alembic"] == []
