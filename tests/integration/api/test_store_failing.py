"""A full disk (the payload directory and SQLite beside it): every request that stores is
answered 503, ``/health`` says ``store-failing`` while it lasts, the log has a line when it
starts and one when it ends (no traceback per request), and the first commit that works
raises the ``store-failing`` alert telling from when to when and how many requests were
refused. The disk fills deterministically: every payload write and every commit is refused
as a full disk refuses them (ENOSPC, SQLite's "database or disk is full"); reads work."""

from __future__ import annotations

import errno
import logging

import pytest
from api_sites import ApiPair
from engine_pair import Pair
from outage import database_full_error

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml.mime_headers import parse_content_type
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.store.payloads import Spool
from meldingstjener.store.uow import UnitOfWork

pytestmark = pytest.mark.parametrize("pair", ["sqlite"], indirect=True)


def open_alerts(ctx: EngineContext) -> dict[str, tuple[str, int, str]]:
    with ctx.store.unit_of_work() as uow:
        return {
            a.dedup_key: (a.severity, a.count, a.summary) for a in uow.alerts.list(open_only=True)
        }


def wire(pair: Pair) -> tuple[bytes, str]:
    """A message from the GP to the hospital as it goes over the wire (kept from the network)."""
    pair.network.down.add(pair.hospital_site.endpoint)
    note = dialog_note(pair.gp_site, pair.hospital_site, "x")
    row = pair.message(pair.gp, submit(pair.gp, note, actor="t"))
    pair.run()
    pair.network.down.clear()
    return pair.gp.store.payloads.read_bytes(str(row.wire_ref)), str(row.wire_content_type)


def _no_space(*_args: object, **_kw: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _database_full(*_args: object, **_kw: object) -> None:
    raise database_full_error("sqlite")


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("meldingstjener")]


def test_a_full_disk_is_told_by_health_while_it_lasts_and_by_an_alert_after_it(
    api_pair: ApiPair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, http = api_pair.pair, api_pair.hospital_http
    hospital = pair.hospital
    messages = [wire(pair) for _ in range(2)]
    caplog.set_level(logging.INFO)

    monkeypatch.setattr(Spool, "write", _no_space)
    monkeypatch.setattr(UnitOfWork, "commit", _database_full)
    for body, content_type in messages * 2:  # the first sends, and their resends
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 503, answer.text
    health = http.get("/health")
    assert (health.status_code, health.json()["status"]) == (503, "store-failing")
    health = http.get("/health")  # a probe of the disk that fails changes nothing
    assert (health.status_code, health.json()["status"]) == (503, "store-failing")
    records = _ours(caplog)
    assert [r.getMessage() for r in records if r.exc_info] == []  # not a traceback a request
    assert sum("cannot write its store (ENOSPC" in r.getMessage() for r in records) == 1
    monkeypatch.undo()  # the disk freed
    assert open_alerts(hospital) == {}  # nothing could be stored meanwhile
    # A load balancer took the server out for its /health: the probe finds the disk writable
    health = http.get("/health")
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    [(key, (severity, count, summary))] = open_alerts(hospital).items()
    assert (key, severity, count) == (f"store-failing:{hospital.instance}:outage", "critical", 1)
    assert "4 requests were answered 503" in summary and "ENOSPC" in summary
    assert sum("writes its store again" in r.getMessage() for r in _ours(caplog)) == 1
    body, content_type = messages[0]  # the sender's resend
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    # told of something past: resolved by hand, not by the next message stored
    assert list(open_alerts(hospital)) == [f"store-failing:{hospital.instance}:outage"]


def test_a_full_disk_ends_at_the_first_message_stored_after_it(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, http = api_pair.pair, api_pair.hospital_http
    body, content_type = wire(pair)
    monkeypatch.setattr(UnitOfWork, "commit", _database_full)  # the database's disk alone
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 503, answer.text
    assert http.get("/health").json()["status"] == "store-failing"
    monkeypatch.undo()
    answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text
    [summary] = [s for _, _, s in open_alerts(pair.hospital).values()]
    assert "1 requests were answered 503" in summary and "the database" in summary
    assert http.get("/health").json()["status"] == "ok"


def test_the_epj_api_on_a_full_payload_disk_answers_503_with_retry_after(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The payload directory full, the database on a disk of its own: the document cannot be
    # written. A 503 the EPJ repeats later (docs/API.md), not a 500 internal-error.
    monkeypatch.setattr(Spool, "write", _no_space)
    answer = api_pair.post_note("x")
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["code"] == "unavailable"
    health = api_pair.gp_http.get("/health")
    assert (health.status_code, health.json()["status"]) == (503, "store-failing")
    gp = api_pair.pair.gp
    # the database could be written: alerted at once, resolved by the next message received
    [(key, (severity, _, summary))] = open_alerts(gp).items()
    assert (key, severity) == (f"store-failing:{gp.instance}", "critical")
    assert "POST /Messages" in summary and "ENOSPC" in summary
    monkeypatch.undo()
    answer = api_pair.post_note("x")  # the EPJ's repeat
    assert answer.is_success, answer.text
    assert api_pair.gp_http.get("/health").json()["status"] == "ok"


def test_the_epj_api_answers_503_while_the_payload_share_is_away(api_pair: ApiPair) -> None:
    # The share of the payload directory dropped under a running serve (its marker gone, found
    # by the heartbeat): a document the EPJ sends would be written into the host's own folder
    # underneath. Refused as a full disk is, until the share is back.
    from meldingstjener.engine.instances import Heartbeat
    from meldingstjener.store.identity import claim_payload_directory, marker_path

    gp = api_pair.pair.gp
    known = claim_payload_directory(gp.store)  # as serve does at its start
    marker = marker_path(gp.store.payloads.root)
    heart = Heartbeat(gp, gp.instance)
    marker.unlink()
    heart.beat()
    answer = api_pair.post_note("x")
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["code"] == "unavailable"
    [(key, (severity, count, summary))] = open_alerts(gp).items()
    assert (key, severity, count) == (f"store-failing:{gp.instance}", "critical", 2)
    assert f"its marker {marker} is missing" in summary  # the last: the call refused
    marker.write_text(f"{known}\n", encoding="ascii")
    heart.beat()
    assert open_alerts(gp) == {}
    answer = api_pair.post_note("x")  # the EPJ's repeat
    assert answer.is_success, answer.text


def _as_sent_by(body: bytes, sender: str, other: str) -> bytes:
    """``body`` with its envelope's From HER-id replaced: a partner the pair does not have (the
    signature breaks, which nobody checks while the store refuses)."""
    named = f">{sender}</eb:PartyId>".encode()
    assert body.count(named) == 1
    return body.replace(named, f">{other}</eb:PartyId>".encode())


def test_a_full_disk_names_the_senders_it_turned_away_once_it_writes_again(
    api_pair: ApiPair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database on the full disk too: nothing could be alerted meanwhile, and a count alone
    # ("7 requests were answered 503") did not tell the operator which partners gave up.
    from meldingstjener.engine import ebms_alerts

    pair, http = api_pair.pair, api_pair.hospital_http
    gp = pair.gp_site.address_her_id
    body, content_type = wire(pair)
    sent = [body] * 3 + [_as_sent_by(body, gp, "9000001")] * 2
    sent += [_as_sent_by(body, gp, her_id) for her_id in ("9000002", "9000003")]
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(ebms_alerts, "SENDERS_NAMED", 2)

    with monkeypatch.context() as full:
        full.setattr(Spool, "write", _no_space)
        full.setattr(UnitOfWork, "commit", _database_full)
        for each in sent:
            answer = http.post("/ebms", content=each, headers={"Content-Type": content_type})
            assert answer.status_code == 503, answer.text
    assert http.get("/health").json()["status"] == "ok"
    told = f"{gp} (3), 9000001 (2) and 2 more (2)."
    [summary] = [s for _, _, s in open_alerts(pair.hospital).values()]
    assert "7 requests were answered 503" in summary and summary.endswith(told)
    [ended] = [r.getMessage() for r in _ours(caplog) if "writes its store again" in r.getMessage()]
    assert ended.endswith(told)


def _large(body: bytes, content_type: str) -> bytes:
    """``body`` with a part of 2 MiB after its envelope: spooled as it arrives (over 1 MiB)."""
    _, params = parse_content_type(content_type)
    closing = f"--{params['boundary']}--".encode()
    assert body.count(closing) == 1
    extra = b"Content-ID: <filler@x>\r\nContent-Type: application/octet-stream\r\n\r\n"
    return body.replace(closing, closing[:-2] + b"\r\n" + extra + b"x" * 2**21 + b"\r\n" + closing)


def test_a_large_message_refused_at_its_spool_is_counted_per_its_sender(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused while it is still arriving: its sender is read from its first bytes, in memory
    pair, http = api_pair.pair, api_pair.hospital_http
    gp = pair.gp_site.address_her_id
    body, content_type = wire(pair)
    monkeypatch.setattr(Spool, "write", _no_space)

    large = _large(body, content_type)
    answer = http.post("/ebms", content=large, headers={"Content-Type": content_type})

    assert answer.status_code == 503, answer.text
    [(_, count, summary)] = open_alerts(pair.hospital).values()
    assert count == 1
    assert summary.endswith(f"(From HER-id, not verified): {gp} (1).")


def test_a_store_failing_alert_names_the_senders_refused_so_far(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The payload disk full, the database beside it writable: the alert is counted at each
    # refusal, its text naming whom it turned away as counted then.
    pair, http = api_pair.pair, api_pair.hospital_http
    gp = pair.gp_site.address_her_id
    body, content_type = wire(pair)
    monkeypatch.setattr(Spool, "write", _no_space)
    for sent in (1, 2):
        answer = http.post("/ebms", content=body, headers={"Content-Type": content_type})
        assert answer.status_code == 503, answer.text
        [(_, count, summary)] = open_alerts(pair.hospital).values()
        assert count == sent
        assert summary.endswith(f"(From HER-id, not verified): {gp} ({sent}).")
    monkeypatch.undo()
    assert http.get("/health").json()["status"] == "ok"
    assert open_alerts(pair.hospital) == {}
