"""The FastAPI application served by ``meldingstjener serve``.

``POST /ebms`` takes ebXML over HTTP (ebMS 2.0 HTTP binding): the whole MIME multipart/related
message as the body, its Content-Type as the header. The answer is 200 once the message is
durably stored (empty body, or the signal in the body when the sender asked for SyncReply),
400 with an explanation when the input is too broken to be answered in ebXML, 413 when it is too
large, and 503 when the server cannot store right now (the sender then retries): the database is
away, or the payload store cannot be written (a ``store-failing`` alert). An unexpected error is
answered 500 with an ``ebms-failing`` alert. A body that stops coming (slower than the
:class:`BodyPace` allows) is answered 408. A peer refused three times in a row (400, 408 or 413)
raises an ``ebms-refused`` alert.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect

from meldingstjener import __version__
from meldingstjener.api import validation_audit
from meldingstjener.api.auth import Authenticator
from meldingstjener.api.credentials_first import CredentialsFirst
from meldingstjener.api.document_spool import DocumentSpool, max_messages_body_bytes
from meldingstjener.api.edi2 import Edi2, edi2_router, problem_openapi
from meldingstjener.api.faults import ServerFaults
from meldingstjener.api.limits import BodyLimit
from meldingstjener.api.media_types import JsonMediaTypes
from meldingstjener.api.ops import ops_router
from meldingstjener.api.problems import install_handlers
from meldingstjener.config import ApiSettings, WebhookSettings
from meldingstjener.engine import ebms_alerts, inbound, recovery
from meldingstjener.engine.context import EngineContext
from meldingstjener.store.database import transient
from meldingstjener.store.payloads import PayloadNotFound, PayloadStore, Spool

log = logging.getLogger(__name__)

# A received body larger than this is written to a file as it arrives instead of being held.
SPOOL_ABOVE = 1024 * 1024


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
    (``/Messages``, EDI 2.0 shape) and the operator API (``/api/...``), both authenticated.
    """
    api = api_settings or ApiSettings()
    pace = body_pace or BodyPace()
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
    auth = Authenticator(ctx.store, api)
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
    # Outside every layer that reads a body: nobody unauthenticated has one read, parsed or
    # spooled to a file (the answer is 401, whatever the body).
    app.add_middleware(CredentialsFirst, authenticate=auth.principal)
    app.add_middleware(JsonMediaTypes)  # every layer sees the type FastAPI reads
    # outermost: an error any layer lets through is answered as a problem (503 while the
    # database is away), not in Starlette's plain text
    app.add_middleware(ServerFaults)
    app.include_router(edi2_router(Edi2(ctx, auth, api.max_payload_bytes)))
    app.include_router(ops_router(ctx, auth, webhook_settings))
    made_openapi = app.openapi

    @functools.cache
    def openapi() -> dict[str, Any]:
        # FastAPI's document (which it caches), made true of the answers (problem+json, no 422)
        return problem_openapi(made_openapi())

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(
        "/health",
        summary="Liveness and database reachability",
        responses={503: {"description": "The database cannot be reached: nothing can be stored"}},
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
        return JSONResponse(
            {"status": "ok", "version": __version__, "her_ids": sorted(ctx.own_her_ids)}
        )

    @app.post(
        "/ebms",
        summary="Receive an ebXML message (HIS 1037 over HTTP)",
        response_class=Response,
        responses={
            200: {"description": "Stored; the body is a signal when SyncReply was asked for"},
            400: {"description": "Unreadable ebXML: no MessageHeader to answer"},
            413: {"description": "Larger than the configured limit"},
            503: {"description": "Cannot store now; resend later"},
        },
    )
    async def ebms(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        address = request.client.host if request.client is not None else "unknown"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            await run_in_threadpool(ebms_alerts.refused, ctx, address, None, "too-large", 413)
            return Response(f"message larger than {max_request_bytes} bytes\n", 413)
        try:
            body = await _read_body(request, max_request_bytes, ctx.store.payloads, pace)
        except _TooLarge:
            await run_in_threadpool(ebms_alerts.refused, ctx, address, None, "too-large", 413)
            return Response(f"message larger than {max_request_bytes} bytes\n", 413)
        except _TooSlow:
            await run_in_threadpool(ebms_alerts.refused, ctx, address, None, "too-slow", 408)
            return Response("the message did not arrive in time\n", 408)
        except ClientDisconnect:
            # the peer went away mid-body (a dropped link, a sender's own timeout): it resends,
            # and a traceback per such request would flood the log
            log.info("a peer at %s went away before its request was read", address)
            return Response(status_code=400)
        except OSError as exc:  # the spool of a large body: the disk is full, say
            await run_in_threadpool(ebms_alerts.store_failed, ctx, exc)
            return Response("temporarily unable to store; resend later\n", 503)
        try:
            reply = await run_in_threadpool(inbound.receive, ctx, content_type, body)
        except inbound.InboundRefused as refused:
            await run_in_threadpool(
                ebms_alerts.refused, ctx, address, refused.sender, refused.code, 400
            )
            return Response(f"{refused.code}: {refused.detail}\n", 400, media_type="text/plain")
        except inbound.InboundDeferred as deferred:  # our revocation check, away for a while
            return Response(f"{deferred.detail}\n", 503, media_type="text/plain")
        except PayloadNotFound as exc:
            # A stored file is missing (our signal, to be repeated to a resend): no resend
            # mends that, and the store is not failing. A fault in the server's data.
            await run_in_threadpool(ebms_alerts.failed, ctx, exc)
            return Response("internal error\n", 500)
        except OSError as exc:
            # The payload store could not be written: nothing was acknowledged, and the sender
            # is told to resend later, when the store may be mended.
            await run_in_threadpool(ebms_alerts.store_failed, ctx, exc)
            return Response("temporarily unable to store; resend later\n", 503)
        except Exception as exc:
            if not transient(exc):
                # a fault of ours, a database error too (a missing table): 500 and an alert
                await run_in_threadpool(ebms_alerts.failed, ctx, exc)
                return Response("internal error\n", 500)
            # The database is away, busy or full: not a fault of the server, and no alert: it
            # could not be written either (a try would wait for the pool once more). The
            # heartbeat tells a long outage. (with its traceback: a deadlock or lock timeout is
            # worth seeing; statement values are hidden from database errors)
            log.warning("the database could not store a received message: %s", exc, exc_info=True)
            return Response("temporarily unable to store; resend later\n", 503)
        finally:
            if isinstance(body, Spool):
                body.discard()  # kept as the wire form by then, unless it was refused
            del body
        # Refusals of this peer in a row end here: in memory, unless an alert may be open.
        if not ctx.recovery.went_through_quietly((recovery.peer(address),), at=ctx.clock()):
            await run_in_threadpool(ebms_alerts.accepted, ctx, address)
        if reply.body is not None:
            return Response(
                reply.body,
                200,
                headers={"SOAPAction": '"ebXML"'},
                media_type=reply.content_type,
            )
        return Response(status_code=200)

    return app


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


async def _read_body(
    request: Request, limit: int, payloads: PayloadStore, pace: BodyPace
) -> bytes | Spool:
    """The request body: in memory up to ``SPOOL_ABOVE`` bytes, else in a spool of the payload
    store (written as it arrives, in ~1 MiB writes off the event loop), which becomes the
    stored wire form by a rename. Raises :class:`_TooLarge` past ``limit``, :class:`_TooSlow`
    when it arrives slower than ``pace``."""
    chunks: list[bytes] = []
    held = size = 0
    spool: Spool | None = None
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
                if spool is None:
                    spool = await run_in_threadpool(payloads.spool)
                await run_in_threadpool(spool.write, b"".join(chunks))
                chunks, held = [], 0
        if spool is None:
            return b"".join(chunks)
        if chunks:
            await run_in_threadpool(spool.write, b"".join(chunks))
        return spool
    except BaseException:
        if spool is not None:
            spool.discard()
        raise
