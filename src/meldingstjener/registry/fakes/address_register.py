"""A fake of the address register's CommunicationParty REST API (v1).

Implements the paths our client uses, with the published JSON shapes: a party by HER-id, up to
100 parties by a posted list of HER-ids (``bulk_supported`` False: an older API without it), its
signing/encryption certificate, the export of all HER-ids with ``lastSequenceNumber``, and
events from a sequence number (``results`` of ``sequenceNumber``/``herId``/``eventType``/
``eventTimestamp``). Every change made through :meth:`FakeAddressRegister.put_party` appends an
event, as the real register does, and so does a party deleted with
:meth:`FakeAddressRegister.delete_party`: from then on it is missing from lookups (404, left out
of a bulk answer) and from the export. A deactivated party (:attr:`deactivated`, HER-ids the
test names) is listed by the export only with ``includeDeactivated=true``; the register's new
REST records carry no active flag, so the fake does not read one from the record either (a
record's ``isActive`` decided the export before, which the real register never does).

For tests of failure handling, ``fail_party_lookups_after`` makes party lookups answer 503 after
that many successful ones (the register going down half-way through a sync).

Not confirmed: the exact error body of the real service (we send a problem+json-like object), and
the names of the event types (``CommunicationPartyCreated``/``Updated``/``Deleted`` here): the
sync reads what the register then returns, not the type.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from meldingstjener.registry.fakes.server import Reply, Request

_PARTY = "/api/v1/communicationparty/"
_CERTIFICATE = "/api/v1/certificate/"


class FakeAddressRegister:
    def __init__(self, *, guard: Callable[[Request], Reply | None] | None = None) -> None:
        self.parties: dict[str, dict[str, Any]] = {}
        self.certificates: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.guard = guard  # HelseID's check of the token (and DPoP proof)
        self.fail_party_lookups_after: int | None = None
        self.party_lookups = 0
        self.requests: list[str] = []  # "METHOD path" of each request
        self.bulk_supported = True
        self.deactivated: set[str] = set()  # HER-ids the export lists only with deactivated
        self._lock = threading.Lock()

    # --- arranging the register ---------------------------------------------------------------

    def put_party(
        self,
        record: dict[str, Any],
        *,
        signing: dict[str, Any] | None = None,
        encryption: dict[str, Any] | None = None,
    ) -> int:
        """Add or change a party (REST JSON shape); returns the event's sequence number."""
        her_id = str(record.get("herId") or record.get("HerId"))
        with self._lock:
            created = her_id not in self.parties
            self.parties[her_id] = record
            if signing is not None:
                self.certificates[(her_id, "signing")] = signing
            if encryption is not None:
                self.certificates[(her_id, "encryption")] = encryption
            return self._event(
                her_id, "CommunicationPartyCreated" if created else "CommunicationPartyUpdated"
            )

    def delete_party(self, her_id: str | int) -> int:
        """Take a party and its certificates out of the register; returns the event's number."""
        key = str(her_id)
        with self._lock:
            del self.parties[key]
            for role in ("signing", "encryption"):
                self.certificates.pop((key, role), None)
            return self._event(key, "CommunicationPartyDeleted")

    def _event(self, her_id: str, event_type: str) -> int:
        sequence = len(self.events) + 1
        self.events.append(
            {
                "sequenceNumber": sequence,
                "herId": int(her_id),
                "eventType": event_type,
                "eventTimestamp": datetime.now(UTC).isoformat(),
            }
        )
        return sequence

    # --- the API --------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(f"{request.method} {request.path}")
        refusal = self.guard(request) if self.guard is not None else None
        if refusal is not None:
            return refusal
        path = request.path.rstrip("/")
        if request.method == "POST" and path == _PARTY.rstrip("/") and self.bulk_supported:
            return self._bulk(request)
        if request.method != "GET":
            return Reply.problem(405, "method not allowed")
        if path == "/api/v1/communicationparty/export":
            return self._export(request)
        if path == "/api/v1/event":
            return self._events(request)
        if path == "/api/v1/event/latest":
            return Reply.json(self.events[-1]) if self.events else Reply.problem(404, "no events")
        if path.startswith(_CERTIFICATE):
            return self._certificate(path[len(_CERTIFICATE) :])
        if path.startswith(_PARTY):
            return self._party(path[len(_PARTY) :])
        return Reply.problem(404, "no such endpoint")

    def _party(self, her_id: str) -> Reply:
        with self._lock:
            limit = self.fail_party_lookups_after
            if limit is not None and self.party_lookups >= limit:
                return Reply.problem(503, "the register is unavailable")
            self.party_lookups += 1
            record = self.parties.get(her_id)
        return Reply.json(record) if record is not None else Reply.problem(404, "not found")

    def _bulk(self, request: Request) -> Reply:
        try:
            her_ids = json.loads(request.body)["herIds"]
            if not isinstance(her_ids, list) or not all(type(h) is int for h in her_ids):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return Reply.problem(400, 'the body must be {"herIds": [integers]}')
        if len(her_ids) > 100:
            return Reply.problem(400, "at most 100 herIds")
        with self._lock:
            limit = self.fail_party_lookups_after
            if limit is not None and self.party_lookups + len(her_ids) > limit:
                return Reply.problem(503, "the register is unavailable")
            self.party_lookups += len(her_ids)
            found = [self.parties[str(h)] for h in her_ids if str(h) in self.parties]
        return Reply.json(found)

    def _certificate(self, rest: str) -> Reply:
        her_id, _, role = rest.partition("/")
        with self._lock:
            certificate = self.certificates.get((her_id, role))
        if certificate is None:
            return Reply.problem(404, f"no {role or 'such'} certificate")
        return Reply.json(certificate)

    def _export(self, request: Request) -> Reply:
        include_all = request.query.get("includeDeactivated", "false").lower() == "true"
        with self._lock:
            her_ids = [int(h) for h in self.parties if include_all or h not in self.deactivated]
            last = len(self.events)
        return Reply.json(
            {"lastSequenceNumber": last, "count": len(her_ids), "communicationParties": her_ids}
        )

    def _events(self, request: Request) -> Reply:
        try:
            start = max(1, int(request.query.get("fromSequenceNumber", "1")))
            most = max(1, min(1000, int(request.query.get("maxEvents", "1000"))))
        except ValueError:
            return Reply.problem(400, "fromSequenceNumber and maxEvents must be integers")
        with self._lock:
            chosen = [e for e in self.events if e["sequenceNumber"] >= start][:most]
        return Reply.json({"results": chosen, "count": len(chosen)})
