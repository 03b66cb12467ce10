"""Client for the address register's CommunicationParty REST API (NHN "cpapi").

Endpoints, as published in the API's OpenAPI description (v1):

* ``GET /api/v1/communicationparty/{herId}`` - one party (404 when unknown);
* ``POST /api/v1/communicationparty`` with ``{"herIds": [...]}`` - up to 100 parties in one
  call (the unknown ones are left out of the answer), without certificate bytes;
* ``GET /api/v1/certificate/{herId}/signing`` and ``/encryption`` - the current certificate with
  its base64 DER (``certificateValue``) and thumbprint;
* ``GET /api/v1/communicationparty/export`` - every active HER-id plus ``lastSequenceNumber``, the
  event to continue from;
* ``GET /api/v1/event?fromSequenceNumber=N&maxEvents=M`` - change events (``sequenceNumber``,
  ``herId``, ``eventType``), from and including N.

Every call carries a bearer token from a pluggable :class:`TokenProvider`. Network and server
failures become :class:`ArUnavailable`, so a caller can keep using its local copy. An answer that
is not JSON, or not of the shape asked for, raises :class:`ArFormatError`; one party's record or
certificate that cannot be used raises (or, in a bulk answer, is listed as)
:class:`ArRecordRefused` for that party alone. No answer is read past ``max_answer_bytes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from meldingstjener.registry.ar_json import (
    parse_certificate_json,
    read_record,
    read_records,
)
from meldingstjener.registry.ar_json import with_certificates as attach_certificates
from meldingstjener.registry.auth import BearerClient
from meldingstjener.registry.certificates import PartyCertificate
from meldingstjener.registry.errors import (
    ArFormatError,
    ArPartyNotFound,
    ArRecordRefused,
    RegistryError,
)
from meldingstjener.registry.isotime import parse_timestamp
from meldingstjener.registry.parties import CommunicationParty

__all__ = [
    "BULK_LOOKUP_LIMIT",
    "ArClient",
    "ArEvent",
    "ArExport",
    "ArLookup",
    "ArUnavailable",
]

BULK_LOOKUP_LIMIT = 100  # HER-ids per bulk lookup, as the API allows


class ArUnavailable(RegistryError):
    """The register could not be reached or answered with a server error."""

    code = "ar-unavailable"


@dataclass(frozen=True, slots=True)
class ArEvent:
    sequence_number: int
    her_id: str
    event_type: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class ArLookup:
    """A bulk lookup's answer: the parties read, and why each record that could not be used
    was not, by HER-id (``entry N`` for one without a readable HER-id)."""

    parties: list[CommunicationParty]
    refused: dict[str, str]


@dataclass(frozen=True, slots=True)
class ArExport:
    last_sequence_number: int
    her_ids: tuple[str, ...]
    # the register's every party, deactivated ones too: one it does not list is not in it
    includes_deactivated: bool = True


class ArClient(BearerClient):
    """Synchronous client; one instance may be shared (httpx.Client is thread-safe)."""

    unavailable = ArUnavailable
    service_name = "the address register"
    _bulk_lookup = True  # until the register says it has none

    # --- the endpoints ---------------------------------------------------------------------

    def party(self, her_id: str, *, with_certificates: bool = True) -> CommunicationParty:
        """The party, with certificate bytes when the register has them. Raises
        :class:`ArPartyNotFound` for an unknown HER-id."""
        body = self._get_json(f"/api/v1/communicationparty/{int(her_id)}", her_id=her_id)
        if not isinstance(body, dict):
            raise ArFormatError(f"the register's answer for HER-id {her_id} is not an object")
        try:
            party = read_record(body)
        except ArFormatError as exc:
            raise ArRecordRefused(her_id, str(exc)) from None
        if not with_certificates:
            return party
        signing = self._certificate(her_id, "signing") if party.signing_certificate else None
        encryption = (
            self._certificate(her_id, "encryption") if party.encryption_certificate else None
        )
        return attach_certificates(party, signing=signing, encryption=encryption)

    def parties(self, her_ids: Sequence[str]) -> ArLookup | None:
        """The parties of up to :data:`BULK_LOOKUP_LIMIT` HER-ids in one call, with their
        certificates' thumbprints but not their bytes (see :meth:`certificate`); HER-ids the
        register does not know are missing from the answer, and a record that cannot be read is
        listed in ``refused`` (the others are read all the same). None when the register has no
        bulk lookup (HTTP 404 or 405): then ask :meth:`party` one by one."""
        if len(her_ids) > BULK_LOOKUP_LIMIT:
            raise ValueError(f"at most {BULK_LOOKUP_LIMIT} HER-ids per bulk lookup")
        if not self._bulk_lookup:
            return None
        if not her_ids:
            return ArLookup([], {})
        path = "/api/v1/communicationparty"
        response = self._authorised(
            "POST",
            path,
            accept="application/json",
            json_body={"herIds": [int(h) for h in her_ids]},
            unreachable_hint=_LOCAL_COPY_HINT,
        )
        if response.status_code in {404, 405}:
            self._bulk_lookup = False  # asked once per client
            return None
        body = self._json(response, path)
        if not isinstance(body, list):
            raise ArFormatError("the register's bulk lookup did not answer a list of parties")
        parties, refused = read_records(body)
        return ArLookup(parties, refused)

    def certificate(self, her_id: str, role: str) -> PartyCertificate | None:
        """The current ``signing`` or ``encryption`` certificate, None when there is none;
        :class:`ArRecordRefused` when the register's document holds none we can use."""
        return self._certificate(her_id, role)

    def export(self, *, include_deactivated: bool = True) -> ArExport:
        flag = "true" if include_deactivated else "false"
        body = self._get_json(f"/api/v1/communicationparty/export?includeDeactivated={flag}")
        ids = _listed(body, "communicationParties", "the register's export", "HER-ids")
        try:
            return ArExport(
                last_sequence_number=_sequence_number(body.get("lastSequenceNumber") or 0),
                her_ids=tuple(_her_id(i) for i in ids),
                includes_deactivated=include_deactivated,
            )
        except (TypeError, ValueError):
            raise ArFormatError(
                "the register's export has a sequence number or HER-id that is not a number"
            ) from None

    def events(self, from_sequence_number: int, *, max_events: int = 1000) -> list[ArEvent]:
        """Events from and including ``from_sequence_number``, oldest first."""
        body = self._get_json(
            f"/api/v1/event?fromSequenceNumber={max(1, from_sequence_number)}"
            f"&maxEvents={max(1, min(max_events, 1000))}"
        )
        results = _listed(body, "results", "the register's event answer", "events")
        if not all(isinstance(item, dict) for item in results):
            raise ArFormatError("the register's event answer has an event that is not an object")
        return sorted((_event(item) for item in results), key=lambda e: e.sequence_number)

    def iter_events(self, from_sequence_number: int, *, page: int = 1000) -> Iterator[ArEvent]:
        """All events from ``from_sequence_number`` on, page by page."""
        next_number = from_sequence_number
        while True:
            batch = self.events(next_number, max_events=page)
            if not batch:
                return
            yield from batch
            next_number = batch[-1].sequence_number + 1

    # --- plumbing --------------------------------------------------------------------------

    def _certificate(self, her_id: str, role: str) -> PartyCertificate | None:
        try:
            body = self._get_json(f"/api/v1/certificate/{int(her_id)}/{role}", her_id=her_id)
        except ArPartyNotFound:
            return None
        if not isinstance(body, dict):
            raise ArFormatError(f"the register's {role} certificate answer is not an object")
        try:
            return parse_certificate_json(body)
        except ArFormatError as exc:  # unreadable bytes, a thumbprint that does not match them
            raise ArRecordRefused(her_id, f"its {role} certificate: {exc}") from None

    def _get_json(self, path: str, *, her_id: str | None = None) -> Any:
        response = self._authorised_get(
            path, accept="application/json", unreachable_hint=_LOCAL_COPY_HINT
        )
        if response.status_code == 404 and her_id is not None:
            raise ArPartyNotFound(f"the address register has no party with HER-id {her_id}")
        return self._json(response, path)

    def _json(self, response: httpx.Response, path: str) -> Any:
        if response.status_code in {401, 403}:
            if "Authorization" not in response.request.headers:
                raise ArUnavailable(
                    f"the address register wants a token (HTTP {response.status_code}) and "
                    "none was given: configure [helseid] or set MELDINGSTJENER_AR_TOKEN",
                    code="ar-unauthorised",
                )
            raise ArUnavailable(
                f"the address register refused our token (HTTP {response.status_code}); "
                "check the HelseID client and its scopes",
                code="ar-unauthorised",
            )
        if response.status_code != 200:
            raise ArUnavailable(
                f"the address register answered HTTP {response.status_code} for {path}"
            )
        try:
            return response.json()
        except ValueError:
            raise ArFormatError(f"the address register's answer to {path} is not JSON") from None
        except RecursionError:  # nested thousands deep: no register answer is
            raise ArFormatError(
                f"the address register's answer to {path} is JSON nested too deeply to read"
            ) from None


_LOCAL_COPY_HINT = "; the local copy is used meanwhile"
_DIGITS = re.compile(r"[0-9]+")


def _listed(body: Any, field: str, answer: str, what: str) -> list[Any]:
    """The list under ``field`` of an answer that must be an object holding one (the export's
    HER-ids, the events): anything else is :class:`ArFormatError`, never an empty list. A
    gateway's 200 ``{"message": "upstream temporarily unavailable"}`` read as "no events" was a
    sync that worked, and resolved the alert of one that did not."""
    if not isinstance(body, dict):
        raise ArFormatError(f"{answer} is not a JSON object")
    listed = body.get(field)
    if not isinstance(listed, list):
        keys = ", ".join(sorted(str(k)[:40] for k in body)[:8]) or "none"
        raise ArFormatError(f"{answer} has no list of {what} ({field}); its fields: {keys}")
    return listed


def _event(item: dict[str, Any]) -> ArEvent:
    try:
        return ArEvent(
            sequence_number=_sequence_number(item["sequenceNumber"]),
            her_id=_her_id(item["herId"]),
            event_type=str(item.get("eventType") or ""),
            at=parse_timestamp(item.get("eventTimestamp")),
        )
    except (KeyError, TypeError, ValueError):
        raise ArFormatError(
            "a register event lacks sequenceNumber or herId (a positive whole number)"
        ) from None


def _sequence_number(value: Any) -> int:
    """An event's sequence number as the register wrote it (a number, or a string of ASCII
    digits): whole and not negative, so -5 or 1.9 is not stored as where the sync resumes (a
    negative one replayed every event since the first); ValueError otherwise."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value)
    if type(value) is not int or value < 0:
        raise ValueError("a sequence number is a whole number, not negative")
    return value


def _her_id(value: Any) -> str:
    """A HER-id the register wrote as a number (or a string of ASCII digits): positive and
    whole, so -5 or 1.9 is not taken for "-5" or "1"; ValueError otherwise."""
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value)
    if type(value) is not int or value <= 0:
        raise ValueError("a HER-id is a positive whole number")
    return str(value)
