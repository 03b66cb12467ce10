"""The code style the project keeps (see docs/ARCHITECTURE.md), judged by the tools that
``.[dev]`` installs: ruff's lint rules and its formatting over the whole tree, and mypy's
typing of the package. A finding fails the suite, so it cannot land unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "--no-cache", "."],
        ["ruff", "format", "--check", "--no-cache", "."],
        ["mypy", "--no-incremental"],  # its files are in pyproject.toml
    ],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_the_tree_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
