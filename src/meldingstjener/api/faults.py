"""Faults of the server answered in the API's own shape, not as Starlette's ``500 text/plain``.

An error that no route answers reached Starlette's last layer, which answered ``500`` in plain
text: nothing an EPJ generated from NHN's contract can read, and no word on whether to retry.
This ASGI middleware sits outside every other layer of ours (:class:`CredentialsFirst` looks
keys up in the store before any route runs) and answers instead:

- the database failed for a while (:func:`meldingstjener.store.database.transient`, as
  ``POST /ebms`` tells it): it cannot be reached (as ``/health`` says 503 meanwhile), is busy
  (a lock, a deadlock) or cannot store (its disk full): ``503 unavailable`` with
  ``Retry-After``. Nothing was done; the EPJ repeats the call later.
- the disk full (the database's, or the payload directory's: ENOSPC, EDQUOT, EROFS): ``503``
  with ``Retry-After`` as well, counted into this process's ``store-failing``
  (:class:`~meldingstjener.engine.ebms_alerts.StoreFailing`: one log line when it starts, and
  ``/health`` says so) rather than a line per call.
- anything else, a database error of ours too (a missing table): ``500 internal-error``, a
  problem body with EDI 2.0's ``ErrorMessage`` fields, whose ``requestId`` is in the server's
  log line too, so a help desk finds the one from the other.

The log names the error's class and the lines it passed through, never its text: an exception's
text may quote what it was given (a value of a business document, a database's DETAIL line).
``/ebms`` and ``/health`` answer their own errors and never reach this.

Before any layer runs it refuses, and closes the connection after, a request head over
``MAX_HEAD_BYTES`` (431: h11 bounds only a head that arrives in pieces) and a body framed both by
Content-Length and by Transfer-Encoding (400: a proxy framing it by its length would pass on as
part of this request what h11 serves as the next one).
"""

from __future__ import annotations

import logging
import uuid

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meldingstjener.api.problems import problem_response
from meldingstjener.engine.ebms_alerts import StoreFailing, disk_full
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
    RESOURCES: "the store cannot be written (a disk full)",
}
# the methods whose calls may write to the store
_WRITING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The most a request's head may hold (its request line is not counted): h11 refuses more only
# while a head arrives in pieces, and takes one of any size that comes in one read.
MAX_HEAD_BYTES = 16 * 1024


def _framing_refused(headers: list[tuple[bytes, bytes]]) -> ASGIApp | None:
    """The answer to a request whose head is refused before anything reads it, or None: a
    head over ``MAX_HEAD_BYTES`` (431), or a body framed both by Content-Length and by
    Transfer-Encoding (400, RFC 9112 6.1: a proxy in front may frame it by the length, and
    take what h11 reads as a second request for part of this one's body). The connection is
    closed after either: what follows on it cannot be trusted to start a request."""
    size = sum(len(name) + len(value) + 4 for name, value in headers)  # ": " and CRLF
    if size > MAX_HEAD_BYTES:
        return problem_response(
            431,
            "invalid-input",
            f"the request's headers hold {size} bytes, more than the {MAX_HEAD_BYTES} taken",
            headers={"Connection": "close"},
        )
    names = {name.lower() for name, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        return problem_response(
            400,
            "invalid-input",
            "the request has both Content-Length and Transfer-Encoding: its body's length is "
            "ambiguous (RFC 9112 6.1)",
            headers={"Connection": "close"},
        )
    return None


class ServerFaults:
    def __init__(self, app: ASGIApp, store_failing: StoreFailing | None = None) -> None:
        self.app = app
        self.store_failing = store_failing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _framing_refused(scope["headers"])
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        started = False
        status = 0

        async def watched(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        method = scope.get("method", "?")
        where = f"{method} {scope.get('path', '?')}"
        failing = self.store_failing
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            kind = trouble(exc) or (RESOURCES if disk_full(exc) else None)
            if kind is None:
                await self._failed(exc, where, started, scope, receive, send)
                return
            if kind == RESOURCES and failing is not None:
                # a full disk: no passing state, and told once an outage (by its start, end and
                # the store-failing alert), not a line per call refused meanwhile
                await anyio.to_thread.run_sync(failing.failed, exc, where)
            else:
                # a state, not a fault of ours: one line (an outage would otherwise flood the
                # log with tracebacks); a database error's text shows no statement values
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
            return
        if failing is not None and failing.failing and method in _WRITING and status < 300:
            # a call that writes went through while the store was failing: whether it wrote a
            # file too is not known here, the probe tells (and ends the period if it can)
            await anyio.to_thread.run_sync(failing.probe)

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
