"""``meldingstjener send FILE`` warns when the document's MsgId was sent to the same receiver
before (help-desk finding 7): a document sent twice by hand, the first acknowledged, printed a
new id without a word, and the receiver stored two messages that looked unrelated. The warning
goes to stderr; the new message is sent all the same and the exit code stays 0."""

from __future__ import annotations

from pathlib import Path

from engine_pair import Pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.formats import read_msghead


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
