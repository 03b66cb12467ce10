"""Error answers of the EPJ API: problem details (RFC 9457) that also carry EDI 2.0's fields.

Every refusal is an :class:`ApiProblem` with a stable ``code``. The body is
``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` and ``code``, plus
the fields of EDI 2.0's ``ErrorMessage`` (``error``, ``errorCode``, ``validationErrors``,
``requestId``) so a client written for NHN's service reads our errors too. Texts are written by
our code from ids and codes; never patient data.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

PROBLEM_JSON = "application/problem+json"

# EDI 2.0's ErrorMessage has an integer errorCode; these numbers are ours and stable.
ERROR_NUMBERS: dict[str, int] = {
    "invalid-input": 1000,
    "invalid-message": 1001,
    "unknown-receiver": 1002,
    "no-agreement": 1003,
    "inconsistent-addressing": 1004,
    "not-agreed": 1005,
    "certificate-problem": 1006,
    "environment-guard": 1007,
    "too-large": 1008,
    "override-not-supported": 1009,
    "apprec-refused": 1010,
    "idempotency-key-reused": 1011,
    "receiver-inactive": 1012,
    "unauthenticated": 4010,
    "forbidden": 4030,
    "not-found": 4040,
    "method-not-allowed": 4050,
    "conflict": 4090,
    "unsupported-media-type": 4150,
    "internal-error": 5000,
    "unavailable": 5030,
}


class ApiProblem(Exception):
    """A request the API refuses: HTTP status, stable code and a sentence a person understands."""

    def __init__(
        self, status: int, code: str, detail: str, validation_errors: Sequence[str] = ()
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.validation_errors = list(validation_errors)


def problem_body(
    status: int,
    code: str,
    detail: str,
    validation_errors: Sequence[str] = (),
    request_id: str | None = None,
) -> dict[str, object]:
    """The body of a refusal; ``request_id`` when the server's log names it too (a new one
    otherwise)."""
    return {
        "type": f"urn:meldingstjener:problem:{code}",
        "title": code.replace("-", " "),
        "status": status,
        "detail": detail,
        "code": code,
        "error": detail,
        "errorCode": ERROR_NUMBERS.get(code, status * 10),
        "validationErrors": list(validation_errors) or None,
        "requestId": request_id or str(uuid.uuid4()),
    }


def problem_response(
    status: int,
    code: str,
    detail: str,
    validation_errors: Sequence[str] = (),
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(
        problem_body(status, code, detail, validation_errors, request_id),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _validation_lines(exc: RequestValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        # The message names the rule broken, never the value given (it could be patient data).
        lines.append(f"{where}: {error.get('msg', 'invalid')}")
    return lines


def install_handlers(
    app: FastAPI, *, on_invalid: Callable[[Request, RequestValidationError], None] | None = None
) -> None:
    """Answer every client mistake with a 4xx problem body instead of FastAPI's defaults.
    ``on_invalid`` is told of each request FastAPI's validation refuses (to audit it), in a
    thread, before it is answered."""

    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, exc.validation_errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if on_invalid is not None:
            await run_in_threadpool(on_invalid, request, exc)
        return problem_response(
            400, "invalid-input", "the request is not valid", _validation_lines(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not-found", 405: "method-not-allowed", 401: "unauthenticated"}
        code = codes.get(exc.status_code, "invalid-input")
        return problem_response(exc.status_code, code, str(exc.detail))


async def send_too_large(send: Send, detail: str) -> None:
    """Answer 413 as problem details from an ASGI middleware (before any route runs)."""
    body = json.dumps(problem_body(413, "too-large", detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
