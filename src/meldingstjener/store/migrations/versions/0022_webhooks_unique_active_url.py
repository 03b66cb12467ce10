"""one active webhook per client, credential and URL (a partial unique index)

An EPJ that registered its webhook at each start-up had one webhook per registration, each
told of every message with its own delivery id, so that the client's deduplication could not
catch them; the API now refuses a second one (409), and this index makes it hold everywhere.
Duplicates registered before are switched off first, the newest of each kept (its secret is
the one the client was shown last) and given what the others were registered for (their
events and HER-ids) and the deliveries they still owed (one it owes itself for the same event
is given up as a copy). Going down drops the index only: the webhooks switched off stay off.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 05:00:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

# as store/tables.py's WEBHOOK_ACTIVE (a migration keeps its own copy: the model may move on)
_ACTIVE = "active"
_INDEX = "uq_webhooks_active_url"


_WEBHOOKS = sa.table(
    "webhooks",
    sa.column("id", sa.BigInteger),
    sa.column("client_name", sa.String),
    sa.column("credential", sa.String),
    sa.column("url", sa.String),
    sa.column("events", sa.JSON),
    sa.column("her_ids", sa.JSON),
    sa.column("active", sa.Boolean),
    sa.column("disabled_at", sa.DateTime),
)
_DELIVERIES = sa.table(
    "webhook_deliveries",
    sa.column("webhook_id", sa.BigInteger),
    sa.column("event_key", sa.String),
    sa.column("state", sa.String),
)


def upgrade() -> None:
    connection = op.get_bind()
    groups: dict[tuple[str, str, str], list[sa.Row[Any]]] = {}
    active = sa.select(_WEBHOOKS).where(_WEBHOOKS.c.active).order_by(_WEBHOOKS.c.id)
    for row in connection.execute(active):
        groups.setdefault((row.client_name, row.credential, row.url), []).append(row)
    for rows in groups.values():
        if len(rows) > 1:
            _keep_newest(connection, rows[-1], rows[:-1])
    op.create_index(
        _INDEX,
        "webhooks",
        ["client_name", "credential", "url"],
        unique=True,
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
    )


def _keep_newest(connection: sa.Connection, kept: sa.Row[Any], older: list[sa.Row[Any]]) -> None:
    """Switch ``older`` off, ``kept`` taking their events, HER-ids and owed deliveries."""

    def union(column: str) -> list[Any]:
        merged: list[Any] = []
        for row in (kept, *older):
            merged += [value for value in getattr(row, column) or [] if value not in merged]
        return merged

    connection.execute(
        _WEBHOOKS.update()
        .where(_WEBHOOKS.c.id == kept.id)
        .values(events=union("events"), her_ids=union("her_ids"))
    )
    owed = {
        key
        for (key,) in connection.execute(
            sa.select(_DELIVERIES.c.event_key).where(_DELIVERIES.c.webhook_id == kept.id)
        )
    }
    for row in older:
        pending = connection.execute(
            sa.select(_DELIVERIES.c.event_key).where(
                _DELIVERIES.c.webhook_id == row.id, _DELIVERIES.c.state == "pending"
            )
        ).scalars()
        for key in list(pending):
            delivery = (_DELIVERIES.c.webhook_id == row.id) & (_DELIVERIES.c.event_key == key)
            if key in owed:  # the kept one tells it already
                connection.execute(_DELIVERIES.update().where(delivery).values(state="failed"))
            else:
                connection.execute(_DELIVERIES.update().where(delivery).values(webhook_id=kept.id))
                owed.add(key)
        connection.execute(
            _WEBHOOKS.update()
            .where(_WEBHOOKS.c.id == row.id)
            .values(active=False, disabled_at=sa.func.current_timestamp())
        )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="webhooks")
