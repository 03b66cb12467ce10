"""GetMessages' audit: who first saw which message, not one row per unread message per poll. An
EPJ polling every 5 s wrote some 17,000 audit rows a day for one message waiting (found in a
year's review: 30 polls with 2 unread messages, 60 rows)."""

from __future__ import annotations

from api_sites import ApiPair
from test_get_messages import _bearer, _receive

from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.store.audit import AuditQuery, query


def _listings(api_pair: ApiPair) -> list[tuple[str, str | None]]:
    audited = query(api_pair.pair.hospital.store, AuditQuery(client="dips"))
    return [
        (row["messageId"], row["person"]) for row in audited if row["action"] == "list-messages"
    ]


def _poll(api_pair: ApiPair, **headers: str) -> list[str]:
    answer = api_pair.hospital_http.get(
        "/Messages",
        params={"ReceiverHerIds": HOSPITAL_SERVICE_HER},
        headers={**_bearer(api_pair.hospital_key), **headers},
    )
    assert answer.status_code == 200, answer.text
    return [message["id"] for message in answer.json()]


def test_a_message_waiting_through_many_polls_is_audited_once_as_first_listed(
    api_pair: ApiPair,
) -> None:
    first = _receive(api_pair, 2)
    for _ in range(30):
        assert _poll(api_pair) == first
    assert sorted(_listings(api_pair)) == sorted((message, None) for message in first)

    # a message that comes meanwhile is audited when it is first listed; the others not again
    assert api_pair.post_note("Notat later").status_code == 201
    api_pair.pair.run()
    [later] = {m.id for m in api_pair.pair.inbound_messages(api_pair.pair.hospital)} - set(first)
    assert _poll(api_pair) == [*first, later]
    assert sorted(m for m, _ in _listings(api_pair)) == sorted([*first, later])


def test_another_person_listing_the_same_message_is_audited_too(api_pair: ApiPair) -> None:
    [waiting] = _receive(api_pair, 1)
    for _ in range(3):
        _poll(api_pair)
        _poll(api_pair, **{"X-Person": "lege 7"})
    assert sorted(_listings(api_pair), key=str) == sorted(
        [(waiting, None), (waiting, "lege 7")], key=str
    )
