"""A message the operator sent again (``resend``: a new copy, with an id of its own) keeps its
fate where the EPJ looks for it: GetStatus and GetApprecInfo of the id the EPJ was given answer
with the newest copy's outcome and name it (``sentAgainAs``), and the webhook calls of a copy
name that id (``copyOf``) and the document's MsgId (found by a help desk: the EPJ saw
"Rejected" for a message the receiver had acknowledged and answered)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from api_sites import ApiPair
from fastapi.testclient import TestClient
from webhook_receiver import Receiver

from meldingstjener.api.app import create_app
from meldingstjener.config import WebhookSettings
from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.engine.resend import Operator, resend
from meldingstjener.engine.worker import Worker
from meldingstjener.integration.webhooks import WebhookDispatcher

# the GP's webhook calls may go to this host's test receiver, in plain http
HOOKS = WebhookSettings(allow_http=True, allowed_networks=["127.0.0.0/8"])


@pytest.fixture
def api_pair(api_pair: ApiPair) -> Iterator[ApiPair]:
    """The API pair, its GP's API registering webhooks as ``HOOKS`` allows."""
    with TestClient(create_app(api_pair.pair.gp, webhook_settings=HOOKS)) as gp_http:
        yield dataclasses.replace(api_pair, gp_http=gp_http)


def _gp(api_pair: ApiPair, path: str) -> Any:
    answer = api_pair.gp_http.get(path, headers={"Authorization": f"Bearer {api_pair.gp_key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _given_up(api_pair: ApiPair, message_id: str) -> None:
    """``message_id`` given up while the hospital is down; the hospital back up."""
    pair = api_pair.pair
    pair.network.down.add(pair.hospital_site.endpoint)
    for _ in range(6):
        pair.run()
        pair.clock.advance(seconds=700)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "not-delivered"
    pair.network.down.clear()


def test_the_epj_is_answered_for_its_message_with_the_newest_copys_fate(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    pair = api_pair.pair
    hooked = api_pair.gp_http.post(
        "/api/webhooks",
        headers={"Authorization": f"Bearer {api_pair.gp_key}"},
        json={"url": receiver.url, "events": ["message.status"]},
    )
    assert hooked.status_code == 201, hooked.text
    posted = api_pair.post_note("Kommer fram til slutt")
    assert posted.status_code == 201, posted.text
    original = str(posted.json())
    msg_id = pair.message(pair.gp, original).msg_id
    _given_up(api_pair, original)
    [status] = _gp(api_pair, f"/Messages/{original}/status")
    assert status["transportDeliveryState"] == "Rejected" and "sentAgainAs" not in status

    # sent again, and that copy given up too, and sent again: the EPJ knows only the first id
    first_copy = resend(pair.gp, original, operator=Operator("cli")).copy_id
    _given_up(api_pair, first_copy)
    newest = resend(pair.gp, first_copy, operator=Operator("cli")).copy_id
    [status] = _gp(api_pair, f"/Messages/{original}/status")
    assert status == {
        "receiverHerId": int(HOSPITAL_SERVICE_HER),
        "transportDeliveryState": "Unconfirmed",
        "appRecStatus": None,
        "sentAgainAs": newest,
    }
    pair.run()
    [status] = _gp(api_pair, f"/Messages/{original}/status")
    assert status["transportDeliveryState"] == "Acknowledged", status
    assert _gp(api_pair, f"/Messages/{original}/apprec") == []

    # the hospital's EPJ answers the copy it got
    [received] = pair.inbound_messages(pair.hospital)
    answered = api_pair.hospital_http.post(
        f"/Messages/{received.id}/apprec/{HOSPITAL_SERVICE_HER}",
        headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        json={"appRecStatus": "Ok"},
    )
    assert answered.status_code == 201, answered.text
    pair.run()
    assert pair.message(pair.gp, newest).status == "apprec-ok"
    for asked in (original, first_copy):
        [status] = _gp(api_pair, f"/Messages/{asked}/status")
        assert status == {
            "receiverHerId": int(HOSPITAL_SERVICE_HER),
            "transportDeliveryState": "Acknowledged",
            "appRecStatus": "Ok",
            "sentAgainAs": newest,
        }
        [info] = _gp(api_pair, f"/Messages/{asked}/apprec")
        assert info["appRecStatus"] == "Ok" and info["sentAgainAs"] == newest
    # the copy asked by its own id answers for itself, in NHN's shape
    [status] = _gp(api_pair, f"/Messages/{newest}/status")
    assert "sentAgainAs" not in status and status["appRecStatus"] == "Ok"

    # the webhook calls: a copy's name the message first sent; each names the document's MsgId
    WebhookDispatcher(pair.gp, HOOKS).run_once()
    sent = [body for body in receiver.bodies if body["direction"] == "out"]  # not the AppRec
    by_message: dict[str, list[dict[str, Any]]] = {}
    for body in sent:
        by_message.setdefault(body["messageId"], []).append(body)
    assert set(by_message) == {original, first_copy, newest}
    assert {body["copyOf"] for body in by_message[original]} == {None}
    for copy in (first_copy, newest):
        assert {body["copyOf"] for body in by_message[copy]} == {original}
    assert {body["businessDocumentId"] for body in sent} == {msg_id}
    assert "apprec-ok" in {body["status"] for body in by_message[newest]}


def test_a_late_answer_of_the_original_is_its_fate_while_the_copy_waits(
    api_pair: ApiPair,
) -> None:
    """The receiver had the original after all (only its Acknowledgments were lost): the copy
    sent again still waits, and the receiver's AppRec answers the original. The EPJ is told
    that AppRec for the id it knows, not the waiting copy's Unconfirmed (found by a review:
    the answer followed the newest copy whatever the original had come to)."""
    pair = api_pair.pair
    posted = api_pair.post_note("Kom den fram?")
    assert posted.status_code == 201, posted.text
    original = str(posted.json())
    pair.network.down.add(pair.gp_site.endpoint)  # the hospital's Acknowledgments are lost
    pair.until_given_up(original)
    pair.network.down.clear()
    copy = resend(pair.gp, original, operator=Operator("cli"), checked="asked: not found").copy_id

    # the hospital's EPJ answers the message it has (the original), and its AppRec arrives
    [received] = pair.inbound_messages(pair.hospital)
    answered = api_pair.hospital_http.post(
        f"/Messages/{received.id}/apprec/{HOSPITAL_SERVICE_HER}",
        headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        json={"appRecStatus": "Ok"},
    )
    assert answered.status_code == 201, answered.text
    Worker(
        pair.hospital, "hospital"
    ).run_until_idle()  # the AppRec goes; the GP's copy is not sent yet
    assert pair.message(pair.gp, original).status == "apprec-ok"
    assert pair.message(pair.gp, copy).status == "accepted"

    [status] = _gp(api_pair, f"/Messages/{original}/status")
    assert status == {
        "receiverHerId": int(HOSPITAL_SERVICE_HER),
        "transportDeliveryState": "Acknowledged",
        "appRecStatus": "Ok",
        "sentAgainAs": copy,
    }
    [info] = _gp(api_pair, f"/Messages/{original}/apprec")
    assert info["appRecStatus"] == "Ok" and info["sentAgainAs"] == copy
