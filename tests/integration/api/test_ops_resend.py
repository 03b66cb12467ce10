"""``POST /api/messages/{id}/resend``: the operator sends a not-delivered message again with an
admin key; the EPJ's send scope may not; other statuses and a second resend are refused with a
code."""

from __future__ import annotations

from api_sites import ApiPair

from meldingstjener.api.clients import add_client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _not_delivered(api_pair: ApiPair) -> str:
    """A note the EPJ posted while the hospital was down, given up; the hospital back up."""
    pair = api_pair.pair
    pair.network.down.add(pair.hospital_site.endpoint)
    sent = api_pair.post_note("Kommer ikke fram")
    assert sent.status_code == 201, sent.text
    for _ in range(6):
        pair.run()
        pair.clock.advance(seconds=700)
    pair.run()
    message_id = str(sent.json())
    assert pair.message(pair.gp, message_id).status == "not-delivered"
    pair.network.down.clear()
    return message_id


def test_an_admin_sends_a_not_delivered_message_again_once(api_pair: ApiPair) -> None:
    original_id = _not_delivered(api_pair)
    _, admin_key = add_client(api_pair.pair.gp.store, "ops", ["admin"], [])
    http, path = api_pair.gp_http, f"/api/messages/{original_id}/resend"

    refused = http.post(path, headers=_bearer(api_pair.gp_key))  # the EPJ's send scope
    assert refused.status_code == 403, refused.text

    made = http.post(path, headers={**_bearer(admin_key), "X-Person": "kari"})
    assert made.status_code == 201, made.text
    copy_id = made.json()["messageId"]
    assert made.json()["copyOf"] == original_id
    api_pair.pair.run()
    assert api_pair.pair.message(api_pair.pair.gp, copy_id).status == "transport-acknowledged"

    again = http.post(path, headers=_bearer(admin_key))
    assert again.status_code == 409
    assert again.json()["code"] == "already-sent-again" and copy_id in again.json()["detail"]
    timeline = http.get(f"/api/messages/{original_id}/timeline", headers=_bearer(admin_key))
    assert timeline.json()["sentAgainAs"] == copy_id
    assert "sent-again" in [event["code"] for event in timeline.json()["events"]]
    timeline = http.get(f"/api/messages/{copy_id}/timeline", headers=_bearer(admin_key))
    assert timeline.json()["copyOf"] == original_id

    delivered = http.post(f"/api/messages/{copy_id}/resend", headers=_bearer(admin_key))
    assert delivered.status_code == 409 and delivered.json()["code"] == "not-resendable"
    unknown = http.post("/api/messages/no-such-message/resend", headers=_bearer(admin_key))
    assert unknown.status_code == 404 and unknown.json()["code"] == "not-found"


def test_a_message_the_receivers_server_took_needs_the_receivers_word(api_pair: ApiPair) -> None:
    pair = api_pair.pair
    pair.network.down.add(pair.gp_site.endpoint)  # the hospital's Acknowledgments are lost
    sent = api_pair.post_note("Kom den fram?")
    assert sent.status_code == 201, sent.text
    message_id = str(sent.json())
    pair.until_given_up(message_id)
    pair.network.down.clear()
    _, admin_key = add_client(pair.gp.store, "ops", ["admin"], [])
    http, path = api_pair.gp_http, f"/api/messages/{message_id}/resend"

    asked = http.post(path, headers=_bearer(admin_key))
    assert asked.status_code == 409 and asked.json()["code"] == "maybe-received", asked.text
    too_long = http.post(path, headers=_bearer(admin_key), json={"checked": "x" * 1000})
    assert too_long.status_code == 400 and too_long.json()["code"] == "invalid-checked"
    made = http.post(path, headers=_bearer(admin_key), json={"checked": "Ola: not arrived"})
    assert made.status_code == 201, made.text
    [alert] = http.get("/api/alerts", headers=_bearer(admin_key)).json()
    assert alert["kind"] == "not-delivered" and alert["resolutionNote"] == "Ola: not arrived"
