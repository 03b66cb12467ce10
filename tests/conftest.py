"""Shared test fixtures: where the reference material in ../shared lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from meldingstjener.store.uow import Store

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("MELDINGSTJENER_SHARED", PROJECT_ROOT.parent / "shared"))
REFERENCE_DIR = SHARED_DIR / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference, or a skip with the reason when it is not beside the project."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference material not found at {REFERENCE_DIR} (../shared is absent)")
    return REFERENCE_DIR


# --- parallel runs ---------------------------------------------------------------------------
# The suite runs on pytest-xdist's workers (``-n auto --dist loadgroup``, set in pyproject.toml).
# What tests share beyond their own tmp_path and PostgreSQL database is grouped onto one worker:
# the local mail server's mailboxes are few and fixed, so every test using them runs on one.


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "mail_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("mail-server"))


# --- open descriptors ------------------------------------------------------------------------
# A test process that ends with many descriptors open has something left open by its tests (a
# worker once ended with a thousand, and a test that met descriptor 1024 with select() failed).
# Each process counts its own at the end; the summary says so when one held more than the bound
# (a line, not a failure: the count depends on what else the process ran). Linux only.

# after the suite a worker holds some 60: pytest's, execnet's and free_port's (64 at most)
DESCRIPTOR_BOUND = 256


def _descriptors_held() -> tuple[int, str] | None:
    """How many descriptors this process holds, and what they are, the most first; None where
    /proc/self/fd is not."""
    from collections import Counter

    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    kinds: Counter[str] = Counter()
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own, closed already
            continue
        if target.startswith("socket:"):
            kinds["sockets"] += 1
        elif target.endswith((".db", ".db-wal", ".db-shm")):
            kinds["SQLite files"] += 1
        else:
            kinds["others"] += 1
    return sum(kinds.values()), ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def pytest_sessionfinish(session: pytest.Session) -> None:
    held = _descriptors_held()
    if held is None:
        return
    worker = getattr(session.config, "workeroutput", None)
    if worker is not None:  # an xdist worker: its controller reports it (pytest_testnodedown)
        worker["descriptors_held"] = held
    else:
        _DESCRIPTORS_HELD.append(("this process", *held))


_DESCRIPTORS_HELD: list[tuple[str, int, str]] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    held = getattr(node, "workeroutput", {}).get("descriptors_held")
    if held is not None:
        _DESCRIPTORS_HELD.append((f"worker {node.gateway.id}", *held))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for process, count, kinds in _DESCRIPTORS_HELD:
        if count > DESCRIPTOR_BOUND:
            terminalreporter.write_line(
                f"{process} ended holding {count} open descriptors ({kinds}), more than "
                f"{DESCRIPTOR_BOUND}: a test or fixture leaves something open",
                yellow=True,
            )


# --- databases -------------------------------------------------------------------------------
# Store tests run on SQLite and on PostgreSQL. Each test session gets its own PostgreSQL
# database (created here, dropped at the end), so parallel runs never see each other's rows.

POSTGRES_ADMIN_URL = os.environ.get(
    "MELDINGSTJENER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _postgres_available() -> str | None:
    """None when PostgreSQL answers, else the reason."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}"


@pytest.fixture(autouse=True)
def _databases_disposed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ``Database`` made while a test runs (by the test, its function-scoped fixtures, a
    pair of engines, a command run in this process) is disposed when the test ends, after its
    other fixtures. Left to the garbage collector (a database's engine and its listeners make a
    cycle, collected only by a full collection), each kept its pooled connections open: three
    files per SQLite connection, a socket per PostgreSQL one, and a worker process ended the
    suite with a thousand descriptors. Disposing a database still in use is harmless: its next
    unit of work opens a new connection. Made before the test (a session's or a module's
    fixture), a database is that fixture's to dispose."""
    from meldingstjener.store.database import Database

    made: list[Database] = []
    init = Database.__init__

    def tracked(self: Database, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(Database, "__init__", tracked)
    yield
    monkeypatch.setattr(Database, "__init__", init)
    for database in made:
        database.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this test session."""
    import uuid

    import psycopg

    reason = _postgres_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)  # in CI PostgreSQL is part of the machine: its absence is a failure
        pytest.skip(reason)
    name = f"mt_test_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_ADMIN_URL.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database on each backend."""
    from sqlalchemy import text

    from meldingstjener.store.database import Database
    from meldingstjener.store.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        database = Database(url)
        upgrade(database)
        database.dispose()
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    database = Database(url)
    upgrade(database)
    yield url
    with database.engine.begin() as connection:  # leave the shared session database empty
        connection.execute(
            text(
                "TRUNCATE messages, message_events, receipts, alerts, jobs, kv_state, "
                "communication_parties, partner_agreements, api_clients, folder_files, "
                "serving_instances "
                "RESTART IDENTITY CASCADE"
            )
        )
    database.dispose()


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    from meldingstjener.store.database import Database
    from meldingstjener.store.payloads import PayloadStore
    from meldingstjener.store.uow import Store

    database = Database(database_url)
    yield Store(database, PayloadStore(tmp_path / "payloads"))
    database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A database of this test's own, so downgrading it disturbs no other test."""
    import uuid

    import psycopg

    from meldingstjener.store.database import Database
    from meldingstjener.store.migrate import upgrade
    from meldingstjener.store.payloads import PayloadStore
    from meldingstjener.store.uow import Store

    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'own.db'}")
        upgrade(database)
        yield Store(database, PayloadStore(tmp_path / "payloads"))
        database.dispose()
        return
    base = request.getfixturevalue("postgres_url").rsplit("/", 1)[0]
    name = f"mt_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    database = Database(f"{base}/{name}")
    upgrade(database)
    yield Store(database, PayloadStore(tmp_path / "payloads"))
    database.dispose()
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
