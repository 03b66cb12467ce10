"""Faults of the server answered in the API's own shape, not as Starlette's ``500 text/plain``.

An error that no route answers reached Starlette's last layer, which answered ``500`` in plain
text: nothing an EPJ generated from NHN's contract can read, and no word on whether to retry.
This ASGI middleware sits outside every other layer of ours (:class:`CredentialsFirst` looks
keys up in the store before any route runs) and answers instead:

- the database failed for a while (:func:`meldingstjener.store.database.transient`, as
  ``POST /ebms`` tells it): it cannot be reached (as ``/health`` says 503 meanwhile), is busy
  (a lock, a deadlock) or cannot store (its disk full): ``503 unavailable`` with
  ``Retry-After``. Nothing was done; the EPJ repeats the call later.
- anything else, a database error of ours too (a missing table): ``500 internal-error``, a
  problem body with EDI 2.0's ``ErrorMessage`` fields, whose ``requestId`` is in the server's
  log line too, so a help desk finds the one from the other.

The log names the error's class and the lines it passed through, never its text: an exception's
text may quote what it was given (a value of a business document, a database's DETAIL line).
``/ebms`` and ``/health`` answer their own errors and never reach this.
"""

from __future__ import annotations

import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meldingstjener.api.problems import problem_response
from meldingstjener.model.privacy import passed_through
from meldingstjener.store.database import BUSY, RESOURCES, UNREACHABLE, trouble

log = logging.getLogger(__name__)

# How long an EPJ is asked to wait before it repeats a call the database was away for: about
# what a PostgreSQL restart or fail-over takes.
RETRY_AFTER_SECONDS = 10

# what a 503 and its log line say, by the database's trouble
_TOLD = {
    UNREACHABLE: "the database cannot be reached",
    BUSY: "the database is busy",
    RESOURCES: "the database cannot store",
}


class ServerFaults:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        where = f"{scope.get('method', '?')} {scope.get('path', '?')}"
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            kind = trouble(exc)
            if kind is None:
                await self._failed(exc, where, started, scope, receive, send)
                return
            # a state, not a fault of ours: one line (an outage would otherwise flood the log
            # with tracebacks); a database error's text shows no statement values. A full disk
            # is no passing state, though: an error, for someone to make room.
            first_line = str(exc).strip().split("\n", 1)[0]
            log.log(
                logging.ERROR if kind == RESOURCES else logging.WARNING,
                "%s: %s: answered 503 (%s: %s)",
                where,
                _TOLD[kind],
                type(exc).__name__,
                first_line,
            )
            if started:
                return  # the answer is under way: the connection is cut short
            answer = problem_response(
                503,
                "unavailable",
                # a commit cut off may have stored what was sent all the same: a repeat with
                # the same Idempotency-Key finds it, one without makes a second message
                f"{_TOLD[kind]} just now, and the call may not have been "
                f"completed: repeat it in {RETRY_AFTER_SECONDS} seconds (a message submitted "
                "again with the same Idempotency-Key is not made twice)",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await answer(scope, receive, send)

    async def _failed(
        self,
        exc: Exception,
        where: str,
        started: bool,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        request_id = str(uuid.uuid4())
        log.error(
            "%s failed with an unexpected %s: answered 500 (request %s)\n%s",
            where,
            type(exc).__name__,
            request_id,
            passed_through(exc),
        )
        if started:
            return
        answer = problem_response(
            500,
            "internal-error",
            "the server failed with an unexpected error; the server log has the details "
            f"under request {request_id}",
            request_id=request_id,
        )
        await answer(scope, receive, send)
