"""The FastAPI application served by ``meldingstjener serve``.

``POST /ebms`` takes ebXML over HTTP (ebMS 2.0 HTTP binding): the whole MIME multipart/related
message as the body, its Content-Type as the header. The answer is 200 once the message is
durably stored (empty body, or the signal in the body when the sender asked for SyncReply),
400 with an explanation when the input is too broken to be answered in ebXML, 413 when it is too
large, 415 when it is sent with a Content-Encoding (gzip, say: the MIME message goes as it is),
and 503 when the server cannot store right now (the sender then retries): the database is
away, or the payload store or the database's disk cannot be written (``store-failing``: see
:class:`~meldingstjener.engine.ebms_alerts.StoreFailing`, which ``/health`` reports too). An
unexpected error is answered 500 with an ``ebms-failing`` alert. A body that stops coming
(slower than the :class:`BodyPace` allows) is answered 408. A peer refused three times in a row
(400, 408, 413 or 415, or a head :class:`ServerFaults` refuses: 431, 400) raises an
``ebms-refused`` alert. After a 408, 413 or 415 the connection is closed (a 413 or 415 first
reads what comes within the pace's grace, so that a sender still writing sees it): kept, it was
held for whatever the client trickled after.

A stop (SIGTERM) gives the requests under way uvicorn's graceful period; then it cancels them.
A body still coming is answered 503 with the connection closed, and so is a receive still
waiting for a thread. A receive under way is waited for ``RECEIVE_AFTER_STOP_SECONDS`` more and
answered as it ended (cancelled, its sender was answered 500 while the message was stored and
acknowledged); past that it is answered 503, and rolled back when it comes to its commit (a
database lock held for long, say): the sender resends, and the stop stays within a service
manager's grace period.

A call of the authenticated API (the EPJ API, ``/api``, ``/metrics``) cut short by the same
cancel is answered ``503 unavailable`` in the API's problem shape, with ``Retry-After``, by
:class:`CallsAtStop` (uvicorn's own answer was a plain 500): a body still coming, a call waiting
for a thread or for the database alike. It is given up as a receive is (:class:`_Awaited`):
none of its transactions begins or commits after that, so what it had under way is rolled back,
and a transaction whose commit was under way ends committed (the EPJ's repeat with the same
Idempotency-Key then finds its message). A call whose answer had begun is cut short.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meldingstjener import __version__
from meldingstjener.api import validation_audit
from meldingstjener.api.auth import Authenticator
from meldingstjener.api.credentials_first import CredentialsFirst, is_authenticated_path
from meldingstjener.api.document_spool import DocumentSpool, max_messages_body_bytes
from meldingstjener.api.edi2 import Edi2, edi2_router, problem_openapi
from meldingstjener.api.faults import RETRY_AFTER_SECONDS, ServerFaults
from meldingstjener.api.limits import BodyLimit
from meldingstjener.api.media_types import UNSUPPORTED_MEDIA_TYPE, JsonMediaTypes, json_routes
from meldingstjener.api.metrics import metrics_router
from meldingstjener.api.ops import ops_router
from meldingstjener.api.problems import install_handlers, problem_response
from meldingstjener.config import ApiSettings, WebhookSettings
from meldingstjener.engine import ebms_alerts, inbound, recovery
from meldingstjener.engine.context import EngineContext
from meldingstjener.store.database import RESOURCES, Database, trouble
from meldingstjener.store.opening import StoreUnavailable
from meldingstjener.store.payloads import PayloadNotFound, PayloadStore, Spool

log = logging.getLogger(__name__)

# A received body larger than this is written to a file as it arrives instead of being held.
SPOOL_ABOVE = 1024 * 1024
# How long a receive under way when a stop's graceful period ends is still waited for (most end
# within a second): past it, its sender is answered 503 and the receive is rolled back at its
# commit. The stop's budget (cli/engine_cmds.py): the graceful 3 s, this, the threads' 3 s.
RECEIVE_AFTER_STOP_SECONDS = 1.0


@dataclass(frozen=True)
class BodyPace:
    """How long a received ebXML body may take to arrive: ``grace_seconds``, plus a second for
    every ``min_bytes_per_second`` received. A sender trickling a byte a second would otherwise
    hold a connection, and up to a megabyte of memory or a spool on disk, for ever."""

    grace_seconds: float = 30.0
    min_bytes_per_second: int = 1024

    def deadline(self, started: float, received: int) -> float:
        return started + self.grace_seconds + received / self.min_bytes_per_second


def create_app(
    ctx: EngineContext,
    *,
    max_request_bytes: int = 52_000_000,
    api_settings: ApiSettings | None = None,
    body_pace: BodyPace | None = None,
    webhook_settings: WebhookSettings | None = None,
) -> FastAPI:
    """The whole HTTP surface: ``/ebms`` and ``/health`` (unauthenticated), the EPJ API
    (``/Messages``, EDI 2.0 shape), the operator API (``/api/...``) and the figures for
    monitoring (``/metrics``), all three authenticated.
    """
    api = api_settings or ApiSettings()
    pace = body_pace or BodyPace()
    # this process's writes of its store failing (a full disk): /ebms, the EPJ API, /health;
    # the heartbeat's too (engine/instances), so it is the context's
    store_failing = ctx.store_failing
    app = FastAPI(
        title="meldingstjener",
        version=__version__,
        description="Message server (MSH) for electronic messaging in Norwegian health care. "
        "The /Messages operations have the shape of NHN's EDI 2.0 message API (msh-api-v2); "
        "see docs/API.md for where this server differs.",
    )
    install_handlers(
        app, on_invalid=functools.partial(validation_audit.record_invalid_request, ctx.store)
    )
    auth = Authenticator(ctx.store, api, clock=ctx.clock)
    routers = (
        edi2_router(Edi2(ctx, auth, api.max_payload_bytes)),
        ops_router(ctx, auth, webhook_settings),
        metrics_router(ctx, auth),
    )
    # Inside the body limit: a large business document is decoded into a file as it arrives.
    app.add_middleware(
        DocumentSpool, payloads=ctx.store.payloads, max_payload_bytes=api.max_payload_bytes
    )
    app.add_middleware(
        BodyLimit,
        limit=max_messages_body_bytes(api.max_payload_bytes),
        large=("/Messages",),
        exempt=("/ebms",),
    )
    # Every layer inside sees the type FastAPI reads, and a body of a type not JSON is refused
    # (415) before it is read or spooled; inside the credentials' check: 401 comes first.
    app.add_middleware(
        JsonMediaTypes,
        json_routes=json_routes(routers),
        on_refused=functools.partial(
            validation_audit.record_refused_request,
            ctx.store,
            detail=f"the body is not sent as JSON ({UNSUPPORTED_MEDIA_TYPE})",
        ),
    )
    # Outside every layer that reads a body: nobody unauthenticated has one read, parsed or
    # spooled to a file (the answer is 401, whatever the body).
    app.add_middleware(CredentialsFirst, authenticate=auth.principal)
    # Outside every layer that waits (for the body, a thread, the database): a call cut short
    # by a stop is answered 503 here, and its transactions refused from then on.
    watch_calls(ctx.store.database)
    app.add_middleware(CallsAtStop)
    # outermost: an error any layer lets through is answered as a problem (503 while the
    # database is away), not in Starlette's plain text
    app.add_middleware(
        ServerFaults,
        store_failing=store_failing,
        # a head refused before any route (431, or Content-Length with Transfer-Encoding)
        ebms_refused=lambda address, code, status: ebms_alerts.refused(
            ctx, address, None, code, status
        ),
    )
    for router in routers:
        app.include_router(router)
    made_openapi = app.openapi

    @functools.cache
    def openapi() -> dict[str, Any]:
        # FastAPI's document (which it caches), made true of the answers (problem+json, no 422)
        # and saying how a client proves itself
        return with_credentials(problem_openapi(made_openapi()))

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(
        "/health",
        summary="Liveness, database reachability, and whether the store can be written",
        responses={
            503: {
                "description": "The database cannot be reached (database-unreachable), or the "
                "last write of the payload store or database failed (store-failing): nothing "
                "can be stored"
            }
        },
    )
    def health() -> Response:
        try:
            with ctx.store.database.reading() as connection:  # not behind a unit of work
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            # A state to report, not a fault of the server: a load balancer or service manager
            # reads 503 as "not able to serve now". The body says why, without the error's
            # text (it names hosts and users) to a caller nobody authenticated.
            log.warning("health: the database cannot be reached: %s", type(exc).__name__)
            return JSONResponse(
                {"status": "database-unreachable", "version": __version__}, status_code=503
            )
        # A full disk: SELECT 1 reads, and works. While the last write failed, a write is
        # tried here (a server a load balancer took out would otherwise never be written to
        # again, and never be put back); the payload share's marker is looked at every few
        # seconds (a share that dropped, seen before the heartbeat's minute).
        if not store_failing.writable():
            return JSONResponse(
                {"status": "store-failing", "version": __version__}, status_code=503
            )
        return JSONResponse(
            {"status": "ok", "version": __version__, "her_ids": sorted(ctx.own_her_ids)}
        )

    def received(
        address: str, content_type: str, body: bytes | Spool, awaited: _Awaited
    ) -> Response:
        """Receive a message read whole, and its answer (in a receiving thread)."""
        try:
            reply = inbound.receive(ctx, content_type, body, before_commit=awaited.commit)
        except _GivenUp:
            # answered 503 already (a stop): nothing stored, the sender resends
            log.info("a receive given up at a stop was rolled back (the sender resends)")
            return _stopping()
        except inbound.InboundRefused as refused:
            ebms_alerts.refused(ctx, address, refused.sender, refused.code, 400)
            return Response(f"{refused.code}: {refused.detail}\n", 400, media_type="text/plain")
        except inbound.InboundDeferred as deferred:  # our revocation check, away for a while
            return Response(f"{deferred.detail}\n", 503, media_type="text/plain")
        except PayloadNotFound as exc:
            # A stored file is missing (our signal, to be repeated to a resend): no resend
            # mends that, and the store is not failing. A fault in the server's data.
            ebms_alerts.failed(ctx, exc)
            return Response("internal error\n", 500)
        except (OSError, StoreUnavailable) as exc:
            # The payload store could not be written (or its directory, checked at the first
            # file a process touches, cannot be used): nothing was acknowledged, and the sender
            # is told to resend later, when the store may be mended. Counted per its sender,
            # so that the operator can tell which partners were turned away.
            sender = ebms_alerts.claimed_sender(
                content_type, body, max_xml_bytes=ctx.policy.max_xml_bytes
            )
            store_failing.failed(exc, "POST /ebms", sender)
            return _unavailable()
        except Exception as exc:
            kind = trouble(exc)
            if kind is None:
                # a fault of ours, a database error too (a missing table): 500 and an alert
                ebms_alerts.failed(ctx, exc)
                return Response("internal error\n", 500)
            if kind == RESOURCES:  # the database's disk is full: the store fails as a whole
                sender = ebms_alerts.claimed_sender(
                    content_type, body, max_xml_bytes=ctx.policy.max_xml_bytes
                )
                store_failing.failed(exc, "POST /ebms", sender)
                return _unavailable()
            # The database is away or busy: not a fault of the server, and no alert: it could
            # not be written either (a try would wait for the pool once more). The heartbeat
            # tells a long outage. (with its traceback: a deadlock or lock timeout is worth
            # seeing; statement values are hidden from database errors)
            log.warning("the database could not store a received message: %s", exc, exc_info=True)
            return _unavailable()
        finally:
            if isinstance(body, Spool):
                body.discard()  # kept as the wire form by then, unless it was refused
        store_failing.wrote()  # a period of the store failing ends (nothing to do otherwise)
        # Refusals of this peer in a row end here: in memory, unless an alert may be open.
        if not ctx.recovery.went_through_quietly((recovery.peer(address),), at=ctx.clock()):
            ebms_alerts.accepted(ctx, address)
        if reply.body is not None:
            return Response(
                reply.body,
                200,
                headers={"SOAPAction": '"ebXML"'},
                media_type=reply.content_type,
            )
        return Response(status_code=200)

    def spool_refused(content_type: str, refused: _SpoolRefused) -> None:
        """Count a large body whose spool the store refused, per the sender its first bytes
        name (read no further: the rest may still be on its way)."""
        sender = ebms_alerts.claimed_sender_of_head(
            content_type, refused.head, max_xml_bytes=ctx.policy.max_xml_bytes
        )
        store_failing.failed(refused.cause, "POST /ebms", sender)

    @app.post(
        "/ebms",
        summary="Receive an ebXML message (HIS 1037 over HTTP)",
        response_class=Response,
        responses={
            200: {"description": "Stored; the body is a signal when SyncReply was asked for"},
            400: {"description": "Unreadable ebXML: no MessageHeader to answer"},
            413: {"description": "Larger than the configured limit"},
            415: {"description": "Sent with a Content-Encoding other than identity"},
            503: {"description": "Cannot store now, or the server is stopping; resend later"},
        },
    )
    async def ebms(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        address = request.client.host if request.client is not None else "unknown"
        declared = request.headers.get("content-length")
        started = anyio.current_time()
        by_length = (
            declared is not None and declared.isdigit() and int(declared) > max_request_bytes
        )
        encoding = _content_encoding(request.headers.getlist("content-encoding"))
        if encoding is not None:
            # A gzipped body was read as MIME ("the closing MIME boundary is missing"): the
            # ebMS HTTP binding sends the MIME message as it is. Refused before it is read
            # (drained as a 413's, so that a sender still writing sees the answer).
            await run_in_threadpool(
                ebms_alerts.refused, ctx, address, None, CONTENT_ENCODING_REFUSED, 415
            )
            if request.headers.get("expect", "").lower() != "100-continue":
                await _drain(request, started + pace.grace_seconds)
            return Response(
                f"{CONTENT_ENCODING_REFUSED}: the body is sent with Content-Encoding "
                f"{encoding}, which this server does not take: send the MIME message as it is "
                "(identity)\n",
                415,
                headers=_CLOSE,
            )
        try:
            if by_length:
                raise _TooLarge
            body = await _read_body(request, max_request_bytes, ctx.store.payloads, pace)
        except _TooLarge:
            await run_in_threadpool(ebms_alerts.refused, ctx, address, None, "too-large", 413)
            # The sender may still be sending (and reads no answer before it is done): what
            # comes within the pace's grace is read and dropped, so that it sees the 413, then
            # the connection is closed, not kept for whatever else it sends. Not when it waits
            # for 100 Continue before a body refused by its length alone, nothing read yet: a
            # read would invite it (uvicorn sends 100 Continue at the first read). A chunked
            # body refused on the way was invited already, and is drained as any other.
            waits = request.headers.get("expect", "").lower() == "100-continue"
            if not (waits and by_length):
                await _drain(request, started + pace.grace_seconds)
            return Response(f"message larger than {max_request_bytes} bytes\n", 413, headers=_CLOSE)
        except _TooSlow:
            await run_in_threadpool(ebms_alerts.refused, ctx, address, None, "too-slow", 408)
            # closed: the rest of the body, which may still trickle in, is never read
            return Response("the message did not arrive in time\n", 408, headers=_CLOSE)
        except ClientDisconnect:
            # the peer went away mid-body (a dropped link, a sender's own timeout): it resends,
            # and a traceback per such request would flood the log
            log.info("a peer at %s went away before its request was read", address)
            return Response(status_code=400, headers=_CLOSE)
        except _SpoolRefused as refused:  # the spool of a large body: a full disk
            await run_in_threadpool(spool_refused, content_type, refused)
            return _unavailable(headers=_CLOSE)
        except asyncio.CancelledError:
            # The server stops, and its graceful period ended while the body was still coming:
            # nothing was taken. The sender is told to resend (to this server when it is back,
            # or another), not answered uvicorn's 500 with a traceback in our log.
            _keep_going()
            return _stopping()
        # A receive that has begun is waited for past a cancel (the server's graceful period
        # ending), up to RECEIVE_AFTER_STOP_SECONDS, and answered as it ended: cancelled with
        # the request, its sender was answered 500 while its thread stored the message all the
        # same, and acknowledged it.
        awaited = _Awaited()
        spooled = body if isinstance(body, Spool) else None
        receive = functools.partial(received, address, content_type, body, awaited)
        del body  # held by the call alone: freed as it ends
        answer = await _to_the_end(receive, awaited)
        if answer is None:  # still waiting for a thread at the stop: never begun
            if spooled is not None:
                spooled.discard()
            return _stopping()
        return answer

    return app


# How a client proves itself on the authenticated paths (api/auth.py reads both headers; the
# bearer is an API key or a JWT): declared in the document, not by dependencies of the routes,
# so that generated clients and /docs send a credential while authentication stays as it is.
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key or JWT>",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "An API key (`meldingstjener clients add`)",
    },
}


def with_credentials(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the security schemes, each operation of an authenticated path needing
    one of them (``/ebms``, ``/health`` and the document itself need none)."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    either: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
    for path, operations in schema.get("paths", {}).items():
        if is_authenticated_path(path):
            for operation in operations.values():
                operation["security"] = either
    return schema


# An answer after which the connection is closed: what else the peer sends on it (the rest of a
# body too slow or too large) is not read, and the connection is not held for it.
_CLOSE = {"Connection": "close"}


def _unavailable(headers: dict[str, str] | None = None) -> Response:
    return Response("temporarily unable to store; resend later\n", 503, headers=headers)


def _stopping() -> Response:
    return Response("the server is stopping; resend later\n", 503, headers=_CLOSE)


def _keep_going() -> None:
    """Take back the cancellation of the running task (the server's graceful period ended), so
    that it can still answer; asyncio's, which neither anyio's shield nor Starlette stops."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class _GivenUp(Exception):
    """Raised in a receive's thread at its commit: its request was answered 503 meanwhile."""


# What a call was doing when its request was answered (see _Awaited.give_up)
WORKING = "working"
COMMITTING = "committing"
COMMITTED = "committed"


class _Awaited:
    """Whether a receive's answer is still awaited: its request gives up on it (at a stop), or
    its thread comes to its commit, whichever comes first. Given up first, the commit is not
    made (the events would say that the Acknowledgment was offered in the response, and the
    response was a 503); the commit first, it is waited for (by then the transaction holds
    what it writes: it waits for no lock of another's).

    A call of the API may run several transactions: each that begins may be given up again
    (it may wait for another's lock), and once its request was answered none begins. A commit
    under way when it is answered completes: the call's repeat finds what it stored (a message
    by its Idempotency-Key). What the call was doing then (:meth:`give_up` tells it) is known
    from its transactions: a call's are watched (:class:`_CallWatch`), a receive's commit is
    told by the receive (its work after it is its answer, waited for)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given_up = False
        self._answered = False
        self._doing = WORKING

    def begin(self) -> None:
        """In a call's thread, as a transaction of it begins: raises :class:`_GivenUp` if the
        request was answered (given up, or while a commit of it was under way)."""
        with self._lock:
            if self._answered:
                raise _GivenUp
            self._doing = WORKING

    def commit(self) -> None:
        """In the call's thread, just before its commit: raises :class:`_GivenUp` if the
        request gave up."""
        with self._lock:
            if self._given_up:
                raise _GivenUp
            self._doing = COMMITTING

    def committed(self) -> None:
        """In the call's thread, once its commit completed."""
        with self._lock:
            self._doing = COMMITTED

    def rolled_back(self) -> None:
        """In the call's thread, as a transaction of it is rolled back: nothing under way."""
        with self._lock:
            self._doing = WORKING

    def give_up(self) -> str:
        """Answer the request: what the call was doing then. ``WORKING``: it is given up, and
        what it had not committed is rolled back; ``COMMITTING``: that commit goes on (and may
        still fail); ``COMMITTED``: its last transaction committed, and the call was past it.
        In every case no transaction of it begins after this."""
        with self._lock:
            self._answered = True
            if self._doing == WORKING:
                self._given_up = True
            return self._doing


# The call of the authenticated API this context serves (None elsewhere): its threads see it, as
# anyio runs a thread's work in a copy of the request's context.
_CALL: contextvars.ContextVar[_Awaited | None] = contextvars.ContextVar(
    "meldingstjener_api_call", default=None
)


class _CallWatch:
    """The transactions of the API's calls, told to their calls (a :class:`TransactionWatch`
    of the database): a call given up has its transactions refused before they wait for a
    lock and before their commits (a refused commit is rolled back)."""

    def begins(self) -> None:
        call = _CALL.get()
        if call is not None:
            call.begin()

    def commits(self) -> None:
        call = _CALL.get()
        if call is not None:
            call.commit()

    def committed(self) -> None:
        call = _CALL.get()
        if call is not None:
            call.committed()

    def rolled_back(self) -> None:
        call = _CALL.get()
        if call is not None:
            call.rolled_back()


_CALL_WATCH = _CallWatch()


def watch_calls(database: Database) -> None:
    """Have every transaction on ``database`` of a call of the API ask it, as it begins (before
    it waits for a lock) and just before its commit (before anything of it is seen as
    committed), whether its request gave up (a stop)."""
    database.watch(_CALL_WATCH)


class CallsAtStop:
    """ASGI middleware answering a call of the authenticated API that a stop's cancel cuts
    short (uvicorn's graceful period ended) ``503 unavailable``, with ``Retry-After`` and the
    connection closed, instead of uvicorn's plain 500 (a call whose answer had begun is cut
    short). The call is given up (see :class:`_Awaited`): none of its transactions begins
    after that, one not at its commit is rolled back, and a commit already under way
    completes (its repeat with the same Idempotency-Key finds it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_authenticated_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        call = _Awaited()
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        token = _CALL.set(call)
        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            _keep_going()
            await _answer_cut_short(call, started, scope, receive, send)
        finally:
            _CALL.reset(token)


# What the log says of a call answered 503 at a stop, by what it was doing then
_CUT_SHORT = {
    WORKING: "was answered 503; what it had not committed is rolled back, and the client "
    "repeats it",
    COMMITTING: "was answered 503 as it committed: if that commit holds, the client's repeat "
    "(with its Idempotency-Key) finds it",
    COMMITTED: "was answered 503 after its last commit, which stays: the client's repeat finds it",
}


async def _answer_cut_short(
    call: _Awaited, started: bool, scope: Scope, receive: Receive, send: Send
) -> None:
    where = f"{scope.get('method', '?')} {scope.get('path', '?')}"
    doing = call.give_up()
    if started:  # its answer is under way: the connection is cut short, nothing more is sent
        log.warning("%s under way at the stop was cut short after its answer began", where)
        return
    log.warning("%s under way at the stop %s", where, _CUT_SHORT[doing])
    answer = problem_response(
        503,
        "unavailable",
        "the server is stopping, and the call was not completed: repeat it in "
        f"{RETRY_AFTER_SECONDS} seconds (a message submitted again with the same "
        "Idempotency-Key is not made twice)",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), **_CLOSE},
    )
    await answer(scope, receive, send)


_T = TypeVar("_T")


class _DaemonThreads:
    """Up to ``workers`` daemon threads, started as needed, running the calls submitted in turn.
    Not concurrent.futures' pool: the interpreter's exit joins its threads, so a receive given
    up at a stop (waiting for a database lock) would hold the end of the process as long as it
    waits. A daemon thread's transaction not committed when the process ends is the database's
    to roll back, its files the orphan sweep's, as after a crash."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._calls: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._calls = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = threading.Semaphore(0)

    def submit(self, call: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._calls.put((future, call))
        with self._lock:
            if not self._idle.acquire(blocking=False) and self._started < self._workers:
                self._started += 1
                name = f"{self._name}_{self._started}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            future, call = self._calls.get()
            if future.set_running_or_notify_cancel():  # else cancelled while it waited
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)
            del future, call  # a received body is freed as its call ends
            self._idle.release()


# The threads that receive messages (as Starlette's own pool, which is bounded alike, cannot
# run a call past a cancellation). A process's receives wait on its database's connections.
_RECEIVING = _DaemonThreads(40, "ebms")


async def _to_the_end(
    call: Callable[[], Response], awaited: _Awaited, threads: _DaemonThreads = _RECEIVING
) -> Response | None:
    """``call()`` in a receiving thread, awaited to its end and answered, whatever cancels the
    request meanwhile (uvicorn cancels the requests still running when its graceful period
    ends, and asyncio every task left when its loop ends) for ``RECEIVE_AFTER_STOP_SECONDS``
    after the first cancel. None when it was still waiting for a thread then (it never runs),
    a 503 when it was given up (see :class:`_Awaited`). The thread is not in a task (those are
    cancelled too): a future of the receiving threads'."""
    loop = asyncio.get_running_loop()
    running = threads.submit(functools.partial(contextvars.copy_context().run, call))
    future = asyncio.wrap_future(running)
    deadline: float | None = None
    while True:
        try:
            if deadline is None:
                return await asyncio.shield(future)
            return await asyncio.wait_for(
                asyncio.shield(future), timeout=max(0.0, deadline - loop.time())
            )
        except asyncio.CancelledError:
            _keep_going()
            if running.cancel():  # not begun: no thread is taken from the stop
                return None
            if deadline is None:  # the first cancel: the stop's wait begins
                deadline = loop.time() + RECEIVE_AFTER_STOP_SECONDS
        except TimeoutError:
            if awaited.give_up() == WORKING:
                log.warning(
                    "a receive still under way %.0f s into the stop was answered 503; it is "
                    "rolled back at its commit, and its sender resends",
                    RECEIVE_AFTER_STOP_SECONDS,
                )
                return _stopping()
            deadline = None  # its commit is under way: its answer follows


# the code of a POST /ebms refused for its body's Content-Encoding (415)
CONTENT_ENCODING_REFUSED = "content-encoding"


def _content_encoding(values: list[str]) -> str | None:
    """The Content-Encoding of a received body, shown as the sender wrote it (cut to 40
    characters of printable ASCII), when it is another than identity; None when the body is
    not encoded."""
    codings = [c.strip() for value in values for c in value.split(",") if c.strip()]
    if all(coding.lower() == "identity" for coding in codings):
        return None
    shown = ", ".join(codings)
    shown = "".join(c if " " <= c <= "~" else "?" for c in shown)
    return repr(shown if len(shown) <= 40 else shown[:37] + "...")


async def _drain(request: Request, until: float) -> None:
    """Read and drop what is left of ``request``'s body until it ends or ``until`` (anyio's
    clock), whichever comes first; a peer that went away ends it too."""
    with anyio.move_on_after(max(0.0, until - anyio.current_time())):
        try:
            async for _ in request.stream():
                pass
        except ClientDisconnect:
            pass


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


# How many of a spooled body's first bytes are kept while the rest is read: when its spool
# cannot be written (the store refusing), the sender is read from them. An envelope is a few
# kilobytes; its manifest of many parts fits too.
HEAD_KEPT = 64 * 1024


class _SpoolRefused(Exception):
    """The spool of a large body could not be written (``cause``: the store refusing), with the
    body's first bytes read (``head``, up to :data:`HEAD_KEPT`) to name its sender by."""

    def __init__(self, cause: OSError | StoreUnavailable, head: bytes) -> None:
        super().__init__(cause)
        self.cause = cause
        self.head = head


async def _read_body(
    request: Request, limit: int, payloads: PayloadStore, pace: BodyPace
) -> bytes | Spool:
    """The request body: in memory up to ``SPOOL_ABOVE`` bytes, else in a spool of the payload
    store (written as it arrives, in ~1 MiB writes off the event loop), which becomes the
    stored wire form by a rename. Raises :class:`_TooLarge` past ``limit``, :class:`_TooSlow`
    when it arrives slower than ``pace``, :class:`_SpoolRefused` when the spool cannot be made
    or written."""
    chunks: list[bytes] = []
    held = size = 0
    spool: Spool | None = None
    head = b""  # the first bytes spooled, kept to name the sender if a write is refused
    started = anyio.current_time()
    pieces = request.stream().__aiter__()
    try:
        while True:
            left = pace.deadline(started, size) - anyio.current_time()
            with anyio.move_on_after(left) as waited:
                try:
                    chunk = await pieces.__anext__()
                except StopAsyncIteration:
                    break
            if waited.cancelled_caught:
                raise _TooSlow
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
            held += len(chunk)
            if held >= SPOOL_ABOVE:
                written = b"".join(chunks)
                chunks, held = [], 0
                head = head or written[:HEAD_KEPT]
                if spool is None:
                    spool = await run_in_threadpool(payloads.spool)
                await run_in_threadpool(spool.write, written)
                del written  # not held while the next MiB is read
        if spool is None:
            return b"".join(chunks)
        if chunks:
            await run_in_threadpool(spool.write, b"".join(chunks))
        return spool
    except (OSError, StoreUnavailable) as exc:  # of the spool alone: the store refusing
        if spool is not None:
            spool.discard()
        raise _SpoolRefused(exc, head) from exc
    except BaseException:
        if spool is not None:
            spool.discard()
        raise
