"""What a bearer token's claims say of its client, read only when each has the type it should.

The token is verified first (signature, issuer, audience, expiry: :mod:`meldingstjener.api.auth`);
a verified token may still carry a claim of another type than ours expects (``"her_ids": null``,
``"scope": 5``), which an issuer's misconfiguration makes as easily as an attacker could not.
Such a token proves nothing we can act on and is refused with 401, not read as something else
(nor failing the request with a 500).

A token bound to a key (a ``cnf`` claim, as DPoP binds it, RFC 9449) is refused as well: it is
only as good as the proof of that key sent with it, and this server does not check DPoP proofs.
Taken as a plain bearer token, a stolen bound token would work here, which binding is meant to
prevent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meldingstjener.api.clients import MAX_CLIENT_NAME_CHARS
from meldingstjener.api.problems import ApiProblem

# Where the client is named, in this order; none of them: "jwt".
CLIENT_CLAIMS = ("client_id", "azp", "sub")


@dataclass(frozen=True)
class TokenClaims:
    client: str
    scopes: tuple[str, ...]
    her_ids: tuple[str, ...]
    person: str | None


def read_claims(claims: Mapping[str, Any], *, her_ids_claim: str, person_claim: str) -> TokenClaims:
    """The client, scopes, HER-ids and person the (verified) ``claims`` give; ApiProblem 401
    when one of them is not of its type, or when the token is bound to a key."""
    if "cnf" in claims:
        raise _refused(
            "the bearer token is bound to a key (cnf): this server does not check the proof "
            "of possession (DPoP) it needs; ask the issuer for a token not bound to a key"
        )
    return TokenClaims(
        client=_client(claims),
        scopes=_scopes(claims.get("scope", "")),
        her_ids=_her_ids(claims.get(her_ids_claim, []), her_ids_claim),
        person=_person(claims.get(person_claim), person_claim),
    )


def _client(claims: Mapping[str, Any]) -> str:
    for name in CLIENT_CLAIMS:
        value = claims.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not value.isprintable():
            raise _refused(f"the bearer token's {name} claim is not a text")
        if len(value) > MAX_CLIENT_NAME_CHARS:
            raise _refused(
                f"the bearer token's {name} is longer than {MAX_CLIENT_NAME_CHARS} characters, "
                "which the logs cannot hold"
            )
        return value
    return "jwt"


def _scopes(value: object) -> tuple[str, ...]:
    """OAuth's space-separated text; a list of texts, as some issuers write it."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _refused("the bearer token's scope claim is neither a text nor a list of texts")


def _her_ids(value: object, name: str) -> tuple[str, ...]:
    """One HER-id or a list of them, each a number or a text (bool is an int to Python)."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in items):
        raise _refused(f"the bearer token's {name} claim is not a HER-id or a list of HER-ids")
    return tuple(str(item) for item in items)


def _person(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _refused(f"the bearer token's {name} claim is not a text")
    return str(value)


def _refused(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthenticated", detail)
