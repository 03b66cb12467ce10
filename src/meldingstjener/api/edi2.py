"""The EDI 2.0-shaped message API: the operations of NHN's msh-api-v2 on a local server.

Same paths, parameter names, bodies and status values as NHN's service, so an EPJ moves between
the two by changing its base URL. Where we differ, docs/API.md says so. Every read or change of a
message, and every refused attempt, is written to the audit log.
"""

import binascii
import contextlib
import functools
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from meldingstjener.api.auth import Authenticator, Principal, principal_of, refuse
from meldingstjener.api.document_response import business_document_response
from meldingstjener.api.document_spool import (
    SpooledDocument,
    base64_length,
    decode_base64,
    max_encoded_length,
    spooled_document,
)
from meldingstjener.api.edi2_models import (
    MAX_INT32,
    TRANSFER_ENCODING,
    XML_CONTENT_TYPES,
    AppRecError,
    ApprecInfo,
    AppRecStatus,
    DeliveryState,
    EbXmlInfo,
    GetBusinessDocumentResponse,
    Message,
    MisaddressedRequest,
    OrderBy,
    PostAppRecRequest,
    PostMessageRequest,
    StatusInfo,
)
from meldingstjener.api.idempotency import request_digest, scoped_key
from meldingstjener.api.limits import SMALL_BODY_TOO_LARGE
from meldingstjener.api.media_types import JSON_BODY_TYPES, body_types_text
from meldingstjener.api.problems import PROBLEM_JSON, ApiProblem
from meldingstjener.api.unread import unread_query
from meldingstjener.engine import receipts
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.copies import answering_for
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.fagmelding import inspect
from meldingstjener.engine.outbound import submit
from meldingstjener.formats.apprec import APPREC_TYPE
from meldingstjener.formats.dialog import AVVIK
from meldingstjener.model import Direction
from meldingstjener.store import audit
from meldingstjener.store.audit import Outcome
from meldingstjener.store.payloads import PayloadNotFound, Spool, source_size
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import UnitOfWork

CONFLICT_CODES = ("already-answered", "purged", "not-allowed", "not-deliverable")
APPREC_CODES = {"Ok": 1, "Rejected": 2, "OkErrorInMessagePart": 3}
# The messages sent that answer a received one (an AppRec; the Dialogmelding a misaddressed
# message is reported with after its AppRec): the "receive" scope reads them too.
ANSWER_TYPES = frozenset({APPREC_TYPE.v, AVVIK})
# Why a message that exists is not found by an operation of the other direction's messages
_NOT_OF_DIRECTION = {
    Direction.OUTBOUND.value: "is not a message this client sent (status and AppRec are of "
    "sent messages)",
    Direction.INBOUND.value: "is not a message this client received (only a received message "
    "is answered, reported misaddressed or marked read)",
}
# Overrides we can honour: they only name the EPJ; the rest is decided by the agreement (CPA).
NAMING_OVERRIDES = {"applicationName", "applicationVersion", "middlewareName", "middlewareVersion"}

# The action each operation is audited under, also when FastAPI refuses its request before our
# code runs (see validation_audit.py).
ACTIONS_BY_OPERATION = {
    "PostMessage": "send-message",
    "GetMessages": "list-messages",
    "GetMessage": "get-message",
    "GetBusinessDocument": "get-business-document",
    "GetStatus": "get-status",
    "GetApprecInfo": "get-apprec-info",
    "PostAppRec": "send-apprec",
    "ReportMisaddressed": "report-misaddressed",
    "MarkMessageAsRead": "mark-read",
}

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad request: invalid input (problem details)"},
    401: {"description": "No or invalid credentials"},
    403: {"description": "The client may not act for this HER-id or lacks the scope"},
    500: {"description": "An unexpected fault of the server; requestId names it in its log"},
    503: {"description": "The database cannot be reached now; repeat after Retry-After seconds"},
}
# of POST /Messages, whose body carries the business document (the operations that take a small
# body of a few fields declare limits.SMALL_BODY_TOO_LARGE; a GET has none to be too large)
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body (the business document) is larger than the limit"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such message (for this client)"}
}
# of every operation that takes a JSON body (media_types.JsonMediaTypes)
UNSUPPORTED_BODY_TYPE: dict[str, Any] = {
    "description": f"The body is not sent as JSON: its Content-Type must be {body_types_text()} "
    "(unsupported-media-type)"
}
# The API's own paths and the figures (the rest, /ebms and /health, answer in their own shapes)
API_PATHS = ("/Messages", "/api/", "/metrics")


class ErrorMessage(BaseModel):
    """Every 4xx/5xx answer of the API, as ``problems.problem_body`` writes it: problem
    details (RFC 9457) with the fields of EDI 2.0's ErrorMessage."""

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="A stable code of the refusal (docs/API.md)")
    error: str = Field(description="EDI 2.0: description of the error (as detail)")
    errorCode: int = Field(description="EDI 2.0: our stable number of the code")
    validationErrors: list[str] | None = Field(
        description="EDI 2.0: the rules the request broke, if any (never the values given)"
    )
    requestId: str = Field(description="EDI 2.0: names the request in the server's log")


def problem_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document made true of what the API answers: every 4xx/5xx of its paths an
    ``ErrorMessage`` as ``application/problem+json`` (FastAPI listed them without content),
    no ``422`` of FastAPI's (``HTTPValidationError``: invalid input is ``400``,
    ``problems.install_handlers``), and a JSON body in each type it is read in, with the
    ``415`` of a body of another type."""
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(API_PATHS):
            continue
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in json.dumps(responses.get("422", {})):
                del responses["422"]
            body = operation.get("requestBody", {}).get("content", {})
            if "application/json" in body:
                for media_type in JSON_BODY_TYPES:
                    body.setdefault(media_type, body["application/json"])
                responses.setdefault("415", dict(UNSUPPORTED_BODY_TYPE))
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {
                        PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}
                    }
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorMessage"] = ErrorMessage.model_json_schema()
    if "HTTPValidationError" not in json.dumps(schema["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return schema


ApiVersion = Annotated[
    str | None, Header(alias="api-version", description="API version; '2' (optional here)")
]
SourceSystem = Annotated[
    str | None,
    Header(alias="nhn-source-system", description="Name of the calling system (audited)"),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="A key of the client's choosing, new for each new message: a retry with the "
        "same key and the same request (business document, receiverHerIdsSubset and "
        "ebXmlOverrides) returns the message created the first time instead of sending it "
        "again (the same key with another request is refused with 409)",
    ),
]
MessageId = Annotated[uuid.UUID, Path(description="Our message id (a GUID)")]
HerIdPath = Annotated[int, Path(ge=1, le=MAX_INT32, description="A HER-id")]


class Edi2:
    """The operations, bound to one engine and authenticator."""

    def __init__(self, ctx: EngineContext, auth: Authenticator, max_payload_bytes: int) -> None:
        self.ctx = ctx
        self.auth = auth
        self.max_payload_bytes = max_payload_bytes

    # -- helpers ------------------------------------------------------------------------------

    def _audit(
        self,
        who: Principal,
        action: str,
        outcome: str,
        *,
        message_id: str | None = None,
        her_id: str | None = None,
        detail: str | None = None,
        uow: UnitOfWork | None = None,
    ) -> None:
        """One audit row: in ``uow`` when given (it commits with the caller's work), else in a
        transaction of its own (a refusal is recorded although the request fails)."""
        write = functools.partial(
            audit.add,
            client=who.label,
            person=who.person,
            action=action,
            outcome=outcome,
            message_id=message_id,
            her_id=her_id,
            detail=_with_source(who, detail),
        )
        if uow is not None:
            write(uow)
            return
        with self.ctx.store.unit_of_work() as own:
            write(own)
            own.commit()

    def _refuse(
        self,
        who: Principal,
        action: str,
        detail: str,
        *,
        message_id: str | None = None,
        her_id: str | None = None,
    ) -> NoReturn:
        """403, audited as every API refusal is (:func:`refuse`), with the source system."""
        refuse(
            self.ctx.store,
            who,
            action,
            _with_source(who, detail) or detail,
            answer=detail,
            message_id=message_id,
            her_id=her_id,
        )

    def _need_scope(self, who: Principal, scope: str, action: str, message_id: str | None) -> None:
        if scope not in who.scopes:
            self._refuse(
                who, action, f"the client lacks the '{scope}' scope", message_id=message_id
            )

    def _message(
        self, who: Principal, message_id: uuid.UUID, action: str, *, direction: str | None = None
    ) -> MessageRow:
        """The message, if this client may see it; 404 / 403 (audited) otherwise."""
        key = str(message_id)
        with self.ctx.store.unit_of_work() as uow:
            row = uow.messages.get(key)
        if row is None or (direction is not None and row.direction != direction):
            self._audit(who, action, Outcome.NOT_FOUND, message_id=key)
            if row is None or direction is None:
                raise ApiProblem(404, "not-found", f"no message {key}")
            # GET /Messages/{id} shows the message: "no message" sent the EPJ looking for a
            # fault of ours, where the operation is of the other direction's messages
            raise ApiProblem(404, "not-found", f"{key} {_NOT_OF_DIRECTION[direction]}")
        own = row.to_her_id if row.direction == Direction.INBOUND.value else row.from_her_id
        if row.direction == Direction.INBOUND.value:
            scope = "receive"
        elif row.msg_type in ANSWER_TYPES and "receive" in who.scopes:
            # an answer to a received message (PostAppRec, ReportMisaddressed): the client
            # that answered with "receive" reads it and its status, as its Location says
            scope = "receive"
        else:
            scope = "send"
        self._need_scope(who, scope, action, key)
        if not who.may_act_for(own):
            self._refuse(
                who,
                action,
                f"the client may not act for HER-id {own}",
                message_id=key,
                her_id=own,
            )
        return row

    def _deliver(self, who: Principal, row: MessageRow, *, read_at: datetime) -> None:
        """Tell the engine the EPJ has the message, and mark it read at ``read_at`` in the same
        transaction. A message the engine no longer offers (rejected, purged) is not delivered,
        but reading what is stored is still allowed (it is marked read all the same).
        """
        with contextlib.suppress(receipts.AppRecRefused):
            receipts.deliver(self.ctx, row.id, actor=f"api:{who.label}", read_at=read_at)

    # -- operations -----------------------------------------------------------------------------

    def _checked_request(
        self, body: PostMessageRequest, spooled: SpooledDocument | None
    ) -> tuple[bytes | Spool, list[int]]:
        """The decoded document and the receivers asked for, or an ApiProblem."""
        if body.contentTransferEncoding.lower() != TRANSFER_ENCODING:
            raise ApiProblem(
                400, "invalid-input", f"contentTransferEncoding must be '{TRANSFER_ENCODING}'"
            )
        if body.contentType.split(";")[0].strip().lower() not in XML_CONTENT_TYPES:
            accepted = " or ".join(XML_CONTENT_TYPES)
            raise ApiProblem(400, "invalid-input", f"contentType must be {accepted}")
        encoded_length = (
            spooled.encoded_length if spooled is not None else base64_length(body.businessDocument)
        )
        if encoded_length > max_encoded_length(self.max_payload_bytes):
            raise ApiProblem(
                413,
                "too-large",
                f"the business document is larger than {self.max_payload_bytes} bytes",
            )
        payload = _decoded(body.businessDocument, spooled)
        size = source_size(payload)
        if size > self.max_payload_bytes:
            raise ApiProblem(
                413,
                "too-large",
                f"the business document is {size} bytes; the limit is {self.max_payload_bytes}",
            )
        _check_overrides(body.ebXmlOverrides)
        subset = body.receiverHerIdsSubset or []
        if len(subset) > 1:
            raise ApiProblem(
                400,
                "invalid-input",
                "this server sends to one receiver per request; post once per receiver",
            )
        if any(not 1 <= h <= MAX_INT32 for h in subset):
            raise ApiProblem(400, "invalid-input", "receiverHerIdsSubset holds an invalid HER-id")
        return payload, subset

    def post_message(
        self,
        who: Principal,
        body: PostMessageRequest,
        spooled: SpooledDocument | None = None,
        idempotency_key: str | None = None,
    ) -> JSONResponse:
        """``spooled``: the document when a large body was decoded into a file on arrival
        (see :mod:`meldingstjener.api.document_spool`); the checks are the same."""
        action = "send-message"
        self._need_scope(who, "send", action, None)
        try:
            payload, subset = self._checked_request(body, spooled)
        except ApiProblem as refused:  # every refused attempt is audited
            self._audit(who, action, Outcome.INVALID, detail=refused.code)
            raise
        inspected = inspect(
            payload, self.ctx.policy.schema_dir, max_bytes=self.ctx.policy.max_xml_bytes
        )
        sender = inspected.sender.communication_party
        if sender is not None and not who.may_act_for(sender):
            self._refuse(
                who, action, f"the client may not send as HER-id {sender}", her_id=str(sender)
            )
        stored: list[str] = []

        def audit_stored(uow: UnitOfWork, row: MessageRow) -> None:
            stored.append(row.id)
            self._audit(who, action, Outcome.OK, message_id=row.id, her_id=str(sender), uow=uow)

        try:
            message_id = submit(
                self.ctx,
                payload,
                to_her_id=str(subset[0]) if subset else None,
                actor=f"api:{who.label}",
                client_id=who.label,
                idempotency_key=scoped_key(who, idempotency_key) if idempotency_key else None,
                request_digest=(
                    request_digest(payload, subset, body.ebXmlOverrides)
                    if idempotency_key
                    else None
                ),
                inspected=inspected,
                also_stored=audit_stored,
                may_answer=who.may_act_for,
            )
        except SubmitRejected as rejected:
            self._audit(
                who,
                action,
                Outcome.INVALID,
                her_id=str(sender) if sender else None,
                detail=rejected.code,
            )
            status = {"too-large": 413, "idempotency-key-reused": 409, "not-allowed": 403}.get(
                rejected.code, 400
            )
            raise ApiProblem(status, rejected.code, rejected.message, rejected.problems) from None
        if message_id not in stored:  # a retry under a key used before (its row or a racer's)
            self._audit(
                who,
                action,
                Outcome.OK,
                message_id=message_id,
                her_id=str(sender),
                detail="a retry with the same Idempotency-Key: nothing sent again",
            )
        return JSONResponse(
            message_id, status_code=201, headers={"Location": f"/Messages/{message_id}"}
        )

    def get_messages(
        self,
        who: Principal,
        receivers: list[int],
        sender: int | None,
        business_document_id: str | None,
        include_metadata: bool,
        count: int,
        order: OrderBy,
    ) -> list[Message]:
        action = "list-messages"
        self._need_scope(who, "receive", action, None)
        if not receivers or any(not 1 <= h <= MAX_INT32 for h in receivers):
            raise ApiProblem(400, "invalid-input", "ReceiverHerIds must name valid HER-ids")
        for her_id in receivers:
            if not who.may_act_for(her_id):
                self._refuse(
                    who,
                    action,
                    f"the client may not read messages for HER-id {her_id}",
                    her_id=str(her_id),
                )
        query = unread_query(
            receivers,
            sender=sender,
            # empty is no filter: the contract's minLength is 0 and its default null, and a
            # client generated from it may send the parameter empty for "none"
            business_document_id=business_document_id or None,
            order=order,
            count=count,
        )
        # the listing and its audit rows in one transaction (not a commit per message listed,
        # up to 100 a poll): every message listed is audited the first time this client and
        # person see it (not again at every poll while it waits), or the request fails and
        # the EPJ has read nothing
        with self.ctx.store.unit_of_work() as uow:
            rows = list(uow.session.scalars(query))
            listed = [_message(row, include_metadata) for row in rows]
            seen = audit.listed_before(
                uow,
                client=who.label,
                person=who.person,
                action=action,
                message_ids=[row.id for row in rows],
            )
            new = [row for row in rows if row.id not in seen]
            for row in new:
                self._audit(
                    who, action, Outcome.OK, message_id=row.id, her_id=row.to_her_id, uow=uow
                )
            if new:
                uow.commit()
        return listed

    def get_message(self, who: Principal, message_id: uuid.UUID) -> Message:
        row = self._message(who, message_id, "get-message")
        self._audit(who, "get-message", Outcome.OK, message_id=row.id, her_id=_own(row))
        return _message(row, True)

    def get_business_document(self, who: Principal, message_id: uuid.UUID) -> Response:
        action = "get-business-document"
        row = self._message(who, message_id, action)
        try:
            if row.payload_ref is None:
                raise PayloadNotFound(row.id)
            # opened now: a purge after this point does not cut the answer short
            document = self.ctx.store.payloads.open(row.payload_ref)
        except PayloadNotFound:
            self._audit(who, action, Outcome.NOT_FOUND, message_id=row.id, detail="purged")
            raise ApiProblem(
                404, "not-found", f"message {row.id} has no business document"
            ) from None
        # Fetching does not deliver: the bytes may never reach the EPJ (a dropped connection,
        # a crash before it stored them). The EPJ says it has the message by marking it read
        # (or by answering it), as the API asks of it; until then the message stays unread.
        try:
            self._audit(who, action, Outcome.OK, message_id=row.id, her_id=_own(row))
        except BaseException:
            document.close()
            raise
        return business_document_response(document)

    def get_status(self, who: Principal, message_id: uuid.UUID) -> list[StatusInfo]:
        row = self._message(who, message_id, "get-status", direction=Direction.OUTBOUND.value)
        answering, copy = self._answering_for(row)
        try:
            states = receipts.receiver_status(self.ctx, answering)
        except receipts.AppRecRefused as refused:
            raise _apprec_problem(refused) from None
        self._audit(
            who, "get-status", Outcome.OK, message_id=row.id, her_id=_own(row), detail=_of(copy)
        )
        return [
            StatusInfo(
                receiverHerId=int(s.receiver_her_id),
                transportDeliveryState=DeliveryState(s.transport_delivery_state),
                appRecStatus=_apprec_status(s.app_rec_status),
                sentAgainAs=copy,
            )
            for s in states
        ]

    def get_apprec_info(self, who: Principal, message_id: uuid.UUID) -> list[ApprecInfo]:
        row = self._message(who, message_id, "get-apprec-info", direction=Direction.OUTBOUND.value)
        answering, copy = self._answering_for(row)
        try:
            infos = receipts.apprec_info(self.ctx, answering)
        except receipts.AppRecRefused as refused:
            raise _apprec_problem(refused) from None
        self._audit(
            who,
            "get-apprec-info",
            Outcome.OK,
            message_id=row.id,
            her_id=_own(row),
            detail=_of(copy),
        )
        return [
            ApprecInfo(
                receiverHerId=int(i.receiver_her_id),
                appRecStatus=_apprec_status(i.app_rec_status),
                appRecErrorList=_apprec_errors(i) or None,
                sentAgainAs=copy,
            )
            for i in infos
        ]

    def _answering_for(self, row: MessageRow) -> tuple[str, str | None]:
        """Of ``row`` and the copies an operator sent it again as (``resend``), the one whose
        fate the EPJ, which knows ``row``'s id only, is told, and the newest copy's id (None
        when it was never sent again): :func:`engine.copies.answering_for`."""
        with self.ctx.store.unit_of_work() as uow:
            return answering_for(uow, row)

    def post_apprec(
        self, who: Principal, message_id: uuid.UUID, sender_her_id: int, body: PostAppRecRequest
    ) -> JSONResponse:
        action = "send-apprec"
        row = self._message(who, message_id, action, direction=Direction.INBOUND.value)
        if str(sender_her_id) != row.to_her_id:
            self._refuse(
                who,
                action,
                f"HER-id {sender_her_id} is not the receiver of this message",
                message_id=row.id,
                her_id=str(sender_her_id),
            )
        try:
            _check_overrides(body.ebXmlOverrides)
        except ApiProblem as refused:  # every refused attempt is audited
            self._audit(who, action, Outcome.INVALID, message_id=row.id, detail=refused.code)
            raise
        status = body.appRecStatus
        code = status if isinstance(status, int) else APPREC_CODES[status.value]
        errors = [
            (e.errorCode or "", e.details or e.description or "")
            for e in body.appRecErrorList or []
        ]
        if any(not c for c, _ in errors):
            raise ApiProblem(400, "invalid-input", "every AppRec error needs an errorCode")
        try:
            apprec_id = receipts.send_apprec(
                self.ctx, row.id, status=code, errors=errors, actor=f"api:{who.label}"
            )
        except receipts.AppRecRefused as refused:
            self._audit(who, action, Outcome.INVALID, message_id=row.id, detail=refused.code)
            raise _apprec_problem(refused) from None
        except SubmitRejected as rejected:
            self._audit(who, action, Outcome.INVALID, message_id=row.id, detail=rejected.code)
            raise ApiProblem(400, rejected.code, rejected.message, rejected.problems) from None
        self._audit(
            who,
            action,
            Outcome.OK,
            message_id=row.id,
            her_id=row.to_her_id,
            detail=f"AppRec {apprec_id} status {code}",
        )
        return JSONResponse(
            apprec_id, status_code=201, headers={"Location": f"/Messages/{apprec_id}"}
        )

    def report_misaddressed(
        self, who: Principal, message_id: uuid.UUID, body: MisaddressedRequest
    ) -> JSONResponse:
        action = "report-misaddressed"
        row = self._message(who, message_id, action, direction=Direction.INBOUND.value)
        try:
            answer_id = receipts.report_misaddressed(
                self.ctx, row.id, actor=f"api:{who.label}", reason=body.reason
            )
        except receipts.AppRecRefused as refused:
            self._audit(who, action, Outcome.INVALID, message_id=row.id, detail=refused.code)
            raise _apprec_problem(refused) from None
        except SubmitRejected as rejected:
            self._audit(who, action, Outcome.INVALID, message_id=row.id, detail=rejected.code)
            raise ApiProblem(400, rejected.code, rejected.message, rejected.problems) from None
        self._audit(
            who,
            action,
            Outcome.OK,
            message_id=row.id,
            her_id=row.to_her_id,
            detail=f"purged; answer {answer_id} sent to the sender",
        )
        return JSONResponse(
            answer_id, status_code=201, headers={"Location": f"/Messages/{answer_id}"}
        )

    def mark_read(self, who: Principal, message_id: uuid.UUID, her_id: int) -> Response:
        action = "mark-read"
        row = self._message(who, message_id, action, direction=Direction.INBOUND.value)
        if str(her_id) != row.to_her_id:
            self._refuse(
                who,
                action,
                f"HER-id {her_id} is not the receiver of this message",
                message_id=row.id,
                her_id=str(her_id),
            )
        # read and delivered in one transaction: either both or neither (a retry then finds the
        # message still unread and undelivered, not read and waiting for ever)
        self._deliver(who, row, read_at=self.ctx.clock())
        self._audit(who, action, Outcome.OK, message_id=row.id, her_id=row.to_her_id)
        return Response(status_code=204)


def _apprec_problem(refused: receipts.AppRecRefused) -> ApiProblem:
    if refused.code == "not-found":
        return ApiProblem(404, "not-found", refused.message)
    if refused.code in CONFLICT_CODES:
        return ApiProblem(409, "conflict", refused.message)
    return ApiProblem(400, "apprec-refused", refused.message)


def _with_source(who: Principal, detail: str | None) -> str | None:
    """The audit row's detail, naming the source system the client said it is (NHN's
    ``nhn-source-system`` header), when it said one."""
    if not who.source_system:
        return detail
    source = f"source system {who.source_system}"
    return f"{detail}; {source}" if detail else source


def _own(row: MessageRow) -> str | None:
    return row.to_her_id if row.direction == Direction.INBOUND.value else row.from_her_id


def _apprec_status(value: str | None) -> AppRecStatus | None:
    if value is None:
        return None
    return AppRecStatus("Ok" if value.upper() == "OK" else value)


def _of(copy: str | None) -> str | None:
    """The audit row's detail of a status or AppRec answer given for the copy ``copy``."""
    return f"answered for {copy}, the copy it was sent again as" if copy else None


# what AppRecError's details and description hold at most (edi2_models): a partner's text may
# be longer, and a longer one would fail the answer
_ERROR_TEXT_CHARS = 2000


def _apprec_errors(info: receipts.AppRecInfo) -> list[AppRecError]:
    """The errors of an AppRec received. ``details``: the partner EPJ's own words (its OT) when
    it wrote any, else the code's text (DN), as before; ``description``: the code's text (DN).
    (An EPJ posting an AppRec gives its words as ``details`` too: they go out as the OT.)"""
    ots = (info.error_ots + (None,) * len(info.errors))[: len(info.errors)]
    return [
        AppRecError(
            errorCode=code,
            details=(ot or text)[:_ERROR_TEXT_CHARS],
            description=text[:_ERROR_TEXT_CHARS] or None,
        )
        for (code, text), ot in zip(info.errors, ots, strict=True)
    ]


def _her_int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and int(value) <= MAX_INT32 else None


def _message(row: MessageRow, include_metadata: bool) -> Message:
    message = Message(
        id=row.id, contentType=XML_CONTENT_TYPES[0], receiverHerId=_her_int(row.to_her_id)
    )
    if include_metadata:
        message.senderHerId = _her_int(row.from_her_id)
        message.businessDocumentId = row.msg_id
        message.isAppRec = row.msg_type == receipts.APPREC
    return message


def _decoded(document: str, spooled: SpooledDocument | None) -> bytes | Spool:
    """The business document's bytes: decoded now, or already in a spool."""
    if spooled is None:
        try:
            return decode_base64(document)
        except (binascii.Error, ValueError):
            raise ApiProblem(400, "invalid-input", "businessDocument is not valid base64") from None
    if spooled.invalid or spooled.spool is None:
        raise ApiProblem(400, "invalid-input", "businessDocument is not valid base64")
    return spooled.spool


def _check_overrides(overrides: EbXmlInfo | None) -> None:
    """Refuse the overrides this server cannot honour (PostMessage and PostAppRec alike)."""
    if overrides is None:
        return
    given = overrides.model_dump(exclude_none=True)
    unsupported = sorted(set(given) - NAMING_OVERRIDES)
    if unsupported:
        raise ApiProblem(
            400,
            "override-not-supported",
            "this server takes these values from the partner agreement (CPA) and the business "
            f"document and cannot override them: {', '.join(unsupported)}",
        )


def edi2_router(ops: Edi2) -> APIRouter:
    router = APIRouter(tags=["Messages (EDI 2.0)"], responses=ERRORS)

    async def who(request: Request) -> Principal:
        return await principal_of(ops.auth, request)

    Who = Annotated[Principal, Depends(who)]

    @router.post(
        "/Messages",
        operation_id="PostMessage",
        status_code=201,
        summary="Send a message (base64 business document)",
        responses={
            201: {
                "description": "Created; the body is the new message id (for a retry with the "
                "same Idempotency-Key: the id of the message created the first time)",
                "content": {"application/json": {"schema": {"type": "string", "format": "uuid"}}},
            },
            409: {
                "description": "The Idempotency-Key was used for another request (business "
                "document, receiver or overrides)"
            },
            **TOO_LARGE,
        },
    )
    def post_message(
        body: PostMessageRequest,
        principal: Who,
        request: Request,
        _v: ApiVersion = None,
        _s: SourceSystem = None,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        return ops.post_message(
            principal, body, spooled_document(request, body.businessDocument), idempotency_key
        )

    @router.get(
        "/Messages",
        operation_id="GetMessages",
        summary="List unread messages for some of our HER-ids",
    )
    def get_messages(
        principal: Who,
        receivers: Annotated[list[int], Query(alias="ReceiverHerIds", description="HER-ids")],
        sender: Annotated[int | None, Query(alias="SenderHerId", ge=1, le=MAX_INT32)] = None,
        business_document_id: Annotated[
            str | None, Query(alias="BusinessDocumentId", max_length=100)
        ] = None,
        include_metadata: Annotated[bool, Query(alias="IncludeMetadata")] = False,
        count: Annotated[int, Query(alias="MessagesToFetch", ge=1, le=100)] = 10,
        order: Annotated[
            OrderBy,
            Query(
                alias="OrderBy",
                description="By the time we received the message: Ascending (or 1, as the "
                "contract's example has it) or Descending (or 2)",
            ),
        ] = OrderBy.Ascending,
        _v: ApiVersion = None,
        _s: SourceSystem = None,
    ) -> list[Message]:
        return ops.get_messages(
            principal, receivers, sender, business_document_id, include_metadata, count, order
        )

    @router.get(
        "/Messages/{id}",
        operation_id="GetMessage",
        summary="A message's metadata",
        responses=NOT_FOUND,
    )
    def get_message(
        id: MessageId, principal: Who, _v: ApiVersion = None, _s: SourceSystem = None
    ) -> Message:
        return ops.get_message(principal, id)

    @router.get(
        "/Messages/{id}/business-document",
        operation_id="GetBusinessDocument",
        summary="A message's business document (base64)",
        response_model=GetBusinessDocumentResponse,
        responses=NOT_FOUND,
    )
    def get_business_document(
        id: MessageId, principal: Who, _v: ApiVersion = None, _s: SourceSystem = None
    ) -> Response:
        return ops.get_business_document(principal, id)

    @router.get(
        "/Messages/{id}/status",
        operation_id="GetStatus",
        summary="Status per receiver of a sent message",
        responses=NOT_FOUND,
    )
    def get_status(
        id: MessageId, principal: Who, _v: ApiVersion = None, _s: SourceSystem = None
    ) -> list[StatusInfo]:
        return ops.get_status(principal, id)

    @router.get(
        "/Messages/{id}/apprec",
        operation_id="GetApprecInfo",
        summary="AppRecs received for a sent message",
        responses=NOT_FOUND,
    )
    def get_apprec(
        id: MessageId, principal: Who, _v: ApiVersion = None, _s: SourceSystem = None
    ) -> list[ApprecInfo]:
        return ops.get_apprec_info(principal, id)

    @router.post(
        "/Messages/{id}/apprec/{appRecSenderHerId}",
        operation_id="PostAppRec",
        status_code=201,
        summary="Answer a received message with an AppRec",
        responses={
            **NOT_FOUND,
            409: {"description": "Already answered"},
            **SMALL_BODY_TOO_LARGE,
        },
    )
    def post_apprec(
        id: MessageId,
        appRecSenderHerId: HerIdPath,
        body: PostAppRecRequest,
        principal: Who,
        _v: ApiVersion = None,
        _s: SourceSystem = None,
    ) -> JSONResponse:
        return ops.post_apprec(principal, id, appRecSenderHerId, body)

    @router.post(
        "/Messages/{id}/misaddressed",
        operation_id="ReportMisaddressed",
        status_code=201,
        summary="Report a received message as not meant for us (extension, not in EDI 2.0)",
        description="The content is purged and the sender told: a negative AppRec (X99) before "
        "any AppRec was sent, a DIALOG_AVVIK after. The body of the answer is the id of the "
        "message sent to the sender.",
        responses={
            **NOT_FOUND,
            409: {"description": "Not possible in the message's state"},
            **SMALL_BODY_TOO_LARGE,
        },
    )
    def report_misaddressed(
        id: MessageId, body: MisaddressedRequest, principal: Who
    ) -> JSONResponse:
        return ops.report_misaddressed(principal, id, body)

    @router.put(
        "/Messages/{id}/read/{herId}",
        operation_id="MarkMessageAsRead",
        status_code=204,
        summary="Mark a received message as read",
        response_class=Response,
        responses=NOT_FOUND,
    )
    def mark_read(
        id: MessageId,
        herId: HerIdPath,
        principal: Who,
        _v: ApiVersion = None,
        _s: SourceSystem = None,
    ) -> Response:
        return ops.mark_read(principal, id, herId)

    return router
