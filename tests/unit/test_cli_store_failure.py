"""The command line's one handler for a store that fails: exit 3 with one line, not a traceback.

``main`` tells the store's failures apart by the exception classes of modules already imported
(the command line imports the store only for the commands that use it), so a wrong module name
there would turn exit 3 into a traceback without any command noticing.
"""

from __future__ import annotations

import importlib

import pytest
from sqlalchemy.exc import OperationalError

from meldingstjener.store.opening import StoreUnavailable

# the module (``meldingstjener.cli.app`` as an attribute of the package is the typer app)
cli = importlib.import_module("meldingstjener.cli.app")


def _failing_with(exc: Exception) -> object:
    def command() -> None:
        raise exc

    return command


def test_a_database_failing_after_it_was_opened_is_exit_3_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failure = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    monkeypatch.setattr(cli, "app", _failing_with(failure))
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == cli.EXIT_STORE_UNAVAILABLE == 3
    assert capsys.readouterr().err.startswith("the database failed: ")


def test_a_store_that_cannot_be_used_is_exit_3_with_what_it_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "app", _failing_with(StoreUnavailable("no database at /x/y.db")))
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 3
    assert capsys.readouterr().err == "no database at /x/y.db\n"


def test_any_other_error_is_not_taken_for_the_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "app", _failing_with(KeyError("not the store's")))
    with pytest.raises(KeyError):
        cli.main()
