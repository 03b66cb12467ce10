"""how many times in a row a job failed with an unexpected error

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a constant default: no table rewrite on PostgreSQL (11 and later)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("crashes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column: it must keep AUTOINCREMENT (see 0005)
    with op.batch_alter_table("jobs", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("crashes")
