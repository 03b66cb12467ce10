"""A client written from NHN's EDI 2.0 OpenAPI document sends and receives through our API,
between two engines: send, list unread, fetch, AppRec, mark read, status and AppRec info.
"""

from __future__ import annotations

import base64
from pathlib import Path

from api_sites import ApiPair
from edi2_spec_client import SpecClient

from meldingstjener.devsites import GP_HER, HOSPITAL_SERVICE_HER, dialog_note


def _spec(reference_dir: Path) -> Path:
    return reference_dir / "openapi" / "msh-api-v2.json"


def test_send_receive_apprec_through_the_edi2_shape(api_pair: ApiPair, reference_dir: Path) -> None:
    pair = api_pair.pair
    gp = SpecClient(_spec(reference_dir), api_pair.gp_http, api_pair.gp_key)
    hospital = SpecClient(_spec(reference_dir), api_pair.hospital_http, api_pair.hospital_key)
    document = dialog_note(pair.gp_site, pair.hospital_site, "Kontroll om tre uker")

    sent = gp.call(
        "PostMessage",
        {
            "businessDocument": base64.b64encode(document).decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
            "ebXmlOverrides": {"applicationName": "EPJ Front", "applicationVersion": "18.0.8"},
        },
    )
    assert sent.status_code == 201, sent.text
    message_id = sent.json()
    assert sent.headers["location"].endswith(message_id)
    [before] = gp.call("GetStatus", id=message_id).json()
    assert before["transportDeliveryState"] == "Unconfirmed"

    pair.run()
    [status] = gp.call("GetStatus", id=message_id).json()
    assert status == {
        "receiverHerId": int(HOSPITAL_SERVICE_HER),
        "transportDeliveryState": "Acknowledged",
        "appRecStatus": None,
    }

    listed = hospital.call(
        "GetMessages", ReceiverHerIds=[int(HOSPITAL_SERVICE_HER)], IncludeMetadata=True
    )
    assert listed.status_code == 200, listed.text
    [message] = listed.json()
    assert message["senderHerId"] == int(GP_HER) and message["isAppRec"] is False
    received_id = message["id"]
    assert hospital.call("GetMessage", id=received_id).json()["receiverHerId"] == int(
        HOSPITAL_SERVICE_HER
    )
    fetched = hospital.call("GetBusinessDocument", id=received_id).json()
    assert base64.b64decode(fetched["businessDocument"]) == document

    answered = hospital.call(
        "PostAppRec",
        {"appRecStatus": "Ok"},
        id=received_id,
        appRecSenderHerId=int(HOSPITAL_SERVICE_HER),
    )
    assert answered.status_code == 201, answered.text
    read = hospital.call("MarkMessageAsRead", id=received_id, herId=int(HOSPITAL_SERVICE_HER))
    assert read.status_code == 204
    again = hospital.call("GetMessages", ReceiverHerIds=[int(HOSPITAL_SERVICE_HER)])
    assert again.json() == []

    pair.run()
    [final] = gp.call("GetStatus", id=message_id).json()
    assert final["appRecStatus"] == "Ok"
    [info] = gp.call("GetApprecInfo", id=message_id).json()
    assert info["appRecStatus"] == "Ok" and info["receiverHerId"] == int(HOSPITAL_SERVICE_HER)


def test_a_second_apprec_is_a_conflict(api_pair: ApiPair, reference_dir: Path) -> None:
    pair = api_pair.pair
    gp = SpecClient(_spec(reference_dir), api_pair.gp_http, api_pair.gp_key)
    hospital = SpecClient(_spec(reference_dir), api_pair.hospital_http, api_pair.hospital_key)
    document = dialog_note(pair.gp_site, pair.hospital_site, "To svar?")
    gp.call(
        "PostMessage",
        {
            "businessDocument": base64.b64encode(document).decode(),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        },
    )
    pair.run()
    [message] = hospital.call("GetMessages", ReceiverHerIds=[int(HOSPITAL_SERVICE_HER)]).json()
    body = {"appRecStatus": "Rejected", "appRecErrorList": [{"errorCode": "E10", "details": "x"}]}
    first = hospital.call(
        "PostAppRec", body, id=message["id"], appRecSenderHerId=int(HOSPITAL_SERVICE_HER)
    )
    assert first.status_code == 201, first.text
    second = hospital.call(
        "PostAppRec", body, id=message["id"], appRecSenderHerId=int(HOSPITAL_SERVICE_HER)
    )
    assert second.status_code == 409, second.text
    assert second.json()["code"] == "conflict" and second.json()["requestId"]
