"""an index of the alerts by their message

``status`` and ``show`` read a message's alerts (``WHERE message_id = ...``), and deleting a
message (housekeeping's purge, ``store purge``) sets its alerts' ``message_id`` to NULL through
the foreign key: without the index each of those read the whole alerts table, once per message
purged. The alerts table is the one table with a foreign key to ``messages`` that had none.
Building it reads the table once; on PostgreSQL writes to it wait meanwhile (see 0004 for why
not CONCURRENTLY), a moment for a table of alerts.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_alerts_message", "alerts", ["message_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alerts_message", table_name="alerts")
