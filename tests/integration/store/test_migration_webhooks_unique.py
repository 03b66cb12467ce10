"""Migration 0022: one active webhook per client, credential and URL; the duplicates registered
before it are disabled, the newest of each kept, with their events and owed deliveries."""

from __future__ import annotations

import json

from sqlalchemy import text

from meldingstjener.store.migrate import downgrade, upgrade
from meldingstjener.store.uow import Store


def test_duplicate_webhooks_registered_before_are_disabled_but_the_newest(
    own_database: Store,
) -> None:
    # An EPJ that registered its webhook at each start-up had one per start, each told of every
    # message: the unique index could not be built over them.
    database = own_database.database
    downgrade(database, "0021")
    with database.engine.begin() as connection:
        for number, client, url, events in (
            (1, "epj", "http://epj/hook", '["alert"]'),
            (2, "epj", "http://epj/hook", '["message-received"]'),
            (3, "epj", "http://epj/hook", '["alert"]'),
            (4, "epj", "http://epj/other", "[]"),
            (5, "lab", "http://epj/hook", "[]"),
        ):
            connection.execute(
                text(
                    "INSERT INTO webhooks (id, client_name, url, secret, events, her_ids, active,"
                    " consecutive_failures, created_at) VALUES (:id, :client, :url, 's', :events,"
                    " '[\"8100001\"]', true, 0, CURRENT_TIMESTAMP)"
                ),
                {"id": number, "client": client, "url": url, "events": events},
            )
        for hook, key in ((1, "k"), (3, "k"), (2, "m")):
            connection.execute(
                text(
                    "INSERT INTO webhook_deliveries (webhook_id, event_key, event_type, body,"
                    " state, attempts, due_at, created_at) VALUES (:hook, :key, 'alert', '{}',"
                    " 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"hook": hook, "key": key},
            )
    upgrade(database)
    with database.engine.connect() as connection:
        active = connection.execute(
            text("SELECT id FROM webhooks WHERE active ORDER BY id")
        ).scalars()
        assert list(active) == [3, 4, 5]
        deliveries = connection.execute(
            text("SELECT webhook_id, event_key, state FROM webhook_deliveries")
        ).all()
        # the kept one owed k itself (the older one's copy is given up) and takes on m
        assert sorted(map(tuple, deliveries)) == [
            (1, "k", "failed"),
            (3, "k", "pending"),
            (3, "m", "pending"),
        ]
        [events] = connection.execute(text("SELECT events FROM webhooks WHERE id = 3")).scalars()
        told = json.loads(events) if isinstance(events, str) else events
        assert told == ["alert", "message-received"]  # what the others were registered for
        assert (
            connection.execute(text("SELECT disabled_at FROM webhooks WHERE id = 2")).scalar_one()
            is not None
        )
