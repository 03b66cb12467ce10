"""indexes of the ids in small letters, for show, status and resend of an id in another case

``show``, ``status`` and ``resend`` find a message by an ebXML MessageId or a MsgId that differs
from the stored one only in the case of its letters (an EPJ's GUID in capitals), and ``show`` a
message refused unstored by its eb:MessageId so too. They looked up each spelling of the id's
first letters as a range of the column's index and read every row in it: 1.7 s on SQLite and
1.3 s on PostgreSQL at 100,000 messages for an id no message has, and under a language's
collation (no range there, a LIKE) a read of the whole table. Through these indexes of
``lower(column)`` each is one descent. The events' index holds only those of no message, as
0021's. Building them reads each table once; on PostgreSQL writes to it wait meanwhile (see 0004
for why not CONCURRENTLY), as for 0026 (docs/OPERATIONS.md).

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-05 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None

# as store/tables.py's UNSTORED_EVENT (a migration keeps its own copy: the model may move on)
_UNSTORED_EVENT = "message_id IS NULL"


def upgrade() -> None:
    op.create_index("ix_messages_msg_id_lower", "messages", [sa.text("lower(msg_id)")])
    op.create_index("ix_messages_ebxml_id_lower", "messages", [sa.text("lower(ebxml_message_id)")])
    op.create_index(
        "ix_message_events_unstored_ebxml_lower",
        "message_events",
        [sa.text("lower(ebxml_message_id)")],
        postgresql_where=sa.text(_UNSTORED_EVENT),
        sqlite_where=sa.text(_UNSTORED_EVENT),
    )


def downgrade() -> None:
    op.drop_index("ix_message_events_unstored_ebxml_lower", table_name="message_events")
    op.drop_index("ix_messages_ebxml_id_lower", table_name="messages")
    op.drop_index("ix_messages_msg_id_lower", table_name="messages")
