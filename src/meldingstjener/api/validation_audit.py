"""The audit row of a request FastAPI itself refuses: a body that is not JSON, a field missing or
of the wrong type, a path or query parameter out of range (answered 400 ``invalid-input``); and
of one refused for the type its body is sent as (415, :mod:`meldingstjener.api.media_types`).

Our own refusals are audited where they are made; these never reach our code, and an operator
or help desk explaining why an EPJ's submission vanished needs them too. The row names the
client the request proved (every authenticated route proves it before its body is read, see
:mod:`meldingstjener.api.credentials_first`), the operation, outcome ``invalid``, and for each
fault only where it is and which rule it broke (pydantic's location and error type). Never the
value given, nor pydantic's message, which a validator may write with the value in it: a value
may be patient data.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request

from meldingstjener.api.auth import proven_principal
from meldingstjener.api.edi2 import ACTIONS_BY_OPERATION
from meldingstjener.store import audit
from meldingstjener.store.uow import Store

MAX_FAULTS = 20  # a body of a thousand wrong items is one row, not a thousand lines
# A location part written as given: a field, header or parameter name of ours, or the member of
# a union pydantic tried (``str-enum[AppRecStatus]``). Anything else is written as "*".
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]-]{0,63}")
_TYPE = re.compile(r"[a-z_]{1,64}")


def record_invalid_request(store: Store, request: Request, exc: RequestValidationError) -> None:
    """Add the audit row of ``request``, refused by FastAPI's validation, in its own
    transaction; none when the request proved no client (no row under a name it did not
    prove: such a request is answered 401 before validation on every authenticated route)."""
    record_refused_request(store, request, validation_detail(exc.errors()))


def record_refused_request(store: Store, request: Request, detail: str) -> None:
    """Add the audit row (outcome ``invalid``) of ``request``, refused before its operation ran
    for what ``detail`` says (written by our code, never with a value given); none when the
    request proved no client."""
    who = proven_principal(request)
    if who is None:
        return
    if who.source_system:
        detail = f"{detail}; source system {who.source_system}"
    audit.record(
        store,
        client=who.label,
        person=who.person,
        action=action_of(request),
        outcome=audit.Outcome.INVALID,
        message_id=_message_id(request),
        detail=detail,
    )


def action_of(request: Request) -> str:
    """The action name the operation audits under (``send-apprec``, ``mark-read``...), or for
    an operator route its path template (``/api/webhooks``)."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        named = ACTIONS_BY_OPERATION.get(route.operation_id or "")
        return (named or route.path)[:48]
    return request.url.path[:48]


def validation_detail(errors: Sequence[Mapping[str, Any]]) -> str:
    """``the request is not valid: body.appRecStatus (enum); path.id (uuid_parsing)``."""
    faults = [_fault(error) for error in errors[:MAX_FAULTS]]
    more = len(errors) - MAX_FAULTS
    if more > 0:
        faults.append(f"{more} more")
    return "the request is not valid: " + ("; ".join(faults) or "(no details)")


def _fault(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", "invalid"))
    parts: list[Any] = list(error.get("loc", ()))
    if kind == "extra_forbidden" and parts:
        parts[-1] = "*"  # the unknown key is the caller's text
    where = ".".join(_part(part) for part in parts) or "request"
    return f"{where} ({kind if _TYPE.fullmatch(kind) else 'invalid'})"


def _part(part: Any) -> str:
    if isinstance(part, int):
        return str(part)  # a list index, or a position in a body that is not JSON
    text = str(part)
    return text if _NAME.fullmatch(text) else "*"


def _message_id(request: Request) -> str | None:
    """The message the request is about, when its path names one that is a message id."""
    value = request.path_params.get("id")
    try:
        return str(uuid.UUID(str(value))) if value is not None else None
    except ValueError:
        return None
