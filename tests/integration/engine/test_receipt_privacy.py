"""A receipt's error texts are an EPJ's or a partner's words: stored masked, whoever wrote
them, and shown by the operator commands only when asked for (found in review)."""

from __future__ import annotations

import json
import re

from engine_pair import Pair
from sqlalchemy import text
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine import receipts
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit

NAME = "PATIENTNAME-Nordmann"
FNR = "01017012345"
ELEVEN_DIGITS = re.compile(r"\d{6}\D?\d{5}")


def cli(pair: Pair, *args: str) -> str:
    """A command at the hospital, whose receipt of the AppRec it sent holds its EPJ's words."""
    result = CliRunner().invoke(app, ["--config", str(pair.hospital_site.config_path), *args])
    assert result.exit_code == 0, result.output
    return result.output


def stored_receipts(ctx: EngineContext) -> list[str]:
    with ctx.store.unit_of_work() as uow:
        rows = uow.session.execute(text("SELECT error_codes, description FROM receipts"))
        return [f"{codes} {description}" for codes, description in rows]


def _rejected_with_patient_words(pair: Pair) -> str:
    """The GP's note, rejected by the hospital's EPJ with an AppRec whose Error words name
    the patient and give the national identity number, as an EPJ may; the hospital's id of
    the note."""
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    [row] = pair.inbound_messages(pair.hospital)
    words = f"Pasient {NAME} f.nr {FNR} finnes ikke"
    receipts.send_apprec(pair.hospital, row.id, status=2, errors=[("E35", words)], actor="epj")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "apprec-rejected"
    return row.id


def test_no_receipt_row_keeps_a_national_identity_number(pair: Pair) -> None:
    # the AppRec the hospital sent was stored as the EPJ wrote it; the GP's masked its number
    _rejected_with_patient_words(pair)
    for ctx in (pair.gp, pair.hospital):
        rows = stored_receipts(ctx)
        assert any("E35" in row for row in rows)
        assert not any(ELEVEN_DIGITS.search(row) for row in rows), rows


def test_status_and_show_print_receipt_codes_and_their_words_only_when_asked(
    pair: Pair,
) -> None:
    message_id = _rejected_with_patient_words(pair)  # the received note, at the hospital
    for args in (["status", message_id], ["status", message_id, "--json"]):
        output = cli(pair, *args)
        assert "E35" in output and NAME not in output, output
    shown = json.loads(cli(pair, "show", message_id, "--json"))
    [apprec] = [r for r in shown["receipts"] if r["kind"] == "apprec"]
    assert apprec["error_codes"] == ["E35"] and "description" not in apprec
    assert NAME not in json.dumps(shown)
    # asked for: the words as stored (masked of the number), for the help desk
    for args in (["status", message_id, "--texts"], ["show", message_id, "--json", "--texts"]):
        output = cli(pair, *args)
        assert NAME in output and FNR not in output, output
