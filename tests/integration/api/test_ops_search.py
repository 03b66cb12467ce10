"""The operator's searches of the message log and the audit log: newest first, paged back with
``until``, and a time without a zone taken as UTC (it failed with a 500).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api_sites import ApiPair

from meldingstjener.api.clients import add_client
from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _send(api_pair: ApiPair, count: int) -> list[str]:
    """``count`` messages from the GP, oldest first."""
    pair, ids = api_pair.pair, []
    for number in range(count):
        sent = api_pair.post_note(f"Notat {number}")
        assert sent.status_code == 201, sent.text
        ids.append(sent.json())
        pair.clock.advance(seconds=1)  # a message is made at the engine's time
    return ids


def test_the_log_and_the_audit_answer_the_newest_first_and_page_back(
    api_pair: ApiPair,
) -> None:
    ids = _send(api_pair, 3)
    _, admin_key = add_client(api_pair.pair.gp.store, "ops", ["admin"], [])
    http, admin = api_pair.gp_http, _bearer(admin_key)

    newest = http.get("/api/log", params={"limit": 2}, headers=admin)
    assert newest.status_code == 200, newest.text
    assert [m["message_id"] for m in newest.json()] == [ids[2], ids[1]]
    older = http.get(
        "/api/log", params={"limit": 2, "until": newest.json()[-1]["created_at"]}, headers=admin
    )
    assert [m["message_id"] for m in older.json()] == [ids[1], ids[0]]

    rows = http.get("/api/audit", params={"limit": 2, "client": "gp-epj"}, headers=admin).json()
    assert [r["messageId"] for r in rows] == [ids[2], ids[1]]
    rows = http.get(
        "/api/audit",
        params={"limit": 2, "client": "gp-epj", "until": rows[-1]["at"]},
        headers=admin,
    ).json()
    assert [r["messageId"] for r in rows] == [ids[1], ids[0]]


def test_a_time_without_a_zone_is_utc(api_pair: ApiPair) -> None:
    [sent] = _send(api_pair, 1)
    _, admin_key = add_client(api_pair.pair.gp.store, "ops", ["admin"], [])
    http, admin = api_pair.gp_http, _bearer(admin_key)
    # (messages are made at the engine's time, audit rows at the wall clock's)
    moments = (api_pair.pair.clock(), datetime.now(UTC))
    before, after = min(moments) - timedelta(minutes=1), max(moments) + timedelta(minutes=1)
    for path, key in (("/api/log", "message_id"), ("/api/audit", "messageId")):
        for since, found in ((before, [sent]), (after, [])):
            for written in (since.isoformat(), since.replace(tzinfo=None).isoformat()):
                answer = http.get(path, params={"since": written}, headers=admin)
                assert answer.status_code == 200, (path, written, answer.text)
                listed = [row[key] for row in answer.json() if row[key] == sent]
                assert listed == found, (path, written)
        # a date alone is its midnight, UTC
        day = http.get(path, params={"since": before.date().isoformat()}, headers=admin)
        assert day.status_code == 200, day.text


def test_the_log_finds_a_message_by_its_msg_id_ebxml_id_and_conversation(
    api_pair: ApiPair,
) -> None:
    sent, _other = _send(api_pair, 2)  # (another, not found)
    _, admin_key = add_client(api_pair.pair.gp.store, "ops", ["admin"], [])
    http, admin = api_pair.gp_http, _bearer(admin_key)
    message = api_pair.pair.message(api_pair.pair.gp, sent)
    for name, value in (
        ("msg_id", message.msg_id),
        ("ebxml_message_id", message.ebxml_message_id),
        ("conversation_id", message.ebxml_conversation_id),
    ):
        found = http.get("/api/log", params={name: value}, headers=admin)
        assert found.status_code == 200, found.text
        assert [m["message_id"] for m in found.json()] == [sent], name
    assert http.get("/api/log", params={"msg_id": "none"}, headers=admin).json() == []


def test_the_alerts_say_how_many_there_are_and_page_back(api_pair: ApiPair) -> None:
    """The newest 1,000 alerts alone were all an operator was told of."""
    pair = api_pair.pair
    with pair.gp.store.unit_of_work() as uow:
        for number in range(3):
            pair.clock.advance(seconds=1)
            raise_alert(
                uow, AlertKind.NOT_DELIVERED, f"m{number}", at=pair.clock(), key=str(number)
            )
        uow.commit()
    _, admin_key = add_client(pair.gp.store, "ops", ["admin"], [])
    http, admin = api_pair.gp_http, _bearer(admin_key)

    newest = http.get("/api/alerts", params={"open_only": True, "limit": 2}, headers=admin)
    assert newest.status_code == 200, newest.text
    assert newest.headers["X-Total-Count"] == "3"
    assert [a["summary"] for a in newest.json()] == ["m2", "m1"]
    older = http.get(
        "/api/alerts",
        params={"open_only": True, "limit": 2, "until": newest.json()[-1]["lastSeen"]},
        headers=admin,
    )
    assert [a["summary"] for a in older.json()] == ["m1", "m0"]
    everything = http.get("/api/alerts", headers=admin)  # as before: a list, newest first
    assert [a["summary"] for a in everything.json()] == ["m2", "m1", "m0"]


def test_a_walk_through_the_alerts_misses_none_counted_again_meanwhile(
    api_pair: ApiPair,
) -> None:
    """Paged back by ``until=lastSeen``, a lasting alert counted again between two pages (a
    mailbox unreachable, counted every minute) moved from a page not yet read to the first,
    read already, and the walk never showed it. Paged by id, nothing moves."""
    pair = api_pair.pair

    def mailbox_unreachable(number: int) -> None:
        with pair.gp.store.unit_of_work() as uow:
            keep_alert(
                uow, AlertKind.MAILBOX_UNREACHABLE, f"m{number}", at=pair.clock(), key=str(number)
            )
            uow.commit()

    for number in range(3):
        pair.clock.advance(seconds=1)
        mailbox_unreachable(number)
    _, admin_key = add_client(pair.gp.store, "ops", ["admin"], [])
    http, admin = api_pair.gp_http, _bearer(admin_key)

    first = http.get("/api/alerts", params={"order": "id", "limit": 2}, headers=admin)
    assert first.status_code == 200, first.text
    assert [a["summary"] for a in first.json()] == ["m2", "m1"]
    pair.clock.advance(seconds=60)
    mailbox_unreachable(0)  # the next round of the check: m0 counted again, seen now
    older = http.get(
        "/api/alerts",
        params={"order": "id", "limit": 2, "before_id": first.json()[-1]["id"]},
        headers=admin,
    )
    assert older.status_code == 200, older.text
    assert [(a["summary"], a["count"]) for a in older.json()] == [("m0", 2)]
    assert older.headers["X-Total-Count"] == "3"

    # one walk's key, not the other's: continued by the wrong one it would skip alerts
    for mixed in ({"before_id": 1}, {"order": "id", "until": pair.clock().isoformat()}):
        refused = http.get("/api/alerts", params=mixed, headers=admin)
        assert refused.status_code == 400, (mixed, refused.text)
    # as before: the last seen first
    everything = http.get("/api/alerts", headers=admin)
    assert [a["summary"] for a in everything.json()] == ["m0", "m2", "m1"]


def test_the_log_lists_the_messages_owed_an_apprec(api_pair: ApiPair) -> None:
    """What the apprec-owed alert tells the help desk to ask for: the received messages the EPJ
    has and has not answered, not those waiting for it, answered or AppRecs."""
    from meldingstjener.devsites import HOSPITAL_SERVICE_HER
    from meldingstjener.engine import inbox_watch, receipts

    pair = api_pair.pair
    _send(api_pair, 3)
    pair.run()
    owed, answered, waiting = sorted(
        pair.inbound_messages(pair.hospital), key=lambda m: m.created_at
    )
    for message in (owed, answered):
        receipts.deliver(pair.hospital, message.id, actor="epj:test")
    receipts.send_apprec(pair.hospital, answered.id, status=1, errors=[], actor="epj:test")
    pair.run()  # and the GP office's AppRec for the answer: delivered, owing nothing
    [apprec] = pair.inbound_messages(pair.gp)
    receipts.deliver(pair.gp, apprec.id, actor="epj:test")

    admin = _bearer(api_pair.hospital_admin_key)

    def owed_listed() -> list[str]:
        found = api_pair.hospital_http.get(
            "/api/log",
            params={"apprec_owed": "true", "her_id": HOSPITAL_SERVICE_HER},
            headers=admin,
        )
        assert found.status_code == 200, found.text
        return [m["message_id"] for m in found.json()]

    # what the alert counts: delivered longer than [alerts] apprec_owed_hours (24) ago, and
    # not more than apprec_owed_days (14) before that
    assert owed_listed() == []
    pair.clock.advance(hours=24, minutes=1)
    assert owed_listed() == [owed.id]
    assert inbox_watch.check_apprec_owed(pair.hospital) == {HOSPITAL_SERVICE_HER: 1}
    pair.clock.advance(days=14)
    assert owed_listed() == []
    assert inbox_watch.check_apprec_owed(pair.hospital) == {}
    everything = api_pair.hospital_http.get("/api/log", headers=admin).json()
    assert {answered.id, waiting.id} <= {m["message_id"] for m in everything}
    _, gp_admin = add_client(pair.gp.store, "ops", ["admin"], [])
    on_the_gp_side = api_pair.gp_http.get(
        "/api/log", params={"apprec_owed": "true"}, headers=_bearer(gp_admin)
    )
    assert on_the_gp_side.json() == []  # its AppRec is delivered, and owes nothing
