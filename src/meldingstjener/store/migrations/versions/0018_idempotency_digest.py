"""the digest of the request an Idempotency-Key was first given with

A retry was matched to the message stored under its key by the business document alone: the
same document to another receiver (or with other ebXML overrides) under the same key was
answered with the first message, and nothing went to the receiver asked for. Nullable, no
default: no table rewrite; a message stored before it is matched by its document, as before.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("idempotency_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("idempotency_digest")
