"""The Idempotency-Key of POST /Messages stands for one whole request: a retry repeats it and
gets the first message; the key with another document, receiver or overrides is refused.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
from api_sites import ApiPair

from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.store.uow import LogFilter


def _document(api_pair: ApiPair) -> bytes:
    """A business document (each is made with a new MsgId: made once, then sent again)."""
    return dialog_note(api_pair.pair.gp_site, api_pair.pair.hospital_site, "Bestilling 42")


def _post(api_pair: ApiPair, document: bytes, key: str, **changes: Any) -> httpx.Response:
    return api_pair.gp_http.post(
        "/Messages",
        headers={"Authorization": f"Bearer {api_pair.gp_key}", "Idempotency-Key": key},
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
