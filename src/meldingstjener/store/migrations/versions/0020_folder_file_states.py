"""what the folder integration needs to tell a file's state after a crash

An outbox file's row keeps the SHA-256 of the content read, its outbox (``outbox_tag``) and
when the file left that outbox (``moved_at``): after a crash before the move, a file whose time
or inode changed meanwhile has a new key, and is known by its name and content as the file
already sent. An inbox row may be ``staging``, naming the temporary files (``staged_as``)
committed before they are renamed into place: after a crash, one still there is put in place,
one gone was (the EPJ may have taken it). Nullable, no default: no table rewrite; a row stored
before is read as before.

Down, the staging rows are deleted: the code before knows no staging, and would take one for
a message written (and mark it delivered) while its files are only temporaries, which it
removes after an hour; without its row the message is written anew.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import meldingstjener.store.types

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("folder_files") as batch:
        batch.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column(
                "moved_at", meldingstjener.store.types.UtcDateTime(timezone=True), nullable=True
            )
        )
        batch.add_column(sa.Column("outbox_tag", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("staged_as", sa.String(length=255), nullable=True))
    op.create_index(
        "ix_folder_files_unmoved", "folder_files", ["outbox_tag", "moved_at"], unique=False
    )


def downgrade() -> None:
    op.execute("DELETE FROM folder_files WHERE kind = 'inbox' AND outcome = 'staging'")
    op.drop_index("ix_folder_files_unmoved", table_name="folder_files")
    with op.batch_alter_table("folder_files") as batch:
        batch.drop_column("staged_as")
        batch.drop_column("outbox_tag")
        batch.drop_column("moved_at")
        batch.drop_column("content_sha256")
