"""a partial index of the received messages not read yet, for GetMessages' poll

Without it the poll (direction 'in', read_at NULL, to_her_id IN ..., ORDER BY created_at) read
the whole messages table on PostgreSQL, every few seconds per EPJ. The index holds only the
unread received messages (a message the EPJ never marks read, one delivered to the folder
inbox or refused, stays in it). Building it reads the table once; on PostgreSQL writes to it
wait meanwhile (see 0004 for why not CONCURRENTLY).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# as store/tables.py's UNREAD_INBOUND (a migration keeps its own copy: the model may move on)
_UNREAD_INBOUND = "direction = 'in' AND read_at IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_messages_unread",
        "messages",
        ["to_her_id", "created_at"],
        unique=False,
        postgresql_where=sa.text(_UNREAD_INBOUND),
        sqlite_where=sa.text(_UNREAD_INBOUND),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_unread", table_name="messages")
