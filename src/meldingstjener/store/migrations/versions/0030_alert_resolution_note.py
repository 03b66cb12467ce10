"""an alert's resolution note: what the operator who resolved it by hand wrote

``alerts resolve ID --note TEXT`` keeps its text with the alert (500 characters at most),
shown by ``alerts`` and the alert's views, until the problem comes back and opens it again.
A column that may be empty: nothing is rewritten. Going down drops it, with the notes.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-05 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("resolution_note", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("resolution_note")
