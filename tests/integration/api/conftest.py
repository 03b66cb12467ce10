"""Fixtures for the API tests: two real engines (GP and hospital) joined by a loopback network,
each with the full HTTP application in front, and API clients made the way an operator makes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from api_sites import ApiPair, Template, copy_pair, make_template
from engine_pair import Pair
from fastapi.testclient import TestClient
from webhook_receiver import Receiver

from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, HOSPITAL_SERVICE_HER


@pytest.fixture(scope="session")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("template") / "sites")


def _postgres_databases(base: str) -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL databases (GP's, hospital's), dropped afterwards."""
    server = base.rsplit("/", 1)[0]
    names = [f"mt_api_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{server}/{names[0]}", f"{server}/{names[1]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        for name in names:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(site_template: Template, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    """Both engines on SQLite, and again on PostgreSQL (each its own fresh database)."""
    databases = None
    if request.param == "postgresql":
        databases = _postgres_databases(request.getfixturevalue("postgres_url"))
    made = copy_pair(site_template, tmp_path / "sites", next(databases) if databases else None)
    assert made.gp.store.database.dialect == made.hospital.store.database.dialect == request.param
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()
    if databases is not None:
        next(databases, None)


@pytest.fixture
def api_pair(pair: Pair) -> Iterator[ApiPair]:
    _, gp_key = add_client(pair.gp.store, "gp-epj", ["send", "receive"], [GP_HER])
    _, hospital_key = add_client(
        pair.hospital.store, "dips", ["send", "receive"], [HOSPITAL_HER, HOSPITAL_SERVICE_HER]
    )
    _, admin_key = add_client(pair.hospital.store, "ops", ["admin"], [])
    _, outsider_key = add_client(pair.hospital.store, "lab-system", ["receive"], ["8300001"])
    with (
        TestClient(create_app(pair.gp)) as gp_http,
        TestClient(create_app(pair.hospital)) as hospital_http,
    ):
        yield ApiPair(pair, gp_http, hospital_http, gp_key, hospital_key, admin_key, outsider_key)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint on loopback (``webhook_receiver.Receiver``), stopped afterwards."""
    made = Receiver()
    yield made
    made.server.shutdown()
