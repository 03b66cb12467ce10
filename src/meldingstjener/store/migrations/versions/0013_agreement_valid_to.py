"""the end of a partner agreement (a CPA's end), so that nothing is sent under it afterwards

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from meldingstjener.store.types import UtcDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a nullable column without a default: no table rewrite on PostgreSQL or SQLite; agreements
    # stored before it have no end (a CPA added again with 'partners add' records its end)
    with op.batch_alter_table("partner_agreements") as batch:
        batch.add_column(sa.Column("valid_to", UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("partner_agreements") as batch:
        batch.drop_column("valid_to")
