"""HelseID client authentication for NHN's APIs: the signed client assertion and DPoP proofs.

HelseID authenticates a machine client with ``private_key_jwt`` (RFC 7523): instead of a
secret, the client sends a short-lived JWT signed with the key registered for it in HelseID's
self-service portal. NHN's APIs also want the access token bound to a key with DPoP (RFC 9449):
every token request and every API call carries a fresh JWT (the *proof*) signed with that key,
naming the HTTP method and URL and, towards an API, the hash of the token. A stolen token is
useless without the key.

Both servers may answer "use this nonce" (HelseID with ``400 use_dpop_nonce``, an API with
``401`` and ``WWW-Authenticate: DPoP error="use_dpop_nonce"``), each with a ``DPoP-Nonce``
header: the request is made once more, with a proof that carries the nonce. The last nonce each
server sent, on any answer, goes into the next proof for it.

The same key signs the client assertion and the DPoP proofs: that is the one key an operator
has to keep safe and register, and HelseID accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meldingstjener.registry.errors import RegistryError

__all__ = [
    "ClientAssertion",
    "ClientKey",
    "ClientKeyError",
    "DPoPProver",
    "audience_for",
    "jwk_thumbprint",
    "load_client_key",
    "proof_nonce",
    "request_uri",
]

# How long a client assertion is valid: long enough for one request, short enough that a
# captured one is of no use. HelseID refuses an exp more than 60 s ahead of its own clock:
# 30 s leaves room for this host's clock to run ahead of HelseID's.
_ASSERTION_LIFETIME_SECONDS = 30

_RSA_ALGORITHMS = ("PS256", "PS384", "PS512", "RS256", "RS384", "RS512")
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


class ClientKeyError(RegistryError):
    """The HelseID client key cannot be used: unreadable, public only, or of a kind not allowed."""

    code = "helseid-key"


@dataclass(frozen=True)
class ClientKey:
    """The private key of a HelseID client, the JWS algorithm it signs with and its key id."""

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str
    key_id: str | None = None

    def public_jwk(self) -> dict[str, str]:
        """The public half as a DPoP proof carries it: the key's required members only."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            members = RSAAlgorithm.to_jwk(public, as_dict=True)
            return {name: str(members[name]) for name in ("kty", "n", "e")}
        members = ECAlgorithm.to_jwk(public, as_dict=True)
        return {name: str(members[name]) for name in ("kty", "crv", "x", "y")}

    def thumbprint(self) -> str:
        return jwk_thumbprint(self.public_jwk())


def jwk_thumbprint(jwk_members: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the key's required members in lexicographic order, base64url."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}.get(
        str(jwk_members.get("kty"))
    )
    if required is None:
        raise ClientKeyError(f"no thumbprint for a key of type {jwk_members.get('kty')!r}")
    canonical = json.dumps(
        {name: jwk_members[name] for name in required}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def load_client_key(path: Path, *, algorithm: str | None = None) -> ClientKey:
    """Read the client's private key: a JWK (what HelseID's self-service portal hands out) or a
    PEM private key. The algorithm is the JWK's ``alg``, else ``algorithm``, else PS256 for RSA
    and ES256/384/512 for an EC key by its curve."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientKeyError(f"cannot read the HelseID client key {path}: {exc.strerror}") from None
    if data.lstrip().startswith(b"{"):
        return _key_from_jwk(data, path, algorithm)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ClientKeyError(
            f"{path} is neither a JWK nor an unencrypted PEM private key"
        ) from None
    return _checked(key, algorithm, None, path)


def _key_from_jwk(data: bytes, path: Path, algorithm: str | None) -> ClientKey:
    try:
        members = json.loads(data)
    except ValueError:
        raise ClientKeyError(f"{path} is not valid JSON") from None
    if isinstance(members, dict) and isinstance(members.get("keys"), list):
        # A JWK set: HelseID's portal may hand out the key as a set of one.
        private = [k for k in members["keys"] if isinstance(k, dict) and "d" in k]
        if len(private) != 1:
            raise ClientKeyError(f"{path} holds {len(private)} private keys; give one")
        members = private[0]
    if not isinstance(members, dict) or "d" not in members:
        raise ClientKeyError(f"{path} holds no private key (a JWK without 'd' is public)")
    kty = members.get("kty")
    if kty not in ("RSA", "EC"):
        raise ClientKeyError(f"{path} is not an RSA or EC key (kty {str(kty)[:10]!r})")
    try:
        # Read without "alg": PyJWK would refuse a mismatched one with a less helpful message.
        key = jwt.PyJWK({k: v for k, v in members.items() if k != "alg"}).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        # Never the library's message: some quote the whole JWK, private members included.
        raise ClientKeyError(f"{path} is a malformed {kty} JWK") from None
    chosen = members.get("alg") if isinstance(members.get("alg"), str) else algorithm
    kid = members.get("kid") if isinstance(members.get("kid"), str) else None
    return _checked(key, chosen, kid, path)


def _checked(key: object, algorithm: str | None, kid: str | None, path: Path) -> ClientKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ClientKeyError(f"the RSA key in {path} has {key.key_size} bits; use 2048 or more")
        chosen = algorithm or "PS256"
        if chosen not in _RSA_ALGORITHMS:
            raise ClientKeyError(f"{chosen} is not an algorithm for the RSA key in {path}")
        return ClientKey(key, chosen, kid)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        expected = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name
        )
        if expected is None or (algorithm is not None and algorithm != expected):
            raise ClientKeyError(
                f"the EC key in {path} (curve {key.curve.name}) cannot sign {algorithm or 'JWS'}"
            )
        return ClientKey(key, expected, kid)
    raise ClientKeyError(f"the key in {path} is neither RSA nor EC")


def audience_for(token_url: str) -> str:
    """HelseID's issuer, the audience of a client assertion: the token endpoint's origin
    (``https://helseid-sts.nhn.no`` for ``https://helseid-sts.nhn.no/connect/token``)."""
    parts = urlsplit(token_url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def request_uri(url: str) -> str:
    """A DPoP proof's ``htu``: the URL as the request line sends it (host in lower case, the
    path percent-encoded, a default port left out), without query and fragment."""
    return str(httpx.URL(url).copy_with(query=None, fragment=None))


def proof_nonce(proof: str | None) -> str | None:
    """The nonce a (sent) DPoP proof carried, read without verifying it: it is our own."""
    if not proof:
        return None
    try:
        nonce = jwt.decode(proof, options={"verify_signature": False}).get("nonce")
    except jwt.PyJWTError:
        return None
    return nonce if isinstance(nonce, str) else None


class ClientAssertion:
    """``private_key_jwt``: a fresh signed JWT for each token request (its jti is single use)."""

    def __init__(
        self,
        client_id: str,
        audience: str,
        key: ClientKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_id = client_id
        self._audience = audience
        self._key = key
        self._clock = clock

    def __call__(self) -> str:
        now = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._audience,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + _ASSERTION_LIFETIME_SECONDS,
        }
        headers: dict[str, Any] = {"typ": "client-authentication+jwt"}
        if self._key.key_id:
            headers["kid"] = self._key.key_id
        return jwt.encode(claims, self._key.private_key, self._key.algorithm, headers=headers)


class DPoPProver:
    """Makes DPoP proofs with the client key, and keeps the last nonce each server asked for."""

    def __init__(self, key: ClientKey, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self._jwk = key.public_jwk()
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def thumbprint(self) -> str:
        return jwk_thumbprint(self._jwk)

    def proof(self, method: str, url: str, *, access_token: str | None = None) -> str:
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "htm": method.upper(),
            "htu": request_uri(url),
            "iat": int(self._clock()),
        }
        nonce = self._nonce_for(url)
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = _b64url(hashlib.sha256(access_token.encode("ascii")).digest())
        headers = {"typ": "dpop+jwt", "jwk": self._jwk}
        return jwt.encode(claims, self._key.private_key, self._key.algorithm, headers=headers)

    def remember_nonce(self, url: str, nonce: str | None) -> None:
        """Keep the nonce a server sent (on any answer, RFC 9449 section 8 and 9)."""
        if nonce:
            with self._lock:
                self._nonces[audience_for(url)] = nonce

    def _nonce_for(self, url: str) -> str | None:
        with self._lock:
            return self._nonces.get(audience_for(url))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
