"""Migration 0024 gives each webhook delivery owed going up a random (v4) delivery id in one
UPDATE, on SQLite and PostgreSQL (an older PostgreSQL without gen_random_uuid too): a statement
per row took 92 s for 160,000 deliveries inside serve's start."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import event, text

from meldingstjener.store.migrate import downgrade, upgrade
from meldingstjener.store.uow import Store

OWED = 300


@pytest.mark.parametrize("postgresql_before_13", [False, True])
def test_the_deliveries_owed_get_their_ids_in_one_statement(
    own_database: Store, postgresql_before_13: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = own_database.database
    if postgresql_before_13:
        if not database.is_postgresql:
            pytest.skip("the md5 form is PostgreSQL's before 13")
        monkeypatch.setattr(database.engine.dialect, "server_version_info", (12, 18))
    downgrade(database, "0023")
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO webhooks (id, client_name, url, secret, events, her_ids, active,"
                " consecutive_failures, created_at) VALUES (1, 'epj', 'http://epj/hook', 's',"
                " '[]', '[]', true, 0, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO webhook_deliveries (webhook_id, event_key, event_type, body, state,"
                " attempts, due_at, created_at) VALUES (1, :key, 'alert', '{}', 'pending', 0,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            [{"key": f"event-{number}"} for number in range(OWED)],
        )
    filling: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE WEBHOOK_DELIVERIES"):
            filling.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        upgrade(database, "0024")
    finally:
        event.remove(database.engine, "before_cursor_execute", count)
    assert len(filling) == 1  # not one per row
    assert ("md5(" in filling[0]) == postgresql_before_13
    with database.engine.connect() as connection:
        ids = list(connection.execute(text("SELECT delivery_id FROM webhook_deliveries")).scalars())
    assert len(ids) == OWED and len(set(ids)) == OWED
    for told in ids:
        assert str(uuid.UUID(told)) == told and uuid.UUID(told).version == 4
    upgrade(database)
