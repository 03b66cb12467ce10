"""a party's previous signing certificate, kept through a certificate rollover

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meldingstjener.store.types import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable columns without a default: no table rewrite on PostgreSQL or SQLite
    with op.batch_alter_table("communication_parties") as batch:
        batch.add_column(sa.Column("previous_signing_certificate", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("signing_cert_replaced_at", UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("communication_parties") as batch:
        batch.drop_column("signing_cert_replaced_at")
        batch.drop_column("previous_signing_certificate")
