"""who resolved an alert by hand

``alerts resolve`` and ``POST /api/alerts/{id}/resolve`` keep who resolved it (masked, as
``acknowledged_by``) until the problem comes back and opens it again: the alert's views and the
webhook call of its resolution name them with the note. Before, the alert kept only who had
acknowledged it, perhaps someone else. A column that may be empty: nothing is rewritten (an
alert resolved before it names nobody; the audit log has them). Going down drops it.

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-05 18:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("resolved_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("resolved_by")
