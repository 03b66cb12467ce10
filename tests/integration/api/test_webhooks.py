"""Webhooks: a new message is announced to its client's URL, signed; a URL that keeps failing is
retried with growing waits, then disabled with an alert.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from api_sites import ApiPair
from sqlalchemy import select

from meldingstjener.config import WebhookSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.integration.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    sign,
)
from meldingstjener.store.tables import WebhookDeliveryRow, WebhookRow


class Receiver:
    """A client's webhook endpoint: records calls, answers with ``status``."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()


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
    dispatcher = WebhookDispatcher(api_pair.pair.hospital, WebhookSettings())
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


def test_failing_url_is_retried_then_disabled_with_an_alert(
    api_pair: ApiPair, receiver: Receiver
) -> None:
    receiver.status = 500
    _register(api_pair, receiver.url)
    pair = api_pair.pair
    settings = WebhookSettings(first_retry_seconds=10, disable_after_failures=3)
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
