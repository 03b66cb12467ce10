"""The Idempotency-Key of POST /Messages stands for one whole request: a retry repeats it and
gets the first message; the key with another document, receiver or overrides is refused.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from api_sites import ApiPair
from fastapi.testclient import TestClient
from token_issuer import ISSUER, token_issuer

from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.store.audit import AuditQuery, query
from meldingstjener.store.uow import LogFilter


def _document(api_pair: ApiPair) -> bytes:
    """A business document (each is made with a new MsgId: made once, then sent again)."""
    return dialog_note(api_pair.pair.gp_site, api_pair.pair.hospital_site, "Bestilling 42")


def _post(
    api_pair: ApiPair,
    document: bytes,
    key: str,
    *,
    http: TestClient | None = None,
    credential: str | None = None,
    **changes: Any,
) -> httpx.Response:
    """POST /Messages as the GP's key client, or with ``credential`` through ``http``."""
    return (http or api_pair.gp_http).post(
        "/Messages",
        headers={
            "Authorization": f"Bearer {credential or api_pair.gp_key}",
            "Idempotency-Key": key,
        },
        json={
            "businessDocument": base64.b64encode(document).decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
            **changes,
        },
    )


def test_the_key_with_another_receiver_or_other_overrides_is_refused(api_pair: ApiPair) -> None:
    # The same document under the same key to another receiver was answered 201 with the first
    # message's id, and nothing went to the receiver asked for.
    document = _document(api_pair)
    to_service = {"receiverHerIdsSubset": [int(HOSPITAL_SERVICE_HER)]}
    naming = {"ebXmlOverrides": {"applicationName": "EPJ Front"}}
    first = _post(api_pair, document, "order-42", **to_service, **naming)
    assert first.status_code == 201, first.text
    retry = _post(api_pair, document, "order-42", **to_service, **naming)
    assert (retry.status_code, retry.json()) == (201, first.json())

    elsewhere = _post(
        api_pair, document, "order-42", receiverHerIdsSubset=[int(HOSPITAL_HER)], **naming
    )
    assert elsewhere.status_code == 409, elsewhere.text
    assert elsewhere.json()["code"] == "idempotency-key-reused"
    assert elsewhere.headers["content-type"].startswith("application/problem+json")
    renamed = _post(
        api_pair, document, "order-42", **to_service, ebXmlOverrides={"applicationName": "B"}
    )
    assert renamed.status_code == 409 and renamed.json()["code"] == "idempotency-key-reused"
    unnamed = _post(api_pair, document, "order-42", **to_service)
    assert unnamed.status_code == 409, unnamed.text

    with api_pair.pair.gp.store.unit_of_work() as uow:
        sent = uow.messages.search(LogFilter(direction="out"))
    assert [m.id for m in sent] == [first.json()]


def test_no_receivers_or_overrides_is_the_same_request_however_it_is_written(
    api_pair: ApiPair,
) -> None:
    document = _document(api_pair)
    first = _post(api_pair, document, "order-43")
    assert first.status_code == 201, first.text
    for spelled in (
        {"receiverHerIdsSubset": []},
        {"receiverHerIdsSubset": None},
        {"ebXmlOverrides": None},
        {"ebXmlOverrides": {"applicationName": None}},
    ):
        again = _post(api_pair, document, "order-43", **spelled)
        assert (again.status_code, again.json()) == (201, first.json()), spelled


def test_a_key_is_its_clients_own_whatever_the_names_hold(
    api_pair: ApiPair, tmp_path: Path
) -> None:
    # Keys were stored as "<client>:<key>": a token's client "dips:a" with key "b" met the key
    # client "dips" with key "a:b", and a token's client named like a key client shared its
    # keys. Each got the other's message, and nothing was sent for it.
    pair = api_pair.pair
    issuer, settings = token_issuer(tmp_path)

    def token(client_id: str) -> str:
        claims = {
            "iss": ISSUER,
            "aud": "meldingstjener",
            "exp": datetime.now(UTC) + timedelta(minutes=5),
            "client_id": client_id,
            "scope": "send",
            "her_ids": [GP_HER],
        }
        return jwt.encode(claims, issuer, algorithm="RS256")

    _, dips_key = add_client(pair.gp.store, "dips", ["send"], [GP_HER])
    document = _document(api_pair)
    with TestClient(create_app(pair.gp, api_settings=settings)) as http:
        answers = [
            _post(api_pair, document, "a:b", http=http, credential=dips_key),
            _post(api_pair, document, "b", http=http, credential=token("dips:a")),
            _post(api_pair, document, "c", http=http, credential=api_pair.gp_key),
            _post(api_pair, document, "c", http=http, credential=token("gp-epj")),
        ]
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    ids = [a.json() for a in answers]
    assert len(set(ids)) == 4
    with pair.gp.store.unit_of_work() as uow:
        sent = uow.messages.search(LogFilter(direction="out"))
        assert sorted(m.id for m in sent) == sorted(ids)
        actors = [uow.events.for_message(i)[0].actor for i in ids]
    # the logs tell a token's client from a key client of the same name, too
    assert actors == ["api:dips", "api:jwt:dips:a", "api:gp-epj", "api:jwt:gp-epj"]
    audited = [query(pair.gp.store, AuditQuery(message_id=i))[0]["client"] for i in ids]
    assert audited == ["dips", "jwt:dips:a", "gp-epj", "jwt:gp-epj"]
