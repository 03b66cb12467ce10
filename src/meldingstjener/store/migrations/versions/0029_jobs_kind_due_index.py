"""an index of the jobs by kind and due time

``GET /metrics`` counts each kind's jobs due, up to a bound (``store/figures.py``'s
COUNTED_JOBS), along it, and finds the kinds in the table by one probe of it each: along
``ix_jobs_due`` alone a scrape counted every job due, 350 ms on SQLite and 190 ms on PostgreSQL
with a backlog of 500,000. Building it reads the table once; on PostgreSQL writes to it wait
meanwhile (see 0004 for why not CONCURRENTLY), a moment for a table of a day's jobs.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_kind_due", "jobs", ["kind", "due_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_kind_due", table_name="jobs")
