"""The typer application, its global options and the entry point.

Global options (``--config``, ``--data-dir``) are kept on the typer context object so every
command loads the same validated settings through :func:`settings_from`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meldingstjener import __version__

if TYPE_CHECKING:
    from meldingstjener.config import Settings
    from meldingstjener.store.uow import Store

app = typer.Typer(
    name="meldingstjener",
    help="Message server (MSH) for electronic messaging in Norwegian health care.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help is Markdown: the lines of a docstring's paragraph are joined (Rich markup keeps each
    # line break), and "[helseid]" or "[address_register]" is text, not a Rich style tag to drop.
    rich_markup_mode="markdown",
)


@dataclass
class GlobalOptions:
    config_file: Path | None = None
    data_dir: Path | None = None
    _settings: Settings | None = None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"meldingstjener {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="MELDINGSTJENER_CONFIG",
            help="TOML configuration file (see config.example.toml); "
            "not needed for the embedded default.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Data directory for the SQLite store, payloads and development keys "
            "(default: MELDINGSTJENER_DATA_DIR or ./meldingstjener-data).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    ctx.obj = GlobalOptions(config_file=config, data_dir=data_dir)


def settings_from(ctx: typer.Context, **overrides: object) -> Settings:
    """Load and validate the settings once per invocation; exits with code 2 on a config error."""
    from meldingstjener.config import ConfigError, load_settings

    root = ctx.find_root()
    options = root.obj if isinstance(root.obj, GlobalOptions) else GlobalOptions()
    if options._settings is not None and not overrides:
        return options._settings
    try:
        settings = load_settings(options.config_file, data_dir=options.data_dir, **overrides)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    if not overrides:
        options._settings = settings
    return settings


def store_from(ctx: typer.Context, *, create: bool = False) -> Store:
    """The store of this invocation's settings. Only commands that may begin a store
    (``ar import``, ``partners add``, ``clients add``...) pass ``create``: the others, run
    where no store is (another working directory than the server's, with a relative
    ``data_dir``), say so instead of making an empty one and reporting that nothing is there.
    Only those migrate the schema, too: the others (a help desk's ``alerts``, perhaps of a
    newer version than the servers') leave it as it is, and refuse one of another version
    (see :func:`meldingstjener.bootstrap.open_store`)."""
    settings = settings_from(ctx)
    # imported once the settings are read: a configuration error is said without loading
    # the store (SQLAlchemy, the migrations)
    from meldingstjener.bootstrap import open_store

    return closed_at_end(ctx, open_store(settings, create=create, migrate=create))


def closed_at_end(ctx: typer.Context, store: Store) -> Store:
    """``store``, closed when the command ends: its connections (on SQLite three open files
    each) are not left to the process, which may go on to run other commands (a test, a
    script calling the application)."""
    ctx.call_on_close(store.close)
    return store


# Exit codes every command keeps: 0 done, 1 the command's own failure (refused, not found),
# 2 a usage or configuration error, 3 the store cannot be used (the database unreachable or
# unwritable, the payload directory unwritable, no store where one must exist already).
EXIT_STORE_UNAVAILABLE = 3


def main() -> None:
    """The entry point: every command, with the one handler for a store that cannot be used."""
    try:
        app()
    except Exception as exc:
        said = _store_failure(exc)
        if said is None:
            raise
        typer.echo(said, err=True)
        raise SystemExit(EXIT_STORE_UNAVAILABLE) from None


def _store_failure(exc: Exception) -> str | None:
    """What to say of ``exc`` when it is the store's failure (exit 3), else None.

    The exception classes are looked up among the modules imported already, not imported:
    a command that never opened the store (``--help``, ``validate``) must not load SQLAlchemy
    to be told apart, and an exception of a module never imported cannot have been raised.
    """
    opening = sys.modules.get("meldingstjener.store.opening")
    if opening is not None and isinstance(exc, opening.StoreUnavailable):
        return str(exc)
    errors = sys.modules.get("sqlalchemy.exc")
    if errors is not None and isinstance(exc, (errors.OperationalError, errors.InterfaceError)):
        from meldingstjener.store.opening import reason

        # the database went away, or turned out read-only, after it was opened
        return f"the database failed: {reason(exc)}"
    return None
