"""Rights, audit and bad input: no client reads or answers for a HER-id it may not act for, every
attempt is audited, and client mistakes get a 4xx problem body, never a 5xx.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from api_sites import ApiPair
from engine_pair import at_once
from fastapi.testclient import TestClient
from outage import database_away
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

import meldingstjener.cli.api_cmds  # noqa: F401  (registers the commands)
from meldingstjener import __version__
from meldingstjener.api.app import create_app
from meldingstjener.api.limits import SMALL_BODY_LIMIT
from meldingstjener.cli.app import app
from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.store import audit
from meldingstjener.store.audit import AuditQuery, query
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import LogFilter, MessageRepository, UnitOfWork


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _deliver_one(api_pair: ApiPair) -> str:
    pair = api_pair.pair
    sent = api_pair.post_note("Svar på prøver")
    assert sent.status_code == 201, sent.text
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    return received.id


def test_client_without_rights_gets_403_and_the_attempt_is_audited(api_pair: ApiPair) -> None:
    received_id = _deliver_one(api_pair)
    outsider = {**_bearer(api_pair.outsider_key), "X-Person": "helsesekretaer 42"}
    http = api_pair.hospital_http

    document = http.get(f"/Messages/{received_id}/business-document", headers=outsider)
    assert document.status_code == 403
    assert document.headers["content-type"].startswith("application/problem+json")
    assert document.json()["code"] == "forbidden"
    listing = http.get(
        "/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER}, headers=outsider
    )
    assert listing.status_code == 403
    apprec = http.post(
        f"/Messages/{received_id}/apprec/{HOSPITAL_SERVICE_HER}",
        headers=outsider,
        json={"appRecStatus": "Ok"},
    )
    assert apprec.status_code == 403
    # The scope is checked too: the admin may search the log but not read the message.
    admin_read = http.get(f"/Messages/{received_id}", headers=_bearer(api_pair.hospital_admin_key))
    assert admin_read.status_code == 403

    entries = query(api_pair.pair.hospital.store, AuditQuery(client="lab-system"))
    assert [(e["action"], e["outcome"]) for e in entries] == [
        ("get-business-document", "refused"),
        ("list-messages", "refused"),
        ("send-apprec", "refused"),
    ]
    assert entries[0]["messageId"] == received_id
    assert entries[0]["person"] == "helsesekretaer 42"
    # Refused reads deliver nothing: the message is still waiting for the EPJ.
    assert api_pair.pair.message(api_pair.pair.hospital, received_id).status == "acknowledged"

    # The operator sees the same through the API and the CLI.
    admin = _bearer(api_pair.hospital_admin_key)
    through_api = http.get("/api/audit", params={"message_id": received_id}, headers=admin)
    assert [e["outcome"] for e in through_api.json()] == ["refused", "refused", "refused"]
    settings = api_pair.pair.hospital_site.config_path
    result = CliRunner().invoke(
        app, ["--config", str(settings), "audit", "--client", "lab-system", "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert {line["outcome"] for line in lines} == {"refused"} and len(lines) == 3


def test_allowed_reads_are_audited_with_the_person(api_pair: ApiPair) -> None:
    received_id = _deliver_one(api_pair)
    headers = {**_bearer(api_pair.hospital_key), "X-Person": "lege 7"}
    http = api_pair.hospital_http
    assert http.get(f"/Messages/{received_id}/business-document", headers=headers).is_success
    assert (
        http.put(
            f"/Messages/{received_id}/read/{HOSPITAL_SERVICE_HER}", headers=headers
        ).status_code
        == 204
    )
    entries = query(api_pair.pair.hospital.store, AuditQuery(message_id=received_id))
    assert [(e["client"], e["person"], e["action"], e["outcome"]) for e in entries] == [
        ("dips", "lege 7", "get-business-document", "ok"),
        ("dips", "lege 7", "mark-read", "ok"),
    ]
    assert api_pair.pair.message(api_pair.pair.hospital, received_id).status == "delivered"


def test_fetching_the_document_does_not_deliver_it_marking_it_read_does(
    api_pair: ApiPair,
) -> None:
    """The bytes of a fetch may never reach the EPJ: the message stays unread and undelivered
    (no auto-AppRec goes out) until the EPJ marks it read."""
    received_id = _deliver_one(api_pair)
    pair, http = api_pair.pair, api_pair.hospital_http
    headers = _bearer(api_pair.hospital_key)

    def unread() -> list[str]:
        listed = http.get(
            "/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER}, headers=headers
        )
        assert listed.status_code == 200, listed.text
        return [m["id"] for m in listed.json()]

    for _ in range(2):  # a fetch, and a fetch again after a lost answer
        assert http.get(f"/Messages/{received_id}/business-document", headers=headers).is_success
    assert pair.message(pair.hospital, received_id).status == "acknowledged"
    assert unread() == [received_id]
    read = http.put(f"/Messages/{received_id}/read/{HOSPITAL_SERVICE_HER}", headers=headers)
    assert read.status_code == 204, read.text
    assert pair.message(pair.hospital, received_id).status == "delivered"
    assert unread() == []


def test_a_delivery_the_store_refuses_leaves_the_message_unread_for_a_retry(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marking read and delivering are one transaction: when the store refuses the delivery,
    the message is neither read nor delivered (it stays in the unread list, the engine still
    waits for it), and the EPJ's retry delivers it."""
    received_id = _deliver_one(api_pair)
    pair = api_pair.pair
    headers = _bearer(api_pair.hospital_key)
    mark_read = f"/Messages/{received_id}/read/{HOSPITAL_SERVICE_HER}"
    set_status = MessageRepository.set_status

    def refusing_delivery(
        self: MessageRepository, row: MessageRow, new_status: str, **kwargs: Any
    ) -> MessageRow:
        if new_status == "delivered":
            # as psycopg tells a connection lost with no answer from the server
            went_away = psycopg.OperationalError("the database went away")
            raise OperationalError("UPDATE messages", {}, went_away)
        return set_status(self, row, new_status, **kwargs)

    monkeypatch.setattr(MessageRepository, "set_status", refusing_delivery)
    with TestClient(create_app(pair.hospital), raise_server_exceptions=False) as http:

        def unread() -> list[str]:
            listed = http.get(
                "/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER}, headers=headers
            )
            assert listed.status_code == 200, listed.text
            return [m["id"] for m in listed.json()]

        # the database "went away": 503, repeat later (see test_server_faults.py)
        assert http.put(mark_read, headers=headers).status_code == 503
        stored = pair.message(pair.hospital, received_id)
        assert (stored.read_at, stored.status) == (None, "acknowledged")
        assert unread() == [received_id]
        monkeypatch.undo()  # the store takes writes again
        assert http.put(mark_read, headers=headers).status_code == 204
        stored = pair.message(pair.hospital, received_id)
        assert stored.read_at is not None and stored.status == "delivered"
        assert unread() == []


def test_a_request_fastapi_refuses_is_audited_with_codes_never_values(api_pair: ApiPair) -> None:
    """A body that is not JSON, or a field FastAPI's validation refuses, never reaches our code:
    it is audited all the same (client, person, operation, ``invalid``), by where each fault
    is and which rule it broke, and never with what was sent (it may be patient data)."""
    http = api_pair.hospital_http
    message_id = str(uuid.uuid4())
    apprec = f"/Messages/{message_id}/apprec/{HOSPITAL_SERVICE_HER}"
    headers = {
        **_bearer(api_pair.hospital_key),
        "X-Person": "lege 7",
        "Content-Type": "application/json",
    }
    patient = ("Kari Nordmann", "01017012345")
    requests = [
        ("POST", apprec, b'{"appRecStatus": "Kari Nordmann'),  # cut off: not JSON
        (
            "POST",
            apprec,
            json.dumps(
                {"appRecStatus": "Kari Nordmann", "fnr 01017012345": "x", "appRecErrorList": 5}
            ).encode(),
        ),
        ("POST", "/Messages", json.dumps({"businessDocument": 1, "note": "Kari"}).encode()),
        ("POST", "/api/webhooks", json.dumps({"url": "https://[Kari Nordmann]/"}).encode()),
        ("GET", "/Messages?ReceiverHerIds=Kari", None),
    ]
    for method, path, body in requests:
        answer = http.request(method, path, headers=headers, content=body)
        assert answer.status_code == 400 and answer.json()["code"] == "invalid-input", answer.text
    rows = query(api_pair.pair.hospital.store, AuditQuery())
    assert [(r["client"], r["person"], r["action"], r["outcome"]) for r in rows] == [
        ("dips", "lege 7", "send-apprec", "invalid"),
        ("dips", "lege 7", "send-apprec", "invalid"),
        ("dips", "lege 7", "send-message", "invalid"),
        ("dips", "lege 7", "/api/webhooks", "invalid"),
        ("dips", "lege 7", "list-messages", "invalid"),
    ]
    assert [r["messageId"] for r in rows] == [message_id, message_id, None, None, None]
    details = [str(r["detail"]) for r in rows]
    assert "body.17 (json_invalid)" in details[0]  # where the string began
    assert "body.appRecStatus.str-enum[AppRecStatus] (enum)" in details[1]
    assert "body.* (extra_forbidden)" in details[1]
    assert "body.appRecErrorList (list_type)" in details[1]
    assert "body.businessDocument (string_type)" in details[2]
    assert "body.url (value_error)" in details[3]
    assert "query.ReceiverHerIds.0 (int_parsing)" in details[4]
    for detail in details:
        assert not any(value in detail for value in (*patient, "Kari", "fnr")), detail


def test_an_unauthenticated_malformed_request_is_audited_under_no_client(
    api_pair: ApiPair,
) -> None:
    """No row under a name the request did not prove: it is answered 401 unread."""
    http = api_pair.hospital_http
    apprec = f"/Messages/{uuid.uuid4()}/apprec/{HOSPITAL_SERVICE_HER}"
    for credentials in ({}, _bearer("dips"), {"X-Api-Key": "not-a-key", "X-Person": "lege 7"}):
        headers = {**credentials, "Content-Type": "application/json"}
        for body in (b'{"appRecStatus": ', b'{"appRecStatus": "Kari"}'):
            answer = http.post(apprec, headers=headers, content=body)
            assert answer.status_code == 401, answer.text
    assert query(api_pair.pair.hospital.store, AuditQuery()) == []


def test_an_epj_answering_under_auto_apprec_sends_its_own_apprec_only(api_pair: ApiPair) -> None:
    """With an agreement that answers automatically on delivery, an EPJ that fetches and then
    posts its own AppRec gets it sent (not a 409 after an automatic one went first)."""
    pair = api_pair.pair
    with pair.hospital.store.unit_of_work() as uow:
        agreement = uow.agreements.for_pair("8200001", "8100001")
        assert agreement is not None
        agreement.auto_apprec, agreement.apprec_version = True, "1.0"
        uow.commit()
    received_id = _deliver_one(api_pair)
    http, headers = api_pair.hospital_http, _bearer(api_pair.hospital_key)
    assert http.get(f"/Messages/{received_id}/business-document", headers=headers).is_success
    refused = http.post(  # a rejection without an error code is refused, and changes nothing
        f"/Messages/{received_id}/apprec/{HOSPITAL_SERVICE_HER}",
        headers=headers,
        json={"appRecStatus": "Rejected"},
    )
    assert refused.status_code in (400, 409), refused.text
    assert pair.message(pair.hospital, received_id).status == "acknowledged"
    answered = http.post(
        f"/Messages/{received_id}/apprec/{HOSPITAL_SERVICE_HER}",
        headers=headers,
        json={
            "appRecStatus": "Rejected",
            "appRecErrorList": [{"errorCode": "E10", "details": "Ukjent pasient"}],
        },
    )
    assert answered.status_code == 201, answered.text
    pair.run()
    assert pair.message(pair.hospital, received_id).status == "rejected"
    [apprec] = [m for m in pair.inbound_messages(pair.gp) if m.msg_type == "APPREC"]
    assert pair.message(pair.gp, str(apprec.id)).status == "acknowledged"
    with pair.gp.store.unit_of_work() as uow:
        [sent] = [m for m in uow.messages.search(LogFilter(direction="out"))]
    assert sent.status == "apprec-rejected"


def test_cli_client_lifecycle_and_401s(api_pair: ApiPair) -> None:
    """Made by the CLI, the key works once shown; without a key or after revoking: 401."""
    settings = api_pair.pair.hospital_site.config_path
    made = CliRunner().invoke(
        app,
        [
            "--config",
            str(settings),
            "clients",
            "add",
            "new-epj",
            "--scope",
            "receive",
            "--her-id",
            HOSPITAL_SERVICE_HER,
        ],
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    listed = api_pair.hospital_http.get(
        "/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER}, headers=_bearer(key)
    )
    assert listed.status_code == 200 and listed.json() == []
    shown = CliRunner().invoke(app, ["--config", str(settings), "clients", "list", "--json"])
    assert key not in shown.output and "new-epj" in shown.output
    http = api_pair.hospital_http
    missing = http.get("/Messages", params={"ReceiverHerIds": HOSPITAL_SERVICE_HER})
    assert missing.status_code == 401 and missing.json()["code"] == "unauthenticated"
    colon = CliRunner().invoke(
        app, ["--config", str(settings), "clients", "add", "a:b", "--scope", "receive"]
    )
    assert colon.exit_code != 0 and "invalid-name" in colon.output
    result = CliRunner().invoke(app, ["--config", str(settings), "clients", "revoke", "dips"])
    assert result.exit_code == 0, result.output
    revoked = http.get(
        "/Messages",
        params={"ReceiverHerIds": HOSPITAL_SERVICE_HER},
        headers={"X-Api-Key": api_pair.hospital_key},
    )
    assert revoked.status_code == 401


def test_cli_refuses_a_client_for_a_her_id_not_ours(api_pair: ApiPair) -> None:
    """A client made for the GP's HER-id on the hospital's server could neither send nor
    receive: refused when it is made, naming the HER-id, and nothing is stored."""
    settings = api_pair.pair.hospital_site.config_path
    gp_her = api_pair.pair.gp_site.address_her_id
    made = CliRunner().invoke(
        app,
        [
            "--config",
            str(settings),
            "clients",
            "add",
            "wrong-epj",
            "--scope",
            "send",
            "--her-id",
            HOSPITAL_SERVICE_HER,
            "--her-id",
            gp_her,
        ],
    )
    assert made.exit_code == 2
    assert "not-our-her-id" in made.output and gp_her in made.output
    listed = CliRunner().invoke(app, ["--config", str(settings), "clients", "list", "--json"])
    assert listed.exit_code == 0 and "wrong-epj" not in listed.output


def test_client_mistakes_get_4xx_problem_bodies(api_pair: ApiPair) -> None:
    http = api_pair.gp_http
    headers = _bearer(api_pair.gp_key)
    bad_base64 = http.post(
        "/Messages",
        headers=headers,
        json={
            "businessDocument": "***",
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        },
    )
    assert bad_base64.status_code == 400 and bad_base64.json()["errorCode"] == 1000
    not_xml = http.post(
        "/Messages",
        headers=headers,
        json={
            "businessDocument": base64.b64encode(b"<a>").decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        },
    )
    assert not_xml.status_code == 400 and not_xml.json()["code"] == "invalid-message"
    unknown_field = http.post(
        "/Messages",
        headers=headers,
        json={
            "businessDocument": "QQ==",
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
            "surprise": 1,
        },
    )
    assert unknown_field.status_code == 400 and unknown_field.json()["validationErrors"]
    assert http.get("/Messages/not-a-guid", headers=headers).status_code == 400
    missing = http.get(f"/Messages/{uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404 and missing.json()["code"] == "not-found"
    too_large = http.post(
        "/Messages",
        headers={**headers, "Content-Type": "application/json"},
        # over the request limit for a 35 MB document, base64 wrapped in lines included
        content=b'{"businessDocument": "' + b"A" * (53 * 1024 * 1024) + b'"}',
    )
    assert too_large.status_code == 413 and too_large.json()["code"] == "too-large"
    override = http.post(
        "/Messages",
        headers=headers,
        json={
            "businessDocument": "QQ==",
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
            "ebXmlOverrides": {"cpaId": "x"},
        },
    )
    assert override.status_code == 400 and override.json()["code"] == "override-not-supported"


def test_misaddressed_message_is_purged_and_the_sender_told(api_pair: ApiPair) -> None:
    received_id = _deliver_one(api_pair)
    http = api_pair.hospital_http
    outsider = http.post(
        f"/Messages/{received_id}/misaddressed",
        headers=_bearer(api_pair.outsider_key),
        json={"reason": "Feil pasient"},
    )
    assert outsider.status_code == 403
    reported = http.post(
        f"/Messages/{received_id}/misaddressed",
        headers=_bearer(api_pair.hospital_key),
        json={"reason": "Ikke vår pasient"},
    )
    assert reported.status_code == 201, reported.text
    assert api_pair.pair.message(api_pair.pair.hospital, received_id).status == (
        "misaddressed-purged"
    )
    gone = http.get(
        f"/Messages/{received_id}/business-document", headers=_bearer(api_pair.hospital_key)
    )
    assert gone.status_code == 404
    again = http.post(
        f"/Messages/{received_id}/misaddressed",
        headers=_bearer(api_pair.hospital_key),
        json={"reason": "igjen"},
    )
    assert again.status_code == 409


def test_a_sent_message_and_its_audit_row_commit_together(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = api_pair.pair
    sent = api_pair.post_note("Henvisning")
    assert sent.status_code == 201, sent.text
    [row] = query(pair.gp.store, AuditQuery(message_id=sent.json()))
    assert (row["action"], row["outcome"], row["herId"]) == ("send-message", "ok", "8100001")

    # the audit row cannot be written: then the message is not stored (and not sent) either
    unavailable = text(str(audit._INSERT).replace("audit_log", "audit_log_unavailable"))
    with pair.gp.store.unit_of_work() as uow:
        stored_before = len(uow.messages.search(LogFilter(direction="out")))
    monkeypatch.setattr(audit, "_INSERT", unavailable)
    # a missing table is a fault of ours (on SQLite an OperationalError, as a lock is): 500
    failed = api_pair.post_note("Henvisning")
    assert failed.status_code == 500, failed.text
    monkeypatch.undo()
    with pair.gp.store.unit_of_work() as uow:
        assert len(uow.messages.search(LogFilter(direction="out"))) == stored_before


def test_a_retry_with_the_same_idempotency_key_sends_nothing_again(api_pair: ApiPair) -> None:
    # The EPJ's request timed out after the server had stored the message; it sends the same
    # request again with the same Idempotency-Key and gets the same message back.
    pair = api_pair.pair
    document = dialog_note(pair.gp_site, pair.hospital_site, "Sendt to ganger?")
    other = dialog_note(pair.gp_site, pair.hospital_site, "En annen melding")

    def post(data: bytes, key: str) -> httpx.Response:
        return api_pair.gp_http.post(
            "/Messages",
            headers={**_bearer(api_pair.gp_key), "Idempotency-Key": key},
            json={
                "businessDocument": base64.b64encode(data).decode(),
                "contentType": "application/xml",
                "contentTransferEncoding": "base64",
            },
        )

    first = post(document, "epj-4711")
    again = post(document, "epj-4711")
    assert first.status_code == again.status_code == 201, again.text
    assert first.json() == again.json()
    fresh = post(document, "epj-4712")  # a new key is a new message, even with the same bytes
    assert fresh.status_code == 201 and fresh.json() != first.json()
    reused = post(other, "epj-4711")
    assert reused.status_code == 409
    assert reused.json()["code"] == "idempotency-key-reused"
    assert post(document, "has space").status_code == 400
    with pair.gp.store.unit_of_work() as uow:
        sent = uow.messages.search(LogFilter(direction="out"))
    assert sorted(m.id for m in sent) == sorted([first.json(), fresh.json()])
    pair.run()
    assert len(pair.inbound_messages(pair.hospital)) == 2
    # the retry is audited too: the help desk sees that the EPJ asked twice
    entries = query(pair.gp.store, AuditQuery(message_id=first.json()))
    assert [(e["action"], e["outcome"]) for e in entries] == [("send-message", "ok")] * 2
    assert "Idempotency-Key" in str(entries[-1]["detail"])


def test_the_same_idempotency_key_at_once_stores_one_message(api_pair: ApiPair) -> None:
    # Two requests with the same key at the same moment: the unique key decides, and both get
    # the one message. (Whether they really meet depends on timing; these hold either way.)
    from meldingstjener.engine.outbound import submit

    pair = api_pair.pair
    document = dialog_note(pair.gp_site, pair.hospital_site, "Samtidig")
    answers = at_once(3, lambda: submit(pair.gp, document, actor="t", idempotency_key="epj:same"))
    assert len(answers) == 3 and len(set(answers)) == 1
    with pair.gp.store.unit_of_work() as uow:
        [sent] = uow.messages.search(LogFilter(direction="out"))
    assert sent.id == answers[0]
    stored = sorted(p.name for p in pair.gp.store.payloads.root.rglob("*") if p.is_file())
    assert stored == sorted([str(sent.payload_ref), str(sent.wire_ref)])


def test_a_small_routes_body_is_limited_and_read_only_for_a_known_client(
    api_pair: ApiPair,
) -> None:
    # FastAPI parses a JSON body before the route's credentials are checked: a 47 MB array
    # sent with no credentials cost 1.2 GB and seconds of the event loop. Now nobody unknown
    # has a body read at all (401), and a known client's body other than POST /Messages' is
    # refused above a small limit, however it is sent.
    http = api_pair.hospital_http
    target = f"/Messages/{uuid.uuid4()}/apprec/{HOSPITAL_HER}"
    big = b"[" + b"{}," * (SMALL_BODY_LIMIT // 3) + b"{}]"
    json_type = {"Content-Type": "application/json"}
    unknown = http.post(target, content=big, headers=json_type)
    assert unknown.status_code == 401 and unknown.json()["code"] == "unauthenticated"
    known = {**json_type, "Authorization": f"Bearer {api_pair.hospital_key}"}
    declared = http.post(target, content=big, headers=known)
    assert declared.status_code == 413 and declared.json()["code"] == "too-large"

    def streamed_pieces() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    streamed = http.post(target, content=streamed_pieces(), headers=known)
    assert streamed.status_code == 413 and streamed.json()["code"] == "too-large"
    # below the limit the route answers as it did
    small = http.post(target, json={"appRecStatus": 1})
    assert small.status_code == 401 and small.json()["code"] == "unauthenticated"
    webhook = http.post(
        "/api/webhooks",
        headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        json={"url": "https://93.184.216.34/hook", "events": ["message.received"]},
    )
    assert webhook.status_code == 201


def test_an_apprec_document_answers_only_a_message_its_client_may_act_for(
    api_pair: ApiPair,
) -> None:
    # A client allowed the hospital's organisation only posts an AppRec document from the
    # organisation answering a message sent to the service, which another client (dips)
    # serves. It is refused: the message would leave dips' inbox, and the GP hear "rejected".
    import dataclasses

    from meldingstjener.api.clients import add_client
    from meldingstjener.formats import AppRecError, AppRecStatus, build_apprec, read_msghead

    pair = api_pair.pair
    _, org_key = add_client(pair.hospital.store, "org-only", ["send"], [HOSPITAL_HER])
    received_id = _deliver_one(api_pair)
    row = pair.message(pair.hospital, received_id)
    assert row.to_her_id == HOSPITAL_SERVICE_HER
    original = read_msghead(pair.hospital.store.payloads.read_bytes(str(row.payload_ref)))
    receiver = original.msg_info.receiver
    without_service = dataclasses.replace(
        receiver, organisation=dataclasses.replace(receiver.organisation, organisation=None)
    )
    as_the_organisation = dataclasses.replace(
        original, msg_info=dataclasses.replace(original.msg_info, receiver=without_service)
    )
    document = build_apprec(
        as_the_organisation,
        status=AppRecStatus.REJECTED,
        errors=[AppRecError.of("X99", "ikke vår")],
        version="1.0",
    )
    payloads = pair.hospital.store.payloads.root
    files_before = {p.name for p in payloads.rglob("*") if p.is_file()}
    answer = api_pair.hospital_http.post(
        "/Messages",
        headers=_bearer(org_key),
        json={
            "businessDocument": base64.b64encode(document).decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        },
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "not-allowed"
    assert pair.message(pair.hospital, received_id).status == row.status
    with pair.hospital.store.unit_of_work() as uow:
        assert uow.messages.search(LogFilter(direction="out", limit=10)) == []
    assert {p.name for p in payloads.rglob("*") if p.is_file()} == files_before  # none left


def test_text_json_is_json_and_an_apprec_override_we_cannot_honour_is_refused(
    api_pair: ApiPair,
) -> None:
    # The EDI 2.0 contract lists text/json beside application/json for request bodies; and
    # PostAppRec's ebXmlOverrides were silently ignored where PostMessage refuses them.
    received_id = _deliver_one(api_pair)
    http, headers = api_pair.hospital_http, _bearer(api_pair.hospital_key)
    target = f"/Messages/{received_id}/apprec/{HOSPITAL_SERVICE_HER}"
    overridden = http.post(
        target,
        headers=headers,
        json={"appRecStatus": "Ok", "ebXmlOverrides": {"cpaId": "another-agreement"}},
    )
    assert overridden.status_code == 400 and overridden.json()["code"] == "override-not-supported"
    assert api_pair.pair.message(api_pair.pair.hospital, received_id).status == "acknowledged"
    audited = query(api_pair.pair.hospital.store, AuditQuery(client="dips"))
    assert [(e["action"], e["outcome"], e["detail"]) for e in audited] == [
        ("send-apprec", "invalid", "override-not-supported")
    ]
    answered = http.post(
        target,
        headers={**headers, "Content-Type": "text/json; charset=utf-8"},
        content=json.dumps(
            {"appRecStatus": "Ok", "ebXmlOverrides": {"applicationName": "EPJ"}}
        ).encode(),
    )
    assert answered.status_code == 201, answered.text


def test_a_refused_document_is_audited_with_its_code(api_pair: ApiPair) -> None:
    http, headers = api_pair.hospital_http, _bearer(api_pair.hospital_key)
    document = {"businessDocument": "PGEvPg==", "contentType": "application/xml"}
    wrong_encoding = http.post(
        "/Messages", headers=headers, json={**document, "contentTransferEncoding": "7bit"}
    )
    assert wrong_encoding.status_code == 400
    overridden = http.post(
        "/Messages",
        headers=headers,
        json={
            **document,
            "contentTransferEncoding": "base64",
            "ebXmlOverrides": {"service": "another"},
        },
    )
    assert overridden.status_code == 400
    entries = query(api_pair.pair.hospital.store, AuditQuery(client="dips"))
    assert [(e["action"], e["outcome"], e["detail"]) for e in entries] == [
        ("send-message", "invalid", "invalid-input"),
        ("send-message", "invalid", "override-not-supported"),
    ]


def test_a_receiver_the_register_has_inactive_is_refused_with_its_own_code(
    api_pair: ApiPair,
) -> None:
    # the EPJ learns that nothing was sent, and why: the register's state, not the message
    with api_pair.pair.gp.store.unit_of_work() as uow:
        receiver = uow.parties.get(HOSPITAL_SERVICE_HER)
        assert receiver is not None
        receiver.active = False
        uow.commit()
    refused = api_pair.post_note("Timen er flyttet")
    assert refused.status_code == 400, refused.text
    problem = refused.json()
    assert (problem["code"], problem["errorCode"]) == ("receiver-inactive", 1012)
    assert "inactive in the address register" in problem["detail"]
    assert "nothing was sent" in problem["detail"] and HOSPITAL_SERVICE_HER in problem["detail"]
    with api_pair.pair.gp.store.unit_of_work() as uow:
        assert not uow.messages.search(LogFilter())
    entries = query(api_pair.pair.gp.store, AuditQuery(client="gp-epj"))
    assert [(e["outcome"], e["detail"]) for e in entries] == [("invalid", "receiver-inactive")]


def test_an_operator_acknowledges_and_resolves_an_alert_by_hand(api_pair: ApiPair) -> None:
    from meldingstjener.engine.alerts import AlertKind, raise_alert

    hospital = api_pair.pair.hospital
    with hospital.store.unit_of_work() as uow:
        raise_alert(uow, AlertKind.APPREC_UNSENT, "an AppRec was not sent", at=hospital.clock())
        uow.commit()
    admin = {"Authorization": f"Bearer {api_pair.hospital_admin_key}"}
    http = api_pair.hospital_http
    [alert] = http.get("/api/alerts?open_only=true", headers=admin).json()
    acked = http.post(f"/api/alerts/{alert['id']}/acknowledge", headers=admin)
    assert acked.status_code == 200 and acked.json()["acknowledgedBy"] == "ops"
    assert len(http.get("/api/alerts?open_only=true", headers=admin).json()) == 1
    resolved = http.post(f"/api/alerts/{alert['id']}/resolve", headers=admin)
    assert resolved.status_code == 200 and resolved.json()["resolvedAt"] is not None
    assert http.get("/api/alerts?open_only=true", headers=admin).json() == []
    assert http.post("/api/alerts/99999/resolve", headers=admin).status_code == 404
    someone = {"Authorization": f"Bearer {api_pair.hospital_key}"}
    assert http.post(f"/api/alerts/{alert['id']}/resolve", headers=someone).status_code == 403
    # the problem again: open again, and nobody has acknowledged the new occurrence
    with hospital.store.unit_of_work() as uow:
        raise_alert(uow, AlertKind.APPREC_UNSENT, "an AppRec was not sent", at=hospital.clock())
        uow.commit()
    [again] = http.get("/api/alerts?open_only=true", headers=admin).json()
    assert again["id"] == alert["id"] and again["acknowledgedBy"] is None
    assert again["resolutionNote"] is None  # the last incident's note went with it
    # resolved with a note: kept with the alert, within its length
    too_long = http.post(
        f"/api/alerts/{alert['id']}/resolve", headers=admin, json={"note": "x" * 501}
    )
    assert too_long.status_code == 400, too_long.text
    noted = http.post(
        f"/api/alerts/{alert['id']}/resolve", headers=admin, json={"note": "sent by phone"}
    )
    assert noted.status_code == 200 and noted.json()["resolutionNote"] == "sent by phone"
    [listed] = http.get("/api/alerts", headers=admin).json()
    assert listed["resolutionNote"] == "sent by phone"
    # resolved already: the same note again is a repeat; another is not kept, and said so
    resolve = f"/api/alerts/{alert['id']}/resolve"
    assert http.post(resolve, headers=admin, json={"note": "sent by phone"}).status_code == 200
    late = http.post(resolve, headers=admin, json={"note": "sent by fax"})
    assert late.status_code == 409 and late.json()["code"] == "already-resolved", late.text
    [listed] = http.get("/api/alerts", headers=admin).json()
    assert listed["resolutionNote"] == "sent by phone"
    # a note as the command line takes it: longer than its column once masked is refused,
    # blanks are none
    with hospital.store.unit_of_work() as uow:
        raise_alert(uow, AlertKind.APPREC_UNSENT, "an AppRec was not sent", at=hospital.clock())
        uow.commit()
    masked_long = http.post(resolve, headers=admin, json={"note": "fnr 01017012345 " + "x" * 484})
    assert masked_long.status_code == 400 and "502 characters" in masked_long.text
    assert "01017012345" not in masked_long.text
    blank = http.post(resolve, headers=admin, json={"note": "   "})
    assert blank.status_code == 200 and blank.json()["resolutionNote"] is None, blank.text


def test_who_followed_up_an_alert_is_masked_and_audited(api_pair: ApiPair) -> None:
    # The person an operator's request names went into the alert unmasked (a national
    # identity number as X-Person was stored as it came), and a resolve left no trace of who
    # did it: the alert keeps only who acknowledged it.
    from meldingstjener.engine.alerts import AlertKind, raise_alert

    hospital = api_pair.pair.hospital
    with hospital.store.unit_of_work() as uow:
        raise_alert(uow, AlertKind.APPREC_UNSENT, "an AppRec was not sent", at=hospital.clock())
        uow.commit()
    http = api_pair.hospital_http
    admin = {"Authorization": f"Bearer {api_pair.hospital_admin_key}"}
    [alert] = http.get("/api/alerts?open_only=true", headers=admin).json()
    acked = http.post(
        f"/api/alerts/{alert['id']}/acknowledge", headers={**admin, "X-Person": "01017012345"}
    )
    assert acked.status_code == 200, acked.text
    assert "01017012345" not in acked.json()["acknowledgedBy"]
    assert acked.json()["acknowledgedBy"].startswith("ops/")
    resolved = http.post(f"/api/alerts/{alert['id']}/resolve", headers=admin)
    assert resolved.status_code == 200, resolved.text
    entries = query(hospital.store, AuditQuery(client="ops"))
    done = [(e["action"], e["detail"]) for e in entries if e["action"].startswith("alert-")]
    assert sorted(done) == [
        ("alert-acknowledge", f"alert {alert['id']} apprec-unsent"),
        ("alert-resolve", f"alert {alert['id']} apprec-unsent"),
    ]
    assert all("01017012345" not in str(e["person"]) for e in entries)


# PostgreSQL only: SQLite is a file on the server's own host, never away while it runs
@pytest.mark.parametrize("pair", ["postgresql"], indirect=True)
def test_health_answers_503_while_the_database_is_down(api_pair: ApiPair) -> None:
    # A load balancer or service manager asks /health: a database that is down is a state to
    # report (503, the body saying so), not a fault of the server (500 and a traceback).
    pair, http = api_pair.pair, api_pair.gp_http
    assert http.get("/health").status_code == 200
    with database_away(pair.gp.store.database.url):
        down = http.get("/health")
    assert down.status_code == 503, down.text
    body = down.json()
    assert body["status"] == "database-unreachable"
    assert body["version"] == __version__
    assert http.get("/health").json()["status"] == "ok"  # back at the next request


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_health_answers_while_a_unit_of_work_holds_sqlites_write_lock(api_pair: ApiPair) -> None:
    # /health began its transaction IMMEDIATE, as a unit of work does, without the process's
    # write lock: it queued behind every writer, and past SQLite's 30 s busy timeout said the
    # database was unreachable. A read in WAL mode needs no write lock.
    database = api_pair.pair.gp.store.database
    held, done = threading.Event(), threading.Event()

    def writer() -> None:
        with UnitOfWork(database) as uow:
            uow.state.set("health-test", "x")
            uow.session.flush()  # the write lock is taken
            held.set()
            assert done.wait(60)
            uow.commit()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(60)
        answer = api_pair.gp_http.get("/health")
    finally:
        done.set()
        thread.join(60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ok"
