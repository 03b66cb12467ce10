"""The fake register APIs route and answer like the published ones, without sockets."""

from __future__ import annotations

import json

from meldingstjener.registry.fakes import FakeAddressRegister, FakeCppa, FakeHelseId, Request


def _get(path: str, **query: str) -> Request:
    return Request("GET", path, query, {"authorization": "Bearer t"})


def test_address_register_events_export_and_failures() -> None:
    fake = FakeAddressRegister()
    for her_id in (11, 12, 13):
        fake.put_party({"herId": her_id, "name": f"P{her_id}", "type": "Organization"})
    fake.put_party({"herId": 12, "name": "P12 renamed", "type": "Organization"})
    events = json.loads(fake(_get("/api/v1/event", fromSequenceNumber="3", maxEvents="5")).body)
    assert [(e["sequenceNumber"], e["herId"], e["eventType"]) for e in events["results"]] == [
        (3, 13, "CommunicationPartyCreated"),
        (4, 12, "CommunicationPartyUpdated"),
    ]
    export = json.loads(fake(_get("/api/v1/communicationparty/export")).body)
    assert export == {"lastSequenceNumber": 4, "count": 3, "communicationParties": [11, 12, 13]}
    assert json.loads(fake(_get("/api/v1/communicationparty/12")).body)["name"] == "P12 renamed"
    assert fake(_get("/api/v1/communicationparty/99")).status == 404
    assert fake(_get("/api/v1/certificate/12/signing")).status == 404
    assert fake(_get("/api/v1/event", fromSequenceNumber="x")).status == 400
    fake.fail_party_lookups_after = fake.party_lookups
    assert fake(_get("/api/v1/communicationparty/11")).status == 503


def test_token_check_guards_the_apis() -> None:
    helseid = FakeHelseId({"c": "s"})
    form = b"grant_type=client_credentials&client_id=c&client_secret=s"
    reply = helseid(Request("POST", "/connect/token", {}, {}, form))
    token = json.loads(reply.body)["access_token"]
    register = FakeAddressRegister(guard=helseid.guard)
    cppa = FakeCppa(guard=helseid.guard)
    anonymous = Request("GET", "/api/v1/communicationparty/1", {}, {})
    assert register(anonymous).status == 401
    assert cppa(Request("GET", "/Profiles/1", {}, {})).status == 401
    allowed = Request("GET", "/Profiles/1", {}, {"authorization": f"Bearer {token}"})
    assert cppa(allowed).status == 404  # authorised, but no such profile
    wrong = b"grant_type=client_credentials&client_id=c&client_secret=x"
    assert helseid(Request("POST", "/connect/token", {}, {}, wrong)).status == 401
    assert helseid(Request("POST", "/connect/token", {}, {}, b"grant_type=password")).status == 400
