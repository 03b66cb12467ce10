"""``meldingstjener send FILE`` warns when the document's MsgId was sent to the same receiver
before (help-desk finding 7): a document sent twice by hand, the first acknowledged, printed a
new id without a word, and the receiver stored two messages that looked unrelated. The warning
goes to stderr; the new message is sent all the same and the exit code stays 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_pair import Pair
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.formats import read_msghead
from meldingstjener.store.uow import MessageRepository


def _send(pair: Pair, file: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), "send", str(file)])
    return result.exit_code, result.stdout.strip(), result.stderr


def test_a_document_sent_twice_is_warned_of(pair: Pair, tmp_path: Path) -> None:
    document = dialog_note(pair.gp_site, pair.hospital_site, "To ganger")
    msg_id = str(read_msghead(document).msg_info.msg_id)
    file = tmp_path / "note.xml"
    file.write_bytes(document)

    code, first, said = _send(pair, file)
    assert code == 0 and said == "", said
    pair.clock.advance(seconds=60)  # the command stored its send at the wall clock's time
    pair.run()
    assert pair.message(pair.gp, first).status == "transport-acknowledged"

    code, second, said = _send(pair, file)
    assert code == 0, said
    assert second != first and pair.message(pair.gp, second).msg_id == msg_id  # sent again
    assert said.startswith(f"warning: the MsgId {msg_id} was sent to 8200002 before, as ")
    assert f"{first} (transport-acknowledged)" in said and second in said
    assert said.count("\n") == 1  # one line

    code, _, said = _send(pair, file)  # each earlier one named
    assert code == 0 and f"{first} (transport-acknowledged), {second} (" in said

    other = tmp_path / "other.xml"
    other.write_bytes(dialog_note(pair.gp_site, pair.hospital_site, "En annen"))
    code, _, said = _send(pair, other)
    assert code == 0 and said == "", said


def test_a_failed_look_for_earlier_copies_leaves_the_send_a_success(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id is printed once the message is stored: a database error in the look that follows
    (fault injected into the repository's search) is a warning, not exit 1, which a script
    would take for a failed send and send it again."""
    file = tmp_path / "note.xml"
    file.write_bytes(dialog_note(pair.gp_site, pair.hospital_site, "x"))

    def locked(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(MessageRepository, "search", locked)
    code, sent, said = _send(pair, file)
    assert code == 0, said
    assert pair.message(pair.gp, sent).status == "accepted"
    assert said.startswith("warning: could not look for earlier messages of the same MsgId")
