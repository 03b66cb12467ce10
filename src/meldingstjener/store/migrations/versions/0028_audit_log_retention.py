"""the audit log's rows deleted by retention ([retention] audit_days), and by nothing else

0002's triggers refuse every UPDATE and DELETE of an audit row. Retention may now delete rows
older than its cutoff, and the database still refuses everything else. It does so through a
*permit*: a row of ``audit_log_retention_permits`` (the cutoff, and the first and last row of
the batch in the order of ``at`` and ``id``; a permit without a first row reaches from the log's
first). Its INSERT's own trigger deletes the batch's rows and then
the permit, so a permit never outlives the statement that writes it: on SQLite a writer is
alone while it writes, on PostgreSQL another transaction never sees a row not committed, and
this one is gone before the commit. The audit log's guard lets a DELETE through only while a
permit exists and only of a row older than its cutoff; every other DELETE, and every UPDATE,
is refused as before ("the audit log is append-only"), and on PostgreSQL a TRUNCATE now too
(it fires no row's trigger). The database cannot tell processes apart: what it holds is that
no statement but a permit's INSERT deletes audit rows, only those older than its cutoff, and
that no permit is left behind to let a later DELETE through. A permit's cutoff is no later
than 30 days before the database's own clock (``[retention] audit_days`` is 0 or at least
30): a permit written by hand with a cutoff of tomorrow is refused, not let delete today's
rows. On SQLite an INSERT OR REPLACE (or REPLACE) of an existing row is refused too: its
conflict deletes the old row without a DELETE trigger firing, and inserts one of the writer's
own under its id. Going down puts 0002's guard back (every DELETE refused, a TRUNCATE let
through as before) and drops the permits' table, empty: no permit is ever committed.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-05 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import meldingstjener.store.types

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

_PERMITS = "audit_log_retention_permits"
_REFUSAL = "the audit log is append-only"  # 0002's words: a refusal reads as it did
# The permit's rows: from its first to its last in the order of ``at`` and ``id`` (one batch,
# a range of ix_audit_log_at; ``NEW`` is the permit on both databases). That they are older than
# its cutoff is the guard's to hold (_PERMITTED): a permit reaching a newer row is refused whole.
# Both ends bound ``at``. Without the last, SQLite walked the index from the first row to the
# cutoff at every batch (19 ms a batch of 200 among 200,000 rows, growing with the log). Without
# the first, each batch walked again the rows the batches before deleted (on PostgreSQL dead
# until a vacuum), and PostgreSQL, with no statistics on the table (an upgraded store's log not
# yet analysed), took ``at <= x`` for a third of the table and read all of it instead of the
# index: 1,900 rows a second among 1,000,000. A range bounded both ways is estimated at 0.5% of
# the table, statistics or not, and read along the index. (A permit written without its first
# row, NULL, reaches from the log's first, as before: it only narrows what a permit deletes.)
_FROM_AT = {
    "postgresql": "COALESCE(NEW.from_at, '-infinity'::timestamptz)",
    "sqlite": "COALESCE(NEW.from_at, '')",  # below every time written as text
}


def _batch(dialect: str) -> str:
    from_at = _FROM_AT[dialect]
    return (
        f"at >= {from_at} AND at <= NEW.through_at "
        f"AND (at > {from_at} OR NEW.from_id IS NULL OR id >= NEW.from_id) "
        "AND (at < NEW.through_at OR id <= NEW.through_id)"
    )


_PERMITTED = f"EXISTS (SELECT 1 FROM {_PERMITS} WHERE OLD.at < cutoff)"
# A permit's cutoff is 30 days before the database's clock or earlier: the least [retention]
# audit_days but 0 (config.AUDIT_DAYS_FLOOR, not imported: a migration stays as released). An
# hour's leeway lets the server's clock run a little ahead of the database's, so that a run with
# audit_days = 30 is not refused for it. SQLite keeps a time as text, 'YYYY-MM-DD HH:MM:SS.ffffff'
# (UtcDateTime, UTC), compared as text, as the guard compares ``at`` with the cutoff; strftime
# writes its clock so. (A cutoff of another type is not later: SQLite orders a number before any
# text, and such a cutoff makes no row older than it; a blob, after any text, is refused.)
_CUTOFF_TOO_NEW = "the cutoff of an audit log retention permit must be 30 days ago or earlier"
_NEWEST_CUTOFF = {
    "postgresql": "now() - interval '30 days' + interval '1 hour'",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now', '-30 days', '+1 hour')",
}


def upgrade() -> None:
    op.create_table(
        _PERMITS,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("cutoff", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("from_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("from_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "through_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=False
        ),
        sa.Column("through_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log_retention_permits"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_upgrade()
    else:
        _sqlite_upgrade()


def _postgresql_upgrade() -> None:
    # one function for UPDATE and DELETE, as 0002's: only a DELETE under a permit goes through
    op.execute(
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN IF TG_OP = 'DELETE' THEN IF {_PERMITTED} THEN RETURN OLD; END IF; END IF; "
        f"RAISE EXCEPTION '{_REFUSAL}'; END $$"
    )
    op.execute(
        "CREATE FUNCTION audit_log_retention_permit() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN IF NEW.cutoff > {_NEWEST_CUTOFF['postgresql']} THEN "
        f"RAISE EXCEPTION '{_CUTOFF_TOO_NEW}'; END IF; "
        f"DELETE FROM audit_log WHERE {_batch('postgresql')}; "
        f"DELETE FROM {_PERMITS} WHERE id = NEW.id; RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE TRIGGER audit_log_retention_permit AFTER INSERT ON {_PERMITS} "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_retention_permit()"
    )
    # a TRUNCATE fires no row's trigger: 0002 let it empty the log
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
    )


def _sqlite_upgrade() -> None:
    op.execute("DROP TRIGGER audit_log_no_delete")
    op.execute(
        f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log WHEN NOT {_PERMITTED} "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END"
    )
    op.execute(
        f"CREATE TRIGGER audit_log_retention_permit AFTER INSERT ON {_PERMITS} "
        f"BEGIN SELECT RAISE(ABORT, '{_CUTOFF_TOO_NEW}') "
        f"WHERE NEW.cutoff > {_NEWEST_CUTOFF['sqlite']}; "
        f"DELETE FROM audit_log WHERE {_batch('sqlite')}; "
        f"DELETE FROM {_PERMITS} WHERE id = NEW.id; END"
    )
    # INSERT OR REPLACE (REPLACE INTO) of an id that exists deletes that row to make room, and
    # fires no DELETE trigger doing so: a row rewritten whole. The INSERT's own trigger fires
    # first. (A new row's id, not given, reads as -1 here: no row has it.) PostgreSQL has no
    # REPLACE; its INSERT ... ON CONFLICT DO UPDATE fires the UPDATE trigger, which refuses.
    op.execute(
        "CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log "
        "WHEN EXISTS (SELECT 1 FROM audit_log WHERE id = NEW.id) "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
        op.execute(f"DROP TRIGGER audit_log_retention_permit ON {_PERMITS}")
        op.execute("DROP FUNCTION audit_log_retention_permit()")
        op.execute(  # 0002's
            "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN RAISE EXCEPTION '{_REFUSAL}'; END $$"
        )
    else:
        op.execute("DROP TRIGGER audit_log_no_replace")
        op.execute("DROP TRIGGER audit_log_retention_permit")
        op.execute("DROP TRIGGER audit_log_no_delete")
        op.execute(  # 0002's
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END"
        )
    op.drop_table(_PERMITS)
