"""Request-size limits for the API routes, answered with 413 and a problem body.

Starlette reads a JSON body whole, and FastAPI parses it before a route's dependencies run: the
limits must hold before that. The caller is known by then (``CredentialsFirst``, outside this
layer, answers 401 before any body is read), so only an authenticated client meets them.

- The routes in ``large`` (``POST /Messages``, whose body carries a business document of up to
  35 MB) get ``limit``: a declared ``Content-Length`` above it is refused at once, and a body
  without one is counted as it streams.
- Every other route's body is a few fields of JSON. It is read here, up to ``small_limit``,
  before the application sees it: a larger one is refused with 413 however it is sent, and no
  client makes the server parse more than that.

``/ebms`` keeps its own limit (in ``app.py``) and is exempt here.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meldingstjener.api.problems import send_too_large

SMALL_BODY_LIMIT = 1_000_000  # an AppRec's error list, a webhook, a reason: far below this
# The OpenAPI response of every route that takes such a small body (a GET takes none)
SMALL_BODY_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": f"The body is larger than {SMALL_BODY_LIMIT} bytes (too-large)"}
}


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        small_limit: int = SMALL_BODY_LIMIT,
        large: tuple[str, ...] = (),
        exempt: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.limit = limit
        self.small_limit = small_limit
        self.large = large
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        limit = self.limit if scope["path"] in self.large else self.small_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        if scope["path"] not in self.large:
            await self._small(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, self.limit)

    async def _small(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the whole (small) body, then hand it to the application as one message."""
        pieces: list[bytes] = []
        held = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay(message, receive), send)
                return
            pieces.append(message.get("body", b""))
            held += len(pieces[-1])
            if held > self.small_limit:
                await self._refuse(send, self.small_limit)
                return
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(pieces), "more_body": False}
        await self.app(scope, _replay(whole, receive), send)

    async def _refuse(self, send: Send, limit: int) -> None:
        await send_too_large(send, f"the request is larger than {limit} bytes")


def _replay(first: Message, receive: Receive) -> Receive:
    """``first``, then whatever ``receive`` gives (a disconnect, once the body was read)."""
    given = False

    async def replaying() -> Message:
        nonlocal given
        if not given:
            given = True
            return first
        return await receive()

    return replaying
