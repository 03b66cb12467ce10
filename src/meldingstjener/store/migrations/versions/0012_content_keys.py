"""the content keys of received payloads: each is used in one received message only

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import meldingstjener.store.types

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "content_keys",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_content_keys_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("digest", name="pk_content_keys"),
    )
    op.create_index("ix_content_keys_message", "content_keys", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_content_keys_message", table_name="content_keys")
    op.drop_table("content_keys")
