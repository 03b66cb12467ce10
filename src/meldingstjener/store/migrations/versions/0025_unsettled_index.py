"""a partial index of the messages not settled yet, for the figures of GET /metrics

A scrape counts the messages under way by direction and status, and finds the oldest of each
(a message waiting for its Acknowledgment, being retried, or for the EPJ). Through
``ix_messages_status`` the count of ``delivered`` read every received AppRec ever kept (they
stay ``delivered``), so a scrape grew with the years. The index holds only the messages not
settled (store/tables.py's UNSETTLED), and their creation time, so a scrape reads the index
alone. Building it reads the table once; on PostgreSQL writes to it wait meanwhile (see 0004
for why not CONCURRENTLY).

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-05 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

# as store/tables.py's UNSETTLED (a migration keeps its own copy: the model may move on)
_UNSETTLED = (
    "(direction = 'out' AND status IN ('accepted', 'retrying', 'sent', 'transport-error'))"
    " OR (direction = 'in' AND status IN ('acknowledged', 'received'))"
    " OR (direction = 'in' AND status = 'delivered' AND (msg_type IS NULL OR msg_type <> 'APPREC'))"
)


def upgrade() -> None:
    op.create_index(
        "ix_messages_unsettled",
        "messages",
        ["direction", "status", "created_at"],
        unique=False,
        postgresql_where=sa.text(_UNSETTLED),
        sqlite_where=sa.text(_UNSETTLED),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_unsettled", table_name="messages")
