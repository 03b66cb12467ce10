"""where an outbound message's last delivered attempt went, so that a MessageError from the MSH
there is taken after the receiver has moved

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: no table rewrite; a message sent before it is judged by its
    # receiver's current endpoint alone, as before
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("sent_endpoint", sa.Text(), nullable=True))


def downgrade() -> None:
    # not a batch: SQLite would rebuild the table, and dropping the old one cascades to every
    # table that refers to messages (the whole message log); both databases drop a column so
    op.execute("ALTER TABLE messages DROP COLUMN sent_endpoint")
