"""the digest of the request an Idempotency-Key was first given with

A retry was matched to the message stored under its key by the business document alone: the
same document to another receiver (or with other ebXML overrides) under the same key was
answered with the first message, and nothing went to the receiver asked for. Nullable, no
default: no table rewrite; a message stored before it is matched by its document, as before.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


# Keys were stored as "<client>:<key>"; they are "<credential>:<length>:<client>:<key>" now
# (api/idempotency.py). An EPJ whose POST was cut off by the restart of an upgrade retries it
# with the same key after it: stored in the old form, that key would not be found and the
# message made twice. A client without an API-key client of its name (they are revoked, never
# deleted) was a token's client, as 0011 reads webhooks. The folder outbox's keys keep theirs.
_REWRITE_KEYS = """
UPDATE messages SET idempotency_key =
    CASE WHEN client_id IN (SELECT name FROM api_clients) THEN 'api-key' ELSE 'jwt' END
    || ':' || CAST(length(client_id) AS TEXT) || ':' || client_id || ':'
    || substr(idempotency_key, length(client_id) + 2)
WHERE idempotency_key IS NOT NULL AND client_id IS NOT NULL
    AND client_id NOT LIKE 'folder:%'
    AND substr(idempotency_key, 1, length(client_id) + 1) = client_id || ':'
"""


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("idempotency_digest", sa.String(length=64), nullable=True))
    op.execute(_REWRITE_KEYS)


def downgrade() -> None:
    # not a batch: SQLite would rebuild the table, and dropping the old one cascades to every
    # table that refers to messages (the whole message log); both databases drop a column so
    op.execute("ALTER TABLE messages DROP COLUMN idempotency_digest")
