"""an index of the jobs claimed, for /metrics' count of those a worker holds

``GET /metrics`` counted the jobs running among each kind's 1,000 due longest, and a job handed
to a worker at submit is due now, behind any backlog: 1,200 late sends and 8 held read 0
running. They are counted apart now, all of them, through this partial index of the jobs
claimed (a few per worker). Building it reads the table once; on PostgreSQL writes to it wait
meanwhile (see 0004 for why not CONCURRENTLY), a moment for a table of a day's jobs.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-05 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

# as store/tables.py's JOB_CLAIMED (a migration keeps its own copy: the model may move on)
_CLAIMED = "claimed_until IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_held",
        "jobs",
        ["claimed_until"],
        unique=False,
        postgresql_where=sa.text(_CLAIMED),
        sqlite_where=sa.text(_CLAIMED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_held", table_name="jobs")
