"""a random delivery id for each webhook delivery, told to the receiver instead of the row's id

Webhook receivers were told a delivery's row id (``X-Meldingstjener-Delivery``, the body's
``deliveryId``) and told to use it to ignore a repeat. A store restored from an older backup
hands those ids out again, for other news: an EPJ that followed the advice dropped the news of
messages received after the restore as repeats. Each delivery now has a UUID of its own, made
with its row (a retry of it carries the same one); those owed when going up are given one each.
A unique index holds it to one delivery (and lets one be found by the id a receiver reports).
Going down drops the column: the receivers are told the row ids again.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-05 07:00:00
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

_INDEX = "uq_webhook_deliveries_delivery_id"
_DELIVERIES = sa.table(
    "webhook_deliveries",
    sa.column("id", sa.BigInteger),
    sa.column("delivery_id", sa.String),
)
# rows given their ids per statement: a table of many owed deliveries is not held in memory
_BATCH = 1000


def upgrade() -> None:
    # nullable first (SQLite adds no NOT NULL column without a default), filled, then NOT NULL:
    # a UUID per row is made here, as the model makes it, since neither database makes one the
    # other does (PostgreSQL's gen_random_uuid, SQLite's randomblob)
    op.add_column("webhook_deliveries", sa.Column("delivery_id", sa.String(36), nullable=True))
    connection = op.get_bind()
    unfilled = sa.select(_DELIVERIES.c.id).where(_DELIVERIES.c.delivery_id.is_(None)).limit(_BATCH)
    while ids := connection.execute(unfilled).scalars().all():
        for row_id in ids:
            connection.execute(
                _DELIVERIES.update()
                .where(_DELIVERIES.c.id == row_id)
                .values(delivery_id=str(uuid.uuid4()))
            )
    # SQLite rebuilds the table for the NOT NULL (nothing refers to webhook_deliveries, so
    # nothing cascades); PostgreSQL alters the column in place
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("delivery_id", existing_type=sa.String(36), nullable=False)
    op.create_index(_INDEX, "webhook_deliveries", ["delivery_id"], unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="webhook_deliveries")
    # not a batch: both databases drop a column so (SQLite since 3.35), without a rebuild
    op.execute("ALTER TABLE webhook_deliveries DROP COLUMN delivery_id")
