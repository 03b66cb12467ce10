"""HelseID client authentication: the client key, the client assertion, DPoP proofs, and the
fake token endpoint's checks of them (without sockets)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meldingstjener.registry.fakes import FakeHelseId, Request
from meldingstjener.registry.helseid import (
    ClientAssertion,
    ClientKey,
    ClientKeyError,
    DPoPProver,
    audience_for,
    jwk_thumbprint,
    load_client_key,
    proof_nonce,
    request_uri,
)

TOKEN_URL = "http://sts.test/connect/token"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _jwk_file(tmp_path: Path, members: dict[str, Any]) -> Path:
    path = tmp_path / "client.jwk"
    path.write_text(json.dumps(members))
    return path


def test_the_rfc_7638_thumbprint_example() -> None:
    # RFC 7638, section 3.1: this RSA key's thumbprint.
    key = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t"
        "Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
        "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqD"
        "Kgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_jwk_from_the_self_service_portal_is_read_with_its_alg_and_kid(tmp_path: Path) -> None:
    members = {**RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), "alg": "RS256", "kid": "k-1"}
    key = load_client_key(_jwk_file(tmp_path, members))
    assert (key.algorithm, key.key_id) == ("RS256", "k-1")
    assert "d" not in key.public_jwk() and key.public_jwk()["n"] == members["n"]
    # a set of one key, and no alg: PS256 for RSA
    del members["alg"]
    key = load_client_key(_jwk_file(tmp_path, {"keys": [members]}))
    assert key.algorithm == "PS256"


def test_a_pem_key_is_read_and_its_algorithm_follows_the_curve(tmp_path: Path) -> None:
    pem = tmp_path / "client.pem"
    ec_key = ec.generate_private_key(ec.SECP384R1())
    pem.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key = load_client_key(pem)
    assert (key.algorithm, key.key_id) == ("ES384", None)
    with pytest.raises(ClientKeyError, match="cannot sign ES256"):
        load_client_key(pem, algorithm="ES256")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (json.dumps(RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)), "no private key"),
        ("{not json", "not valid JSON"),
        ("-----BEGIN NOTHING-----", "neither a JWK nor"),
        (
            json.dumps({**RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), "alg": "HS256"}),
            "not an algorithm for the RSA key",
        ),
        (
            json.dumps(
                RSAAlgorithm.to_jwk(
                    rsa.generate_private_key(public_exponent=65537, key_size=1024), as_dict=True
                )
            ),
            "1024 bits",
        ),
    ],
    # named, not by the generated keys: every xdist worker must collect the same names
    ids=["public-key-only", "not-json", "not-a-key", "hmac-alg-on-rsa", "rsa-1024"],
)
def test_an_unusable_key_is_refused_with_the_reason(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(ClientKeyError, match=problem) as refused:
        load_client_key(path)
    assert refused.value.code == "helseid-key"
    with pytest.raises(ClientKeyError, match="cannot read"):
        load_client_key(tmp_path / "missing.jwk")


def test_the_client_assertion_names_the_client_and_the_issuer_and_lives_half_a_minute() -> None:
    key = ClientKey(RSA_KEY, "PS256", "k-1")
    make = ClientAssertion("client-1", audience_for(TOKEN_URL), key, clock=lambda: 1_000_000)
    first, second = make(), make()
    header = jwt.get_unverified_header(first)
    assert header == {"alg": "PS256", "kid": "k-1", "typ": "client-authentication+jwt"}
    claims = jwt.decode(
        first,
        RSA_KEY.public_key(),
        algorithms=["PS256"],
        audience="http://sts.test",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["iss"] == claims["sub"] == "client-1"
    assert (claims["iat"], claims["exp"]) == (1_000_000, 1_000_030)
    assert jwt.decode(second, options={"verify_signature": False})["jti"] != claims["jti"]


def test_a_ps256_signature_is_rsassa_pss_with_a_salt_as_long_as_the_hash() -> None:
    # Checked with the cryptography primitives, not PyJWT: a verifier (HelseID runs on .NET)
    # expects RFC 7518's PSS parameters, MGF1 with SHA-256 and a 32-byte salt.
    token = ClientAssertion("c", "aud", ClientKey(RSA_KEY, "PS256"))()
    signing_input, _, signature = token.rpartition(".")
    RSA_KEY.public_key().verify(
        _b64url_decode(signature),
        signing_input.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    with pytest.raises(InvalidSignature):
        RSA_KEY.public_key().verify(
            _b64url_decode(signature),
            signing_input.encode(),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20),
            hashes.SHA256(),
        )


def test_a_dpop_proof_names_the_request_the_token_and_the_nonce() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    prover = DPoPProver(ClientKey(ec_key, "ES256"), clock=lambda: 2_000)
    plain = prover.proof("get", "https://api.test/v1/party/5?x=1#f")
    header = jwt.get_unverified_header(plain)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256"
    assert header["jwk"] == ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    claims = jwt.decode(plain, ec_key.public_key(), algorithms=["ES256"])
    assert (claims["htm"], claims["htu"], claims["iat"]) == (
        "GET",
        "https://api.test/v1/party/5",
        2_000,
    )
    assert "ath" not in claims and "nonce" not in claims
    prover.remember_nonce("https://api.test/other", "n-1")
    bound = prover.proof("GET", "https://api.test/v1/party/5", access_token="tok")
    claims = jwt.decode(bound, ec_key.public_key(), algorithms=["ES256"])
    assert claims["nonce"] == "n-1" and proof_nonce(bound) == "n-1"
    assert proof_nonce(plain) is None and proof_nonce("not a jwt") is None
    assert _b64url_decode(claims["ath"]) == hashlib.sha256(b"tok").digest()
    # the nonce of one server is not shown to another
    elsewhere = prover.proof("POST", "https://sts.test/connect/token")
    assert "nonce" not in jwt.decode(elsewhere, ec_key.public_key(), algorithms=["ES256"])
    assert prover.thumbprint == jwk_thumbprint(header["jwk"])


def _token_request(form: dict[str, str], proof: str | None = None) -> Request:
    body = "&".join(f"{k}={v}" for k, v in form.items()).encode()
    headers = {"host": "sts.test"}
    if proof is not None:
        headers["dpop"] = proof
    return Request("POST", "/connect/token", {}, headers, body)


def _assertion_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": "c",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def test_the_fake_token_endpoint_checks_the_assertion_and_the_proof() -> None:
    key = ClientKey(RSA_KEY, "PS256")
    helseid = FakeHelseId(keys={"c": RSA_KEY.public_key()}, nonce="n-1")
    assertion = ClientAssertion("c", "http://sts.test", key)
    prover = DPoPProver(key)

    # a proof without the nonce is answered with it; the assertion is spent all the same
    first = assertion()
    asked = helseid(_token_request(_assertion_form(first), prover.proof("POST", TOKEN_URL)))
    assert asked.status == 400 and asked.headers["DPoP-Nonce"] == "n-1"
    replayed = helseid(_token_request(_assertion_form(first), prover.proof("POST", TOKEN_URL)))
    assert replayed.status == 401 and helseid.refusals[-1] == "the client assertion was used before"

    prover.remember_nonce(TOKEN_URL, "n-1")
    answer = helseid(_token_request(_assertion_form(assertion()), prover.proof("POST", TOKEN_URL)))
    assert answer.status == 200
    body = json.loads(answer.body)
    assert body["token_type"] == "DPoP" and helseid.issued[body["access_token"]] == key.thumbprint()

    # another client's key, another audience, a proof for another URL
    stranger = ClientKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "PS256")
    forged = ClientAssertion("c", "http://sts.test", stranger)()
    assert helseid(_token_request(_assertion_form(forged))).status == 401
    elsewhere = ClientAssertion("c", "http://other.test", key)()
    assert helseid(_token_request(_assertion_form(elsewhere))).status == 401
    wrong_url = prover.proof("POST", "http://sts.test/connect/other")
    refused = helseid(_token_request(_assertion_form(assertion()), wrong_url))
    assert refused.status == 400 and json.loads(refused.body)["error"] == "invalid_dpop_proof"


def test_the_proof_names_the_uri_as_the_request_line_sends_it() -> None:
    assert request_uri("HTTPS://API.Test:443/cpa/Agreements/a b?x=1#f") == (
        "https://api.test/cpa/Agreements/a%20b"
    )
    assert request_uri("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080/x"


def test_a_malformed_jwk_is_refused_without_quoting_it(tmp_path: Path) -> None:
    members = RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True)
    secret_part = members["d"]
    without_kty = {k: v for k, v in members.items() if k != "kty"}
    for broken in (without_kty, {**members, "n": "!!"}, {**members, "kty": "oct"}):
        with pytest.raises(ClientKeyError) as refused:
            load_client_key(_jwk_file(tmp_path, broken))
        assert secret_part[:12] not in str(refused.value)


def test_the_public_jwk_has_the_required_members_only() -> None:
    assert set(ClientKey(RSA_KEY, "PS256").public_jwk()) == {"kty", "n", "e"}
    ec_key = ClientKey(ec.generate_private_key(ec.SECP256R1()), "ES256")
    assert set(ec_key.public_jwk()) == {"kty", "crv", "x", "y"}
