"""an alert's last change (raised, counted, acknowledged, resolved), which webhooks follow

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import meldingstjener.store.types

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(
            sa.Column(
                "changed_at",
                meldingstjener.store.types.UtcDateTime(timezone=True),
                nullable=True,
            )
        )
    # the latest of what is known: last raised, acknowledged or resolved
    op.execute(
        "UPDATE alerts SET changed_at = CASE"
        " WHEN resolved_at IS NOT NULL AND resolved_at > last_seen THEN resolved_at"
        " WHEN acknowledged_at IS NOT NULL AND acknowledged_at > last_seen THEN acknowledged_at"
        " ELSE last_seen END"
    )
    op.create_index("ix_alerts_changed", "alerts", ["changed_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_alerts_changed", table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("changed_at")
