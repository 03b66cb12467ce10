"""Client for NHN's CPPA REST API, and the fallback CPA -> CPP -> address register.

Paths (as NHN's own Helsenorge.Messaging client calls them; answers are CPPA 2.0 XML):

* ``GET /Profiles/{herId}`` - the counterparty's CPP;
* ``GET /Agreements/{cpaId}`` - a CPA by its id;
* ``GET /Agreements/HerIds/{ourHerId}/{theirHerId}`` - the CPA between two HER-ids.

HelseID scopes: ``nhn:cppa/access-with-dpop`` for DPoP-bound tokens (the service's version 2
requires DPoP), ``nhn:cppa/access`` for bearer tokens (version 1).

Not confirmed: the base URL of the production service and whether it answers 404 or an empty
body for "no such CPA"; both are treated as "none".

:func:`fetch_terms` asks for the CPA first, then the CPP, then takes the address-register entry,
and returns which one it used, so the agreement row can record its source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from meldingstjener.model.herid import HerId, InvalidHerId
from meldingstjener.registry.agreements import NotAgreed, resolve_terms
from meldingstjener.registry.auth import BearerClient
from meldingstjener.registry.cpa import parse_cpa, parse_cpp
from meldingstjener.registry.cppa_model import CollaborationProtocol
from meldingstjener.registry.errors import CpaFormatError, RegistryError
from meldingstjener.registry.parties import CommunicationParty
from meldingstjener.registry.terms import AgreementTerms, TermsSource

__all__ = ["CPPA_SCOPE_BEARER", "CPPA_SCOPE_DPOP", "CppaClient", "CppaUnavailable", "fetch_terms"]

CPPA_SCOPE_DPOP = "nhn:cppa/access-with-dpop"
CPPA_SCOPE_BEARER = "nhn:cppa/access"


class CppaUnavailable(RegistryError):
    code = "cppa-unavailable"


class CppaClient(BearerClient):
    unavailable = CppaUnavailable
    service_name = "the CPPA service"

    def profile(self, her_id: str) -> CollaborationProtocol | None:
        """The CPP of ``her_id``, None when it has none."""
        body = self._get(f"/Profiles/{_her_id(her_id)}")
        return parse_cpp(body) if body else None

    def agreement(self, cpa_id: str) -> CollaborationProtocol | None:
        body = self._get(f"/Agreements/{cpa_id}")
        return parse_cpa(body) if body else None

    def agreement_between(self, our_her_id: str, their_her_id: str) -> CollaborationProtocol | None:
        body = self._get(f"/Agreements/HerIds/{_her_id(our_her_id)}/{_her_id(their_her_id)}")
        return parse_cpa(body) if body else None

    def _get(self, path: str) -> bytes | None:
        response = self._authorised_get(path, accept="application/xml")
        if response.status_code in {204, 404}:
            return None
        if response.status_code in {401, 403}:
            raise CppaUnavailable(
                f"the CPPA service refused our token (HTTP {response.status_code}); "
                "check the HelseID client and its scopes",
                code="cppa-unauthorised",
            )
        if response.status_code != 200:
            raise CppaUnavailable(
                f"the CPPA service answered HTTP {response.status_code} for {path}"
            )
        return response.content or None


def _her_id(value: str) -> HerId:
    """The HER-id for a path, or a registry error (not a ValueError from deep inside)."""
    try:
        return HerId(value)
    except InvalidHerId as exc:
        raise RegistryError(str(exc), code="invalid-her-id") from None


def fetch_terms(
    our_her_id: str,
    their_her_id: str,
    *,
    cppa: CppaClient | None,
    ar_party: Callable[[str], CommunicationParty | None],
    now: datetime | None = None,
) -> tuple[AgreementTerms, TermsSource]:
    """Terms for sending to ``their_her_id``: CPA, else their CPP, else the register entry.

    A CPPA service that is down or answers with a broken document counts as "no CPA/CPP"; the
    reasons are kept in ``terms.notes``. Raises ``NotAgreed('no-agreement-source')`` when even
    the address register does not know the party.
    """
    cpa: CollaborationProtocol | None = None
    cpp: CollaborationProtocol | None = None
    problems: list[str] = []
    if cppa is not None:
        try:
            cpa = cppa.agreement_between(our_her_id, their_her_id)
        except (CppaUnavailable, CpaFormatError) as exc:
            problems.append(f"CPA lookup failed: {exc}")
        if cpa is not None and cpa.party(their_her_id) is None:
            problems.append(f"CPA {cpa.protocol_id} does not name HER-id {their_her_id}")
            cpa = None
        if cpa is None:
            try:
                cpp = cppa.profile(their_her_id)
            except (CppaUnavailable, CpaFormatError) as exc:
                problems.append(f"CPP lookup failed: {exc}")
        if cpp is not None and cpp.party(their_her_id) is None:
            # A profile of another party would send our messages to the wrong place.
            problems.append(f"CPP {cpp.protocol_id} is not the profile of HER-id {their_her_id}")
            cpp = None
    try:
        terms, source = resolve_terms(
            cpa, cpp, ar_party(their_her_id), our_her_id=our_her_id, now=now
        )
    except NotAgreed as exc:
        if not problems:
            raise
        # why the CPPA service gave nothing belongs in the answer too
        raise NotAgreed(exc.code, f"{exc}; {'; '.join(problems)}") from None
    if problems:
        terms = replace(terms, notes=tuple(problems) + terms.notes)
    return terms, source
