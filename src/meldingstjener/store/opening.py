"""Why the store cannot be opened, said in one line an operator can act on.

Opening the store touches the world outside the server: a database server that may be down, a
URL that may name nothing, files and directories the process may not write. Each of those
failures becomes one :class:`StoreUnavailable` whose message names the database (its URL
without the password) or the directory and the reason in the driver's or the system's words;
the command line prints it instead of a traceback (and exits 3, see ``cli.app``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError


class StoreUnavailable(Exception):
    """The database or the payload directory cannot be used; the message says which and why.
    ``missing``: there is no store where one was expected (a command that only reads or
    changes what is stored never makes one)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def shown_url(url: str) -> str:
    """``url`` as it may be printed: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a database URL that cannot be read)"


def reason(exc: BaseException) -> str:
    """The cause of a database or file failure in the driver's or system's words, one line,
    without SQLAlchemy's statement and link to its documentation."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    cause = getattr(exc, "orig", None) if isinstance(exc, SQLAlchemyError) else None
    text = str(cause if cause is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.strip()


def database_failed(url: str, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"cannot open the database {shown_url(url)}: {reason(exc)}")


def payloads_failed(directory: Path, exc: BaseException | str) -> StoreUnavailable:
    why = exc if isinstance(exc, str) else reason(exc)
    return StoreUnavailable(f"cannot write the payload directory {directory}: {why}")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def no_store(url: str) -> StoreUnavailable:
    """No store where a command expected one. The likeliest cause is a relative ``data_dir``
    taken from another working directory than the server's, so the place looked at is named."""
    file = sqlite_file(url)
    where = f"no database at {file}" if file is not None else f"no tables in {shown_url(url)}"
    return StoreUnavailable(
        f"{where}; run `meldingstjener db upgrade` (or serve) first (relative paths in the "
        "configuration are taken from the directory the command runs in)",
        missing=True,
    )


def schema_newer(revision: str, head: str | None) -> StoreUnavailable:
    """The schema is of a newer version than this one (which cannot read it, nor migrate it
    down): an older node of a rolling upgrade, or a package rolled back."""
    return StoreUnavailable(
        f"the database is at revision {revision}, newer than this version's (head {head}): "
        "run the newer meldingstjener"
    )


def schema_older(revision: str, head: str | None) -> StoreUnavailable:
    """The schema is older than this version's, and the command does not migrate: the code
    reads the newest schema only (its tables name the newest columns)."""
    return StoreUnavailable(
        f"the database is at revision {revision}, older than this version's (head {head}): "
        "run `meldingstjener db upgrade` (or serve) of this version first, or the version "
        "its servers run"
    )
