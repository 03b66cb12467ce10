"""Operator endpoints beyond EDI 2.0: message-log search, one message's timeline, alerts, the
audit log and webhook registration. All need the ``admin`` scope, except that any client whose
scopes let it read some event (``EVENT_SCOPES``) may manage its own webhooks, for those events
(a client of none, such as a ``metrics`` key, is refused them as any other route). Answers carry
ids, HER-ids, types and statuses; never patient data.
"""

import secrets
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import ColumnElement, select
from sqlalchemy.exc import IntegrityError

from meldingstjener.api.auth import Authenticator, Principal, forbid, principal_of, refuse
from meldingstjener.api.limits import SMALL_BODY_TOO_LARGE
from meldingstjener.api.log_search import PAGING, Since, Until
from meldingstjener.api.problems import ApiProblem
from meldingstjener.config import WebhookSettings
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.copies import copies_of, original_of
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.inbox_watch import apprec_owed_window
from meldingstjener.engine.resend import Operator, ResendRefused, resend
from meldingstjener.engine.status_report import status_document
from meldingstjener.integration.webhook_targets import TargetPolicy, TargetRefused, normal_url
from meldingstjener.integration.webhooks import (
    EVENT_SCOPES,
    events_allowed,
    hold_registrations_of,
)
from meldingstjener.model.status import ALL_STATUSES
from meldingstjener.store import audit
from meldingstjener.store.tables import RESOLUTION_NOTE_CHARS, Credential, WebhookRow
from meldingstjener.store.types import as_utc
from meldingstjener.store.uow import LogFilter, UnitOfWork
from meldingstjener.views import message_summary

WEBHOOK_EVENTS = tuple(EVENT_SCOPES)
# The refusals every route of this router may answer (an admin route's 403; the webhook routes
# name their own), and the webhook routes' 403 (``hearer``, and the events asked for)
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or invalid credentials"},
    403: {"description": "The client lacks the 'admin' scope"},
}
# of the routes that take a query, a path value or a body FastAPI checks (problems.py answers
# its refusals 400), or check values of their own
INVALID: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Invalid input: a query or path value of the wrong type or out of range, "
        "or a body that breaks a rule (invalid-input; validationErrors say which)"
    }
}
NO_MESSAGE: dict[int | str, dict[str, Any]] = {404: {"description": "No message of this id"}}
NO_ALERT: dict[int | str, dict[str, Any]] = {404: {"description": "No alert of this id"}}
NOTE_NOT_KEPT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The alert was resolved already, with another note or none: the note "
        "given was not kept, and nothing changed (already-resolved)"
    }
}
WEBHOOK_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "The client's scopes let it read no webhook event (a 'metrics' key, "
        "say), or not one of the events it asked for"
    }
}


# what the column webhooks.url holds (store/tables.py)
URL_MAX_LENGTH = 1024


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(
        default=None,
        # a bound on what is read; the note kept is checked after masking (audit.resolution_note)
        max_length=4 * RESOLUTION_NOTE_CHARS,
        description=f"What was done about it (say, the message sent again as which copy), at "
        f"most {RESOLUTION_NOTE_CHARS} characters once stripped and masked: kept with the "
        "alert, shown as resolutionNote; never in the audit log or the server log. Blank: none",
    )


class ResendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checked: str | None = Field(
        default=None,
        max_length=4 * RESOLUTION_NOTE_CHARS,
        description="What the receiver said when asked whether the message arrived: needed "
        "when its server took an attempt but no Acknowledgment came back (else 409 "
        f"`maybe-received`); at most {RESOLUTION_NOTE_CHARS} characters once stripped and "
        "masked, kept as the resolutionNote of the alert the resend resolves; never in the "
        "audit log or the server log",
    )


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=URL_MAX_LENGTH,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://",
        description="Where the events are POSTed. Kept in its normal form (scheme and host in "
        "lower case, without the scheme's default port): the same URL written otherwise is the "
        "same URL",
    )
    # None: every event the client's scopes let it hear of
    events: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        json_schema_extra={"uniqueItems": True},
        description="The events to be told of: at least one, each once, of "
        f"{', '.join(WEBHOOK_EVENTS)}. Left out: every event the client's scopes let it read",
    )

    @field_validator("url")
    @classmethod
    def _callable(cls, value: str) -> str:
        # what the dispatcher will call must be a URL httpx can call, found out now
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL that can be called: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("an http or https URL with a host is needed")
        normal = normal_url(url)
        if len(normal) > URL_MAX_LENGTH:  # percent-encoded, or a name in its ASCII form
            raise ValueError(f"longer than {URL_MAX_LENGTH} characters once written out")
        return normal

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        # (An empty list, min_length, was a webhook told of nothing that counted towards
        # max_per_client all the same.) The answer names no value the client gave, only known
        # event names (an invalid request's answer never repeats its values).
        if value is None:
            return value
        if not set(value) <= set(WEBHOOK_EVENTS):
            raise ValueError(f"an unknown event; known: {list(WEBHOOK_EVENTS)}")
        twice = sorted({e for e in value if value.count(e) > 1})
        if twice:
            raise ValueError(f"events named more than once: {twice}")
        return value


def _event_dict(event: Any) -> dict[str, Any]:
    return {
        "at": event.at.isoformat(),
        "kind": event.kind,
        "fromStatus": event.from_status,
        "toStatus": event.to_status,
        "actor": event.actor,
        "code": event.code,
        "detail": event.detail,
    }


def _alert_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "severity": row.severity,
        "messageId": row.message_id,
        "partnerHerId": row.partner_her_id,
        "summary": row.summary,
        "firstSeen": row.first_seen.isoformat(),
        "lastSeen": row.last_seen.isoformat(),
        "count": row.count,
        "acknowledgedBy": row.acknowledged_by,
        "acknowledgedAt": row.acknowledged_at.isoformat() if row.acknowledged_at else None,
        "resolvedAt": row.resolved_at.isoformat() if row.resolved_at else None,
        "resolvedBy": row.resolved_by,
        "resolutionNote": row.resolution_note,
    }


def _resend_problem(refused: SubmitRejected) -> ApiProblem:
    """A refused resend as the API answers it: 404 for no such message, 409 for one that may
    not be sent again (the detail names the copy when it was sent again already), 400 for
    words of ``checked`` that cannot be kept and for the copy's own checks, as ``POST
    /Messages`` answers them."""
    if isinstance(refused, ResendRefused):
        status = {"not-found": 404, "invalid-checked": 400}.get(refused.code, 409)
        return ApiProblem(status, refused.code, refused.message)
    return ApiProblem(400, refused.code, refused.message, refused.problems)


def _own_webhooks(who: Principal) -> tuple[ColumnElement[bool], ...]:
    """The caller's webhooks: by its name and how it proved itself (a key client and a JWT
    client of the same name do not see or remove each other's)."""
    return (WebhookRow.client_name == who.client, WebhookRow.credential == who.credential)


_SAME_URL = "the client has an active webhook for this URL already"


def _normal_kept(kept: str) -> str:
    """A kept URL in its normal form: one kept before URLs were kept so is compared in it too,
    one httpx cannot read (written into the table by hand) as it is written."""
    try:
        return normal_url(httpx.URL(kept))
    except httpx.InvalidURL:
        return kept


def _may_add_webhook(uow: UnitOfWork, who: Principal, url: str, most: int) -> None:
    """Refuse (409) a second active webhook of the caller for the same URL (``url`` in its
    normal form), and one more than ``most``: an EPJ that registered at each start-up had a
    webhook per start, each told of every message with its own delivery id (which its
    deduplication could not catch), and one client's many webhooks at a slow receiver filled
    the dispatcher's rounds. What is counted holds until ``uow`` commits the new webhook: another
    registration of the client waits (``hold_registrations_of``); two at once were both
    added when each counted one below ``most``."""
    hold_registrations_of(uow, who.client, who.credential)
    active = uow.session.execute(
        select(WebhookRow.id, WebhookRow.url).where(
            *_own_webhooks(who), WebhookRow.active.is_(True)
        )
    ).all()
    same = next((hook for hook, kept in active if _normal_kept(kept) == url), None)
    if same is not None:
        raise ApiProblem(
            409, "conflict", f"{_SAME_URL} (webhook {same}; delete it to register it anew)"
        )
    if len(active) >= most:
        raise ApiProblem(
            409,
            "conflict",
            f"the client has {len(active)} active webhooks, the most it may have ([webhooks] "
            "max_per_client); delete one first",
        )


def ops_router(
    ctx: EngineContext, auth: Authenticator, webhooks: WebhookSettings | None = None
) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["Operations"], responses=REFUSALS)
    limits = webhooks or WebhookSettings()
    targets = TargetPolicy.of(limits)

    async def admin(request: Request) -> Principal:
        who = await principal_of(auth, request)
        if "admin" not in who.scopes:
            detail = "the client lacks the 'admin' scope"
            await forbid(ctx.store, who, request.url.path[:48], detail)
        return who

    async def hearer(request: Request) -> Principal:
        # The webhook routes are any client's whose scopes let it hear of some event: one whose
        # scopes allow none (a monitoring key of the scope 'metrics' alone) has no webhook to
        # register, list or remove, and its key opens nothing but what its scope names.
        who = await principal_of(auth, request)
        if not events_allowed(who.scopes):
            needs = " or ".join(repr(s) for s in sorted(set().union(*EVENT_SCOPES.values())))
            detail = f"the client's scopes allow no webhook event (it needs {needs})"
            await forbid(ctx.store, who, request.url.path[:48], detail)
        return who

    Admin = Annotated[Principal, Depends(admin)]
    Hearer = Annotated[Principal, Depends(hearer)]

    @router.get(
        "/log",
        summary="Search the message log (messages, newest first)",
        description=PAGING,
        responses=INVALID,
    )
    def log(
        who: Admin,
        her_id: Annotated[str | None, Query(max_length=12, pattern=r"^\d+$")] = None,
        msg_type: Annotated[str | None, Query(max_length=64)] = None,
        status: Annotated[str | None, Query(max_length=32)] = None,
        direction: Annotated[str | None, Query(pattern="^(in|out)$")] = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        msg_id: Annotated[
            str | None, Query(max_length=255, description="MsgHead MsgId: every copy")
        ] = None,
        ebxml_message_id: Annotated[str | None, Query(max_length=255)] = None,
        conversation_id: Annotated[str | None, Query(max_length=255)] = None,
        apprec_owed: Annotated[
            bool,
            Query(
                description="Only received messages the EPJ has and has not answered with an "
                "AppRec, of a type owed one, delivered longer than `[alerts] apprec_owed_hours` "
                "and within `apprec_owed_days` ago: what the `apprec-owed` alert counts"
            ),
        ] = False,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in ALL_STATUSES:
            raise ApiProblem(400, "invalid-input", f"unknown status; known: {sorted(ALL_STATUSES)}")
        log_filter = LogFilter(
            her_id,
            msg_type,
            status,
            as_utc(since),
            direction,
            limit,
            until=as_utc(until),
            msg_id=msg_id,
            ebxml_message_id=ebxml_message_id,
            conversation_id=conversation_id,
            # the alert's window now: the search lists what it counts
            apprec_owed=apprec_owed_window(ctx.policy, ctx.clock()) if apprec_owed else None,
        )
        with ctx.store.unit_of_work() as uow:
            found = uow.messages.search(log_filter, newest_first=True)
            # a message sent again and its copy name each other, as the timeline does: the
            # original alone read as "not-delivered" of a document its copy delivered since
            copies = copies_of(uow, found)
            return [
                {
                    **message_summary(m),
                    "sent_again_as": copies.get(m.id),
                    "copy_of": original_of(m),
                }
                for m in found
            ]

    @router.get(
        "/messages/{message_id}/timeline",
        summary="One message, its events and its end-to-end status",
        description="`message` and `events`; `sentAgainAs` and `copyOf` link a message sent "
        "again and its copy; `statusReport` is what `meldingstjener status ID --json` prints "
        "(its keys as it prints them): the last error, the receipts (AppRec status and error "
        "codes, never their words), the message's alerts, its copies, and for a message of "
        "ours the EDI 2.0 delivery state and when it is next sent or checked.",
        responses=NO_MESSAGE,
    )
    def timeline(message_id: str, who: Admin) -> dict[str, Any]:
        with ctx.store.unit_of_work() as uow:
            message = uow.messages.get(message_id[:64])
            if message is None:
                raise ApiProblem(404, "not-found", f"no message {message_id[:64]}")
            events = [_event_dict(e) for e in uow.events.for_message(message.id)]
            # the CLI's builder: the API tells what status does, the error words left out
            report, _ = status_document(uow, message, texts=False)
        audit.record(
            ctx.store,
            client=who.label,
            person=who.person,
            action="timeline",
            outcome=audit.Outcome.OK,
            message_id=message.id,
        )
        return {
            "message": message_summary(message),
            "events": events,
            # a message sent again and its copy name each other
            "sentAgainAs": report["sent_again_as"],
            "copyOf": report["copy_of"],
            "statusReport": report,
        }

    @router.post(
        "/messages/{message_id}/resend",
        summary="Send a not-delivered message again, as a new copy",
        description="A new ebXML message (new MessageId, the same ConversationId) of the "
        "stored business document, checked, encrypted and signed as any message now (the "
        "receiver's current endpoint and certificate). Both messages' logs name the other; the "
        "old one's `not-delivered` alert is resolved. Answers 201 with `messageId` (the copy) "
        "and `copyOf`. Refused: 404 `not-found`; 409 `not-resendable` (any status but "
        "not-delivered), `already-sent-again` (the detail names the copy), `not-outbound`, "
        "`content-removed`, `maybe-received` (its server took an attempt but no "
        "Acknowledgment came back: ask the receiver, then send `checked` with what it said); "
        "400 `invalid-checked`, and the codes of `POST /Messages` when the copy's own checks "
        "refuse it (`unknown-receiver`, `certificate-problem`, ...).",
        status_code=201,
        responses={
            **NO_MESSAGE,
            400: {
                "description": "`checked` cannot be kept as given, or the copy's checks refused "
                "it (the codes of POST /Messages)"
            },
            409: {"description": "The message may not be sent again (see the code)"},
            **SMALL_BODY_TOO_LARGE,
        },
    )
    def resend_message(
        message_id: str, who: Admin, request: ResendRequest | None = None
    ) -> dict[str, Any]:
        message_id = message_id[:64]
        operator = Operator(who.label, who.person)
        checked = request.checked if request is not None else None
        try:
            done = resend(ctx, message_id, operator=operator, checked=checked)
        except SubmitRejected as refused:
            audit.record(
                ctx.store,
                client=who.label,
                person=who.person,
                action="resend",
                outcome=audit.Outcome.NOT_FOUND
                if refused.code == "not-found"
                else audit.Outcome.REFUSED,
                message_id=None if refused.code == "not-found" else message_id,
                detail=refused.code,
            )
            raise _resend_problem(refused) from None
        answer: dict[str, Any] = {"messageId": done.copy_id, "copyOf": done.original_id}
        if done.checked_kept is not None:
            # false: the alert was resolved already, and the words are kept nowhere
            answer["checkedKept"] = done.checked_kept
        return answer

    @router.get(
        "/alerts",
        summary="Alerts (avvik), newest first",
        description="At most `limit` alerts, the last seen first (`until`: last seen at or "
        "before it); the header `X-Total-Count` says how many match (`open_only`) in all. To "
        "walk them all ask with `order=id` (the last raised first) and for older ones again "
        "with `before_id` set to the `id` of the last alert received. `lastSeen` is no key to "
        "page by: it moves at every count of a lasting alert.",
        responses=INVALID,
    )
    def alerts(
        who: Admin,
        response: Response,
        open_only: bool = False,
        until: Until = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        order: Annotated[
            Literal["lastSeen", "id"],
            Query(description="`lastSeen`: the last seen first; `id`: the last raised first"),
        ] = "lastSeen",
        before_id: Annotated[
            int | None,
            Query(ge=1, le=2**62, description="With `order=id`: only alerts of a lower id"),
        ] = None,
    ) -> list[dict[str, Any]]:
        # the two ways through the alerts are kept apart: a page of one continued by the key of
        # the other would skip alerts without a word
        if before_id is not None and order != "id":
            raise ApiProblem(400, "invalid-input", "before_id pages order=id")
        if until is not None and order != "lastSeen":
            raise ApiProblem(400, "invalid-input", "until is the lastSeen order's; use before_id")
        with ctx.store.unit_of_work() as uow:
            found = uow.alerts.list(
                open_only=open_only,
                limit=limit,
                until=as_utc(until),
                by_id=order == "id",
                before_id=before_id,
            )
            # the newest `limit` of them alone said nothing of the rest: after an outage the
            # oldest open alerts (the not-delivered ones) were past it
            response.headers["X-Total-Count"] = str(uow.alerts.count(open_only=open_only))
            return [_alert_dict(a) for a in found]

    @router.post(
        "/alerts/{alert_id}/acknowledge",
        summary="Acknowledge an alert",
        responses={**INVALID, **NO_ALERT},
    )
    def acknowledge(alert_id: int, who: Admin) -> dict[str, Any]:
        return _followed_up(alert_id, who, resolve=False)

    @router.post(
        "/alerts/{alert_id}/resolve",
        summary="Resolve an alert by hand (it was followed up; a repeat opens it again)",
        responses={**INVALID, **NO_ALERT, **NOTE_NOT_KEPT, **SMALL_BODY_TOO_LARGE},
    )
    def resolve(alert_id: int, who: Admin, request: ResolveRequest | None = None) -> dict[str, Any]:
        return _followed_up(
            alert_id, who, resolve=True, note=request.note if request is not None else None
        )

    def _followed_up(
        alert_id: int, who: Principal, *, resolve: bool, note: str | None = None
    ) -> dict[str, Any]:
        if not 1 <= alert_id <= 2**62:
            raise ApiProblem(404, "not-found", f"no alert {alert_id}")
        by = f"{who.label}/{who.person}" if who.person else who.label
        with ctx.store.unit_of_work() as uow:
            try:
                done = audit.follow_up_alert(
                    uow,
                    alert_id,
                    resolve=resolve,
                    client=who.label,
                    person=who.person,
                    by=by,
                    at=ctx.clock(),
                    note=note,
                )
            except audit.NoteRefused as refused:
                raise ApiProblem(400, "invalid-input", str(refused)) from None
            if done is None:
                raise ApiProblem(404, "not-found", f"no alert {alert_id}")
            if done.note_not_kept:
                raise ApiProblem(
                    409,
                    "already-resolved",
                    f"alert {alert_id} was resolved already; the note was not kept",
                )
            uow.commit()
            return _alert_dict(done.alert)

    @router.get(
        "/audit", summary="The audit log, newest first", description=PAGING, responses=INVALID
    )
    def audit_log(
        who: Admin,
        message_id: Annotated[str | None, Query(max_length=64)] = None,
        client: Annotated[str | None, Query(max_length=128)] = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        asked = audit.AuditQuery(
            message_id, client, as_utc(since), limit, until=as_utc(until), newest_first=True
        )
        return audit.query(ctx.store, asked)

    @router.post(
        "/webhooks",
        status_code=201,
        summary="Register a webhook (secret shown once)",
        responses={
            **INVALID,
            **WEBHOOK_FORBIDDEN,
            409: {
                "description": "The client has an active webhook for the URL, or as many as "
                "[webhooks] max_per_client"
            },
            **SMALL_BODY_TOO_LARGE,
            422: {
                "description": "The URL may not be called: its scheme, its address, or a user "
                "name or password in it (webhook-target-refused)"
            },
        },
    )
    def add_webhook(body: WebhookRequest, who: Hearer) -> dict[str, Any]:
        allowed = events_allowed(who.scopes)
        events = allowed if body.events is None else body.events
        not_allowed = [e for e in events if e not in allowed]
        if not_allowed:
            detail = "; ".join(
                f"{e} needs the {' or '.join(repr(s) for s in sorted(EVENT_SCOPES[e]))} scope"
                for e in not_allowed
            )
            answer = f"the client may not hear of these events: {detail}"
            refuse(ctx.store, who, "/api/webhooks", detail, answer=answer)
        # what the client may hear of first (403), then where it would be told it (422): the URL
        # is resolved only for a client that may have the webhook
        try:
            targets.check_url(body.url)  # each call checks the address it connects to again
        except TargetRefused as refused:
            raise ApiProblem(
                422, "webhook-target-refused", f"the webhook URL is refused: {refused}"
            ) from None
        secret = secrets.token_urlsafe(32)
        row = WebhookRow(
            client_name=who.client,
            credential=who.credential,
            url=body.url,
            secret=secret,
            events=events,
            her_ids=sorted(who.her_ids),
            active=True,
            consecutive_failures=0,
            # what it hears of is checked against these at every event
            scopes=sorted(who.scopes),
            issuer=auth.settings.jwt_issuer if who.credential == Credential.JWT else None,
        )
        with ctx.store.unit_of_work() as uow:
            _may_add_webhook(uow, who, body.url, limits.max_per_client)
            uow.session.add(row)
            try:
                uow.commit()
            except IntegrityError:  # uq_webhooks_active_url, behind the check above
                raise ApiProblem(409, "conflict", _SAME_URL) from None
            return {"id": row.id, "url": row.url, "events": row.events, "secret": secret}

    @router.get("/webhooks", summary="The calling client's webhooks", responses=WEBHOOK_FORBIDDEN)
    def list_webhooks(who: Hearer) -> list[dict[str, Any]]:
        with ctx.store.unit_of_work() as uow:
            rows = uow.session.scalars(
                select(WebhookRow).where(*_own_webhooks(who)).order_by(WebhookRow.id)
            )
            return [
                {
                    "id": r.id,
                    "url": r.url,
                    "events": r.events,
                    "active": r.active,
                    "consecutiveFailures": r.consecutive_failures,
                }
                for r in rows
            ]

    @router.delete(
        "/webhooks/{webhook_id}",
        status_code=204,
        response_class=Response,
        summary="Remove one of the calling client's webhooks",
        responses={
            **INVALID,
            **WEBHOOK_FORBIDDEN,
            404: {"description": "No such webhook of this client"},
        },
    )
    def delete_webhook(webhook_id: int, who: Hearer) -> Response:
        with ctx.store.unit_of_work() as uow:
            row = (
                uow.session.scalars(
                    select(WebhookRow).where(WebhookRow.id == webhook_id, *_own_webhooks(who))
                ).first()
                if 0 < webhook_id < 2**62  # beyond it, no id (and no BIGINT) can hold it
                else None
            )
            if row is None:
                raise ApiProblem(404, "not-found", f"no webhook {webhook_id} of this client")
            uow.session.delete(row)
            uow.commit()
        return Response(status_code=204)

    return router
