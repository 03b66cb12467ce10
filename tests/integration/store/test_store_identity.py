"""Every process of one store uses one payload directory: the store's id in the database and
the marker in the directory must agree (store/identity.py), on SQLite and PostgreSQL, and a
real ``serve`` with a folder of its own is refused before it claims a job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meldingstjener.config import load_settings
from meldingstjener.devsites import free_port, prepare_sites
from meldingstjener.store.database import Database
from meldingstjener.store.identity import (
    MARKER_NAME,
    STORE_ID_KEY,
    CheckedPayloadStore,
    PayloadDirectoryNotOurs,
    claim_payload_directory,
    store_id,
)
from meldingstjener.store.uow import Store


def _store(database: Database, directory: Path) -> Store:
    return Store(database, CheckedPayloadStore(directory, database))


def test_serves_sharing_one_directory_agree_and_one_with_its_own_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    database = Database(database_url)
    try:
        first = claim_payload_directory(_store(database, tmp_path / "shared"))
        assert (tmp_path / "shared" / MARKER_NAME).read_text().strip() == first
        assert store_id(database) == first
        # a second serve on the same (network) folder: the same store
        assert claim_payload_directory(_store(database, tmp_path / "shared")) == first
        # a second host's own, fresh folder (the review's F2): refused, naming both folders
        with pytest.raises(PayloadDirectoryNotOurs) as refused:
            claim_payload_directory(_store(database, tmp_path / "own"))
        text = str(refused.value)
        assert str(tmp_path / "own") in text and str((tmp_path / "shared").resolve()) in text
        assert not (tmp_path / "own" / MARKER_NAME).exists()
    finally:
        database.dispose()


def test_an_installation_from_before_the_check_takes_its_folder_without_a_refusal(
    database_url: str, tmp_path: Path
) -> None:
    database = Database(database_url)
    try:
        old = _store(database, tmp_path / "payloads")
        old.payloads.mark_checked()  # as a version without the check wrote it
        old.payloads.put(b"a body stored before the upgrade")
        assert store_id(database) is None
        known = claim_payload_directory(_store(database, tmp_path / "payloads"))
        assert (tmp_path / "payloads" / MARKER_NAME).read_text().strip() == known
        # a second host that kept bodies of its own in its own folder is not taken on
        elsewhere = _store(database, tmp_path / "elsewhere")
        elsewhere.payloads.mark_checked()
        elsewhere.payloads.put(b"a body only this host could read")
        with pytest.raises(PayloadDirectoryNotOurs, match="has no marker"):
            claim_payload_directory(_store(database, tmp_path / "elsewhere"))
    finally:
        database.dispose()


def test_another_stores_folder_is_refused_to_serve_and_to_commands(
    database_url: str, tmp_path: Path
) -> None:
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    database = Database(database_url)
    try:
        from meldingstjener.store.migrate import upgrade

        upgrade(other)
        claim_payload_directory(_store(other, tmp_path / "others"))
        # this database has no id yet, and the folder is another store's: not taken
        with pytest.raises(PayloadDirectoryNotOurs, match="belongs to store"):
            claim_payload_directory(_store(database, tmp_path / "others"))
        claim_payload_directory(_store(database, tmp_path / "ours"))
        with pytest.raises(PayloadDirectoryNotOurs, match="belongs to store"):
            claim_payload_directory(_store(database, tmp_path / "others"))
        # a command (send, sweep) is refused on its first touch of a payload
        command = _store(database, tmp_path / "others")
        with pytest.raises(PayloadDirectoryNotOurs):
            command.payloads.spool()
        with pytest.raises(PayloadDirectoryNotOurs):
            command.payloads.files(modified_before=0)
    finally:
        database.dispose()
        other.dispose()


def test_a_command_on_a_host_without_the_share_may_read_the_database_but_no_payload(
    database_url: str, tmp_path: Path
) -> None:
    database = Database(database_url)
    try:
        claim_payload_directory(_store(database, tmp_path / "shared"))
        help_desk = _store(database, tmp_path / "help-desk")
        with help_desk.unit_of_work() as uow:  # alerts, instances: no payload touched
            assert uow.state.get(STORE_ID_KEY) is not None
        with pytest.raises(PayloadDirectoryNotOurs, match="empty and unmarked"):
            help_desk.payloads.put(b"a body no server could read")  # send
        assert not any((tmp_path / "help-desk").iterdir())
        # on the shared folder, the same command goes on
        ref = _store(database, tmp_path / "shared").payloads.put(b"a body")
        assert (tmp_path / "shared" / ref.key[:2] / ref.key).is_file()
    finally:
        database.dispose()


def test_a_folder_emptied_of_its_bodies_and_a_restored_backup_are_the_same_store(
    tmp_path: Path,
) -> None:
    from meldingstjener.store.migrate import upgrade

    database = Database(f"sqlite:///{tmp_path / 'live' / 'store.db'}")
    upgrade(database)
    store = _store(database, tmp_path / "live" / "payloads")
    known = claim_payload_directory(store)
    ref = store.payloads.put(b"a body")
    database.dispose()
    shutil.copytree(tmp_path / "live", tmp_path / "restored")  # the backup, restored
    restored = Database(f"sqlite:///{tmp_path / 'restored' / 'store.db'}")
    try:
        assert claim_payload_directory(_store(restored, tmp_path / "restored" / "payloads")) == (
            known
        )
    finally:
        restored.dispose()
    shutil.rmtree(tmp_path / "live" / "payloads" / ref.key[:2])  # emptied: the marker stays
    again = Database(f"sqlite:///{tmp_path / 'live' / 'store.db'}")
    try:
        assert claim_payload_directory(_store(again, tmp_path / "live" / "payloads")) == known
    finally:
        again.dispose()


def test_a_serve_with_a_data_dir_of_its_own_on_a_shared_database_does_not_start(
    database_url: str, tmp_path: Path
) -> None:
    # The review's F2: one PostgreSQL store, a second host's serve with its own data_dir gave
    # up the messages it claimed (their bodies in the first host's folder). Refused at start.
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=database_url)
    settings = load_settings(gp.config_path)
    database = Database(database_url)
    try:
        claim_payload_directory(_store(database, settings.payload_dir))  # the first serve
    finally:
        database.dispose()
    own = tmp_path / "second-host"
    config = gp.config_path.read_text().replace(
        f'data_dir = "{gp.directory / "data"}"', f'data_dir = "{own}"'
    )
    config = config.replace(f"port = {gp.port}", f"port = {free_port()}")
    second = tmp_path / "second-host.toml"
    second.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    done = subprocess.run(
        [sys.executable, "-m", "meldingstjener", "--config", str(second), "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip().splitlines()
    assert len(said) == 1 and "Nothing was started" in said[0]
    assert str(own / "payloads") in said[0] and str(settings.payload_dir.resolve()) in said[0]


def _forget_store_id(database: Database) -> None:
    """The database as a backup of before the id has it (OPERATIONS.md: taken right before
    ``db upgrade``)."""
    from sqlalchemy import delete

    from meldingstjener.store.tables import StateRow

    with database.engine.begin() as connection:
        connection.execute(delete(StateRow).where(StateRow.key.like("store.%")))


def _message_with_files(store: Store) -> list[str]:
    from meldingstjener.store.tables import MessageRow

    payload = store.payloads.put(b"<MsgHead>a received message</MsgHead>")
    wire = store.payloads.put(b"--its wire form--")
    with store.unit_of_work() as uow:
        uow.messages.add(
            MessageRow(direction="in", payload_ref=payload.key, wire_ref=wire.key), actor="test"
        )
        uow.commit()
    return [payload.key, wire.key]


def test_a_backup_of_before_the_id_restored_beside_the_kept_folder_is_the_same_store(
    database_url: str, tmp_path: Path
) -> None:
    # The review: restore step 3 keeps the payload directory (marked by now), the backup's
    # database has no id: step 4's sweep and serve were refused.
    database = Database(database_url)
    try:
        known = claim_payload_directory(_store(database, tmp_path / "payloads"))
        _message_with_files(_store(database, tmp_path / "payloads"))
        _forget_store_id(database)
        command = _store(database, tmp_path / "payloads")  # sweep --move-to, step 4
        assert list(command.payloads.files(modified_before=0)) == []
        assert claim_payload_directory(_store(database, tmp_path / "payloads")) == known
        assert store_id(database) == known
        # a database without an id whose files are not in the marked folder: not taken
        _forget_store_id(database)
        (tmp_path / "others").mkdir()
        (tmp_path / "others" / MARKER_NAME).write_text("another-store\n")
        with pytest.raises(PayloadDirectoryNotOurs, match="has no store id yet, and none"):
            claim_payload_directory(_store(database, tmp_path / "others"))
        assert store_id(database) is None
    finally:
        database.dispose()


def test_a_first_start_interrupted_before_the_marker_is_taken_up_by_the_next(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database's id is written first; a start that stops before the marker leaves the
    # database's mark naming the folder, and the next start writes the marker (the marker
    # first, a crash left a marker no start would take until it was deleted by hand).
    from meldingstjener.store import identity

    class Crashed(Exception):
        pass

    def crash(directory: Path, value: str) -> None:
        raise Crashed

    database = Database(database_url)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(identity, "_write_marker", crash)
            with pytest.raises(Crashed):
                claim_payload_directory(_store(database, tmp_path / "shared"))
        recorded = store_id(database)
        assert recorded is not None and not (tmp_path / "shared" / MARKER_NAME).exists()
        # another host's own folder is not taken meanwhile
        with pytest.raises(PayloadDirectoryNotOurs, match="empty and unmarked"):
            claim_payload_directory(_store(database, tmp_path / "own"))
        assert claim_payload_directory(_store(database, tmp_path / "shared")) == recorded
        assert (tmp_path / "shared" / MARKER_NAME).read_text().strip() == recorded
        with database.reading() as connection:
            from sqlalchemy import text

            left = connection.execute(
                text("SELECT count(*) FROM kv_state WHERE key = :key"),
                {"key": identity.MARKER_PENDING_KEY},
            ).scalar_one()
        assert left == 0
        # once the marker is written, an empty unmarked folder of that path is refused again
        shutil.rmtree(tmp_path / "shared")
        with pytest.raises(PayloadDirectoryNotOurs, match="empty and unmarked"):
            claim_payload_directory(_store(database, tmp_path / "shared"))
    finally:
        database.dispose()
