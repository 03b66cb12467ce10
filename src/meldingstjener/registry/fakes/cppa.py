"""A fake of NHN's CPPA REST API: CPPs by HER-id and CPAs by id or by two HER-ids (XML).

Paths as NHN's Helsenorge.Messaging client calls them: ``/Profiles/{herId}``,
``/Agreements/{cpaId}``, ``/Agreements/HerIds/{ourHerId}/{theirHerId}``. Unknown ones give 404.
Not confirmed: the production base URL and the real service's "not found" answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from meldingstjener.registry.fakes.server import Reply, Request

_XML = "application/xml"


class FakeCppa:
    def __init__(self, *, guard: Callable[[Request], Reply | None] | None = None) -> None:
        self.profiles: dict[str, bytes] = {}
        self.agreements: dict[str, bytes] = {}
        self.pairs: dict[tuple[str, str], str] = {}  # (her_id, her_id) -> cpa id, both orders
        self.guard = guard  # HelseID's check of the token (and DPoP proof)
        self.down = False
        self._lock = threading.Lock()

    def put_profile(self, her_id: str, xml: bytes) -> None:
        with self._lock:
            self.profiles[str(her_id)] = xml

    def put_agreement(self, cpa_id: str, xml: bytes, her_ids: tuple[str, str]) -> None:
        with self._lock:
            self.agreements[cpa_id] = xml
            first, second = (str(h) for h in her_ids)
            self.pairs[(first, second)] = cpa_id
            self.pairs[(second, first)] = cpa_id

    def __call__(self, request: Request) -> Reply:
        refusal = self.guard(request) if self.guard is not None else None
        if refusal is not None:
            return refusal
        if self.down:
            return Reply.problem(503, "the CPPA service is unavailable")
        parts = [p for p in request.path.split("/") if p]
        with self._lock:
            body: bytes | None = None
            if len(parts) == 2 and parts[0] == "Profiles":
                body = self.profiles.get(parts[1])
            elif len(parts) == 2 and parts[0] == "Agreements":
                body = self.agreements.get(parts[1])
            elif len(parts) == 4 and parts[:2] == ["Agreements", "HerIds"]:
                cpa_id = self.pairs.get((parts[2], parts[3]))
                body = self.agreements.get(cpa_id) if cpa_id else None
        if body is None:
            return Reply.problem(404, "not found")
        return Reply(200, body, _XML)
