"""Schemathesis against our own OpenAPI document: whatever a client sends, never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from api_sites import Template, copy_pair
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client
from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER

KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_app(
    site_template: Template, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    pair = copy_pair(site_template, tmp_path_factory.mktemp("fuzz") / "sites")
    _, KEY["all"] = add_client(
        pair.hospital.store,
        "fuzzer",
        ["send", "receive", "admin"],
        [HOSPITAL_HER, HOSPITAL_SERVICE_HER],
    )
    yield create_app(pair.hospital)
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


@pytest.fixture(scope="module")
def api_schema(fuzz_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {KEY['all']}"})
    assert response.status_code < 500, (case.method, case.path, response.text[:500])


def test_the_document_is_served(fuzz_app: FastAPI) -> None:
    with TestClient(fuzz_app) as http:
        document = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    operations = {
        op["operationId"]
        for item in document["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    assert {
        "PostMessage",
        "GetMessages",
        "GetMessage",
        "GetBusinessDocument",
        "GetStatus",
        "GetApprecInfo",
        "PostAppRec",
        "MarkMessageAsRead",
    } <= operations
