"""Values the API accepts fit where they are written: a client's name in the message log's actor
and the audit log, a person after its national identity numbers are masked. PostgreSQL refuses
a text longer than its column, so a value the API let through failed the request with a 500.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from engine_pair import Pair
from fastapi.testclient import TestClient
from sqlalchemy import text
from token_issuer import ISSUER, token_issuer

from meldingstjener.api.app import create_app
from meldingstjener.api.clients import ClientError, add_client, hash_key
from meldingstjener.devsites import GP_HER, HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.store.audit import AuditQuery, query


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _note(pair: Pair) -> dict[str, str]:
    document = dialog_note(pair.gp_site, pair.hospital_site, "Lang")
    return {
        "businessDocument": base64.b64encode(document).decode(),
        "contentType": "application/xml",
        "contentTransferEncoding": "base64",
    }


def test_a_client_name_fits_the_logs_or_is_refused_when_made(pair: Pair) -> None:
    with pytest.raises(ClientError) as refused:
        add_client(pair.gp.store, "x" * 101, ["send"], [GP_HER])
    assert refused.value.code == "invalid-name"
    _, key = add_client(pair.gp.store, "x" * 100, ["send"], [GP_HER])
    # a client an earlier version made with a longer name: refused with the reason, not a 500
    with pair.gp.store.database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO api_clients (name, key_hash, scopes, her_ids, created_at)"
                " VALUES (:name, :hash, '[\"send\"]', :her_ids, CURRENT_TIMESTAMP)"
            ),
            {"name": "y" * 128, "hash": hash_key("old-key"), "her_ids": f'["{GP_HER}"]'},
        )
    with TestClient(create_app(pair.gp), raise_server_exceptions=False) as http:
        sent = http.post("/Messages", headers=_bearer(key), json=_note(pair))
        assert sent.status_code == 201, sent.text
        old = http.post("/Messages", headers=_bearer("old-key"), json=_note(pair))
    assert old.status_code == 401, old.text
    assert "shorter name" in old.json()["detail"]


def test_a_person_is_cut_to_fit_after_its_identity_numbers_are_masked(pair: Pair) -> None:
    _, key = add_client(pair.hospital.store, "dips", ["receive"], [HOSPITAL_SERVICE_HER])
    # 128 characters as sent (the most kept), longer once the number is masked
    person = "x" * 116 + " 01017012345"
    with TestClient(create_app(pair.hospital), raise_server_exceptions=False) as http:
        missing = http.get(
            f"/Messages/{uuid.uuid4()}", headers={**_bearer(key), "X-Person": person}
        )
    assert missing.status_code == 404, missing.text
    [row] = query(pair.hospital.store, AuditQuery(client="dips"))
    assert row["person"] == ("x" * 116 + " [redacted-id]")[:128]


def _token(key: rsa.RSAPrivateKey, **changes: Any) -> str:
    claims = {
        "iss": ISSUER,
        "aud": "meldingstjener",
        "exp": datetime.now(UTC) + timedelta(minutes=5),
        "scope": "send",
        "her_ids": [GP_HER],
        **changes,
    }
    return jwt.encode(claims, key, algorithm="RS256")


def test_a_tokens_client_id_fits_the_logs_or_the_token_is_refused(
    pair: Pair, tmp_path: Path
) -> None:
    key, settings = token_issuer(tmp_path)
    with TestClient(
        create_app(pair.gp, api_settings=settings), raise_server_exceptions=False
    ) as http:
        sent = http.post(
            "/Messages", headers=_bearer(_token(key, client_id="j" * 100)), json=_note(pair)
        )
        assert sent.status_code == 201, sent.text
        # one over the limit, and one that did not fit the message log's actor (a 500)
        for client_id in ("j" * 101, "j" * 200):
            refused = http.post(
                "/Messages", headers=_bearer(_token(key, client_id=client_id)), json=_note(pair)
            )
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "unauthenticated"
