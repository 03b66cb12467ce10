"""one active webhook per client, credential and URL (a partial unique index)

An EPJ that registered its webhook at each start-up had one webhook per registration, each
told of every message with its own delivery id, so that the client's deduplication could not
catch them; the API now refuses a second one (409), and this index makes it hold everywhere.
Duplicates registered before are switched off first, the newest of each kept (its secret is
the one the client was shown last), their pending deliveries given up. Going down drops the
index only: the webhooks switched off stay off.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

# as store/tables.py's WEBHOOK_ACTIVE (a migration keeps its own copy: the model may move on)
_ACTIVE = "active"
_INDEX = "uq_webhooks_active_url"


def upgrade() -> None:
    # the older webhooks of a client, credential and URL that has a newer active one
    older = (
        "SELECT w.id FROM webhooks w WHERE w.active AND EXISTS (SELECT 1 FROM webhooks n"
        " WHERE n.active AND n.client_name = w.client_name AND n.credential = w.credential"
        " AND n.url = w.url AND n.id > w.id)"
    )
    op.execute(
        sa.text(
            f"UPDATE webhook_deliveries SET state = 'failed' WHERE state = 'pending'"
            f" AND webhook_id IN ({older})"
        )
    )
    op.execute(
        sa.text(
            f"UPDATE webhooks SET active = false, disabled_at = CURRENT_TIMESTAMP"
            f" WHERE id IN ({older})"
        )
    )
    op.create_index(
        _INDEX,
        "webhooks",
        ["client_name", "credential", "url"],
        unique=True,
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="webhooks")
