"""Webhooks: a new message is announced to its client's URL, signed; a URL that keeps failing is
retried with growing waits, then disabled with an alert.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import socket
import sqlite3
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy
from api_sites import ApiPair
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from restore import restore_hospital, sqlite_backup
from sqlalchemy import select
from webhook_receiver import Receiver

from held_names import HeldResolver, self_signed_certificate
from meldingstjener.api.app import create_app
from meldingstjener.api.clients import add_client, revoke_client
from meldingstjener.config import ApiSettings, WebhookSettings
from meldingstjener.devsites import HOSPITAL_HER, HOSPITAL_SERVICE_HER, dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.webhooks import (
    CLAIM_CALLS,
    EVENT_CURSOR,
    EVENT_GAP_SECONDS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    sign,
)
from meldingstjener.store.audit import AuditQuery, query
from meldingstjener.store.tables import EventRow, WebhookDeliveryRow, WebhookRow
from meldingstjener.store.uow import EventKind

WAIT_FOR_RELEASE = 30.0  # the most a test waits for a call it holds: a hang fails the test


def _settings(**values: Any) -> WebhookSettings:
    """Webhook settings that let the calls reach this host's test receivers: loopback, in plain
    http (the defaults allow https to public addresses only)."""
    return WebhookSettings(allow_http=True, allowed_networks=["127.0.0.0/8"], **values)


@pytest.fixture
def api_pair(api_pair: ApiPair) -> Iterator[ApiPair]:
    """The API pair, its hospital's API registering webhooks as ``_settings`` allows."""
    app = create_app(api_pair.pair.hospital, webhook_settings=_settings())
    with TestClient(app) as hospital_http:
        yield dataclasses.replace(api_pair, hospital_http=hospital_http)


def _register(api_pair: ApiPair, url: str) -> dict[str, object]:
    answer = api_pair.hospital_http.post(
        "/api/webhooks",
        headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        json={"url": url, "events": ["message.received"]},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _send_note(api_pair: ApiPair) -> None:
    pair = api_pair.pair
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Varsle"), actor="test")
    pair.run()


def test_new_message_is_announced_signed(api_pair: ApiPair, receiver: Receiver) -> None:
    hook = _register(api_pair, receiver.url)
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings())
    _send_note(api_pair)
    assert dispatcher.run_once() == 1
    [(headers, body)] = receiver.calls
    assert headers[SIGNATURE_HEADER] == sign(str(hook["secret"]), headers[TIMESTAMP_HEADER], body)
    announced = json.loads(body)
    [received] = api_pair.pair.inbound_messages(api_pair.pair.hospital)
    assert announced["event"] == "message.received"
    assert announced["messageId"] == received.id
    assert "Varsle" not in body.decode()
    assert dispatcher.run_once() == 0  # announced once only


def _verified_as_docs_say(secret: str, headers: dict[str, str], body: bytes, now: datetime) -> bool:
    """docs/API.md's recipe for a receiver (its snippet, with ``now`` given): HMAC-SHA256 keyed
    with the secret's UTF-8 text over the timestamp header, ".", and the body as received; the
    timestamp an ISO 8601 time at most five minutes from now."""
    timestamp = headers["X-Meldingstjener-Timestamp"]
    expected = hmac.new(
        secret.encode("utf-8"), timestamp.encode("utf-8") + b"." + body, hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(headers["X-Meldingstjener-Signature"], "sha256=" + expected):
        return False
    return abs(now - datetime.fromisoformat(timestamp)) <= timedelta(minutes=5)


def test_a_call_and_its_retry_verify_by_the_documented_recipe(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # docs/API.md said "HMAC-SHA256 of <timestamp>.<body> with the secret", not what the
    # timestamp is, that the key is the secret's text (not its base64url bytes), nor that a
    # retry is signed anew; a receiver checking a call's age needs all three.
    secret = str(_register(api_pair, receiver.url)["secret"])
    pair = api_pair.pair
    receiver.status = 500
    dispatcher = WebhookDispatcher(pair.hospital, _settings(first_retry_seconds=400))
    _send_note(api_pair)
    assert dispatcher.run_once() == 1
    first_at = pair.clock()
    receiver.status = 200
    pair.clock.advance(seconds=400)  # past the tolerance of the first call's timestamp
    assert dispatcher.run_once() == 1
    (first, first_body), (retry, retry_body) = receiver.calls
    assert first_body == retry_body  # the same delivery ...
    assert first["X-Meldingstjener-Timestamp"] != retry["X-Meldingstjener-Timestamp"]
    assert _verified_as_docs_say(secret, first, first_body, first_at)
    assert _verified_as_docs_say(secret, retry, retry_body, pair.clock())  # ... signed anew
    assert not _verified_as_docs_say(secret, first, first_body, pair.clock())  # too old now
    assert not _verified_as_docs_say(secret, retry, retry_body.replace(b"}", b" }"), pair.clock())
    # the key is the secret's text as shown, not the bytes its base64url stands for
    decoded = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    mac = hmac.new(
        decoded, retry["X-Meldingstjener-Timestamp"].encode() + b"." + retry_body, "sha256"
    )
    assert retry["X-Meldingstjener-Signature"] != "sha256=" + mac.hexdigest()


def test_failing_url_is_retried_then_disabled_with_an_alert(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    receiver.status = 500
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    settings = _settings(first_retry_seconds=10, disable_after_failures=3)
    dispatcher = WebhookDispatcher(pair.hospital, settings)
    _send_note(api_pair)
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0  # not due again before the wait is over
    pair.clock.advance(seconds=10)
    assert dispatcher.run_once() == 1
    pair.clock.advance(seconds=15)
    assert dispatcher.run_once() == 0  # the second wait is twice as long
    pair.clock.advance(seconds=5)
    assert dispatcher.run_once() == 1
    assert len(receiver.calls) == 3
    with pair.hospital.store.unit_of_work() as uow:
        [hook] = uow.session.scalars(select(WebhookRow))
        [delivery] = uow.session.scalars(select(WebhookDeliveryRow))
        alerts = [a for a in uow.alerts.list() if a.kind == "webhook-disabled"]
    assert not hook.active and delivery.state == "failed"
    assert len(alerts) == 1 and "disabled" in alerts[0].summary
    pair.clock.advance(seconds=3600)
    assert dispatcher.run_once() == 0


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def _received_events(api_pair: ApiPair) -> list[EventRow]:
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        return list(
            uow.session.scalars(
                select(EventRow)
                .where(EventRow.kind == EventKind.STATUS, EventRow.to_status == "acknowledged")
                .order_by(EventRow.id)
            )
        )


def _remove_event(api_pair: ApiPair, event_id: int) -> dict[str, object]:
    """Take an event out of the log as if its transaction had not committed yet."""
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        row = uow.session.get(EventRow, event_id)
        assert row is not None
        values = {c.name: getattr(row, c.name) for c in EventRow.__table__.columns}
        uow.session.delete(row)
        uow.commit()
    return values


def _two_received_with_a_clock(
    api_pair: ApiPair, receiver: Receiver
) -> tuple[WebhookDispatcher, FakeMonotonic, EventRow, EventRow]:
    _register(api_pair, receiver.url)
    clock = FakeMonotonic()
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings(), monotonic=clock)
    _send_note(api_pair)
    _send_note(api_pair)
    first, second = _received_events(api_pair)
    return dispatcher, clock, first, second


def test_an_event_committed_after_a_later_one_is_still_announced(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    dispatcher, clock, first, second = _two_received_with_a_clock(api_pair, receiver)
    late = _remove_event(api_pair, first.id)  # its id is taken, its commit comes later
    assert dispatcher.run_once() == 1  # the second message, seen across the gap
    clock.now += 30
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        uow.session.add(EventRow(**late))
        uow.commit()
    assert dispatcher.run_once() == 1  # the late one is announced, not skipped
    announced = sorted(json.loads(body)["messageId"] for _, body in receiver.calls)
    assert announced == sorted([str(first.message_id), str(second.message_id)])
    assert dispatcher.run_once() == 0


def test_an_event_id_that_never_commits_holds_the_cursor_only_for_a_while(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    dispatcher, clock, first, _ = _two_received_with_a_clock(api_pair, receiver)
    _remove_event(api_pair, first.id)  # a rolled-back insert: the id never appears
    assert dispatcher.run_once() == 1
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        held = int(uow.state.get(EVENT_CURSOR) or 0)
    assert held < first.id
    clock.now += EVENT_GAP_SECONDS + 1
    assert dispatcher.run_once() == 0
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        newest = uow.session.scalars(select(EventRow.id).order_by(EventRow.id.desc())).first()
        assert int(uow.state.get(EVENT_CURSOR) or 0) == newest


def test_with_no_webhook_the_cursor_follows_the_log_and_a_new_hook_starts_from_then(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    pair = api_pair.pair
    dispatcher = WebhookDispatcher(pair.hospital, _settings())
    assert dispatcher.run_once() == 0
    _send_note(api_pair)  # news nobody listens to
    assert dispatcher.run_once() == 0
    with pair.hospital.store.unit_of_work() as uow:
        newest = max(event.id for event in uow.session.scalars(select(EventRow)))
        assert int(uow.state.get(EVENT_CURSOR) or 0) == newest
    _register(api_pair, receiver.url)
    assert dispatcher.run_once() == 0  # what happened before the hook is not announced to it
    _send_note(api_pair)
    assert dispatcher.run_once() == 1
    assert len(receiver.calls) == 1


def _deliveries(api_pair: ApiPair) -> list[WebhookDeliveryRow]:
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        return list(uow.session.scalars(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.id)))


def test_a_url_that_cannot_be_called_is_refused_and_never_stops_the_others(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    answer = api_pair.hospital_http.post(
        "/api/webhooks",
        headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        json={"url": "http://[::1/hook", "events": ["message.received"]},
    )
    assert answer.status_code == 400, answer.text
    assert "url" in answer.text
    # one stored before the check (or by hand): its failure is its own
    bad = _register(api_pair, receiver.url)
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        row = uow.session.get(WebhookRow, bad["id"])
        assert row is not None
        row.url = "http://[::1/hook"
        uow.commit()
    _register(api_pair, receiver.url)
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings())
    _send_note(api_pair)
    assert dispatcher.run_once() == 2
    assert len(receiver.calls) == 1  # the good one was called
    failed, sent = _deliveries(api_pair)
    assert (failed.state, failed.attempts, failed.last_error) == ("pending", 1, "InvalidURL")
    assert sent.state == "sent"


def test_a_receiver_that_is_down_is_asked_once_per_wait_however_much_is_owed(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # Twelve deliveries due at once to a receiver that restarts: one failed call, not twelve
    # (which, past disable_after_failures, switched the webhook off for good in one round).
    receiver.status = 503
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    dispatcher = WebhookDispatcher(pair.hospital, _settings(first_retry_seconds=5))
    for _ in range(12):
        _send_note(api_pair)
    assert dispatcher.run_once() == 1
    pair.clock.advance(seconds=4)
    assert dispatcher.run_once() == 0  # the webhook pauses, with everything owed to it
    pair.clock.advance(seconds=1)
    assert dispatcher.run_once() == 1
    receiver.status = 200
    pair.clock.advance(seconds=10)
    assert dispatcher.run_once() == 12
    assert len(receiver.calls) == 14
    assert {d.state for d in _deliveries(api_pair)} == {"sent"}
    with pair.hospital.store.unit_of_work() as uow:
        [hook] = uow.session.scalars(select(WebhookRow))
    assert (hook.active, hook.consecutive_failures, hook.paused_until) == (True, 0, None)


def test_a_revoked_clients_webhooks_end_with_it(api_pair: ApiPair, receiver: Receiver) -> None:
    receiver.status = 503
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    dispatcher = WebhookDispatcher(pair.hospital, _settings())
    _send_note(api_pair)
    assert dispatcher.run_once() == 1
    revoke_client(pair.hospital.store, "dips")
    with pair.hospital.store.unit_of_work() as uow:
        # registered with the key in the seconds a server still knew it
        uow.session.add(
            WebhookRow(
                client_name="dips",
                url=receiver.url,
                secret="s",
                events=["message.received"],
                her_ids=[HOSPITAL_HER, HOSPITAL_SERVICE_HER],
            )
        )
        uow.commit()
    receiver.status = 200
    pair.clock.advance(seconds=3600)
    _send_note(api_pair)
    assert dispatcher.run_once() == 0
    assert len(receiver.calls) == 1
    assert {d.state for d in _deliveries(api_pair)} == {"failed"}
    with pair.hospital.store.unit_of_work() as uow:
        hook, _ = uow.session.scalars(select(WebhookRow).order_by(WebhookRow.id))
    assert not hook.active and hook.disabled_at is not None


ISSUER = "https://helseid.test"


def _jwt_client(tmp_path: Path, client_id: str) -> tuple[ApiSettings, str]:
    """API settings that take tokens of ``ISSUER``, and a token of its client ``client_id``
    (receive scope, the hospital's HER-ids)."""
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": "meldingstjener",
            "exp": datetime.now(UTC) + timedelta(minutes=5),
            "client_id": client_id,
            "scope": "receive",
            "her_ids": [HOSPITAL_HER, HOSPITAL_SERVICE_HER],
        },
        signing,
        algorithm="RS256",
    )
    settings = ApiSettings(
        jwt_issuer=ISSUER, jwt_audience="meldingstjener", jwt_public_key_file=public
    )
    return settings, token


def test_a_jwt_clients_webhooks_are_called_though_a_revoked_key_client_has_its_name(
    api_pair: ApiPair, receiver: Receiver, tmp_path: Path
) -> None:
    """An EPJ that moved from an API key to tokens keeps its name as the token's client_id, and
    the operator revokes the old key: the webhooks it registers with its token, before the
    revocation and after, are called (they were registered, answered 201, and never called)."""
    pair = api_pair.pair
    # the name of an API-key client of this server
    settings, token = _jwt_client(tmp_path, "lab-system")
    with TestClient(
        create_app(pair.hospital, api_settings=settings, webhook_settings=_settings())
    ) as http:

        def register(url: str) -> int:
            answer = http.post(
                "/api/webhooks",
                headers={"Authorization": f"Bearer {token}"},
                json={"url": url, "events": ["message.received"]},
            )
            assert answer.status_code == 201, answer.text
            return int(answer.json()["id"])

        before = register(f"{receiver.url}?before")  # one active webhook per URL
        revoke_client(pair.hospital.store, "lab-system")  # the key it used before
        after = register(f"{receiver.url}?after")
        listed = http.get("/api/webhooks", headers={"Authorization": f"Bearer {token}"})
        assert [hook["id"] for hook in listed.json()] == [before, after]
    dispatcher = WebhookDispatcher(pair.hospital, _settings(), jwt_issuer=ISSUER)
    _send_note(api_pair)
    assert dispatcher.run_once() == 2
    assert sorted(json.loads(body)["deliveryId"] for _, body in receiver.calls) == sorted(
        d.delivery_id for d in _deliveries(api_pair)
    )
    assert {d.webhook_id for d in _deliveries(api_pair)} == {before, after}


def test_a_jwt_clients_webhooks_go_quiet_while_its_issuer_is_not_configured(
    api_pair: ApiPair, receiver: Receiver, tmp_path: Path
) -> None:
    # Only an API key's revocation ended webhooks: with the issuer taken out of the
    # configuration (its tokens refused), a JWT client's webhooks went on telling it of every
    # new message.
    pair = api_pair.pair
    settings, token = _jwt_client(tmp_path, "helseid-epj")
    with TestClient(
        create_app(pair.hospital, api_settings=settings, webhook_settings=_settings())
    ) as http:
        answer = http.post(
            "/api/webhooks",
            headers={"Authorization": f"Bearer {token}"},
            json={"url": receiver.url, "events": ["message.received"]},
        )
        assert answer.status_code == 201, answer.text
    for configured in (None, "https://another-issuer.test"):
        dispatcher = WebhookDispatcher(pair.hospital, _settings(), jwt_issuer=configured)
        _send_note(api_pair)
        assert dispatcher.run_once() == 0, configured
    assert receiver.calls == [] and _deliveries(api_pair) == []
    dispatcher = WebhookDispatcher(pair.hospital, _settings(), jwt_issuer=ISSUER)
    _send_note(api_pair)  # configured again: what happens from now on is told
    assert dispatcher.run_once() == 1
    assert len(receiver.calls) == 1


def test_a_delivery_the_receiver_always_refuses_is_asked_ever_more_rarely(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # The receiver refuses one body and takes the rest: the webhook's failures in a row start
    # again at each success, but the refused delivery's own waits must still grow (it was
    # asked every first wait for ever, pausing the webhook each time).
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    dispatcher = WebhookDispatcher(pair.hospital, _settings(first_retry_seconds=5))
    _send_note(api_pair)
    dispatcher.collect()
    [refused] = _deliveries(api_pair)
    receiver.answer = lambda body: (
        500 if json.loads(body)["deliveryId"] == refused.delivery_id else 200
    )
    for _ in range(12):  # a minute, a look every five seconds, and a new note each time
        dispatcher.run_once()
        pair.clock.advance(seconds=5)
        _send_note(api_pair)
    first, *rest = _deliveries(api_pair)
    assert {d.state for d in rest} == {"sent"}
    assert first.state == "pending"
    assert first.attempts == 4  # at 0, 5, 15 and 35 s


def test_an_alert_stamped_before_the_cursor_is_still_announced(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # A host whose clock is a few seconds behind (or a transaction that commits late) raises
    # an alert with a time the alert cursor has already passed: it must be announced all the
    # same, and once.
    from datetime import timedelta

    from meldingstjener.engine.alerts import AlertKind, raise_alert

    pair = api_pair.pair
    answer = api_pair.hospital_http.post(
        "/api/webhooks",
        headers={"Authorization": f"Bearer {api_pair.hospital_admin_key}"},
        json={"url": receiver.url, "events": ["alert"]},
    )
    assert answer.status_code == 201, answer.text
    dispatcher = WebhookDispatcher(pair.hospital, _settings())
    with pair.hospital.store.unit_of_work() as uow:
        raise_alert(uow, AlertKind.CLOCK_SKEW, "on time", at=pair.clock(), key="a")
        uow.commit()
    assert dispatcher.run_once() == 1
    with pair.hospital.store.unit_of_work() as uow:
        behind = pair.clock() - timedelta(seconds=5)
        raise_alert(uow, AlertKind.CLOCK_SKEW, "from a host behind", at=behind, key="b")
        uow.commit()
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0
    summaries = sorted(json.loads(body)["summary"] for _, body in receiver.calls)
    assert summaries == ["from a host behind", "on time"]


def test_the_wait_of_a_delivery_refused_for_months_stays_the_longest_wait(
    api_pair: ApiPair,
) -> None:
    # A delivery refused a thousand times (with max_retry_seconds = 60, in under a day) once
    # made 2 ** 1024, which no float holds: the OverflowError stopped every round there.
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings(max_retry_seconds=60))
    assert dispatcher._wait(5000) == dispatcher._wait(20) == timedelta(seconds=60)


class HeldFirstCall:
    """A receiver's answer that holds its first call until released (and says it has it)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def __call__(self, body: bytes) -> int:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.entered.set()
            assert self.release.wait(30)
        return 200


def _deliver_in_a_thread(dispatcher: WebhookDispatcher, held: HeldFirstCall) -> threading.Thread:
    calling = threading.Thread(target=dispatcher.deliver_due)
    calling.start()
    assert held.entered.wait(30), "the first process's call did not arrive"
    return calling


def test_two_processes_make_a_delivery_once(api_pair: ApiPair, receiver: Receiver) -> None:
    # Every serve runs a dispatcher. While the first one's call is under way, the second one's
    # round finds the delivery claimed, and does not send it too.
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    first = WebhookDispatcher(pair.hospital, _settings())
    second = WebhookDispatcher(pair.hospital, _settings())
    _send_note(api_pair)
    assert first.collect() == 1
    held = HeldFirstCall()
    receiver.answer = held
    calling = _deliver_in_a_thread(first, held)
    try:
        assert second.run_once() == 0
    finally:
        held.release.set()
        calling.join(30)
    assert len(receiver.calls) == 1
    assert [d.state for d in _deliveries(api_pair)] == ["sent"]


def test_a_receiver_that_was_down_is_probed_by_one_process(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    receiver.status = 503
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    first = WebhookDispatcher(pair.hospital, _settings(first_retry_seconds=5))
    second = WebhookDispatcher(pair.hospital, _settings(first_retry_seconds=5))
    for _ in range(3):
        _send_note(api_pair)
    assert first.run_once() == 1
    receiver.status = 200
    pair.clock.advance(seconds=5)
    held = HeldFirstCall()
    receiver.answer = held
    calling = _deliver_in_a_thread(first, held)
    try:
        assert second.deliver_due() == 0  # the first process probes; the second waits
    finally:
        held.release.set()
        calling.join(30)
    assert len(receiver.calls) == 4  # the failed call, the probe and the two others
    assert {d.state for d in _deliveries(api_pair)} == {"sent"}


def test_a_delivery_claimed_by_a_process_that_died_is_made_when_the_claim_runs_out(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    settings = _settings(timeout_seconds=10)
    died = WebhookDispatcher(pair.hospital, settings)
    other = WebhookDispatcher(pair.hospital, settings)
    _send_note(api_pair)
    died.collect()
    [delivery] = _deliveries(api_pair)
    assert died._claim(delivery.id, delivery.webhook_id) is not None  # then it dies
    assert other.deliver_due() == 0
    pair.clock.advance(seconds=4 * 10 + 29)
    assert other.deliver_due() == 0
    pair.clock.advance(seconds=1)
    assert other.deliver_due() == 1
    assert len(receiver.calls) == 1


def test_two_processes_collecting_at_once_make_each_delivery_once(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # On PostgreSQL the second process skips the round while the first collects (it inserted
    # the same deliveries, waited on the first one's unique key and then failed its round);
    # on SQLite it waits for the store's one writer and then finds the deliveries made.
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    first = WebhookDispatcher(pair.hospital, _settings())
    second = WebhookDispatcher(pair.hospital, _settings())
    _send_note(api_pair)
    entered, release = threading.Event(), threading.Event()
    real_fan_out = first._fan_out

    def fan_out_then_wait(*args: object) -> int:
        made = real_fan_out(*args)  # type: ignore[arg-type]
        entered.set()
        assert release.wait(30)
        return made

    first._fan_out = fan_out_then_wait  # type: ignore[method-assign]
    results: list[int] = []
    collecting = threading.Thread(target=lambda: results.append(first.collect()))
    collecting.start()
    assert entered.wait(30)
    second_results: list[int] = []
    also = threading.Thread(target=lambda: second_results.append(second.collect()))
    also.start()
    try:
        if pair.hospital.store.database.is_postgresql:
            also.join(20)
            assert not also.is_alive(), "the second process waited for the first one's round"
            assert second_results == [0]
    finally:
        release.set()
        collecting.join(30)
        also.join(30)
    assert results == [1] and second_results == [0]
    assert len(_deliveries(api_pair)) == 1


def test_an_alerts_acknowledgement_and_resolution_are_announced(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # A pager fed by webhooks must learn that an alert was taken care of, or every alert stays
    # open there for ever.
    from meldingstjener.engine.alerts import AlertKind, raise_alert

    pair = api_pair.pair
    admin = {"Authorization": f"Bearer {api_pair.hospital_admin_key}"}
    answer = api_pair.hospital_http.post(
        "/api/webhooks", headers=admin, json={"url": receiver.url, "events": ["alert"]}
    )
    assert answer.status_code == 201, answer.text
    dispatcher = WebhookDispatcher(pair.hospital, _settings())
    with pair.hospital.store.unit_of_work() as uow:
        raise_alert(uow, AlertKind.INBOX_WAITING, "messages wait", at=pair.clock(), key="8200002")
        uow.commit()
    assert dispatcher.run_once() == 1
    [alert] = api_pair.hospital_http.get("/api/alerts", headers=admin).json()
    pair.clock.advance(seconds=1)
    api_pair.hospital_http.post(f"/api/alerts/{alert['id']}/acknowledge", headers=admin)
    assert dispatcher.run_once() == 1
    pair.clock.advance(seconds=1)
    with pair.hospital.store.unit_of_work() as uow:
        uow.alerts.resolve("inbox-waiting:8200002", at=pair.clock())
        uow.commit()
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0
    bodies = [json.loads(body) for _, body in receiver.calls]
    assert [(b["state"], b["acknowledgedBy"]) for b in bodies] == [
        ("open", None),
        ("acknowledged", "ops"),
        ("resolved", "ops"),
    ]
    assert bodies[2]["resolvedAt"] == bodies[2]["at"]
    # resolved by the server: by nobody, without a note
    assert (bodies[2]["resolvedBy"], bodies[2]["hasResolutionNote"]) == (None, False)


def test_an_alert_resolved_by_hand_is_announced_with_who_resolved_it_not_the_note(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # The pager, or the EPJ vendor's desk, learns by whom it was resolved (who need not be the
    # one who acknowledged it) and that a note was kept, which the admin client reads from
    # GET /api/alerts: the note is an operator's free text, masked of identity numbers only,
    # and goes to no webhook target. The problem coming back opens a new incident, with neither.
    from meldingstjener.engine.alerts import AlertKind, raise_alert

    pair = api_pair.pair
    admin = {"Authorization": f"Bearer {api_pair.hospital_admin_key}"}
    http = api_pair.hospital_http
    answer = http.post(
        "/api/webhooks", headers=admin, json={"url": receiver.url, "events": ["alert"]}
    )
    assert answer.status_code == 201, answer.text
    dispatcher = WebhookDispatcher(pair.hospital, _settings())

    def problem() -> None:
        with pair.hospital.store.unit_of_work() as uow:
            raise_alert(uow, AlertKind.APPREC_UNSENT, "an AppRec was not sent", at=pair.clock())
            uow.commit()
        assert dispatcher.run_once() == 1
        pair.clock.advance(seconds=1)

    problem()
    [alert] = http.get("/api/alerts", headers=admin).json()
    follow_up = f"/api/alerts/{alert['id']}"
    acked = http.post(f"{follow_up}/acknowledge", headers={**admin, "X-Person": "anne"})
    assert acked.status_code == 200, acked.text
    assert dispatcher.run_once() == 1
    pair.clock.advance(seconds=1)
    resolved = http.post(
        f"{follow_up}/resolve",
        headers={**admin, "X-Person": "bob"},
        json={"note": "  sent by phone for 01017012345  "},
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["resolvedBy"] == "ops/bob"
    assert dispatcher.run_once() == 1
    pair.clock.advance(seconds=1)
    problem()  # again: a new incident

    bodies = [json.loads(body) for _, body in receiver.calls]
    told = [
        (b["state"], b["acknowledgedBy"], b["resolvedBy"], b["hasResolutionNote"]) for b in bodies
    ]
    assert told == [
        ("open", None, None, False),
        ("acknowledged", "ops/anne", None, False),
        ("resolved", "ops/anne", "ops/bob", True),
        ("open", None, None, False),
    ]
    assert "sent by phone" not in json.dumps(bodies) and "01017012345" not in json.dumps(bodies)
    [again] = http.get("/api/alerts", headers=admin).json()
    assert (again["resolvedBy"], again["resolutionNote"]) == (None, None)


class RawReceiver:
    """A webhook endpoint that answers as ``answer(connection, stop)`` writes, byte by byte if
    it likes; ``stop`` is set when the test is over (a trickle then ends)."""

    def __init__(self, answer: Callable[[socket.socket, threading.Event], None]) -> None:
        self.stop = threading.Event()
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/hook"
        self._answer = answer
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()
        self._listener.close()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += connection.recv(65536)
            self.requests += 1
            with contextlib.suppress(OSError):  # the caller hung up
                self._answer(connection, self.stop)


@contextlib.contextmanager
def raw_receiver(
    answer: Callable[[socket.socket, threading.Event], None],
) -> Iterator[RawReceiver]:
    made = RawReceiver(answer)
    try:
        yield made
    finally:
        made.stop.set()


def _trickle(piece: bytes, head: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """An answer that sends ``head``, then ``piece`` a byte at a time, five a second, for a
    minute at most (until the test stops it): each read is quick, the whole answer is not."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(head)
        for byte in piece * 300:
            if stop.wait(0.2):  # the pace of the trickle, not a synchronisation
                return
            connection.sendall(bytes([byte]))

    return answer


@pytest.mark.parametrize(
    ("where", "head", "piece", "outcome"),
    [
        # the status line never ends: no answer by the deadline, a failed call
        ("status line", b"HTTP/1.1 200 O", b"K", ("pending", "too-slow")),
        # 200 and then a body that never ends: the call was taken; the rest is cut off
        ("body", b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", b"x", ("sent", None)),
    ],
    ids=["status-line", "body"],
)
def test_a_receiver_trickling_its_answer_is_cut_off_at_the_calls_deadline(
    api_pair: ApiPair,
    where: str,
    head: bytes,
    piece: bytes,
    outcome: tuple[str, str | None],
) -> None:
    # httpx's time-out is per read: five bytes a second held the dispatcher (and every other
    # webhook) for as long as the receiver liked, past the claim, when another process sent
    # the same call again.
    with raw_receiver(_trickle(piece, head)) as trickler:
        _register(api_pair, trickler.url)
        dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings(timeout_seconds=1))
        _send_note(api_pair)
        round_ = threading.Thread(target=dispatcher.run_once)
        round_.start()
        round_.join(30)  # the deadline is two seconds; the trickle lasts a minute
        assert not round_.is_alive(), f"a trickled {where} held the round past its deadline"
    [delivery] = _deliveries(api_pair)
    assert (delivery.state, delivery.last_error) == outcome


def test_a_huge_answer_is_not_read(api_pair: ApiPair) -> None:
    # The whole answer was read into memory: 300 MB took 901 MiB. A few KB are read now, and
    # the connection is closed on the rest, which the receiver then cannot send.
    total = 64 * 1024 * 1024
    sent: list[int] = []
    done = threading.Event()

    def huge(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        count = 0
        try:
            while count < total:
                connection.sendall(b"y" * 65536)
                count += 65536
        finally:
            sent.append(count)
            done.set()

    with raw_receiver(huge) as receiver:
        _register(api_pair, receiver.url)
        dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings())
        _send_note(api_pair)
        assert dispatcher.run_once() == 1
        assert done.wait(30)
    assert sent[0] < total, "the whole answer was read"
    assert [d.state for d in _deliveries(api_pair)] == ["sent"]


def test_a_slow_receiver_does_not_hold_up_another_webhook(api_pair: ApiPair) -> None:
    # Deliveries were made one after another: while one receiver took its time, every other
    # webhook, of every client, waited for it.
    slow, other = Receiver(), Receiver()
    try:
        held = HeldFirstCall()
        slow.answer = held
        called = threading.Event()

        def answer(body: bytes) -> int:
            called.set()
            return 200

        other.answer = answer
        _register(api_pair, slow.url)  # its delivery is the older one: first in line
        _register(api_pair, other.url)
        # a time-out longer than the test waits: the slow call does not fail meanwhile
        settings = _settings(timeout_seconds=60)
        dispatcher = WebhookDispatcher(api_pair.pair.hospital, settings)
        _send_note(api_pair)
        assert dispatcher.collect() == 2
        calling = _deliver_in_a_thread(dispatcher, held)
        try:
            assert called.wait(30), "the other webhook waited for the slow one"
        finally:
            held.release.set()
            calling.join(30)
    finally:
        slow.server.shutdown()
        other.server.shutdown()
    assert [d.state for d in _deliveries(api_pair)] == ["sent", "sent"]


def test_a_webhook_that_answers_slowly_gets_its_share_of_a_round(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # Each call of this receiver takes a whole time-out (on the dispatcher's clock): the round
    # makes one of them and leaves the rest to the next rounds, after the other webhooks.
    clock = FakeMonotonic()
    settings = _settings(timeout_seconds=5)

    def slow(body: bytes) -> int:
        clock.now += settings.timeout_seconds
        return 200

    receiver.answer = slow
    _register(api_pair, receiver.url)
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, settings, monotonic=clock)
    for _ in range(3):
        _send_note(api_pair)
    assert [dispatcher.run_once() for _ in range(4)] == [1, 1, 1, 0]


def test_a_webhook_owed_many_calls_leaves_room_in_the_round_for_the_others(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # The round took the hundred deliveries due longest: a webhook with a backlog took every
    # place, round after round, and a webhook with news waited until the backlog was gone.
    backlog = _register(api_pair, receiver.url)
    pair = api_pair.pair
    with pair.hospital.store.unit_of_work() as uow:
        for number in range(120):
            uow.session.add(
                WebhookDeliveryRow(
                    webhook_id=backlog["id"],
                    event_key=f"old:{number}",
                    event_type="message.received",
                    body={"event": "message.received"},
                    state="pending",
                    attempts=0,
                    due_at=pair.clock() - timedelta(hours=1),
                )
            )
        uow.commit()
    other = Receiver()
    try:
        _register(api_pair, other.url)
        dispatcher = WebhookDispatcher(pair.hospital, _settings())
        _send_note(api_pair)
        dispatcher.run_once()
    finally:
        other.server.shutdown()
    assert len(other.calls) == 1


def test_a_webhook_url_that_reaches_inward_or_is_plain_http_is_refused(api_pair: ApiPair) -> None:
    # Any client (the receive scope is enough) made the server POST to its own loopback, the
    # cloud's metadata service or hosts inside the network, and GET /api/webhooks then told
    # which ports answered. By default a URL is https to a public address.
    pair = api_pair.pair
    auth = {"Authorization": f"Bearer {api_pair.outsider_key}"}

    def register(http: TestClient, url: str) -> httpx.Response:
        return http.post(
            "/api/webhooks", headers=auth, json={"url": url, "events": ["message.received"]}
        )

    refused = {
        "https://127.0.0.1:5432/": "127.0.0.1 is a loopback address",
        "https://localhost/hook": "localhost resolves to",
        "https://[::1]:5432/": "loopback",
        "https://[::ffff:127.0.0.1]/": "loopback",
        "https://169.254.169.254/latest/meta-data/": "link-local",
        "https://10.1.2.3/hook": "private",
        "https://192.168.0.1/hook": "private",
        "https://[fd12::1]/hook": "unique-local",
        "https://224.0.0.1/hook": "multicast",
        "https://0.0.0.0/hook": "unspecified",
        "http://93.184.216.34/hook": "must be https",
    }
    with TestClient(create_app(pair.hospital)) as http:  # the defaults
        for url, why in refused.items():
            answer = register(http, url)
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["code"] == "webhook-target-refused"
            assert why in answer.json()["detail"], answer.json()["detail"]
        assert register(http, "https://93.184.216.34/hook").status_code == 201
        listed = http.get("/api/webhooks", headers=auth).json()
        assert [hook["url"] for hook in listed] == ["https://93.184.216.34/hook"]
    # the operator lets the EPJs' network in (a receiver inside the hospital), in plain http
    inside = WebhookSettings(allowed_networks=["10.1.0.0/16"], allow_http=True)
    with TestClient(create_app(pair.hospital, webhook_settings=inside)) as http:
        assert register(http, "https://10.1.2.3/hook").status_code == 201
        assert register(http, "http://10.1.2.3/hook").status_code == 201
        assert register(http, "https://10.2.0.1/hook").status_code == 422


def test_a_webhook_url_with_a_user_or_password_is_refused_without_echoing_it(
    api_pair: ApiPair, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # http://user:pw@host/hook was registered (201): the password was listed by GET
    # /api/webhooks and sent to the receiver as Basic authentication with every call.
    auth = {"Authorization": f"Bearer {api_pair.hospital_key}"}
    where = receiver.url.removeprefix("http://")  # an address the operator allows here
    for url in (
        f"http://epj:pw-Kari-1957@{where}",
        f"http://epj@{where}",
        f"http://:pw-Kari-1957@{where}",
        f"HTTP://epj:pw-Kari-1957@{where.replace('127.0.0.1', 'LOCALHOST')}",
    ):
        answer = api_pair.hospital_http.post(
            "/api/webhooks", headers=auth, json={"url": url, "events": ["message.received"]}
        )
        assert answer.status_code == 422, (url, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "webhook-target-refused"
        assert "user name or password" in answer.json()["detail"]
        assert "pw-Kari" not in answer.text and "epj@" not in answer.text
    assert "pw-Kari" not in caplog.text
    assert api_pair.hospital_http.get("/api/webhooks", headers=auth).json() == []
    assert _post_hook(api_pair, receiver.url).status_code == 201  # the same URL without them


def test_a_name_that_points_inward_when_called_is_not_called(
    api_pair: ApiPair, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked only at registration, a name could resolve to a public address then and to
    # 127.0.0.1 when called (DNS rebinding): the address a call connects to is checked.
    real = socket.getaddrinfo
    points_to = ["93.184.216.34"]

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real(points_to[0] if host == "hooks.example" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    pair = api_pair.pair
    settings = WebhookSettings(allow_http=True)  # nothing inward allowed
    url = f"http://hooks.example:{receiver.server.server_address[1]}/hook"
    with TestClient(create_app(pair.hospital, webhook_settings=settings)) as http:
        answer = http.post(
            "/api/webhooks",
            headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
            json={"url": url, "events": ["message.received"]},
        )
        assert answer.status_code == 201, answer.text
    points_to[0] = "127.0.0.1"
    dispatcher = WebhookDispatcher(pair.hospital, settings)
    _send_note(api_pair)
    assert dispatcher.run_once() == 1  # a call refused is a failed call, recorded
    assert receiver.calls == []
    [delivery] = _deliveries(api_pair)
    assert delivery.state == "pending"
    assert str(delivery.last_error).startswith("target-refused: hooks.example resolves to")
    assert "loopback" in str(delivery.last_error)


class Rebinding:
    """A resolver for ``host`` that gives each answer of ``answers`` once, in turn, and the
    last one from then on; other names are resolved as they are. A backend that checked the
    address, then connected by the name (resolving it again), would reach the later answer."""

    def __init__(self, host: str, answers: list[str]) -> None:
        self.host, self.answers, self.asked = host, answers, 0
        self._real = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == self.host:
            host = self.answers[min(self.asked, len(self.answers) - 1)]
            self.asked += 1
        return self._real(host, port, *args, **kwargs)


def test_a_call_connects_to_the_address_checked_never_to_the_name_again(
    api_pair: ApiPair, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name resolves to a public address when the call checks it, and to 127.0.0.1 a moment
    # later: a call that connected by the name would resolve it again and reach the receiver
    # at loopback. It connects to the public address checked (refused here: nothing is sent
    # off this host), and the receiver is never called.
    public = "93.184.216.34"
    # registration, then the call's check; loopback from then on
    resolver = Rebinding("hooks.example", [public, public, "127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    real_connect = socket.create_connection
    tried: list[str] = []

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        tried.append(address[0])
        if address[0] == public:
            raise ConnectionRefusedError("no receiver at the public address (a test)")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    pair = api_pair.pair
    settings = WebhookSettings(allow_http=True)  # nothing inward allowed
    url = f"http://hooks.example:{receiver.server.server_address[1]}/hook"
    with TestClient(create_app(pair.hospital, webhook_settings=settings)) as http:
        answer = http.post(
            "/api/webhooks",
            headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
            json={"url": url, "events": ["message.received"]},
        )
        assert answer.status_code == 201, answer.text
    dispatcher = WebhookDispatcher(pair.hospital, settings)
    _send_note(api_pair)
    assert dispatcher.run_once() == 1  # a failed call, recorded
    assert receiver.calls == []
    assert tried == [public] and resolver.asked == 2
    [delivery] = _deliveries(api_pair)
    assert delivery.state == "pending" and delivery.last_error is not None
    assert not str(delivery.last_error).startswith("target-refused")


def test_a_client_hears_only_of_what_its_scopes_let_it_read(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # Any client could subscribe to any event: one with only the send scope heard of every
    # message its HER-ids received (ids, senders, statuses), which it may not read.
    pair = api_pair.pair
    _, send_only = add_client(
        pair.hospital.store, "sender", ["send"], [HOSPITAL_HER, HOSPITAL_SERVICE_HER]
    )
    http = api_pair.hospital_http

    def register(key: str, events: list[str] | None) -> httpx.Response:
        asked: dict[str, object] = {"url": receiver.url}
        if events is not None:
            asked["events"] = events
        return http.post("/api/webhooks", headers={"Authorization": f"Bearer {key}"}, json=asked)

    for events in (["message.received"], ["message.status", "alert"]):
        refused = register(send_only, events)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"
    assert (
        "message.received needs the 'receive' scope"
        in register(send_only, ["message.received"]).json()["detail"]
    )
    assert register(api_pair.hospital_admin_key, None).json()["events"] == ["alert"]
    made = register(send_only, None)  # no events named: those its scopes allow
    assert made.status_code == 201 and made.json()["events"] == ["message.status"]
    refusals = query(pair.hospital.store, AuditQuery(client="sender"))
    assert [(r["action"], r["outcome"]) for r in refusals] == [("/api/webhooks", "refused")] * 3
    # One registered before scopes were checked, with its client's scopes (migration 0015)
    # and an event they do not allow: it hears nothing of it.
    with pair.hospital.store.unit_of_work() as uow:
        uow.session.add(
            WebhookRow(
                client_name="sender",
                url=f"{receiver.url}?old",  # one active webhook per URL
                secret="s",
                events=["message.received", "message.status"],
                her_ids=[HOSPITAL_HER, HOSPITAL_SERVICE_HER],
                scopes=["send"],
            )
        )
        uow.commit()
    dispatcher = WebhookDispatcher(pair.hospital, _settings())
    _send_note(api_pair)  # received: a send-only client hears nothing of it
    assert dispatcher.run_once() == 0
    submit(pair.hospital, dialog_note(pair.hospital_site, pair.gp_site, "Svar"), actor="test")
    pair.run()
    assert dispatcher.run_once() > 0  # sent: the statuses of its own message
    heard = [json.loads(body) for _, body in receiver.calls]
    assert {(b["event"], b["direction"]) for b in heard} == {("message.status", "out")}


def test_finished_deliveries_are_purged_after_the_retention_pending_ones_never(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # A row per webhook and event was kept for ever: a busy server's table only grew.
    hook = _register(api_pair, receiver.url)
    pair = api_pair.pair
    now = pair.clock()
    fates = {
        ("sent", 8): "purged",
        ("failed", 8): "purged",
        ("sent", 6): "kept",  # within the retention
        ("failed", 6): "kept",
        ("pending", 400): "kept",  # owed still, however old
    }
    with pair.hospital.store.unit_of_work() as uow:
        for state, days in fates:
            uow.session.add(
                WebhookDeliveryRow(
                    webhook_id=hook["id"],
                    event_key=f"{state}:{days}",
                    event_type="message.received",
                    body={"event": "message.received"},
                    state=state,
                    attempts=1,
                    due_at=now - timedelta(days=days),
                )
            )
        [row] = uow.session.scalars(select(WebhookRow))
        row.paused_until = now + timedelta(hours=1)  # the pending one is not called here
        uow.commit()
    dispatcher = WebhookDispatcher(pair.hospital, _settings(delivery_retention_days=7))
    dispatcher.run_once()
    left = {d.event_key for d in _deliveries(api_pair)}
    kept = {f"{state}:{days}" for (state, days), fate in fates.items() if fate == "kept"}
    assert left == kept


def test_the_purge_binds_no_ids_and_goes_on_in_batches_to_the_last(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch was deleted by its 5000 ids bound as parameters: an SQLite before 3.32 allows
    # 999, and refused the purge every time. Such an SQLite is stood for by this one's limit.
    from meldingstjener.integration import webhooks

    pair = api_pair.pair
    hook = _register(api_pair, "https://93.184.216.34/hook")
    now = pair.clock()
    rows = 1200
    with pair.hospital.store.unit_of_work() as uow:
        uow.session.add_all(
            WebhookDeliveryRow(
                webhook_id=hook["id"],
                event_key=f"old:{n}",
                event_type="message.received",
                body={"event": "message.received"},
                state="sent",
                attempts=1,
                due_at=now - timedelta(days=40),
            )
            for n in range(rows)
        )
        uow.commit()
    database = pair.hospital.store.database
    if not database.is_postgresql:

        def old_limit(connection: Any, _record: Any) -> None:
            connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

        sqlalchemy.event.listen(database.engine, "connect", old_limit)
        database.engine.dispose()  # every connection from now on made with the limit
    monkeypatch.setattr(webhooks, "PURGE_BATCH", 1000)  # over the limit; the last a part of one
    try:
        purged = WebhookDispatcher(pair.hospital, _settings()).purge()
    finally:
        if not database.is_postgresql:
            sqlalchemy.event.remove(database.engine, "connect", old_limit)
            database.engine.dispose()
    assert purged == rows
    assert _deliveries(api_pair) == []


def test_a_purge_that_fails_is_not_tried_again_every_round(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The time of the last purge was set only after one went through: a purge that failed ran
    # (and logged its traceback) every round, not hourly.
    pair = api_pair.pair
    clock = [0.0]
    dispatcher = WebhookDispatcher(pair.hospital, _settings(), monotonic=lambda: clock[0])
    tries: list[float] = []

    def fails() -> int:
        tries.append(clock[0])
        raise RuntimeError("the table is locked")

    monkeypatch.setattr(dispatcher, "purge", fails)
    with pytest.raises(RuntimeError):
        dispatcher.run_once()
    clock[0] = 60.0
    dispatcher.run_once()  # a round later: not tried again
    assert tries == [0.0]
    clock[0] = 3601.0
    with pytest.raises(RuntimeError):
        dispatcher.run_once()  # an hour later: tried again
    assert tries == [0.0, 3601.0]


def test_an_https_receiver_is_called_by_its_name_at_the_address_checked(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A call connects to the address the target policy checked, not to the name: TLS must
    # still verify the receiver's certificate for the name, and the request name it (Host, SNI).
    certificate_file, key_file = self_signed_certificate(tmp_path, "hooks.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate_file))  # the one CA trusted
    # 127.0.0.1 at registration and at the call's check, 127.0.0.2 (allowed too, where nothing
    # listens) from then on: a call that connected by the name, resolving it again, would fail
    resolver = Rebinding("hooks.test", ["127.0.0.1", "127.0.0.1", "127.0.0.2"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    receiver = Receiver()
    server_names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate_file, key_file)
    tls.sni_callback = lambda _socket, server_name, _context: server_names.append(server_name)
    receiver.server.socket = tls.wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.server.server_address[1]
    settings = WebhookSettings(allowed_networks=["127.0.0.0/8"])  # https only
    pair = api_pair.pair
    try:
        with TestClient(create_app(pair.hospital, webhook_settings=settings)) as http:
            answer = http.post(
                "/api/webhooks",
                headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
                json={"url": f"https://hooks.test:{port}/hook", "events": ["message.received"]},
            )
            assert answer.status_code == 201, answer.text
        dispatcher = WebhookDispatcher(pair.hospital, settings)
        _send_note(api_pair)
        assert dispatcher.run_once() == 1
    finally:
        receiver.server.shutdown()
    [(headers, _)] = receiver.calls
    assert resolver.asked == 2  # registration, the call's check: the name was not looked up again
    assert headers["Host"] == f"hooks.test:{port}" and server_names == ["hooks.test"]
    assert [d.state for d in _deliveries(api_pair)] == ["sent"]


def test_a_name_server_that_does_not_answer_fails_the_call_by_its_time_out(
    api_pair: ApiPair, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # getaddrinfo takes no time-out: a resolver that hangs (its time-out times its attempts
    # times the name servers, half a minute) held the call, and the dispatcher, past its deadline
    resolver = HeldResolver({"hooks.held.test": "127.0.0.1"})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    _register(api_pair, f"http://hooks.held.test:{receiver.server.server_address[1]}/hook")
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings(timeout_seconds=0.3))
    _send_note(api_pair)
    resolver.hold()
    try:
        assert dispatcher.run_once() == 1  # a call that timed out is a failed call, recorded
        # it ended by the connect's deadline (0.3 s) while the look-up was still held, not by
        # the resolver's own end (HOLD_LIMIT, counted in ``expired``): no clock read here
        assert resolver.expired == 0 and resolver.asked["hooks.held.test"] >= 1
    finally:
        resolver.release()
    assert receiver.calls == []
    [delivery] = _deliveries(api_pair)
    assert (delivery.state, delivery.last_error) == ("pending", "ConnectTimeout")


def _post_hook(api_pair: ApiPair, url: str, key: str | None = None) -> httpx.Response:
    return api_pair.hospital_http.post(
        "/api/webhooks",
        headers={"Authorization": f"Bearer {key or api_pair.hospital_key}"},
        json={"url": url, "events": ["message.received"]},
    )


def test_a_client_registers_a_url_once_while_its_webhook_is_active(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # An EPJ that registered at each start-up had a webhook per start, each told of every
    # message with its own delivery id: its deduplication could not catch them.
    first = _register(api_pair, receiver.url)
    again = _post_hook(api_pair, receiver.url)
    assert again.status_code == 409, again.text
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["code"] == "conflict"
    assert f"webhook {first['id']}" in again.json()["detail"]
    # another client may have a webhook at the same URL
    _, other_key = add_client(
        api_pair.pair.hospital.store, "other-epj", ["receive"], [HOSPITAL_SERVICE_HER]
    )
    assert _post_hook(api_pair, receiver.url, other_key).status_code == 201
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings())
    _send_note(api_pair)
    assert dispatcher.run_once() == 2  # once per client
    # a webhook switched off (after failures) is registered again
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        row = uow.session.get(WebhookRow, first["id"])
        assert row is not None
        row.active = False
        uow.commit()
    assert _post_hook(api_pair, receiver.url).status_code == 201


def test_the_same_registration_made_twice_at_once_is_held_by_the_database(
    api_pair: ApiPair,
) -> None:
    _register(api_pair, "https://93.184.216.34/hook")
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        [row] = uow.session.scalars(select(WebhookRow))
        twin = WebhookRow(
            client_name=row.client_name,
            credential=row.credential,
            url=row.url,
            secret="s",
            events=row.events,
            her_ids=row.her_ids,
            active=True,
            consecutive_failures=0,
        )
        uow.session.add(twin)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            uow.session.flush()


def test_a_client_has_at_most_max_per_client_webhooks(api_pair: ApiPair) -> None:
    app = create_app(api_pair.pair.hospital, webhook_settings=_settings(max_per_client=2))
    with TestClient(app) as http:
        limited = dataclasses.replace(api_pair, hospital_http=http)
        first = _register(limited, "https://93.184.216.34/one")
        _register(limited, "https://93.184.216.34/two")
        third = _post_hook(limited, "https://93.184.216.34/three")
        assert third.status_code == 409, third.text
        assert "max_per_client" in third.json()["detail"]
        gone = http.delete(
            f"/api/webhooks/{first['id']}",
            headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        )
        assert gone.status_code == 204
        assert _post_hook(limited, "https://93.184.216.34/three").status_code == 201


def test_one_clients_many_slow_webhooks_do_not_hold_up_another_clients(
    api_pair: ApiPair,
) -> None:
    # The round took the webhooks whose deliveries waited longest: more than parallel_webhooks
    # of one client at a receiver answering just inside the time-out filled every place of the
    # pool, call after call, while another client's webhook waited for all of them.
    settings = _settings(timeout_seconds=60)  # the held calls do not fail meanwhile
    release = threading.Event()
    called = threading.Event()
    slow, other = Receiver(), Receiver()
    slow.answer = lambda body: 200 if release.wait(30) else 500

    def answer(body: bytes) -> int:
        called.set()
        return 200

    other.answer = answer
    try:
        for number in range(settings.parallel_webhooks + 2):
            _register(api_pair, f"{slow.url}?{number}")
        _, other_key = add_client(
            api_pair.pair.hospital.store, "other-epj", ["receive"], [HOSPITAL_SERVICE_HER]
        )
        assert _post_hook(api_pair, other.url, other_key).status_code == 201
        dispatcher = WebhookDispatcher(api_pair.pair.hospital, settings)
        _send_note(api_pair)
        assert dispatcher.collect() == settings.parallel_webhooks + 3
        pair = api_pair.pair
        with pair.hospital.store.unit_of_work() as uow:  # the slow ones' waited longer
            uow.session.execute(
                sqlalchemy.update(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.webhook_id.in_(
                        select(WebhookRow.id).where(WebhookRow.client_name != "other-epj")
                    )
                )
                .values(due_at=pair.clock() - timedelta(minutes=5))
            )
            uow.commit()
        calling = threading.Thread(target=dispatcher.deliver_due)
        calling.start()
        try:
            assert called.wait(15), "the other client's webhook waited for the slow ones"
        finally:
            release.set()
            calling.join(60)
    finally:
        slow.server.shutdown()
        other.server.shutdown()
    assert len(slow.calls) == settings.parallel_webhooks + 2


def test_an_event_committed_while_a_round_reads_the_log_is_announced(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    # PostgreSQL (READ COMMITTED) gives each statement of a round a view of its own: an event
    # committed between the round's reading of the news and its moving of the cursor was
    # passed by the cursor without being read, and never announced.
    pair = api_pair.pair
    database = pair.hospital.store.database
    if not database.is_postgresql:
        pytest.skip("SQLite: a round's statements read one snapshot; nothing commits between")
    dispatcher, _, first, second = _two_received_with_a_clock(api_pair, receiver)
    late = _remove_event(api_pair, second.id)  # committed while the next round reads the news
    inserted: list[int] = []

    def commit_the_late_event(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if inserted or not statement.lstrip().startswith("SELECT message_events.id"):
            return
        if "JOIN messages" not in statement:
            return
        with pair.hospital.store.unit_of_work() as uow:
            uow.session.add(EventRow(**late))
            uow.commit()
        inserted.append(late["id"])  # type: ignore[arg-type]

    sqlalchemy.event.listen(database.engine, "after_cursor_execute", commit_the_late_event)
    try:
        dispatcher.run_once()
    finally:
        sqlalchemy.event.remove(database.engine, "after_cursor_execute", commit_the_late_event)
    assert inserted == [second.id]
    dispatcher.run_once()
    announced = sorted(json.loads(body)["messageId"] for _, body in receiver.calls)
    assert announced == sorted([str(first.message_id), str(second.message_id)])


@pytest.mark.parametrize("pair", ["sqlite"], indirect=True)
def test_deliveries_after_a_restored_backup_have_ids_never_handed_out_before(
    api_pair: ApiPair, receiver: Receiver, tmp_path: Path
) -> None:
    # The receivers were told the delivery rows' ids, and told to use them to ignore a repeat.
    # A store restored from an older backup handed the same ids out again, for other messages:
    # an EPJ that followed the advice dropped the news of newly received messages.
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    _send_note(api_pair)
    assert WebhookDispatcher(pair.hospital, _settings()).run_once() == 1
    _send_note(api_pair)
    assert WebhookDispatcher(pair.hospital, _settings()).collect() == 1  # owed at the backup
    backup = tmp_path / "backup.db"
    sqlite_backup(pair.hospital, backup)
    assert WebhookDispatcher(pair.hospital, _settings()).run_once() == 1
    _send_note(api_pair)
    assert WebhookDispatcher(pair.hospital, _settings()).run_once() == 1
    before = [_delivery_id(headers, body) for headers, body in receiver.calls]
    restored = restore_hospital(pair, backup)
    for _ in range(2):
        _send_note(api_pair)
    assert WebhookDispatcher(restored, _settings()).run_once() == 3
    owed_again, *after = [_delivery_id(headers, body) for headers, body in receiver.calls[3:]]
    announced = [json.loads(body)["messageId"] for _, body in receiver.calls]
    assert len(set(before)) == 3 and len(set(after)) == 2
    assert not set(after) & set(before)  # new news: an id never handed out before
    # the call the backup still owed is made again: the same news with the same id, a repeat
    assert (owed_again, announced[3]) == (before[1], announced[1])
    assert len(set(announced)) == 5  # five messages
    assert all(str(uuid.UUID(told)) == told for told in before + after)


def _delivery_id(headers: dict[str, str], body: bytes) -> str:
    """The id a call carries, the same in its header and its body."""
    told = str(json.loads(body)["deliveryId"])
    assert headers["X-Meldingstjener-Delivery"] == told  # the header docs/API.md names
    return told


def test_a_webhook_for_no_event_or_for_one_twice_is_refused(api_pair: ApiPair) -> None:
    # "events": [] was registered: a webhook told of nothing, counted towards max_per_client.
    auth = {"Authorization": f"Bearer {api_pair.hospital_key}"}
    for events, why in (
        ([], "at least 1 item"),
        (["message.received", "message.received"], "more than once: ['message.received']"),
        (["message.sent"], "an unknown event"),
    ):
        answer = api_pair.hospital_http.post(
            "/api/webhooks", headers=auth, json={"url": "https://93.184.216.34/h", "events": events}
        )
        assert answer.status_code == 400, (events, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"] == "invalid-input"
        assert any(why in line for line in answer.json()["validationErrors"]), answer.json()
    assert api_pair.hospital_http.get("/api/webhooks", headers=auth).json() == []


def test_a_url_written_otherwise_is_the_same_url(api_pair: ApiPair) -> None:
    # https://LocalHost:443/hook and https://localhost/hook were two webhooks at one URL.
    first = _register(api_pair, "https://LocalHost:443/hook")
    assert first["url"] == "https://localhost/hook"  # kept in its normal form
    for again in ("https://localhost/hook", "HTTPS://LOCALHOST/hook", "https://localhost:443/hook"):
        answer = _post_hook(api_pair, again)
        assert answer.status_code == 409, (again, answer.text)
        assert f"webhook {first['id']}" in answer.json()["detail"]
    assert _post_hook(api_pair, "http://LocalHost:80").json()["url"] == "http://localhost/"
    assert _post_hook(api_pair, "http://localhost/").status_code == 409
    # another port, path or case of the path is another URL
    for other in ("https://localhost:8443/hook", "https://localhost/Hook"):
        assert _post_hook(api_pair, other).status_code == 201, other
    # an address has one spelling
    v6 = "https://[2606:2800:220:1:248:1893:25c8:1946]/v6"
    assert _register(api_pair, "https://[2606:2800:0220:0001:0248:1893:25C8:1946]/v6")["url"] == v6
    assert _post_hook(api_pair, v6.replace("]/", "]:443/")).status_code == 409
    # the normal form must fit where it is kept: é is written out as %C3%A9
    longer = _post_hook(api_pair, "https://localhost/" + "é" * 300)
    assert longer.status_code == 400, longer.text
    # one kept as it was written, before URLs were kept in their normal form, is compared in it
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        [row] = uow.session.scalars(select(WebhookRow).where(WebhookRow.id == first["id"]))
        row.url = "HTTPS://LocalHost:443/hook"
        uow.commit()
    answer = _post_hook(api_pair, "https://localhost/hook")
    assert answer.status_code == 409 and f"webhook {first['id']}" in answer.json()["detail"]


def test_two_registrations_at_once_never_pass_max_per_client(api_pair: ApiPair) -> None:
    # The count and the insert were two transactions: two registrations at once each counted
    # one below the most and both were added. The race is forced, with real transactions: a
    # share lock on the table lets each registration count, and holds each insert until both
    # registrations are under way; then they go on as they may.
    database = api_pair.pair.hospital.store.database
    if not database.is_postgresql:
        pytest.skip("SQLite has one writer: a unit of work counts and inserts holding it")
    app = create_app(api_pair.pair.hospital, webhook_settings=_settings(max_per_client=2))
    with TestClient(app) as http:
        limited = dataclasses.replace(api_pair, hospital_http=http)
        _register(limited, "https://93.184.216.34/first")
        start = threading.Barrier(3)
        answers: dict[str, int] = {}

        def register(url: str) -> None:
            start.wait()
            answers[url] = _post_hook(limited, url).status_code

        racers = [
            threading.Thread(target=register, args=(f"https://93.184.216.34/{name}",))
            for name in ("a", "b")
        ]
        outside = sqlalchemy.create_engine(database.url, poolclass=sqlalchemy.NullPool)
        with outside.connect() as blocker:
            blocker.execute(sqlalchemy.text("LOCK TABLE webhooks IN SHARE MODE"))
            for racer in racers:
                racer.start()
            start.wait()
            # both counted and wait to insert, or one of them waits for the other's commit
            _wait_for_lock_waiters(outside, 2)
            blocker.rollback()
        for racer in racers:
            racer.join()
    assert sorted(answers.values()) == [201, 409], answers
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        assert len(list(uow.session.scalars(select(WebhookRow.id)))) == 2


def _wait_for_lock_waiters(engine: sqlalchemy.Engine, waiters: int) -> None:
    """Return once ``waiters`` sessions of the database wait for a lock (a bounded poll of the
    server's own view, not a guess of how long they take)."""
    waiting = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    with engine.connect() as watcher:
        for _ in range(100_000):
            if watcher.execute(waiting).scalar_one() >= waiters:
                return
            watcher.rollback()  # each look in a transaction of its own
    raise AssertionError(f"{waiters} sessions never came to wait for a lock")


class _DrivenRounds(threading.Event):
    """The stop event of a dispatcher's run loop the test drives: each pause between rounds is
    recorded and passed on the pair's clock at once, and the loop stops after ``rounds``."""

    def __init__(self, pair: Any, rounds: int) -> None:
        super().__init__()
        self.pair, self.rounds = pair, rounds
        self.pauses: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout)
        self.pair.clock.advance(seconds=timeout or 0)
        if len(self.pauses) >= self.rounds:
            self.set()
        return self.is_set()


def test_deliveries_wait_for_a_full_database_counting_nothing_against_the_receiver(
    api_pair: ApiPair,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The database's disk fills while a call is made: its outcome cannot be recorded, nor
    # anything after it. The rounds wait for the store as the jobs do (STORE_PAUSE apart),
    # with no traceback (one a minute, blamed on the webhook round, before, and a "webhook
    # disabled" line for a disabling never stored) and nothing counted against the receiver
    # (one failure disables it here); the outage is the store-failing period's to tell. The
    # delivery is made again, under the same delivery id, once the disk is freed and its
    # claim has run out.
    from outage import fill_database_when

    from meldingstjener.engine.failing_jobs import STORE_PAUSE

    full = threading.Event()
    fill_database_when(full, monkeypatch)
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    hospital = pair.hospital
    settings = _settings(disable_after_failures=1, timeout_seconds=5)
    dispatcher = WebhookDispatcher(hospital, settings)
    receiver.answer = lambda body: full.set() or 500  # the disk fills during the call
    _send_note(api_pair)
    caplog.set_level(logging.INFO)
    rounds = _DrivenRounds(pair, 3)
    dispatcher.run(rounds)
    assert rounds.pauses == [STORE_PAUSE.total_seconds()] * 3
    assert len(receiver.calls) == 1  # claimed: not made again until its claim runs out
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "raised through" not in caplog.text  # no traceback as text either
    webhook_said = [r.getMessage() for r in caplog.records if r.name.endswith(".webhooks")]
    assert webhook_said == []
    assert hospital.store_failing.failing  # told there, once
    assert sum("cannot write its store" in r.getMessage() for r in caplog.records) == 1
    [delivery] = _deliveries(api_pair)
    with hospital.store.unit_of_work() as uow:
        [hook] = uow.session.scalars(select(WebhookRow))
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("pending", 0, None)
    assert (hook.active, hook.consecutive_failures) == (True, 0)

    full.clear()  # the disk freed
    receiver.status = 200
    receiver.answer = lambda body: receiver.status
    pair.clock.advance(seconds=CLAIM_CALLS * settings.timeout_seconds + 30)
    rounds = _DrivenRounds(pair, 1)
    dispatcher.run(rounds)
    assert rounds.pauses == [settings.poll_interval_seconds]
    (first, first_body), (again, again_body) = receiver.calls
    assert _delivery_id(first, first_body) == _delivery_id(again, again_body)
    [delivery] = _deliveries(api_pair)
    assert (delivery.state, delivery.attempts) == ("sent", 1)


def test_a_stop_ends_the_webhook_round(
    api_pair: ApiPair,
) -> None:
    # Two webhooks, owed two deliveries each, called at once: the stop comes while their first
    # calls are under way. No further delivery is called: the rest waits for a dispatcher that
    # runs on (the round went on calling while the stop's time ran out).
    first_calls = threading.Semaphore(0)
    release = threading.Event()
    slow = Receiver()

    def answer(body: bytes) -> int:
        first_calls.release()
        return 200 if release.wait(WAIT_FOR_RELEASE) else 500

    slow.answer = answer
    stop = threading.Event()
    try:
        _register(api_pair, f"{slow.url}?one")
        _register(api_pair, f"{slow.url}?two")
        _send_note(api_pair)
        _send_note(api_pair)
        dispatcher = WebhookDispatcher(api_pair.pair.hospital, _settings(timeout_seconds=60))
        serving = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
        serving.start()
        try:
            assert first_calls.acquire(timeout=WAIT_FOR_RELEASE)
            assert first_calls.acquire(timeout=WAIT_FOR_RELEASE)
            stop.set()
        finally:
            release.set()
            serving.join(WAIT_FOR_RELEASE)
        assert not serving.is_alive()
    finally:
        slow.server.shutdown()
    assert len(slow.calls) == 2  # one per webhook: none begun after the stop
