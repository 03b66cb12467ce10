"""the encryption certificate an outbound message's payload was encrypted to

A queued message's wire form holds ciphertext for the receiver's encryption certificate of the
time it was accepted. Recorded (its SHA-256), a send can tell that the receiver has replaced that
certificate since and give the message up rather than send ciphertext the receiver may no longer
be able to open. Nullable, no default: no table rewrite; a message stored before it is sent as
before (its receiver's current certificate checked alone).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("encrypted_to_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # not a batch: SQLite would rebuild the table, and dropping the old one cascades to every
    # table that refers to messages (the whole message log); both databases drop a column so
    op.execute("ALTER TABLE messages DROP COLUMN encrypted_to_sha256")
