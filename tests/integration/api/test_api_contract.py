"""What the EDI 2.0-shaped API tells an EPJ about a request it refuses: the types a body and a
business document may be sent as, and why a message the EPJ can read is not found by an
operation of the other direction's messages."""

from __future__ import annotations

import base64
import json
from typing import Any

from api_sites import ApiPair

from meldingstjener.devsites import HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.store.audit import AuditQuery, query

XML_TYPES = ("application/xml", "text/xml")  # what NHN's contract and this server take


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _post_message_body(api_pair: ApiPair, **fields: Any) -> dict[str, Any]:
    document = dialog_note(api_pair.pair.gp_site, api_pair.pair.hospital_site, "Kontroll")
    return {
        "businessDocument": base64.b64encode(document).decode(),
        "contentType": "application/xml",
        "contentTransferEncoding": "base64",
        **fields,
    }


def test_a_business_document_of_another_type_is_told_every_type_taken(api_pair: ApiPair) -> None:
    # "contentType must be application/xml" was answered while text/xml is taken too.
    http, headers = api_pair.gp_http, _bearer(api_pair.gp_key)
    refused = http.post(
        "/Messages", headers=headers, json=_post_message_body(api_pair, contentType="text/plain")
    )
    assert refused.status_code == 400 and refused.json()["code"] == "invalid-input"
    assert all(kind in refused.json()["detail"] for kind in XML_TYPES), refused.json()
    encoded = http.post(
        "/Messages",
        headers=headers,
        json=_post_message_body(api_pair, contentTransferEncoding="quoted-printable"),
    )
    assert encoded.status_code == 400 and "'base64'" in encoded.json()["detail"]
    taken = http.post(
        "/Messages",
        headers=headers,
        json=_post_message_body(api_pair, contentType="Text/XML; charset=utf-8"),
    )
    assert taken.status_code == 201, taken.text
    # the schema says which values are taken, and keeps them strings as NHN's contract has them
    document = http.get("/openapi.json").json()
    fields = document["components"]["schemas"]["PostMessageRequest"]["properties"]
    assert fields["contentType"]["type"] == "string"
    assert all(kind in fields["contentType"]["description"] for kind in XML_TYPES)
    assert fields["contentTransferEncoding"]["examples"] == ["base64"]


def test_status_and_apprec_of_a_received_message_say_they_are_of_sent_messages(
    api_pair: ApiPair,
) -> None:
    # GET /Messages/{id} showed the received message, and its status was "no message <id>".
    pair = api_pair.pair
    posted = api_pair.post_note("Svar")
    assert posted.status_code == 201, posted.text
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    http, headers = api_pair.hospital_http, _bearer(api_pair.hospital_key)
    assert http.get(f"/Messages/{received.id}", headers=headers).status_code == 200
    for route in ("status", "apprec"):
        answer = http.get(f"/Messages/{received.id}/{route}", headers=headers)
        assert answer.status_code == 404 and answer.json()["code"] == "not-found"
        assert answer.json()["detail"] == (
            f"{received.id} is not a message this client sent (status and AppRec are of sent "
            "messages)"
        )
    # and the other way: a sent message is not answered as a received one
    sent = posted.json()
    answer = api_pair.gp_http.put(
        f"/Messages/{sent}/read/{HOSPITAL_SERVICE_HER}", headers=_bearer(api_pair.gp_key)
    )
    assert answer.status_code == 404 and answer.json()["code"] == "not-found"
    assert answer.json()["detail"].startswith(f"{sent} is not a message this client received")


def test_a_body_not_sent_as_json_is_415_naming_the_types_taken(api_pair: ApiPair) -> None:
    # A POST /Messages with Content-Type text/plain, application/xml or none was answered
    # 400 "body: Input should be a valid dictionary", as if the JSON were wrong.
    http, headers = api_pair.gp_http, _bearer(api_pair.gp_key)
    body = json.dumps(_post_message_body(api_pair)).encode()
    for content_type in (
        "text/plain",
        "application/xml",
        None,
        "application/x-www-form-urlencoded",
    ):
        sent = {**headers, **({"Content-Type": content_type} if content_type else {})}
        for path in ("/Messages", "/api/webhooks"):
            answer = http.post(path, headers=sent, content=body)
            assert answer.status_code == 415, (content_type, path, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["code"] == "unsupported-media-type"
            assert answer.json()["errorCode"] == 4150
            assert answer.headers["connection"] == "close"  # its body unread: not kept
            for taken in ("application/json", "text/json", "application/*+json"):
                assert taken in answer.json()["detail"], answer.json()
    audited = query(api_pair.pair.gp.store, AuditQuery(client="gp-epj"))
    assert ("send-message", "invalid") in {(row["action"], row["outcome"]) for row in audited}
    # JSON in each of the contract's types is read as JSON
    for content_type in ("application/json", "text/json; charset=utf-8", "application/epj+json"):
        answer = http.post(
            "/Messages", headers={**headers, "Content-Type": content_type}, content=body
        )
        assert answer.status_code == 201, (content_type, answer.text)
    # a caller nobody knows is answered 401 first, whatever its body
    stranger = http.post("/Messages", headers={"Content-Type": "text/plain"}, content=b"x")
    assert stranger.status_code == 401
    # a route that takes no body is not refused for a stray type (an empty PUT of a client
    # library that names one)
    pair = api_pair.pair
    pair.run()
    received = pair.inbound_messages(pair.hospital)[0]
    read = api_pair.hospital_http.put(
        f"/Messages/{received.id}/read/{received.to_her_id}",
        headers={**_bearer(api_pair.hospital_key), "Content-Type": "text/plain"},
        content=b"",
    )
    assert read.status_code == 204, read.text
