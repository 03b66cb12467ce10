"""OAuth2/JWT bearer tokens from a configured issuer: scopes and HER-ids come from the claims;
a token for another audience, an expired one or one signed by another key gets 401.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from engine_pair import Pair
from fastapi.testclient import TestClient
from token_issuer import ISSUER, token_issuer

from meldingstjener.api.app import create_app
from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.store.audit import AuditQuery, query


def _token(key: rsa.RSAPrivateKey, **changes: Any) -> str:
    claims = {
        "iss": ISSUER,
        "aud": "meldingstjener",
        "exp": datetime.now(UTC) + timedelta(minutes=5),
        "client_id": "jwt-epj",
        "sub": "lege-9",
        "scope": "receive",
        "her_ids": [HOSPITAL_SERVICE_HER],
        **changes,
    }
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256")


def test_bearer_tokens_from_the_issuer(pair: Pair, tmp_path: Path) -> None:
    key, settings = token_issuer(tmp_path)
    with TestClient(create_app(pair.hospital, api_settings=settings)) as http:

        def get(token: str, her_id: str = HOSPITAL_SERVICE_HER) -> int:
            answer = http.get(
                "/Messages",
                params={"ReceiverHerIds": her_id},
                headers={"Authorization": f"Bearer {token}"},
            )
            return answer.status_code

        assert get(_token(key)) == 200
        assert get(_token(key), her_id="8200001") == 403
        assert get(_token(key, aud="someone-else")) == 401
        assert get(_token(key, aud=None)) == 401  # a token naming no audience is not for us
        assert get(_token(key, exp=datetime.now(UTC) - timedelta(minutes=1))) == 401
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert get(_token(other)) == 401
        assert get(_token(key, scope="send")) == 403
        hook = http.post(  # alerts need the admin scope
            "/api/webhooks",
            json={"url": "https://epj.example/hook", "events": ["alert"]},
            headers={"Authorization": f"Bearer {_token(key)}"},
        )
        assert hook.status_code == 403, hook.text
    # a token's client is "jwt:<client_id>" in the logs: never taken for a key client's name
    entries = query(pair.hospital.store, AuditQuery(client="jwt:jwt-epj"))
    assert [(e["person"], e["outcome"]) for e in entries] == [("lege-9", "refused")] * 3


def test_a_token_with_claims_of_other_types_or_bound_to_a_key_is_refused(
    pair: Pair, tmp_path: Path
) -> None:
    # Signed by the issuer, so verified, yet not a token we can act on: claims of another type
    # than ours (they failed the request with a 500), and a token bound to a key whose proof
    # (DPoP) this server does not check (it was taken as a plain bearer token).
    key, settings = token_issuer(tmp_path)
    with TestClient(
        create_app(pair.hospital, api_settings=settings), raise_server_exceptions=False
    ) as http:

        def get(token: str) -> tuple[int, str]:
            answer = http.get(
                "/Messages",
                params={"ReceiverHerIds": HOSPITAL_SERVICE_HER},
                headers={"Authorization": f"Bearer {token}"},
            )
            return answer.status_code, answer.headers["content-type"]

        refused = (401, "application/problem+json")
        # (_token leaves out a claim given as None: this one has it, as null)
        claims = jwt.decode(_token(key), options={"verify_signature": False})
        assert get(jwt.encode({**claims, "her_ids": None}, key, algorithm="RS256")) == refused
        for changes in (
            {"scope": 5},
            {"scope": ["receive", 5]},
            {"her_ids": {"id": HOSPITAL_SERVICE_HER}},
            {"her_ids": [True]},
            {"client_id": 5},
            {"sub": {"hpr": 1}},
            {"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}},
        ):
            assert get(_token(key, **changes)) == refused, changes
        assert get(_token(key, scope=["receive"], her_ids=int(HOSPITAL_SERVICE_HER)))[0] == 200
