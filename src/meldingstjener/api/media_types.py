"""The JSON media types of NHN's EDI 2.0 contract, for request bodies: the one rule of what a
body of JSON may be sent as.

The contract lists ``application/json``, ``text/json`` and ``application/*+json``. FastAPI
parses a body as JSON for ``application/json`` and ``application/*+json`` only, and gave a
client sending ``text/json`` a validation error about its body; so ``text/json`` is read as
``application/json`` here, before the application sees the request.

A body of any other type (``text/plain``, ``application/xml``, none named) sent to a route that
takes JSON was answered ``400 body: Input should be a valid dictionary``, as if the JSON were
wrong: it is answered ``415 unsupported-media-type`` here, naming the types taken, before the
body is read (and before a large one is spooled to a file). Only a route that takes a body is
refused so: a ``PUT .../read/{herId}`` sent with a stray type and no body is answered as ever,
and so is a request without a body to a route whose body may be left out (an alert resolved
without a note).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from meldingstjener.api.problems import problem_response

# What a body of JSON may be sent as, as NHN's contract lists them
JSON_BODY_TYPES = ("application/json", "text/json", "application/*+json")
UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json_type(content_type: bytes | None) -> bool:
    """Whether a Content-Type header names one of ``JSON_BODY_TYPES`` (parameters aside)."""
    media = _media(content_type)
    if media is None:
        return False
    if media in (b"application/json", b"text/json"):
        return True
    return media.startswith(b"application/") and media.endswith(b"+json")


def json_routes(routers: Iterable[APIRouter]) -> tuple[APIRoute, ...]:
    """The routes of ``routers`` that take a body (FastAPI's body field: every body here is
    JSON). Read from the routers, not the application: FastAPI keeps an included router's
    routes in a form of its own."""
    return tuple(
        route
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.body_field is not None
    )


def body_types_text() -> str:
    """The types taken, for an answer or a document."""
    return ", ".join(JSON_BODY_TYPES)


class JsonMediaTypes:
    """``json_routes``: the routes that take a JSON body (:func:`json_routes`); ``on_refused``:
    told of each request answered 415 (to audit it), in a thread, with the request's route and
    path parameters in its scope."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        json_routes: Sequence[BaseRoute] = (),
        on_refused: Callable[[Request], None] | None = None,
    ) -> None:
        self.app = app
        self.json_routes = json_routes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            content_type = next((value for name, value in headers if name == b"content-type"), None)
            if not is_json_type(content_type) and _declares_body(headers):
                routed = self._json_route(scope)
                if routed is not None:
                    await self._refuse(routed, receive, send)
                    return
            elif _is_text_json(content_type):
                scope = {
                    **scope,
                    "headers": [
                        (name, _as_application_json(value) if name == b"content-type" else value)
                        for name, value in headers
                    ],
                }
        await self.app(scope, receive, send)

    def _json_route(self, scope: Scope) -> Scope | None:
        """``scope`` with the route it goes to (and its path parameters), when that route
        takes a JSON body; else None."""
        if scope["method"] not in _BODY_METHODS:
            return None
        for route in self.json_routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return {**scope, **child}
        return None

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on_refused is not None:
            await run_in_threadpool(self.on_refused, Request(scope))
        answer = problem_response(
            415,
            UNSUPPORTED_MEDIA_TYPE,
            f"the body must be JSON, sent with the Content-Type {body_types_text()}",
            headers={"Connection": "close"},  # its body unread: not kept for what follows
        )
        await answer(scope, receive, send)


def _media(content_type: bytes | None) -> bytes | None:
    """A Content-Type's media type, its parameters left out, in lower case."""
    return None if content_type is None else content_type.split(b";", 1)[0].strip().lower()


def _is_text_json(value: bytes | None) -> bool:
    return _media(value) == b"text/json"


def _as_application_json(value: bytes) -> bytes:
    if not _is_text_json(value):
        return value
    _, semicolon, parameters = value.partition(b";")
    return b"application/json" + semicolon + parameters


def _declares_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head says a body follows (a Content-Length above 0, or chunks)."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False
