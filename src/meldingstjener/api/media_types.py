"""The JSON media types of NHN's EDI 2.0 contract, for request bodies.

The contract lists ``application/json``, ``text/json`` and ``application/*+json``. FastAPI
parses a body as JSON for ``application/json`` and ``application/*+json`` only, and gave a
client sending ``text/json`` a validation error about its body; so ``text/json`` is read as
``application/json`` here, before the application sees the request.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class JsonMediaTypes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            if any(name == b"content-type" and _is_text_json(value) for name, value in headers):
                scope = {
                    **scope,
                    "headers": [
                        (name, _as_application_json(value) if name == b"content-type" else value)
                        for name, value in headers
                    ],
                }
        await self.app(scope, receive, send)


def _is_text_json(value: bytes) -> bool:
    return value.split(b";", 1)[0].strip().lower() == b"text/json"


def _as_application_json(value: bytes) -> bytes:
    if not _is_text_json(value):
        return value
    _, semicolon, parameters = value.partition(b";")
    return b"application/json" + semicolon + parameters
