"""Faults of the server answered in the API's shape: 503 with Retry-After while the database is
away, and for a fault of ours a 500 whose body is EDI 2.0's ErrorMessage, never Starlette's
plain text, and whose log line names the fault's class but not its text.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from api_sites import ApiPair
from fastapi.testclient import TestClient
from openapi_schema_validator import OAS30Validator
from outage import database_away
from sqlalchemy import text

from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client
from meldingstjener.api.edi2 import Edi2
from meldingstjener.devsites import HOSPITAL_SERVICE_HER


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error_message_schema(reference_dir: Path) -> dict[str, object]:
    spec = json.loads((reference_dir / "openapi" / "msh-api-v2.json").read_text())
    return dict(spec["components"]["schemas"]["ErrorMessage"])


def _as_error_message(body: dict[str, object], schema: dict[str, object]) -> dict[str, object]:
    """The body's ErrorMessage fields (a problem body carries RFC 9457's fields beside them)."""
    fields = schema["properties"]
    assert isinstance(fields, dict)
    return {name: value for name, value in body.items() if name in fields}


# PostgreSQL only: SQLite is a file on the server's own host, never away while it runs
@pytest.mark.parametrize("pair", ["postgresql"], indirect=True)
def test_while_the_database_is_away_the_api_answers_503_problems(
    api_pair: ApiPair, reference_dir: Path
) -> None:
    pair, http = api_pair.pair, api_pair.hospital_http
    schema = _error_message_schema(reference_dir)
    known = _bearer(api_pair.hospital_key)
    unread = {"ReceiverHerIds": HOSPITAL_SERVICE_HER}
    assert http.get("/Messages", params=unread, headers=known).status_code == 200
    # a key not used before: looked up in the store before any route runs
    _, fresh_key = add_client(pair.hospital.store, "fresh", ["receive"], [HOSPITAL_SERVICE_HER])
    with (
        TestClient(create_app(pair.hospital)) as fresh_http,
        database_away(pair.hospital.store.database.url),
    ):
        answers = [
            http.get("/Messages", params=unread, headers=known),
            http.put(f"/Messages/{uuid.uuid4()}/read/{HOSPITAL_SERVICE_HER}", headers=known),
            fresh_http.get("/Messages", params=unread, headers=_bearer(fresh_key)),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert int(answer.headers["retry-after"]) > 0
        body = answer.json()
        assert body["code"] == "unavailable"
        OAS30Validator(schema).validate(_as_error_message(body, schema))
    assert http.get("/Messages", params=unread, headers=known).status_code == 200  # back


def test_a_fault_of_ours_is_a_500_error_message_logged_without_its_text(
    api_pair: ApiPair,
    reference_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A fault in the server (injected: a real one is not there to be found), whose text quotes
    # what it was given. (Made here, not on the line that raises: the log shows source lines.)
    quoted = " ".join(["Kari", "Nordmann"])

    def faulty(*_args: object, **_kw: object) -> object:
        raise KeyError(quoted)

    monkeypatch.setattr(Edi2, "get_message", faulty)
    schema = _error_message_schema(reference_dir)
    with (
        caplog.at_level(logging.ERROR),
        TestClient(create_app(api_pair.pair.hospital)) as http,
    ):
        answer = http.get(f"/Messages/{uuid.uuid4()}", headers=_bearer(api_pair.hospital_key))
    assert answer.status_code == 500, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert body["code"] == "internal-error"
    OAS30Validator(schema).validate(_as_error_message(body, schema))
    assert "Nordmann" not in answer.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert body["requestId"] in logged and "KeyError" in logged
    assert "Nordmann" not in logged


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_a_database_error_of_ours_is_a_500_not_a_database_away(
    api_pair: ApiPair, reference_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A table the route needs is missing (a migration not run, say): SQLite says so with an
    # OperationalError, as it says "database is locked". No repeat mends it: a 500 whose
    # requestId is in the log line with the traceback, not a quiet 503 "database away".
    store = api_pair.pair.hospital.store
    with store.database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE messages RENAME TO messages_away"))
    schema = _error_message_schema(reference_dir)
    unread = {"ReceiverHerIds": HOSPITAL_SERVICE_HER}
    with caplog.at_level(logging.WARNING):
        answer = api_pair.hospital_http.get(
            "/Messages", params=unread, headers=_bearer(api_pair.hospital_key)
        )
    assert answer.status_code == 500, answer.text
    assert "retry-after" not in answer.headers
    body = answer.json()
    assert body["code"] == "internal-error"
    OAS30Validator(schema).validate(_as_error_message(body, schema))
    [logged] = [r for r in caplog.records if body["requestId"] in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert "OperationalError" in logged.getMessage() and "raised through" in logged.getMessage()
