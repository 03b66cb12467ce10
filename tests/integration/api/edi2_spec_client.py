"""A client for NHN's EDI 2.0 message API built from its OpenAPI document at run time.

It knows nothing of meldingstjener: each call names an operationId of msh-api-v2.json; the
method, path, parameter places and the required headers come from the document, and every
successful answer is validated against the response schema the document gives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from openapi_schema_validator import OAS30Validator


class SpecClient:
    def __init__(self, spec_path: Path, http: httpx.Client, key: str) -> None:
        self.spec = json.loads(spec_path.read_text())
        self.http = http
        self.key = key
        self.operations: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for path, item in self.spec["paths"].items():
            for method, operation in item.items():
                if isinstance(operation, dict) and "operationId" in operation:
                    self.operations[operation["operationId"]] = (method, path, operation)

    def call(self, operation_id: str, body: Any = None, **params: Any) -> httpx.Response:
        method, path, operation = self.operations[operation_id]
        query: dict[str, Any] = {}
        headers = {"Authorization": f"Bearer {self.key}"}
        for parameter in operation.get("parameters", []):
            name, place = parameter["name"], parameter["in"]
            if place == "header":
                # The document requires these two headers on every call.
                headers[name] = {"api-version": "2", "nhn-source-system": "spec-test"}.get(
                    name, "x"
                )
                continue
            if name not in params:
                assert not parameter.get("required"), f"{operation_id} needs {name}"
                continue
            value = params.pop(name)
            if place == "path":
                path = path.replace("{" + name + "}", str(value))
            else:
                query[name] = value
        assert not params, f"parameters not in the document for {operation_id}: {list(params)}"
        if body is not None:
            assert "requestBody" in operation, f"{operation_id} takes no body"
            self._validate(body, operation["requestBody"]["content"]["application/json"]["schema"])
        response = self.http.request(
            method.upper(),
            path,
            params=query,
            headers=headers,
            json=body if body is not None else None,
        )
        documented = operation["responses"].get(str(response.status_code))
        if 200 <= response.status_code < 300 and documented is not None:
            content = documented.get("content", {}).get("application/json")
            if content is not None:
                self._validate(response.json(), content["schema"])
        return response

    def _validate(self, instance: Any, schema: dict[str, Any]) -> None:
        rooted = _nullable_refs({**schema, "components": self.spec["components"]})
        OAS30Validator(rooted).validate(instance)


def _nullable_refs(schema: Any) -> Any:
    """The document marks referenced enums nullable as ``{allOf: [$ref], nullable: true}`` and
    says null means "not received"; OpenAPI 3.0 validators ignore ``nullable`` beside ``allOf``,
    so spell the intent out: the referenced schema, or null.
    """
    if isinstance(schema, list):
        return [_nullable_refs(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _nullable_refs(value) for key, value in schema.items()}
    if converted.get("nullable") and "allOf" in converted:
        rest = {k: v for k, v in converted.items() if k not in ("allOf", "nullable")}
        return {**rest, "anyOf": [{"allOf": converted["allOf"]}, {"enum": [None]}]}
    return converted
