"""job ids are never reused on SQLite (AUTOINCREMENT)

A job is finished, rescheduled or extended by its id. Without AUTOINCREMENT, SQLite gives a new
row the id of the deleted row with the highest id, so a worker finishing a job another process
had already removed could delete the job scheduled just after it (an AppRec deadline, say).
PostgreSQL's identity never hands an id out twice: nothing to do there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # the table is rebuilt (its rows, indexes and keys kept): SQLite cannot alter a primary key
    with op.batch_alter_table(
        "jobs", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "jobs", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
