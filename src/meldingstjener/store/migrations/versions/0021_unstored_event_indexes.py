"""partial indexes of the log's events of no message, by eb:MessageId and by actor

The events of a message refused before its signature verified (not stored) name it only by
their ``ebxml_message_id``, and its sender only by their ``actor`` ("http:8142987"). The help
desk's searches (``log --ebxml-id``, ``log --her-id``, ``show`` and ``status`` of an id no
message has) look for such events; without these indexes each read the whole message_events
table on PostgreSQL (3.9 s at 2 million events). The indexes hold only the events of no message,
a small part of the log. Building them reads the table once; on PostgreSQL writes to it wait
meanwhile (see 0004 for why not CONCURRENTLY).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

# as store/tables.py's UNSTORED_EVENT (a migration keeps its own copy: the model may move on)
_UNSTORED_EVENT = "message_id IS NULL"


def upgrade() -> None:
    for name, column in _INDEXES:
        op.create_index(
            name,
            "message_events",
            [column],
            unique=False,
            postgresql_where=sa.text(_UNSTORED_EVENT),
            sqlite_where=sa.text(_UNSTORED_EVENT),
        )


def downgrade() -> None:
    for name, _ in reversed(_INDEXES):
        op.drop_index(name, table_name="message_events")


_INDEXES = (
    ("ix_message_events_unstored_ebxml", "ebxml_message_id"),
    ("ix_message_events_unstored_actor", "actor"),
)
