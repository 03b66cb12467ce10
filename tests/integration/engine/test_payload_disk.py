"""The payload directory as the operator meets it: its files, which hold decrypted business
messages, are the server's user's alone (whatever the umask), and ``send`` on a full disk says
that the payload directory cannot be written (exit 3, as for the store's other troubles), not
that the file given cannot be read."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from engine_pair import Pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.store.payloads import PayloadStore, Spool


def test_payload_files_and_directories_are_the_server_users_alone(pair: Pair) -> None:
    old = os.umask(0o022)  # a usual umask: files -rw-r--r--, directories drwxr-xr-x
    try:
        store = PayloadStore(pair.gp.store.payloads.root.parent / "new-payloads")
        kept = store.put(b"<MsgHead/>")
        with store.spool() as spool:
            spool.write(b"decrypted")
            temporary = os.stat(spool)
    finally:
        os.umask(old)
    path = store.path(kept.key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(temporary.st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


def test_send_on_a_full_payload_disk_names_the_directory_and_exits_3(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = pair.gp_site.directory / "notat.xml"
    note.write_bytes(dialog_note(pair.gp_site, pair.hospital_site, "x"))

    def no_space(*_args: object, **_kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Spool, "write", no_space)
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), "send", str(note)])
    assert result.exit_code == 3, result.output
    said = result.stderr
    assert "cannot write the payload directory" in said and "No space left on device" in said
    assert str(pair.gp.store.payloads.root) in said
    assert "cannot read" not in said
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), "send", str(note)])
    assert result.exit_code == 0, result.output
