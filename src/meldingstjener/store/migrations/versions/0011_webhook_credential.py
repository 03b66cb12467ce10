"""how the client that registered a webhook proved itself (API key or JWT)

A JWT client whose client_id is the name of a revoked API-key client had its webhooks
registered but never called (the dispatcher skips the webhooks of a revoked client by name).
Webhooks registered before this revision are told apart by the name: API-key clients are
revoked, never deleted, so a webhook whose client name has no API-key client was a JWT client's.
One whose name is both (a JWT client named like an API-key client) is taken for the key's.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(
            sa.Column("credential", sa.String(16), nullable=False, server_default="api-key")
        )
    op.execute(
        "UPDATE webhooks SET credential = 'jwt' WHERE NOT EXISTS "
        "(SELECT 1 FROM api_clients WHERE api_clients.name = webhooks.client_name)"
    )


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table, and dropping the old one cascades to
    # webhook_deliveries (ON DELETE CASCADE): they are kept aside and put back.
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE TEMPORARY TABLE kept_deliveries AS SELECT * FROM webhook_deliveries")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("credential")
    if sqlite:
        op.execute("INSERT INTO webhook_deliveries SELECT * FROM kept_deliveries")
        op.execute("DROP TABLE kept_deliveries")
