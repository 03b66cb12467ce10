"""a webhook that failed pauses as a whole until its next try

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import meldingstjener.store.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(
            sa.Column(
                "paused_until",
                meldingstjener.store.types.UtcDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table, and dropping the old one cascades to
    # webhook_deliveries (ON DELETE CASCADE): they are kept aside and put back.
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE TEMPORARY TABLE kept_deliveries AS SELECT * FROM webhook_deliveries")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("paused_until")
    if sqlite:
        op.execute("INSERT INTO webhook_deliveries SELECT * FROM kept_deliveries")
        op.execute("DROP TABLE kept_deliveries")
