"""Access tokens for NHN's register APIs: a pluggable provider and HelseID client credentials.

The register APIs want an OAuth 2 access token from HelseID, got with the client-credentials
grant. HelseID authenticates the client with a signed JWT (``private_key_jwt``,
:class:`~meldingstjener.registry.helseid.ClientAssertion`) and binds the token to the client's
key with DPoP (:class:`~meldingstjener.registry.helseid.DPoPProver`): then every API call carries
``Authorization: DPoP <token>`` and a fresh proof. A shared secret and plain bearer tokens remain
for token servers that use them (and for tests).
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from meldingstjener.httpbody import BodyTooLarge, BodyTooSlow, read_capped
from meldingstjener.registry.errors import RegistryError
from meldingstjener.registry.helseid import (
    ClientAssertion,
    DPoPProver,
    audience_for,
    load_client_key,
    proof_nonce,
)

__all__ = [
    "DEFAULT_MAX_ANSWER_BYTES",
    "AnswerTooLarge",
    "BearerClient",
    "ClientCredentialsTokenProvider",
    "Retry",
    "StaticToken",
    "TokenError",
    "TokenProvider",
    "helseid_token_provider",
]

# Renew a little before expiry so a token never runs out between fetch and use.
_EXPIRY_MARGIN_SECONDS = 30.0
_MAX_TOKEN_LIFETIME_SECONDS = 86_400.0  # a longer expires_in is taken as a day
# The most of one answer a register client reads (decompressed): a whole bulk lookup of a
# hundred parties is well under a megabyte, so this is room, not a budget.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024
# The most one call may take, its answer read whole: the client's time-out is for each read, so
# an answer trickled a byte at a time within it would hold the caller for as long as it lasts.
DEFAULT_CALL_SECONDS = 60.0
# What a re-built answer must not say of its body, which is then read and decompressed.
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class TokenError(RegistryError):
    """The token endpoint refused us or could not be reached."""

    code = "helseid-token"


class AnswerTooLarge(RegistryError):
    """A register answered more than the client reads of one answer (``max_answer_bytes``)."""

    code = "register-answer-too-large"


class Retry(enum.Enum):
    """Why a refused API call is tried again with new headers."""

    NONCE = "the API asked for a DPoP nonce the request did not carry"
    TOKEN = "the API dropped the token before it ran out"


class TokenProvider(Protocol):
    """Anything that authorises calls to the register APIs."""

    def authorization(self, method: str, url: str) -> dict[str, str]:
        """The headers that authorise one request (``Authorization``, and ``DPoP`` if bound)."""
        ...

    def after_response(self, response: httpx.Response) -> Retry | None:
        """Learn from an API's answer (a new DPoP nonce comes on any answer); why a ``401`` is
        worth one more try with new headers, if it is: the API asked for a nonce the request
        did not carry, or dropped the token before it ran out. Each reason is answered once
        per call (see :meth:`BearerClient._authorised`)."""
        ...


class StaticToken:
    """A fixed bearer token (tests, or a token obtained outside the server)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def access_token(self) -> str:
        return self._token

    def authorization(self, method: str, url: str) -> dict[str, str]:
        if not self._token:
            # none given: the call goes without, and a register that wants one says so (401),
            # rather than the HTTP library refusing "Bearer " as a malformed header
            return {}
        return {"Authorization": f"Bearer {self._token}"}

    def after_response(self, response: httpx.Response) -> Retry | None:
        return None  # the same token again would be refused again


class ClientCredentialsTokenProvider:
    """OAuth 2 client-credentials grant against a HelseID token endpoint, cached until expiry.

    Give either ``client_secret`` or ``client_assertion`` (a callable returning a fresh signed
    JWT for each request; HelseID requires ``private_key_jwt``). With ``dpop`` the token is asked
    for bound to the client's key, and each API call gets a proof; a token server that answers
    with a plain bearer token anyway gets it used as one (RFC 9449, 7.1).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        *,
        scope: str | None = None,
        client_secret: str | None = None,
        client_assertion: Callable[[], str] | None = None,
        dpop: DPoPProver | None = None,
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
        self._dpop = dpop
        self._http = http or httpx.Client(timeout=timeout)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._bound = False  # the token is DPoP-bound (token_type "DPoP")
        self._expires_at = 0.0

    def access_token(self) -> str:
        return self._current()[0]

    def authorization(self, method: str, url: str) -> dict[str, str]:
        token, bound = self._current()
        if not bound or self._dpop is None:
            return {"Authorization": f"Bearer {token}"}
        return {
            "Authorization": f"DPoP {token}",
            "DPoP": self._dpop.proof(method, url, access_token=token),
        }

    def after_response(self, response: httpx.Response) -> Retry | None:
        url = str(response.request.url)
        nonce = response.headers.get("DPoP-Nonce")
        if self._dpop is not None:
            self._dpop.remember_nonce(url, nonce)
        if response.status_code != 401:
            return None
        challenge = response.headers.get("WWW-Authenticate", "")
        sent_proof = response.request.headers.get("DPoP")
        if self._dpop is not None and sent_proof is not None and "use_dpop_nonce" in challenge:
            # Worth a retry if the nonce asked for is not the one this request carried (another
            # request may have learnt it meanwhile: the retry carries it all the same).
            if nonce is not None and nonce != proof_nonce(sent_proof):
                return Retry.NONCE
            return None
        if "invalid_token" in challenge:
            refused = response.request.headers.get("Authorization", "").partition(" ")[2]
            with self._lock:
                if self._token == refused:
                    self._token = None  # revoked or expired early: a new one may do
            return Retry.TOKEN
        return None

    def _current(self) -> tuple[str, bool]:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, self._bound, lifetime = self._fetch()
                self._expires_at = self._clock() + max(0.0, lifetime - _EXPIRY_MARGIN_SECONDS)
            return self._token, self._bound

    def _fetch(self) -> tuple[str, bool, float]:
        response = self._post_token_request()
        nonce = response.headers.get("DPoP-Nonce")
        if (
            self._dpop is not None
            and response.status_code == 400
            and _error_text(response) == "use_dpop_nonce"
            and nonce is not None
            and nonce != proof_nonce(response.request.headers.get("DPoP"))
        ):
            # HelseID asks for its nonce in the proof first: ask again with a new assertion
            # (its jti is single use) and a proof that carries the nonce.
            response = self._post_token_request()
        if response.status_code != 200:
            raise TokenError(
                f"the token endpoint refused client {self._client_id}: HTTP "
                f"{response.status_code} {_error_text(response, described=True)}; check the "
                "client id, its key, its scope and the clocks"
            )
        try:
            body = response.json()
            token = str(body["access_token"])
            token_type = str(body.get("token_type", "Bearer"))
        except (ValueError, KeyError, TypeError):
            raise TokenError("the token endpoint answered without an access_token") from None
        bound = self._dpop is not None and token_type.lower() == "dpop"
        return token, bound, _lifetime(body.get("expires_in", 60))

    def _post_token_request(self) -> httpx.Response:
        form = {"grant_type": "client_credentials", "client_id": self._client_id}
        if self._scope:
            form["scope"] = self._scope
        if self._assertion is not None:
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = self._assertion()
        elif self._secret is not None:
            form["client_secret"] = self._secret
        headers = {}
        if self._dpop is not None:
            headers["DPoP"] = self._dpop.proof("POST", self._token_url)
        try:
            response = self._http.post(self._token_url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise TokenError(
                f"the token endpoint {self._token_url} could not be reached ({type(exc).__name__})"
            ) from None
        if self._dpop is not None:
            self._dpop.remember_nonce(self._token_url, response.headers.get("DPoP-Nonce"))
        return response


def _lifetime(value: object) -> float:
    """The token's ``expires_in``: a finite number of seconds, at most a day (a token cached
    longer would outlive any key rotation); anything else is a :class:`TokenError`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TokenError(f"the token endpoint's expires_in is not a number: {str(value)[:20]!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise TokenError(
            f"the token endpoint's expires_in is not a number: {str(value)[:20]!r}"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise TokenError(f"the token endpoint's expires_in is not usable: {str(value)[:20]!r}")
    return min(seconds, _MAX_TOKEN_LIFETIME_SECONDS)


def _error_text(response: httpx.Response, *, described: bool = False) -> str:
    """The OAuth ``error`` (and with ``described`` its ``error_description``), shortened: what
    the token endpoint says is wrong, never anything we sent."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    error = str(body.get("error", ""))[:80]
    description = body.get("error_description")
    if described and isinstance(description, str) and description:
        return f"{error} ({description[:200]})"
    return error


class BearerClient:
    """A synchronous client of one register API: base URL, bearer tokens, a shared httpx.Client.

    Subclasses say which error means "the service cannot be reached" (``unavailable``) and name
    the service in messages; they interpret status codes themselves, since the APIs differ there.
    An answer is read up to ``max_answer_bytes`` (decompressed), and one that goes on past it
    raises :class:`AnswerTooLarge` rather than fill the memory. Every call, its answer read
    whole, takes at most ``call_seconds``, and ends by the deadline the caller set with
    :meth:`deadline` if that comes first (a sync's run); one that does not is ``unavailable``.
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
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        call_seconds: float = DEFAULT_CALL_SECONDS,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._tokens = tokens
        self._http = http or httpx.Client(timeout=timeout)
        self._max_answer_bytes = max_answer_bytes
        self._call_seconds = call_seconds
        self._ends_by: float | None = None  # on time.monotonic(): see deadline()

    def deadline(self, ends_by: float | None) -> None:
        """No call ends later than ``ends_by`` (on :func:`time.monotonic`; None: only
        ``call_seconds`` bounds each)."""
        self._ends_by = ends_by

    def close(self) -> None:
        self._http.close()

    def _authorised_get(
        self, path: str, *, accept: str, unreachable_hint: str = ""
    ) -> httpx.Response:
        return self._authorised("GET", path, accept=accept, unreachable_hint=unreachable_hint)

    def _authorised(
        self,
        method: str,
        path: str,
        *,
        accept: str,
        json_body: object = None,
        unreachable_hint: str = "",
    ) -> httpx.Response:
        url = self._base + path
        # A new token may meet a new nonce: each reason for a retry is answered once, so a call
        # is sent three times at most.
        answered: set[Retry] = set()
        while True:
            headers = {**self._tokens.authorization(method, url), "Accept": accept}
            try:
                response = self._send(method, url, path, headers=headers, json_body=json_body)
            except httpx.HTTPError as exc:
                raise self.unavailable(
                    f"{self.service_name} at {self._base} could not be reached "
                    f"({type(exc).__name__}){unreachable_hint}"
                ) from None
            retry = self._tokens.after_response(response)
            if retry is None or retry in answered:
                return response
            answered.add(retry)

    def _send(
        self, method: str, url: str, path: str, *, headers: dict[str, str], json_body: object
    ) -> httpx.Response:
        """The answer, its body read (decompressed) up to ``max_answer_bytes``."""
        started = time.monotonic()
        ends_by = started + self._call_seconds
        if self._ends_by is not None:
            ends_by = min(ends_by, self._ends_by)
        # each read waits no longer than the time left, so a peer that goes quiet is cut too
        timeout = _bounded(self._http.timeout, max(0.001, ends_by - started))
        request = self._http.build_request(
            method, url, headers=headers, json=json_body, timeout=timeout
        )
        response = self._http.send(request, stream=True)
        limit = self._max_answer_bytes
        try:
            if time.monotonic() > ends_by:  # the status line and headers came that slowly
                raise BodyTooSlow
            body = read_capped(response, limit, deadline=ends_by)
        except BodyTooLarge:
            raise AnswerTooLarge(
                f"{self.service_name} answered more than {_size(limit)} for {path}; such an "
                "answer is not read (max_answer_bytes)"
            ) from None
        except BodyTooSlow:
            raise self.unavailable(
                f"{self.service_name} at {self._base} did not answer {path} whole within "
                f"{ends_by - started:.1f} s (it sends too slowly); the call was given up"
            ) from None
        finally:
            response.close()
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
        return httpx.Response(response.status_code, headers=kept, content=body, request=request)


def _bounded(timeout: httpx.Timeout, seconds: float) -> httpx.Timeout:
    """``timeout`` with no part longer than ``seconds``."""

    def part(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(
        connect=part(timeout.connect),
        read=part(timeout.read),
        write=part(timeout.write),
        pool=part(timeout.pool),
    )


def _size(count: int) -> str:
    return f"{count // (1024 * 1024)} MB" if count >= 1024 * 1024 else f"{count} bytes"


def helseid_token_provider(
    token_url: str,
    client_id: str,
    *,
    scope: str | None,
    key_file: Path | None = None,
    client_secret: str | None = None,
    audience: str | None = None,
    dpop: bool = True,
) -> ClientCredentialsTokenProvider:
    """A HelseID client: with ``key_file`` it signs in with ``private_key_jwt`` (the assertion's
    audience defaults to the token endpoint's origin, HelseID's issuer) and, with ``dpop``,
    asks for DPoP-bound tokens; else it gives ``client_secret``. Raises ``ClientKeyError`` for a
    key that cannot be used and ``ValueError`` when neither is given."""
    if key_file is not None:
        key = load_client_key(key_file)
        return ClientCredentialsTokenProvider(
            token_url,
            client_id,
            scope=scope,
            client_assertion=ClientAssertion(client_id, audience or audience_for(token_url), key),
            dpop=DPoPProver(key) if dpop else None,
        )
    if not client_secret:
        raise ValueError("a HelseID client needs its key file or a client secret")
    return ClientCredentialsTokenProvider(
        token_url, client_id, scope=scope, client_secret=client_secret
    )
