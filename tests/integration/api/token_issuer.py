"""A token issuer for the API tests: an RSA key, its public half in a file, and the API settings
that trust it (``ISSUER``, audience ``meldingstjener``). Each test makes its own tokens."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meldingstjener.config import ApiSettings

ISSUER = "https://helseid.test"
AUDIENCE = "meldingstjener"


class TokenIssuer(NamedTuple):
    key: rsa.RSAPrivateKey
    settings: ApiSettings


def token_issuer(directory: Path) -> TokenIssuer:
    """A new issuer key, its public key written under ``directory``, and settings trusting it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = directory / "issuer.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = ApiSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_public_key_file=public)
    return TokenIssuer(key, settings)
