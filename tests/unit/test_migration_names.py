"""The migration files' names are the revisions ``store.migrate`` reads without Alembic: the
names must say what Alembic reads from the scripts themselves, or a start would judge the
schema against the wrong head."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from meldingstjener.store.migrate import MIGRATIONS, head_revision, known_revisions


def test_the_names_give_alembics_revisions_and_head() -> None:
    scripts = ScriptDirectory(str(MIGRATIONS))
    assert known_revisions() == {script.revision for script in scripts.walk_revisions()}
    assert head_revision() == scripts.get_current_head()


def test_each_revision_revises_the_one_before_it() -> None:
    scripts = ScriptDirectory(str(MIGRATIONS))
    in_order = sorted(known_revisions())
    for before, after in zip([None, *in_order], in_order, strict=False):
        assert scripts.get_revision(after).down_revision == before, after
