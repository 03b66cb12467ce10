"""indexes of the HER-id columns the log's search by HER-id reads

``log --her-id`` and the API's log search find the messages one of whose eight HER-id columns
(the ebXML From and To, the MsgHead's sender and receiver organisation, service and person)
is the one asked for: an OR of the eight. Five had no index, so PostgreSQL read the whole
messages table for every search (0.2 s at 400,000 messages, growing with the years). With an
index on each, the OR is a BitmapOr of eight index scans. The MsgHead's service and person
HER-ids are on some messages only: their indexes leave the NULLs out. Building them reads the
table once per index; on PostgreSQL writes to it wait meanwhile (see 0004 for why not
CONCURRENTLY), 1.4 to 3.5 s at 400,000 messages (docs/OPERATIONS.md).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-05 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

# as store/tables.py's OPTIONAL_HER_ID_COLUMNS (a migration keeps its own copy: the model may
# move on)
_OPTIONAL_HER_ID_COLUMNS = (
    "sender_service_her_id",
    "sender_person_her_id",
    "receiver_service_her_id",
    "receiver_person_her_id",
)


def _name(column: str) -> str:
    return f"ix_messages_{column.removesuffix('_her_id')}"


def upgrade() -> None:
    op.create_index("ix_messages_to", "messages", ["to_her_id"], unique=False)
    for column in _OPTIONAL_HER_ID_COLUMNS:
        present = sa.text(f"{column} IS NOT NULL")
        op.create_index(
            _name(column),
            "messages",
            [column],
            unique=False,
            postgresql_where=present,
            sqlite_where=present,
        )


def downgrade() -> None:
    for column in reversed(_OPTIONAL_HER_ID_COLUMNS):
        op.drop_index(_name(column), table_name="messages")
    op.drop_index("ix_messages_to", table_name="messages")
