"""an outbox file's row says which outbox it was in and when the file left it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 10:00:00
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
    # Rows made before this stay without both: their keys (made with the file's inode) are
    # still looked up, and no round sweeps them.
    with op.batch_alter_table("folder_files") as batch:
        batch.add_column(sa.Column("outbox", sa.String(length=16), nullable=True))
        batch.add_column(
            sa.Column(
                "left_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=True
            )
        )
        batch.create_index("ix_folder_files_in_outbox", ["kind", "outbox", "left_at"])


def downgrade() -> None:
    with op.batch_alter_table("folder_files") as batch:
        batch.drop_index("ix_folder_files_in_outbox")
        batch.drop_column("left_at")
        batch.drop_column("outbox")
