"""A fake HelseID token endpoint (``POST /connect/token``, client-credentials grant) and the
token check of the fake APIs, both to HelseID's published contract.

Clients authenticate with a shared secret or with ``private_key_jwt``: the client assertion's
signature is verified with the public key registered for the client, and its issuer, subject,
audience (the issuer URL), lifetime and single-use ``jti`` are checked. A token request with a
DPoP proof gets a token bound to the proof's key (``token_type: DPoP``); the proof's signature,
``typ``, method, URL, age and ``jti`` are checked, and with ``nonce`` set a proof without that
nonce is answered ``400 use_dpop_nonce`` with a ``DPoP-Nonce`` header, as HelseID does.

:meth:`FakeHelseId.guard` is the fake APIs' side: a bound token is only accepted as
``Authorization: DPoP`` with a proof for that request, signed by the bound key, carrying the
token's hash (``ath``) and, with ``api_nonce`` set, that nonce.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from base64 import urlsafe_b64encode
from collections.abc import Callable
from typing import Any

import jwt

from meldingstjener.registry.fakes.server import FakeApp, Reply, Request
from meldingstjener.registry.helseid import jwk_thumbprint, request_uri

_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASYMMETRIC = ["PS256", "PS384", "PS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
_PROOF_MAX_AGE_SECONDS = 60
# HelseID: a client assertion's exp "must be no more than 60 seconds in the future"
_ASSERTION_MAX_AHEAD_SECONDS = 60


class FakeHelseId:
    def __init__(
        self,
        clients: dict[str, str] | None = None,
        *,
        keys: dict[str, Any] | None = None,
        issuer: str | None = None,
        expires_in: int = 300,
        require_dpop: bool = False,
        dpop_supported: bool = True,
        nonce: str | None = None,
        api_nonce: str | None = None,
        api_nonce_next: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = dict(clients or {})  # client_id -> secret
        self.keys = dict(keys or {})  # client_id -> public key of its private_key_jwt
        self.issuer = issuer  # None: the origin the request came to
        self.expires_in = expires_in
        self.require_dpop = require_dpop
        self.dpop_supported = dpop_supported  # False: a server that ignores DPoP headers
        self.nonce = nonce
        self.api_nonce = api_nonce
        # a nonce announced on the APIs' answers (see guarded) and accepted beside api_nonce
        self.api_nonce_next = api_nonce_next
        self.clock = clock
        self.issued: dict[str, str | None] = {}  # token -> thumbprint of the bound key
        self.revoke_all = False  # an API that refuses every token as if it had been revoked
        self.requests = 0
        self.scopes: list[str | None] = []  # the scope each token issued was asked for with
        self.refusals: list[str] = []  # why requests were refused, for tests to read
        self._seen_jti: set[str] = set()
        self._lock = threading.Lock()

    def is_valid(self, token: str | None) -> bool:
        with self._lock:
            return token is not None and token in self.issued

    def revoke(self, token: str) -> None:
        with self._lock:
            self.issued.pop(token, None)

    # --- the token endpoint ------------------------------------------------------------------

    def __call__(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/connect/token":
            return Reply.json({"error": "not_found"}, 404)
        with self._lock:
            self.requests += 1
        form = request.form()
        if form.get("grant_type") != "client_credentials":
            return self._refuse("unsupported_grant_type", 400)
        client_id = form.get("client_id", "")
        problem = self._authenticate(client_id, form, request)
        if problem is not None:
            return self._refuse("invalid_client", 401, problem)
        proof = request.headers.get("dpop") if self.dpop_supported else None
        bound_to: str | None = None
        if proof is not None:
            checked = self._check_proof(proof, "POST", request.url, token=None, nonce=self.nonce)
            if checked == "use_dpop_nonce":
                assert self.nonce is not None
                return self._refuse("use_dpop_nonce", 400, headers={"DPoP-Nonce": self.nonce})
            if not checked.startswith("jkt:"):
                return self._refuse("invalid_dpop_proof", 400, checked)
            bound_to = checked[4:]
        elif self.require_dpop:
            return self._refuse("invalid_dpop_proof", 400, "the client must use DPoP")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued[token] = bound_to
            self.scopes.append(form.get("scope"))
        return Reply.json(
            {
                "access_token": token,
                "token_type": "DPoP" if bound_to else "Bearer",
                "expires_in": self.expires_in,
            }
        )

    def _authenticate(self, client_id: str, form: dict[str, str], request: Request) -> str | None:
        assertion = form.get("client_assertion")
        if assertion is None:
            secret = form.get("client_secret")
            known = self.clients.get(client_id)
            if secret is None or known is None or not secrets.compare_digest(secret, known):
                return "unknown client or wrong secret"
            return None
        if form.get("client_assertion_type") != _JWT_BEARER:
            return "client_assertion_type is not jwt-bearer"
        key = self.keys.get(client_id)
        if key is None:
            return "no key is registered for the client"
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            return f"client assertion refused: {exc}"
        if header.get("typ") != "client-authentication+jwt":
            return "the client assertion's typ is not client-authentication+jwt"
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=_ASYMMETRIC,
                audience=self.issuer or _origin(request),
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            return f"client assertion refused: {exc}"
        if not isinstance(claims["aud"], str):
            return "the client assertion must name one audience"
        if claims["iss"] != client_id or claims["sub"] != client_id:
            return "the client assertion's iss and sub are not the client id"
        if int(claims["exp"]) > self.clock() + _ASSERTION_MAX_AHEAD_SECONDS:
            return "the client assertion's exp is more than 60 s ahead"
        if int(claims["exp"]) - int(claims["iat"]) > _ASSERTION_MAX_AHEAD_SECONDS:
            return "the client assertion is valid for more than 60 s"
        if not self._first_use(f"assertion:{claims['jti']}"):
            return "the client assertion was used before"
        return None

    # --- the APIs' side ----------------------------------------------------------------------

    def guard(self, request: Request) -> Reply | None:
        """None if the request's token (and proof) authorise it, else the 401 to answer."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            known = token in self.issued and not self.revoke_all
            bound_to = self.issued.get(token)
        if not known:
            return self._unauthorised("Bearer", "invalid_token", "unknown or revoked token")
        if bound_to is None:
            if scheme.lower() != "bearer":
                return self._unauthorised("Bearer", "invalid_token", "not a DPoP-bound token")
            return None
        if scheme.lower() != "dpop":
            # a bound token shown as a bearer token: exactly what DPoP is there to stop
            return self._unauthorised("DPoP", "invalid_token", "a DPoP-bound token needs DPoP")
        proof = request.headers.get("dpop")
        if proof is None:
            return self._unauthorised("DPoP", "invalid_dpop_proof", "no DPoP proof")
        accepted = {self.api_nonce, self.api_nonce_next} - {None}
        checked = self._check_proof(
            proof, request.method, request.url, token=token, nonce=accepted or None
        )
        if checked == "use_dpop_nonce":
            announced = self.api_nonce_next or self.api_nonce
            assert announced is not None
            return self._unauthorised(
                "DPoP", "use_dpop_nonce", "nonce required", {"DPoP-Nonce": announced}
            )
        if checked != f"jkt:{bound_to}":
            problem = checked if not checked.startswith("jkt:") else "signed by another key"
            return self._unauthorised("DPoP", "invalid_dpop_proof", problem)
        return None

    def guarded(self, app: FakeApp) -> FakeApp:
        """``app`` behind :meth:`guard`, its answers announcing the API's nonce (the next one
        when one is set), as an API that rotates its nonces does."""

        def guarded_app(request: Request) -> Reply:
            refusal = self.guard(request)
            if refusal is not None:
                return refusal
            reply = app(request)
            announced = self.api_nonce_next or self.api_nonce
            if announced is None:
                return reply
            headers = {**reply.headers, "DPoP-Nonce": announced}
            return Reply(reply.status, reply.body, reply.content_type, headers)

        return guarded_app

    # --- shared ------------------------------------------------------------------------------

    def _check_proof(
        self,
        proof: str,
        method: str,
        url: str,
        *,
        token: str | None,
        nonce: str | set[str | None] | None,
    ) -> str:
        """``jkt:<thumbprint>`` for a good proof, ``use_dpop_nonce``, or what is wrong."""
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.PyJWTError as exc:
            return f"not a JWT: {exc}"
        jwk = header.get("jwk")
        if header.get("typ") != "dpop+jwt" or header.get("alg") not in _ASYMMETRIC:
            return "typ must be dpop+jwt and alg asymmetric"
        if not isinstance(jwk, dict) or "d" in jwk:
            return "the proof must carry the public key (and only it) as jwk"
        try:
            key = jwt.PyJWK(jwk, algorithm=header["alg"]).key
            claims = jwt.decode(
                proof,
                key,
                algorithms=[header["alg"]],
                options={"require": ["jti", "htm", "htu", "iat"], "verify_aud": False},
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            return f"the proof does not verify: {exc}"
        if claims["htm"] != method or claims["htu"] != request_uri(url):
            return f"the proof is for {claims['htm']} {claims['htu']}, not {method} {url}"
        if abs(self.clock() - float(claims["iat"])) > _PROOF_MAX_AGE_SECONDS:
            return "the proof is too old or from the future"
        if token is not None:
            expected = urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=")
            if claims.get("ath") != expected.decode():
                return "the proof's ath is not the hash of the token"
        wanted = {nonce} if isinstance(nonce, str) else nonce
        if wanted and claims.get("nonce") not in wanted:
            return "use_dpop_nonce"
        if not self._first_use(f"proof:{claims['jti']}"):
            return "the proof was used before"
        return f"jkt:{jwk_thumbprint(jwk)}"

    def _first_use(self, jti: str) -> bool:
        with self._lock:
            if jti in self._seen_jti:
                return False
            self._seen_jti.add(jti)
            return True

    def _refuse(
        self,
        error: str,
        status: int,
        why: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        with self._lock:
            self.refusals.append(why or error)
        reply = Reply.json({"error": error}, status)
        return Reply(reply.status, reply.body, reply.content_type, headers or {})

    def _unauthorised(
        self, scheme: str, error: str, why: str, headers: dict[str, str] | None = None
    ) -> Reply:
        with self._lock:
            self.refusals.append(why)
        challenge = {"WWW-Authenticate": f'{scheme} error="{error}"'}
        reply = Reply.problem(401, "a valid HelseID access token is required")
        return Reply(401, reply.body, reply.content_type, {**challenge, **(headers or {})})


def _origin(request: Request) -> str:
    return f"http://{request.headers.get('host', '')}"


def fixed_bearer(token: str) -> Callable[[Request], Reply | None]:
    """A guard for a fake API that accepts one fixed bearer token (the APIs tested alone)."""

    def guard(request: Request) -> Reply | None:
        if secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
            return None
        reply = Reply.problem(401, "a valid HelseID access token is required")
        return Reply(401, reply.body, reply.content_type, {"WWW-Authenticate": "Bearer"})

    return guard
