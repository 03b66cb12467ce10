"""Every command's ``--help`` as an operator reads it: each paragraph of its text whole, on one
line of a wide terminal, configuration names in brackets (``[helseid]``) included."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from meldingstjener.cli import app

runner = CliRunner()


Command = tuple[tuple[str, ...], Any]


def commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every command and group, with the words that call it."""
    command = command or get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def shown(text: str) -> str:
    """``text`` as help prints it: one line, without Markdown's code marks."""
    return " ".join(text.split()).replace("`", "")


def test_help_shows_every_paragraph_whole() -> None:
    checked, missing = 0, []
    for path, command in commands():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "2000"})
        assert result.exit_code == 0, (path, result.output)
        lines = [shown(line.replace("│", " ")) for line in result.output.splitlines()]
        texts = inspect.cleandoc(command.help or "").split("\n\n")
        texts += [param.help for param in command.params if getattr(param, "help", None)]
        # a group lists its commands by the first paragraph of each one's text
        texts += [
            inspect.cleandoc(sub.help).split("\n\n")[0]
            for sub in getattr(command, "commands", {}).values()
            if sub.help and not sub.short_help
        ]
        for text in texts:
            expected = shown(text)
            if not any(expected in line for line in lines):
                missing.append((" ".join(path), expected))
            checked += 1
    assert not missing, "\n".join(f"{path}: {text}" for path, text in missing)
    assert checked > 100  # every command's text was looked at


def test_the_register_sync_names_the_configuration_sections() -> None:
    result = runner.invoke(app, ["ar", "sync", "--help"], env={"COLUMNS": "2000"})
    assert "configuration's [helseid] client" in result.output
    assert "(default: [address_register] url)" in result.output


def test_the_readme_names_every_command() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    leaves = [path for path, command in commands() if path and not hasattr(command, "commands")]
    missing = []
    for path in leaves:
        *group, name = path
        # "`ar import/sync/search/show`" names four commands of one group
        before = re.escape(" ".join(group)) + r" (?:[\w-]+/)*" if group else ""
        if not re.search(r"`" + before + re.escape(name) + r"\b", table):
            missing.append(" ".join(path))
    assert not missing, f"not in README's command table: {missing}"
    serve = next(line for line in table.splitlines() if line.startswith("| `serve"))
    assert "--port" in serve and "--host" in serve
