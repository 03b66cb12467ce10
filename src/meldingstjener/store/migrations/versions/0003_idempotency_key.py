"""idempotency key of API submits; index on client_id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 16:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("idempotency_key", sa.String(length=400), nullable=True))
    op.create_index("uq_messages_idempotency_key", "messages", ["idempotency_key"], unique=True)
    op.create_index("ix_messages_client_id", "messages", ["client_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_messages_client_id", table_name="messages")
    op.drop_index("uq_messages_idempotency_key", table_name="messages")
    # not a batch: SQLite would rebuild the table, and dropping the old one cascades to every
    # table that refers to messages (the whole message log); both databases drop a column so
    op.execute("ALTER TABLE messages DROP COLUMN idempotency_key")
