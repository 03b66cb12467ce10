"""The served OpenAPI document says what the API answers: errors as problem details (never
FastAPI's 422 of its own), 413 only where a body is taken, JSON bodies in every type read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from api_sites import ApiPair

from meldingstjener.api.problems import problem_body

ERROR = {"$ref": "#/components/schemas/ErrorMessage"}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        if path.startswith(("/Messages", "/api/"))
        for method, operation in item.items()
    ]


def test_every_error_answer_is_described_as_a_problem_and_422_is_not_one(
    api_pair: ApiPair, reference_dir: Path
) -> None:
    # The document listed FastAPI's 422 HTTPValidationError on every operation (invalid input
    # is 400), the errors without a schema, 413 on GETs, and JSON bodies as application/json
    # only though text/json and application/*+json are read too.
    document = api_pair.hospital_http.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(document)
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        for status, response in responses.items():
            if status[0] in "45":
                assert response["content"] == {"application/problem+json": {"schema": ERROR}}, (
                    method,
                    path,
                    status,
                )
        if "requestBody" not in operation:
            assert "413" not in responses and "415" not in responses, (method, path)
        else:
            assert "415" in responses, (method, path)  # a body not sent as JSON
        if "requestBody" in operation and path.startswith("/Messages"):
            assert "413" in responses, (method, path)
            body = operation["requestBody"]["content"]
            assert set(body) == {"application/json", "text/json", "application/*+json"}
        if path.startswith("/Messages"):
            assert "422" not in responses, (method, path)
    # the webhook's URL refused is a 422 of ours, a problem like the others
    assert "422" in document["paths"]["/api/webhooks"]["post"]["responses"]
    # the schema names every field a problem body has, and the fields of NHN's ErrorMessage
    described = document["components"]["schemas"]["ErrorMessage"]["properties"]
    assert set(described) == set(problem_body(400, "invalid-input", "x"))
    theirs = json.loads((reference_dir / "openapi" / "msh-api-v2.json").read_text())
    assert set(theirs["components"]["schemas"]["ErrorMessage"]["properties"]) - {
        "stackTrace"  # never sent
    } <= set(described)


def test_the_operator_routes_list_their_refusals_and_413_where_a_body_is_taken(
    api_pair: ApiPair,
) -> None:
    # The webhook routes refuse a 'metrics' key (or any client of no event) with 403, and every
    # body of /api is refused past 1 MB with 413 (limits.BodyLimit): neither was in the document.
    document = api_pair.hospital_http.get("/openapi.json").json()
    operator = [(m, p, o) for m, p, o in _operations(document) if p.startswith("/api/")]
    assert {(m, p) for m, p, _ in operator} >= {
        ("post", "/api/webhooks"),
        ("get", "/api/webhooks"),
        ("delete", "/api/webhooks/{webhook_id}"),
    }
    for method, path, operation in operator:
        responses = operation["responses"]
        assert {"401", "403"} <= set(responses), (method, path)
        if "requestBody" in operation:
            assert "413" in responses, (method, path)
        if path.startswith("/api/webhooks"):
            assert "webhook event" in responses["403"]["description"], (method, path)
    # the events of a webhook: at least one, each once (an empty list was a webhook of nothing)
    body = document["paths"]["/api/webhooks"]["post"]["requestBody"]["content"]
    schema_name = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    events = document["components"]["schemas"][schema_name]["properties"]["events"]
    [array] = [choice for choice in events["anyOf"] if choice.get("type") == "array"]
    assert array["minItems"] == 1 and events["uniqueItems"] is True


def test_the_answers_the_routes_give_are_listed_with_how_a_client_proves_itself(
    api_pair: ApiPair,
) -> None:
    # POST /api/webhooks listed 422 but not the 400 of "events": []; the log, alert and timeline
    # routes only 200/401/403 though bad query values are 400 and an unknown alert or message
    # 404; /metrics no 401; and no security scheme, so /docs and generated clients sent no key.
    http = api_pair.hospital_http
    document = http.get("/openapi.json").json()
    admin = {"Authorization": f"Bearer {api_pair.hospital_admin_key}"}
    asked = [
        ("get", "/api/log", "/api/log?status=nonsense", None, 400),
        ("get", "/api/log", "/api/log?limit=0", None, 400),
        ("get", "/api/alerts", "/api/alerts?before_id=5", None, 400),
        ("get", "/api/audit", "/api/audit?since=yesterday", None, 400),
        ("get", "/api/messages/{message_id}/timeline", "/api/messages/x/timeline", None, 404),
        ("post", "/api/alerts/{alert_id}/resolve", "/api/alerts/999/resolve", None, 404),
        ("post", "/api/alerts/{alert_id}/resolve", "/api/alerts/one/resolve", None, 400),
        ("post", "/api/alerts/{alert_id}/acknowledge", "/api/alerts/999/acknowledge", None, 404),
        ("post", "/api/alerts/{alert_id}/acknowledge", "/api/alerts/one/acknowledge", None, 400),
        ("delete", "/api/webhooks/{webhook_id}", "/api/webhooks/one", None, 400),
        (
            "post",
            "/api/webhooks",
            "/api/webhooks",
            {"url": "https://93.184.216.34/", "events": []},
            400,
        ),
    ]
    for method, template, url, body, status in asked:
        answer = http.request(method.upper(), url, headers=admin, json=body)
        assert answer.status_code == status, (url, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json"), url
        listed = document["paths"][template][method]["responses"]
        assert str(status) in listed, (method, template, status)
        assert listed[str(status)]["content"] == {"application/problem+json": {"schema": ERROR}}
    assert http.get("/metrics").status_code == 401
    metrics = document["paths"]["/metrics"]["get"]["responses"]
    assert {"401", "403"} <= set(metrics)
    assert metrics["401"]["content"] == {"application/problem+json": {"schema": ERROR}}
    # how a client proves itself: a bearer key or token, or the X-Api-Key header
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert {k: schemes["apiKey"][k] for k in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path.startswith(("/Messages", "/api/", "/metrics")):
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}], (method, path)
            else:  # /ebms (its signatures), /health
                assert "security" not in operation, (method, path)
    # each as the document declares it is taken
    key = api_pair.hospital_admin_key
    assert http.get("/api/log", headers={schemes["apiKey"]["name"]: key}).status_code == 200
    assert http.get("/api/log", headers={"Authorization": f"Bearer {key}"}).status_code == 200
