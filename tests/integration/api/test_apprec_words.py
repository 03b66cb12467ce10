"""The partner EPJ's own words in an AppRec (an Error's OT, "Pasient ... ukjent i journal") reach
the sender's help desk and EPJ: kept masked with the receipt of the AppRec, shown by ``status
--texts``, ``show --json --texts`` and GetApprecInfo's ``details``, and nowhere else (found by a
help desk: only the code list's text was kept)."""

from __future__ import annotations

import json
import logging

import pytest
from api_sites import ApiPair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import HOSPITAL_SERVICE_HER

NAME = "PATIENTNAME-Nordmann"
FNR = "01017012345"
WORDS = f"Pasient {NAME} f.nr {FNR} ukjent i journal"
MASKED = f"Pasient {NAME} f.nr [redacted-id] ukjent i journal"
E35 = "Pasienten finnes ikke i mottakersystemet"  # code list 8221's text


def _gp_cli(api_pair: ApiPair, *args: str) -> str:
    config = api_pair.pair.gp_site.config_path
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # as one line: a long one is wrapped


def _rejected_with_words(api_pair: ApiPair) -> str:
    """The GP's note, rejected by the hospital's EPJ through its API with its own words (the
    AppRec's OT); the GP's id of the note."""
    pair = api_pair.pair
    sent = api_pair.post_note("Kontroll")
    assert sent.status_code == 201, sent.text
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    answered = api_pair.hospital_http.post(
        f"/Messages/{received.id}/apprec/{HOSPITAL_SERVICE_HER}",
        headers={"Authorization": f"Bearer {api_pair.hospital_key}"},
        json={
            "appRecStatus": "Rejected",
            "appRecErrorList": [{"errorCode": "E35", "details": WORDS}],
        },
    )
    assert answered.status_code == 201, answered.text
    pair.run()
    message_id = str(sent.json())
    assert pair.message(pair.gp, message_id).status == "apprec-rejected"
    return message_id


def test_the_partners_words_in_an_apprec_are_kept_and_shown_when_asked(
    api_pair: ApiPair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    message_id = _rejected_with_words(api_pair)

    # the EPJ: its words as details, the code's text as description
    answer = api_pair.gp_http.get(
        f"/Messages/{message_id}/apprec", headers={"Authorization": f"Bearer {api_pair.gp_key}"}
    )
    assert answer.status_code == 200, answer.text
    [info] = answer.json()
    assert info["appRecStatus"] == "Rejected" and "sentAgainAs" not in info
    assert info["appRecErrorList"] == [
        {"errorCode": "E35", "details": MASKED, "description": E35, "oid": None}
    ]

    # the help desk: with --texts, as stored (masked); without, the code only
    assert MASKED in _gp_cli(api_pair, "status", message_id, "--texts")
    shown = json.loads(_gp_cli(api_pair, "show", message_id, "--json", "--texts"))
    [apprec] = [r for r in shown["receipts"] if r["kind"] == "apprec"]
    assert apprec["error_codes"] == [{"code": "E35", "text": E35, "ot": MASKED}]
    assert MASKED in apprec["description"]
    for args in (("status", message_id), ("status", message_id, "--json")):
        assert NAME not in _gp_cli(api_pair, *args)
    assert NAME not in _gp_cli(api_pair, "show", message_id, "--json")

    # never in the message log, an alert or the server's log
    with api_pair.pair.gp.store.unit_of_work() as uow:
        texts = [f"{e.code} {e.detail}" for e in uow.events.for_message(message_id)]
        texts += [a.summary for a in uow.alerts.list()]
    assert any("E35" in text for text in texts)
    assert not any(NAME in text for text in texts), texts
    assert NAME not in caplog.text and FNR not in caplog.text
