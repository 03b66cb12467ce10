"""A state that lasts, found again at every round of a check, is told once: one webhook delivery
while it lasts, its alert counted at every round; told anew when it comes back."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from engine_pair import Pair
from sqlalchemy import select

from meldingstjener.config import WebhookSettings
from meldingstjener.engine.mail_channel import report_collection
from meldingstjener.integration.webhooks import WebhookDispatcher
from meldingstjener.store.tables import AlertRow, WebhookDeliveryRow, WebhookRow
from meldingstjener.transport.base import TransportFailure
from meldingstjener.transport.mailbox import CollectResult

COLLECTOR: Any = SimpleNamespace(where="pop3s://mail.example:995", username="edi")
EXPIRED = TransportFailure("mailbox-password-expired", "mail.example refused the login of edi")


def pager(pair: Pair) -> WebhookDispatcher:
    """A webhook for alerts (a pager), and the dispatcher that makes its deliveries."""
    with pair.gp.store.unit_of_work() as uow:
        uow.session.add(
            WebhookRow(
                client_name="pager",
                url="http://127.0.0.1:9/alerts",
                secret="s" * 32,
                events=["alert"],
                her_ids=[],
            )
        )
        uow.commit()
    return WebhookDispatcher(
        pair.gp, WebhookSettings(allow_http=True, allowed_networks=["127.0.0.0/8"])
    )


def deliveries(pair: Pair) -> list[tuple[str, str, int]]:
    """Each delivery made: the alert's kind, its state and its count as told."""
    with pair.gp.store.unit_of_work() as uow:
        rows = uow.session.scalars(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.id))
        return [(row.body["kind"], row.body["state"], row.body["count"]) for row in rows]


def alert(pair: Pair, key: str) -> AlertRow:
    with pair.gp.store.unit_of_work() as uow:
        found = uow.alerts.by_key(key)
        assert found is not None
        return found


def test_a_mailbox_that_cannot_be_collected_for_hours_is_one_webhook_call(pair: Pair) -> None:
    # A password expired over a weekend: every poll (60 s) failed and raised the alert again,
    # each raise a webhook delivery, some 3,600 identical pager calls.
    dispatcher = pager(pair)
    for failed in range(1, 123):  # two before the alert, then 120 rounds with it open
        pair.clock.advance(seconds=60)
        report_collection(pair.gp, COLLECTOR, "host-a:8080", None, EXPIRED, failed)
        dispatcher.collect()  # the dispatcher looks every round too (and a minute back)
    unreachable = alert(pair, "mailbox-unreachable:host-a:8080")
    assert unreachable.resolved_at is None and unreachable.count == 120
    assert unreachable.last_seen == pair.clock()  # how long it lasts shows
    assert "3 times in a row, nor at any collection since" in unreachable.summary
    assert deliveries(pair) == [("mailbox-unreachable", "open", 1)]

    # A large mail sits in the box for two hours while collection works: the same.
    large = CollectResult(found=1, too_large=1, large_sizes=[80_000_000])
    for _ in range(120):
        pair.clock.advance(seconds=60)
        report_collection(pair.gp, COLLECTOR, "host-a:8080", large, None, 0)
        dispatcher.collect()
    assert alert(pair, "mail-too-large:edi").count == 120
    assert deliveries(pair)[1:] == [
        ("mailbox-unreachable", "resolved", 120),
        ("mail-too-large", "open", 1),
    ]
    # another one comes: news, told
    two = CollectResult(found=2, too_large=2, large_sizes=[80_000_000, 90_000_000])
    pair.clock.advance(seconds=60)
    report_collection(pair.gp, COLLECTOR, "host-a:8080", two, None, 0)
    dispatcher.collect()
    assert deliveries(pair)[3:] == [("mail-too-large", "open", 121)]

    # the mailbox fails again after it worked: told anew, once
    for failed in range(1, 6):
        pair.clock.advance(seconds=60)
        report_collection(pair.gp, COLLECTOR, "host-a:8080", None, EXPIRED, failed)
        dispatcher.collect()
    # a new incident: counted from 1
    assert deliveries(pair)[4:] == [("mailbox-unreachable", "open", 1)]
    assert alert(pair, "mailbox-unreachable:host-a:8080").count == 3  # failures 3, 4 and 5


def test_mails_that_stay_in_the_box_are_told_once_and_again_when_others_stay(
    pair: Pair,
) -> None:
    dispatcher = pager(pair)
    stuck = ["message 3 (1,200 bytes, the server said -ERR [SYS/TEMP])"]
    for _ in range(30):
        pair.clock.advance(seconds=60)
        report_collection(pair.gp, COLLECTOR, "host-a:8080", None, None, 1, stuck=stuck)
        dispatcher.collect()
    assert alert(pair, "mail-stuck:edi").count == 30
    assert deliveries(pair) == [("mail-stuck", "open", 1)]
    stuck = [*stuck, "message 4 (900 bytes, the server said -ERR [SYS/TEMP])"]
    pair.clock.advance(seconds=60)
    report_collection(pair.gp, COLLECTOR, "host-a:8080", None, None, 2, stuck=stuck)
    dispatcher.collect()
    assert deliveries(pair)[1:] == [("mail-stuck", "open", 31)]
