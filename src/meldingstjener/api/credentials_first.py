"""Credentials before the body: every request to the authenticated routes proves who sends it
before any layer reads or parses its body.

FastAPI reads and parses a JSON body before a route's dependencies run, so a route that
authenticates in a dependency parsed (and ``BodyLimit`` read, up to a megabyte) whatever an
unknown caller sent, and answered 400 or 413 where the answer is 401. This ASGI middleware sits
outside the body limit and the document spool and authenticates from the headers alone: a
request that proves nothing is answered 401 with its body unread. The :class:`Principal` found
is kept in the request's scope (see :mod:`meldingstjener.api.auth`), so the routes' dependencies
and the audit of a refused request use it without looking the credential up again.

``/ebms`` (protected by its ebXML signatures), ``/health`` and the OpenAPI pages are not
authenticated routes and pass untouched.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from meldingstjener.api.auth import Principal
from meldingstjener.api.problems import ApiProblem, problem_response

# The EPJ API, the operator API and the figures for monitoring; everything under them needs a
# credential.
AUTHENTICATED_PATHS = ("/Messages", "/api", "/metrics")


def is_authenticated_path(path: str, prefixes: tuple[str, ...] = AUTHENTICATED_PATHS) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


class CredentialsFirst:
    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[Request], Principal],
        prefixes: tuple[str, ...] = AUTHENTICATED_PATHS,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_authenticated_path(scope["path"], self.prefixes):
            await self.app(scope, receive, send)
            return
        try:
            # a thread: an API key may be looked up in the store, a JWT's key fetched
            await run_in_threadpool(self.authenticate, Request(scope))
        except ApiProblem as refused:
            # outside FastAPI's exception handlers: the problem body is written here
            # with its body unread, the connection is not kept for whatever else it sends (a
            # request without one, a poll or a scrape, keeps it)
            close = {"Connection": "close"} if _declares_body(scope) else None
            answer = problem_response(refused.status, refused.code, refused.detail, headers=close)
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _declares_body(scope: Scope) -> bool:
    """Whether the request says a body follows (a length above 0, or chunks)."""
    for name, value in scope.get("headers") or []:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
