"""an index of the jobs by their message

Every Acknowledgment, AppRec, MessageError and give-up deletes its message's jobs (``DELETE
FROM jobs WHERE message_id = ...``, under the message's row lock), and deleting a message would
cascade to them: without the index each read the whole jobs table, which holds an
apprec-deadline job for every message awaiting its AppRec (a day's worth: 3.2 ms per statement
at 50,000 jobs on PostgreSQL). Building it reads the table once; on PostgreSQL writes to it wait
meanwhile (see 0004 for why not CONCURRENTLY), a moment for a table of a day's jobs.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_message", "jobs", ["message_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_message", table_name="jobs")
