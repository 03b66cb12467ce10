"""Who is calling: API keys per client system, or OAuth2/JWT bearer tokens from one issuer.

A request carries ``Authorization: Bearer <key-or-token>`` or ``X-Api-Key: <key>``. The answer is
a :class:`Principal`: the client system, the person when one is named (``X-Person`` or the JWT's
person claim), its scopes (send, receive, admin, metrics) and the own HER-ids it may act for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from meldingstjener.api.clients import MAX_CLIENT_NAME_CHARS, SCOPES, ClientCache
from meldingstjener.api.problems import ApiProblem
from meldingstjener.api.token_claims import read_claims
from meldingstjener.config import ApiSettings
from meldingstjener.store import audit
from meldingstjener.store.tables import Credential
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

MAX_PERSON_CHARS = 128
# Where a request's proven principal is kept in its ASGI scope (see credentials_first.py).
PRINCIPAL_KEY = "meldingstjener.principal"


@dataclass(frozen=True)
class Principal:
    client: str
    person: str | None
    scopes: frozenset[str]
    her_ids: frozenset[str]
    source_system: str | None = None
    # how it proved itself (Credential): a key client and a token's client_id may share a name
    credential: str = Credential.API_KEY

    def may_act_for(self, her_id: str | int | None) -> bool:
        return her_id is not None and str(her_id) in self.her_ids

    @property
    def label(self) -> str:
        """The client as the logs name it (the audit log, the message log's actor, a message's
        client): a key client by its name, a token's client as ``jwt:<client_id>``. A key
        client's name has no ':', so a token's client never passes for a key client of the same
        name, nor one token client for another."""
        if self.credential == Credential.API_KEY:
            return self.client
        return f"{self.credential}:{self.client}"


class Authenticator:
    """Turns request headers into a :class:`Principal`, or refuses with 401."""

    def __init__(
        self,
        store: Store,
        settings: ApiSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.settings = settings
        # the engine's clock: a rotated key's old key is refused once its overlap has ended
        self.clients = ClientCache(store, clock=clock)
        self._jwks_client: Any = None

    def principal(self, request: Request) -> Principal:
        """The request's principal: the one it proved already (kept in its scope), else found
        from its headers now and kept."""
        known = request.scope.get(PRINCIPAL_KEY)
        if isinstance(known, Principal):
            return known
        found = self._authenticate(request)
        request.scope[PRINCIPAL_KEY] = found
        return found

    def _authenticate(self, request: Request) -> Principal:
        credential = _credential(request)
        if credential is None:
            raise ApiProblem(
                401,
                "unauthenticated",
                "no credentials: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'",
            )
        person = _person(request.headers.get("x-person"))
        source = request.headers.get("nhn-source-system", "")[:128] or None
        client = self.clients.find(credential)
        if client is not None:
            if len(client.name) > MAX_CLIENT_NAME_CHARS:
                # made by a version that allowed 128: what it does could not be recorded
                raise ApiProblem(
                    401,
                    "unauthenticated",
                    f"this client's name is longer than {MAX_CLIENT_NAME_CHARS} characters, "
                    "which the logs cannot hold: make a client with a shorter name",
                )
            return Principal(
                client.name, person, frozenset(client.scopes), frozenset(client.her_ids), source
            )
        if self.settings.jwt_issuer and credential.count(".") == 2:
            return self._from_jwt(credential, person, source)
        # a wrong key, a revoked client's, and a rotated key's old one after its overlap alike
        raise ApiProblem(401, "unauthenticated", "the key or token is not valid (or revoked)")

    def _from_jwt(self, token: str, person: str | None, source: str | None) -> Principal:
        import jwt  # PyJWT; needed only when a JWT issuer is configured

        try:
            key = self._signing_key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                issuer=self.settings.jwt_issuer,
                audience=self.settings.jwt_audience,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            raise ApiProblem(
                401, "unauthenticated", f"the bearer token is not valid: {type(exc).__name__}"
            ) from None
        read = read_claims(
            claims,
            her_ids_claim=self.settings.jwt_her_ids_claim,
            person_claim=self.settings.jwt_person_claim,
        )
        return Principal(
            client=read.client,
            person=person or _person(read.person),
            scopes=frozenset(s for s in read.scopes if s in SCOPES),
            her_ids=frozenset(read.her_ids),
            source_system=source,
            credential=Credential.JWT,
        )

    def _signing_key(self, token: str) -> Any:
        import jwt

        if self.settings.jwt_public_key_file is not None:
            return self.settings.jwt_public_key_file.read_bytes()
        if self.settings.jwt_jwks_url:
            if self._jwks_client is None:
                self._jwks_client = jwt.PyJWKClient(self.settings.jwt_jwks_url)
            return self._jwks_client.get_signing_key_from_jwt(token).key
        raise ValueError("no key configured for the JWT issuer")


def proven_principal(request: Request) -> Principal | None:
    """The principal this request proved, or None when it proved none (yet): never a name
    taken from an unchecked credential."""
    known = request.scope.get(PRINCIPAL_KEY)
    return known if isinstance(known, Principal) else None


async def principal_of(auth: Authenticator, request: Request) -> Principal:
    """For a dependency: the principal found before the body was read, without a thread;
    authenticated now only where no middleware did (a route outside the authenticated paths)."""
    known = proven_principal(request)
    if known is not None:
        return known
    return await run_in_threadpool(auth.principal, request)


def _credential(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


def _person(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable())[:MAX_PERSON_CHARS].strip()
    return cleaned or None


def refuse(
    store: Store,
    who: Principal,
    action: str,
    detail: str,
    *,
    answer: str | None = None,
    message_id: str | None = None,
    her_id: str | None = None,
) -> NoReturn:
    """Refuse ``who`` with 403, its refusal written to the audit log first (a row of its own:
    the request itself fails). ``answer`` is what the client is told, when not ``detail``."""
    audit.record(
        store,
        client=who.label,
        person=who.person,
        action=action,
        outcome=audit.Outcome.REFUSED,
        message_id=message_id,
        her_id=her_id,
        detail=detail,
    )
    raise ApiProblem(403, "forbidden", answer or detail)


async def forbid(store: Store, who: Principal, action: str, detail: str) -> NoReturn:
    """:func:`refuse` from a coroutine (the audit row is written in a worker thread)."""
    await run_in_threadpool(refuse, store, who, action, detail)
    raise AssertionError("refuse() returned")  # never reached: refuse raises
