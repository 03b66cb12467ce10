"""the keys of API clients replaced by a rotation, accepted until their overlap ends

``clients rotate`` gives a client a new key and keeps the hash of the one it replaces, with the
time until which it is still accepted, so that the EPJ's instances can be given the new key
meanwhile. A table of its own: a client rotated again within an overlap has two old keys, each
with its own end. When a request last came with one is kept apart (``api_client_key_uses``: a
write to the clients' tables voids the API's key cache). Nothing is rewritten. Going down drops
the tables: every overlap still running ends at once, and the old keys are refused (the current
ones are in ``api_clients`` as before).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-05 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import meldingstjener.store.types

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_client_old_keys",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "client_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "replaced_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=False
        ),
        sa.Column(
            "expires_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name="fk_api_client_old_keys_client_id_api_clients",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_hash", name="pk_api_client_old_keys"),
    )
    op.create_index("ix_api_client_old_keys_client", "api_client_old_keys", ["client_id"])
    op.create_table(
        "api_client_key_uses",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "last_used_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=False
        ),
        sa.PrimaryKeyConstraint("key_hash", name="pk_api_client_key_uses"),
    )


def downgrade() -> None:
    op.drop_table("api_client_key_uses")
    op.drop_index("ix_api_client_old_keys_client", table_name="api_client_old_keys")
    op.drop_table("api_client_old_keys")
