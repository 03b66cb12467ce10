"""The layering of docs/ARCHITECTURE.md, read from the source: data flows one way, from the
entry points (the command line, the REST API, the folder drop and webhooks) to the engine and on
to the store and the protocol code, so nothing imports what stands above it.

The imports are read from every module's syntax tree, those inside functions too (the command
line and the engine import some things late): an import that breaks the rule fails here, whether
or not a test happens to load it. (The engine imported the API's audit log, and the folder
integration's name of an inbox row's outcome.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meldingstjener

PACKAGE = Path(meldingstjener.__file__).resolve().parent

# what stands above each part: the entry points, and what puts the program together
ENTRY_POINTS = frozenset({"api", "cli", "integration"})
ASSEMBLY = frozenset({"bootstrap", "devsites"})
ABOVE = {
    "engine": ENTRY_POINTS | ASSEMBLY,
    **{
        part: ENTRY_POINTS | ASSEMBLY | {"engine"}
        for part in (
            "model",
            "formats",
            "security",
            "ebxml",
            "registry",
            "store",
            "transport",
            "httpbody",
            "views",
        )
    },
    "integration": frozenset({"api", "cli"}) | ASSEMBLY,
    "api": frozenset({"cli"}),
}


def _part(module: str) -> str | None:
    """The part (a package or top-level module of ours) a dotted name is in; None: not ours."""
    names = module.split(".")
    return names[1] if names[0] == "meldingstjener" and len(names) > 1 else None


def _imported(source: str, module: str) -> set[tuple[str, int]]:
    """The parts of ours the ``source`` of ``module`` (its dotted name) imports, each with the
    line of an import of it."""
    found: set[tuple[str, int]] = set()
    here = module.split(".")
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                package = here[: len(here) - node.level]
                base = ".".join([*package, base] if base else package)
            # ``from meldingstjener import api`` imports the part it names
            modules = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for module in modules:
            part = _part(module)
            if part is not None:
                found.add((part, node.lineno))
    return found


def _modules(part: str) -> list[Path]:
    folder = PACKAGE / part
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{part}.py"]


def _name(path: Path) -> str:
    """A module's dotted name (a package's ``__init__`` counts as a module in it: a relative
    import is read from the package)."""
    return ".".join(["meldingstjener", *path.relative_to(PACKAGE).with_suffix("").parts])


@pytest.mark.parametrize("part", sorted(ABOVE))
def test_no_part_imports_what_stands_above_it(part: str) -> None:
    modules = _modules(part)
    assert modules and all(path.exists() for path in modules)
    broken = sorted(
        f"{path.relative_to(PACKAGE)}:{line} imports meldingstjener.{imported}"
        for path in modules
        for imported, line in _imported(path.read_text(encoding="utf-8"), _name(path))
        if imported in ABOVE[part]
    )
    assert broken == []


def test_each_way_of_writing_an_import_is_read() -> None:
    # the reading itself: an import of the API written any way in an engine module is seen
    source = (
        "from meldingstjener.api import audit\n"
        "import meldingstjener.api.audit\n"
        "from meldingstjener import api\n"
        "def late():\n"
        "    from ..api.audit import add\n"
        "from . import retention\n"
        "import sqlalchemy\n"
    )
    found = _imported(source, "meldingstjener.engine.resend")
    assert sorted(line for part, line in found if part == "api") == [1, 2, 3, 5]
    assert {part for part, _ in found} == {"api", "engine"}
