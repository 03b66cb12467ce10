"""Faults of the server answered in the API's own shape, not as Starlette's ``500 text/plain``.

An error that no route answers reached Starlette's last layer, which answered ``500`` in plain
text: nothing an EPJ generated from NHN's contract can read, and no word on whether to retry.
This ASGI middleware sits outside every other layer of ours (:class:`CredentialsFirst` looks
keys up in the store before any route runs) and answers instead:

- the database failed for a while (:func:`meldingstjener.store.database.transient`, as
  ``POST /ebms`` tells it): it cannot be reached (as ``/health`` says 503 meanwhile), is busy
  (a lock, a deadlock) or cannot store (its disk full): ``503 unavailable`` with
  ``Retry-After``. Nothing was done; the EPJ repeats the call later.
- the disk full (the database's, or the payload directory's: ENOSPC, EDQUOT, EROFS), or the
  payload directory not the store's any more (its marker gone with a share:
  ``PayloadDirectoryLost``): ``503`` with ``Retry-After`` as well, counted into this process's
  ``store-failing`` (:class:`~meldingstjener.engine.ebms_alerts.StoreFailing`: one log line
  when it starts, and ``/health`` says so) rather than a line per call.
- anything else, a database error of ours too (a missing table): ``500 internal-error``, a
  problem body with EDI 2.0's ``ErrorMessage`` fields, whose ``requestId`` is in the server's
  log line too, so a help desk finds the one from the other.

The log names the error's class and the lines it passed through, never its text: an exception's
text may quote what it was given (a value of a business document, a database's DETAIL line).
``/ebms`` and ``/health`` answer their own errors and never reach this.

Before any layer runs it refuses, and closes the connection after, a request head over
``MAX_HEAD_BYTES`` (431: h11 bounds only a head that arrives in pieces) and a body framed both by
Content-Length and by Transfer-Encoding (400: a proxy framing it by its length would pass on as
part of this request what h11 serves as the next one), on ``POST /ebms`` in its own plain-text
form (``head-too-large: ...``, ``ambiguous-length: ...``), elsewhere as a problem. Only the
client sees that answer (the server keeps no access log): a warning names the peer, once per
``REFUSAL_LOG_SECONDS`` at most with how many more since, and a refused ``POST /ebms`` counts
into the peer's ``ebms-refused`` alert (a partner's MSH or proxy that sends both headers can
never deliver).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

import anyio
import anyio.to_thread
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meldingstjener.api.problems import problem_response
from meldingstjener.engine.ebms_alerts import StoreFailing, store_refused
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
    RESOURCES: "the store cannot be written (a disk full, or the payload directory away)",
}
# the methods whose calls may write to the store
_WRITING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The most a request's head may hold (its request line is not counted): h11 refuses more only
# while a head arrives in pieces, and takes one of any size that comes in one read.
MAX_HEAD_BYTES = 16 * 1024
# the codes a refused head is counted under in the ebms-refused alert
HEAD_TOO_LARGE = "head-too-large"
AMBIGUOUS_LENGTH = "ambiguous-length"
# A peer's refused heads are logged once per this many seconds at most (with how many more
# since): a partner whose every request is refused would otherwise write a line per request.
REFUSAL_LOG_SECONDS = 600.0
# the peers whose last such line is remembered (the oldest forgotten first)
_PEERS_REMEMBERED = 1024

# what counts a refused POST /ebms: (peer's address, code, HTTP status)
Refused = Callable[[str, str, int], None]


def _framing_refused(headers: list[tuple[bytes, bytes]]) -> tuple[int, str, str] | None:
    """Why a request's head is refused before anything reads it, as (status, code, text), or
    None: a head over ``MAX_HEAD_BYTES`` (431), or a body framed both by Content-Length and by
    Transfer-Encoding (400, RFC 9112 6.1: a proxy in front may frame it by the length, and
    take what h11 reads as a second request for part of this one's body). The connection is
    closed after either: what follows on it cannot be trusted to start a request."""
    size = sum(len(name) + len(value) + 4 for name, value in headers)  # ": " and CRLF
    if size > MAX_HEAD_BYTES:
        told = f"the request's headers hold {size} bytes, more than the {MAX_HEAD_BYTES} taken"
        return 431, HEAD_TOO_LARGE, told
    names = {name.lower() for name, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        told = (
            "the request has both Content-Length and Transfer-Encoding: its body's length is "
            "ambiguous (RFC 9112 6.1)"
        )
        return 400, AMBIGUOUS_LENGTH, told
    return None


class _RefusalLog:
    """One warning per peer and refusal per ``REFUSAL_LOG_SECONDS`` at most, saying how many
    of its requests were refused so since the last (on the event loop: no lock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # when, how many since

    def refused(self, peer: str, code: str, where: str, status: int, told: str) -> None:
        now = self._clock()
        key = f"{peer} {code}"
        last = self._last.get(key)
        if last is not None and now - last[0] < REFUSAL_LOG_SECONDS:
            self._last[key] = (last[0], last[1] + 1)
            return
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > _PEERS_REMEMBERED:
            self._last.popitem(last=False)
        more = f"; {last[1]} more of its requests refused so since the last line" if last else ""
        log.warning("%s from %s answered %d: %s%s", where, peer, status, told, more)


class ServerFaults:
    def __init__(
        self,
        app: ASGIApp,
        store_failing: StoreFailing | None = None,
        ebms_refused: Refused | None = None,
    ) -> None:
        self.app = app
        self.store_failing = store_failing
        self.ebms_refused = ebms_refused  # counts a refused POST /ebms (a database write)
        self.refusals = _RefusalLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _framing_refused(scope["headers"])
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send)
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
            kind = trouble(exc) or (RESOURCES if store_refused(exc) else None)
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

    async def _refuse(
        self, refusal: tuple[int, str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        status, code, told = refusal
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        path = scope.get("path", "?")
        self.refusals.refused(peer, code, f"{scope.get('method', '?')} {path}", status, told)
        close = {"Connection": "close"}
        if path == "/ebms":
            if self.ebms_refused is not None:
                await anyio.to_thread.run_sync(self.ebms_refused, peer, code, status)
            # an MSH reads /ebms's own refusals (the code, then why), not the EPJ API's problem
            answer: ASGIApp = PlainTextResponse(f"{code}: {told}\n", status, headers=close)
        else:
            answer = problem_response(status, "invalid-input", told, headers=close)
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
