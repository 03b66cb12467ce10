"""Fixtures for the API tests: two real engines (GP and hospital) joined by a loopback network,
each with the full HTTP application in front, and API clients made the way an operator makes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_sites import ApiPair, Template, copy_pair, make_template
from engine_pair import Pair
from fastapi.testclient import TestClient

from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, HOSPITAL_SERVICE_HER


@pytest.fixture(scope="session")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return make_template(tmp_path_factory.mktemp("template") / "sites")


@pytest.fixture
def pair(site_template: Template, tmp_path: Path) -> Iterator[Pair]:
    made = copy_pair(site_template, tmp_path / "sites")
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()


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
