"""what the client that registered a webhook could read then: its scopes and its token's issuer

A webhook told its client of every message of its HER-ids, whatever its scopes: a client with
only the send scope heard of the messages it received, which it may not read. Its scopes are
kept with it now, and its issuer for a JWT client (its webhooks are called while tokens of that
issuer are taken). Webhooks registered before this revision are given their API-key client's
scopes (those never change); a JWT client's get none (NULL: no scope was recorded, and its
webhooks are called as before, see docs/API.md).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("issuer", sa.String(1024), nullable=True))
    op.execute(
        "UPDATE webhooks SET scopes = (SELECT api_clients.scopes FROM api_clients"
        " WHERE api_clients.name = webhooks.client_name) WHERE credential = 'api-key'"
    )


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table, and dropping the old one cascades to
    # webhook_deliveries (ON DELETE CASCADE): they are kept aside and put back.
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE TEMPORARY TABLE kept_deliveries AS SELECT * FROM webhook_deliveries")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("issuer")
        batch.drop_column("scopes")
    if sqlite:
        op.execute("INSERT INTO webhook_deliveries SELECT * FROM kept_deliveries")
        op.execute("DROP TABLE kept_deliveries")
