"""Access tokens for NHN's register APIs: a pluggable provider and HelseID client credentials.

The register APIs want an OAuth 2 bearer token from HelseID, got with the client-credentials
grant. HelseID authenticates the client with a signed JWT (``private_key_jwt``) and may bind the
token to a key with DPoP; both are pluggable here (``client_assertion``), so a deployment can
plug in its own signer while tests use a shared secret against the local fake token endpoint.

Not implemented: DPoP proofs on API calls (the fake APIs do not ask for them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import httpx

from meldingstjener.registry.errors import RegistryError

__all__ = [
    "BearerClient",
    "ClientCredentialsTokenProvider",
    "StaticToken",
    "TokenError",
    "TokenProvider",
]

# Renew a little before expiry so a token never runs out between fetch and use.
_EXPIRY_MARGIN_SECONDS = 30.0


class TokenError(RegistryError):
    """The token endpoint refused us or could not be reached."""

    code = "helseid-token"


class TokenProvider(Protocol):
    """Anything that hands out a bearer token for the register APIs."""

    def access_token(self) -> str: ...


class StaticToken:
    """A fixed token (tests, or a token obtained outside the server)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def access_token(self) -> str:
        return self._token


class ClientCredentialsTokenProvider:
    """OAuth 2 client-credentials grant against a HelseID token endpoint, cached until expiry.

    Give either ``client_secret`` or ``client_assertion`` (a callable returning a fresh signed
    JWT for each request; HelseID requires ``private_key_jwt``).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        scope: str | None = None,
        client_secret: str | None = None,
        client_assertion: Callable[[], str] | None = None,
        http: httpx.Client | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client_secret is None and client_assertion is None:
            raise ValueError("give client_secret or client_assertion for the token endpoint")
        self._token_url = token_url
        self._client_id = client_id
        self._scope = scope
        self._secret = client_secret
        self._assertion = client_assertion
        self._http = http or httpx.Client(timeout=timeout)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def access_token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, lifetime = self._fetch()
                self._expires_at = self._clock() + max(0.0, lifetime - _EXPIRY_MARGIN_SECONDS)
            return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", "client_id": self._client_id}
        if self._scope:
            form["scope"] = self._scope
        if self._assertion is not None:
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = self._assertion()
        elif self._secret is not None:
            form["client_secret"] = self._secret
        try:
            response = self._http.post(self._token_url, data=form)
        except httpx.HTTPError as exc:
            raise TokenError(
                f"the token endpoint {self._token_url} could not be reached ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            error = _error_text(response)
            raise TokenError(
                f"the token endpoint refused client {self._client_id}: HTTP "
                f"{response.status_code} {error}; check the client id, key and scope"
            )
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise TokenError("the token endpoint answered without an access_token") from None
        return token, float(body.get("expires_in", 60))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        return str(body.get("error", ""))[:80]
    return ""


class BearerClient:
    """A synchronous client of one register API: base URL, bearer tokens, a shared httpx.Client.

    Subclasses say which error means "the service cannot be reached" (``unavailable``) and name
    the service in messages; they interpret status codes themselves, since the APIs differ there.
    """

    unavailable: type[RegistryError] = RegistryError
    service_name = "the register"

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        http: httpx.Client | None = None,
        timeout: float = 15.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._http = http or httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _authorised_get(
        self, path: str, *, accept: str, unreachable_hint: str = ""
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._tokens.access_token()}", "Accept": accept}
        try:
            return self._http.get(self._base + path, headers=headers)
        except httpx.HTTPError as exc:
            raise self.unavailable(
                f"{self.service_name} at {self._base} could not be reached "
                f"({type(exc).__name__}){unreachable_hint}"
            ) from None
