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

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

_INDEX = "uq_webhook_deliveries_delivery_id"

# A random (version 4) UUID per row, made by the database in one UPDATE: a statement per row,
# re-finding the unfilled rows per batch, took 92 s for 160,000 deliveries on PostgreSQL, inside
# serve's start. PostgreSQL 13 and newer have gen_random_uuid(); an older one (README and
# ARCHITECTURE name no least version) an md5 of random() and the row's id, shaped as a v4 UUID.
# SQLite's randomblob() and random() are its own generator's.
_PG_UUID = "gen_random_uuid()::text"
_PG_OLD_UUID = (
    "substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-' "
    "|| substr('89ab', 1 + (('x' || substr(h, 17, 1))::bit(4)::int % 4), 1) "
    "|| substr(h, 18, 3) || '-' || substr(h, 21, 12)"
)
_SQLITE_UUID = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' "
    "|| substr(lower(hex(randomblob(2))), 2) || '-' "
    "|| substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) "
    "|| '-' || lower(hex(randomblob(6)))"
)


def _fill() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "postgresql":
        op.execute(f"UPDATE webhook_deliveries SET delivery_id = {_SQLITE_UUID}")
    elif (connection.dialect.server_version_info or (0,)) >= (13,):
        op.execute(f"UPDATE webhook_deliveries SET delivery_id = {_PG_UUID}")
    else:
        op.execute(
            f"UPDATE webhook_deliveries SET delivery_id = ({_PG_OLD_UUID}) "
            "FROM (SELECT id AS row_id, md5(random()::text || id::text) AS h "
            "FROM webhook_deliveries) AS made WHERE webhook_deliveries.id = made.row_id"
        )


def upgrade() -> None:
    # nullable first (SQLite adds no NOT NULL column without a default), filled, then NOT NULL
    op.add_column("webhook_deliveries", sa.Column("delivery_id", sa.String(36), nullable=True))
    _fill()
    # SQLite rebuilds the table for the NOT NULL (nothing refers to webhook_deliveries, so
    # nothing cascades); PostgreSQL alters the column in place
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("delivery_id", existing_type=sa.String(36), nullable=False)
    op.create_index(_INDEX, "webhook_deliveries", ["delivery_id"], unique=True)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="webhook_deliveries")
    # not a batch: both databases drop a column so (SQLite since 3.35), without a rebuild
    op.execute("ALTER TABLE webhook_deliveries DROP COLUMN delivery_id")
