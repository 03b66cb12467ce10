"""The audit log on both backends: queryable, and the database itself refuses to change or delete
a row; migration 0002 goes down and up again cleanly.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import delete, update
from sqlalchemy.exc import DatabaseError

from meldingstjener.store import audit
from meldingstjener.store.migrate import downgrade, upgrade
from meldingstjener.store.tables import AuditRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store


def test_audit_rows_are_append_only(store: Store) -> None:
    client = f"epj-{uuid.uuid4().hex[:8]}"
    before = utcnow() - timedelta(seconds=1)
    audit.record(
        store,
        client=client,
        person="p1",
        action="get-message",
        outcome="ok",
        message_id="m-1",
        her_id="8200002",
    )
    audit.record(
        store, client=client, person=None, action="mark-read", outcome="refused", message_id="m-2"
    )
    rows = audit.query(store, audit.AuditQuery(client=client, since=before))
    assert [(r["action"], r["outcome"], r["messageId"]) for r in rows] == [
        ("get-message", "ok", "m-1"),
        ("mark-read", "refused", "m-2"),
    ]
    assert (
        audit.query(store, audit.AuditQuery(client=client, message_id="m-2"))[0]["person"] is None
    )

    for statement in (
        update(AuditRow).where(AuditRow.client == client).values(outcome="ok"),
        delete(AuditRow).where(AuditRow.client == client),
    ):
        with store.unit_of_work() as uow, pytest.raises(DatabaseError, match="append-only"):
            uow.session.execute(statement)
            uow.commit()
    assert len(audit.query(store, audit.AuditQuery(client=client))) == 2


def test_migration_0002_downgrades_and_upgrades(own_database: Store) -> None:
    store = own_database
    downgrade(store.database, "0001")
    upgrade(store.database)
    audit.record(store, client="after-upgrade", person=None, action="x", outcome="ok")
    assert audit.query(store, audit.AuditQuery(client="after-upgrade"))
