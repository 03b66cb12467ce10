"""A client with the ``receive`` scope reads the answers it sent to received messages (an AppRec,
a misaddressed report) and their status, where the Location of its answer points; a message the
hospital sent otherwise still needs ``send``."""

from __future__ import annotations

from api_sites import ApiPair, post_document

from meldingstjener.api.clients import add_client
from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _received(api_pair: ApiPair, count: int) -> list[str]:
    pair = api_pair.pair
    for number in range(count):
        assert api_pair.post_note(f"Notat {number}").status_code == 201
    pair.run()
    return [m.id for m in pair.inbound_messages(pair.hospital)]


def test_a_receive_only_client_reads_the_answers_it_sent_and_their_status(
    api_pair: ApiPair,
) -> None:
    # The Location of its AppRec answered 403 (an outbound message needed "send"), audited as
    # a refusal: the client could never learn whether its AppRec was acknowledged.
    pair = api_pair.pair
    _, reader = add_client(
        pair.hospital.store, "reader", ["receive"], [HOSPITAL_HER, HOSPITAL_SERVICE_HER]
    )
    http = api_pair.hospital_http
    first, second = _received(api_pair, 2)
    locations = []
    apprec = http.post(
        f"/Messages/{first}/apprec/{HOSPITAL_SERVICE_HER}",
        headers=_bearer(reader),
        json={"appRecStatus": "Ok"},
    )
    assert apprec.status_code == 201, apprec.text
    locations.append(apprec.headers["Location"])
    answered = http.post(
        f"/Messages/{second}/apprec/{HOSPITAL_SERVICE_HER}",
        headers=_bearer(reader),
        json={"appRecStatus": "Ok"},
    )
    assert answered.status_code == 201, answered.text
    reported = http.post(  # after its AppRec: a Dialogmelding (DIALOG_AVVIK) tells the sender
        f"/Messages/{second}/misaddressed", headers=_bearer(reader), json={"reason": "Feil"}
    )
    assert reported.status_code == 201, reported.text
    locations.append(reported.headers["Location"])
    for location in locations:
        for path in (location, f"{location}/status"):
            read = http.get(path, headers=_bearer(reader))
            assert read.status_code == 200, (path, read.text)
    # a message the hospital sent of its own still needs "send"
    note = dialog_note(pair.hospital_site, pair.gp_site, "Svar")
    sent = post_document(http, api_pair.hospital_key, note)
    assert sent.status_code == 201, sent.text
    refused = http.get(sent.headers["Location"], headers=_bearer(reader))
    assert refused.status_code == 403
