"""What the help desk is told of a message's fate (``status``, ``show``, ``log``, ``alerts``) over
two real engines: every copy of a MsgId, a message refused before its signature verified, our
AppRec given up, an alert resolved, and a message's alert among more than the newest 1,000."""

from __future__ import annotations

import json

import pytest
from engine_pair import Pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine import receipts
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import AppRecStatus, build_apprec, read_msghead


def cli(pair: Pair, ctx: EngineContext, *args: str) -> tuple[int, str]:
    """``meldingstjener ARGS`` on the store of ``ctx``'s side (the GP's or the hospital's)."""
    site = pair.gp_site if ctx is pair.gp else pair.hospital_site
    result = CliRunner().invoke(app, ["--config", str(site.config_path), *args])
    return result.exit_code, result.output


def _give_up(pair: Pair) -> None:
    """Run the sides until a send to an endpoint that is down is given up (4 attempts)."""
    for _ in range(6):
        pair.run()
        pair.clock.advance(seconds=700)
    pair.run()


def _received(pair: Pair) -> list[str]:
    return [m.id for m in pair.inbound_messages(pair.hospital) if m.msg_type != "APPREC"]


def test_a_document_sent_again_shows_both_copies_by_its_msg_id(pair_with_gp_database: Pair) -> None:
    pair = pair_with_gp_database
    document = dialog_note(pair.gp_site, pair.hospital_site, "Sendt igjen")
    msg_id = str(read_msghead(document).msg_info.msg_id)
    pair.network.down.add(pair.hospital_site.endpoint)
    first = submit(pair.gp, document, actor="t")
    _give_up(pair)
    pair.network.down.clear()
    second = submit(pair.gp, document, actor="t")  # the EPJ sends the same document again
    pair.run()
    [received] = _received(pair)
    receipts.deliver(pair.hospital, received, actor="epj")
    receipts.send_apprec(pair.hospital, received, status=1, errors=[], actor="epj")
    pair.run()

    # the first copy alone said "not delivered: phone it" of a document answered Ok since
    code, output = cli(pair, pair.gp, "status", msg_id)
    assert code == 0, output
    assert f"2 messages have the MsgId {msg_id}" in output
    assert f"{first} out DIALOG_NOTAT 8100001 → 8200002: not-delivered" in output
    assert f"{second} out DIALOG_NOTAT 8100001 → 8200002: apprec-ok" in output
    code, output = cli(pair, pair.gp, "status", msg_id, "--json")
    assert [(d["message_id"], d["status"]) for d in json.loads(output)] == [
        (first, "not-delivered"),
        (second, "apprec-ok"),
    ]
    code, output = cli(pair, pair.gp, "show", msg_id, "--json")
    assert [d["message_id"] for d in json.loads(output)] == [first, second]
    code, output = cli(pair, pair.gp, "show", second, "--json")  # one message: one object
    assert json.loads(output)["message_id"] == second

    # the log by MsgId, by eb:MessageId and by conversation
    def logged(*options: str) -> set[str]:
        code, output = cli(pair, pair.gp, "log", "--json", *options)
        assert code == 0, output
        return {json.loads(line)["message_id"] for line in output.splitlines()}

    assert logged("--msg-id", msg_id) == {first, second}
    ebxml_id = str(pair.message(pair.gp, second).ebxml_message_id)
    assert logged("--ebxml-id", ebxml_id) == {second}
    conversation = str(pair.message(pair.gp, second).ebxml_conversation_id)
    assert first in logged("--conversation", conversation)
    assert logged("--msg-id", "no-such-msg-id") == set()


def test_a_message_refused_before_its_signature_verified_is_found(
    pair_with_hospital_database: Pair,
) -> None:
    pair = pair_with_hospital_database

    def break_signature(body: bytes) -> bytes:
        at = body.find(b"SignatureValue>") + len(b"SignatureValue>")
        return body[:at] + (b"B" if body[at : at + 1] == b"A" else b"A") + body[at + 1 :]

    pair.network.tamper = break_signature
    sent = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Brutt"), actor="t")
    pair.run()
    pair.network.tamper = None
    ebxml_id = str(pair.message(pair.gp, sent).ebxml_message_id)
    assert _received(pair) == []  # not stored

    for command in ("show", "status"):
        code, output = cli(pair, pair.hospital, command, ebxml_id)
        assert code == 0, output  # was "no message with id ..." and 1
        assert "refused, not stored" in output and "SecurityFailure" in output
        code, output = cli(pair, pair.hospital, command, ebxml_id, "--json")
        shown = json.loads(output)
        assert shown["status"] == "refused-not-stored"
        assert [e["code"] for e in shown["events"]] == ["SecurityFailure"]
        # as a MIME Content-ID writes it: the brackets are no part of the id
        code, output = cli(pair, pair.hospital, command, f" <{ebxml_id}>", "--json")
        assert code == 0 and json.loads(output)["ebxml_message_id"] == ebxml_id, output
        # nothing between them names nothing (not every refusal, nor every message)
        code, output = cli(pair, pair.hospital, command, " <> ")
        assert code == 1 and "no message with id" in output, output

    def logged(*options: str) -> list[str | None]:
        code, output = cli(pair, pair.hospital, "log", "--json", *options)
        assert code == 0, output
        return [json.loads(line)["code"] for line in output.splitlines()]

    # by the sender's HER-id (its events' actor, "http:8100001"), not by a HER-id ending alike
    assert logged("--her-id", "8100001") == ["SecurityFailure"]
    assert logged("--her-id", "100001") == []
    assert logged("--ebxml-id", ebxml_id) == ["SecurityFailure"]
    assert logged("--her-id", "8100001", "--type", "DIALOG_NOTAT") == []


@pytest.mark.parametrize("answered_by", ["send_apprec", "document"])
def test_status_follows_our_apprec_to_its_fate(pair: Pair, answered_by: str) -> None:
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Svar"), actor="t")
    pair.run()
    [received] = _received(pair)
    receipts.deliver(pair.hospital, received, actor="epj")
    pair.network.down.add(pair.gp_site.endpoint)  # the GP's server is away from now on
    if answered_by == "send_apprec":
        answer = receipts.send_apprec(pair.hospital, received, status=1, errors=[], actor="epj")
    else:  # an AppRec the EPJ built itself
        payload = pair.hospital.store.payloads.read_bytes(
            str(pair.message(pair.hospital, received).payload_ref)
        )
        document = build_apprec(read_msghead(payload), status=AppRecStatus.OK, version="1.0")
        answer = submit(pair.hospital, document, actor="folder")
    _give_up(pair)
    assert pair.message(pair.hospital, received).status == "apprec-sent"

    code, output = cli(pair, pair.hospital, "status", received)
    assert code == 0, output
    [alert] = json.loads(cli(pair, pair.hospital, "status", answer, "--json")[1])["alerts"]
    assert f"apprec status 1: sent as {answer}, not-delivered (alert {alert['id']})" in output
    code, output = cli(pair, pair.hospital, "status", received, "--json")
    [apprec] = [r for r in json.loads(output)["receipts"] if r["kind"] == "apprec"]
    assert apprec["answer"] == {
        "message_id": answer,
        "status": "not-delivered",
        "open_alerts": [alert["id"]],
    }
    code, output = cli(pair, pair.hospital, "show", received)
    assert f"AppRec {answer} not-delivered (alert {alert['id']})" in output


def test_status_tells_a_resolved_alert_as_resolved(pair: Pair) -> None:
    sent = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Sent svar"), actor="t")
    pair.run()
    [received] = _received(pair)
    deadline = pair.gp.policy.apprec_deadline("DIALOG_NOTAT")
    pair.clock.advance(seconds=deadline.total_seconds() + 60)
    pair.run()  # apprec-missing
    receipts.send_apprec(pair.hospital, received, status=1, errors=[], actor="epj")
    pair.run()  # ... resolved by the late AppRec

    code, output = cli(pair, pair.gp, "status", sent)
    assert code == 0, output
    [line] = [line for line in output.splitlines() if "apprec-missing" in line]
    assert "(resolved " in line


def test_a_messages_alert_and_the_open_alerts_past_the_newest_thousand(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)
    sent = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "Utfall"), actor="t")
    _give_up(pair)
    with pair.gp.store.unit_of_work() as uow:  # an outage's alerts, raised after it
        for number in range(1001):
            pair.clock.advance(seconds=1)
            raise_alert(
                uow, AlertKind.NOT_DELIVERED, f"m{number}", at=pair.clock(), key=f"m{number}"
            )
        uow.commit()
        open_in_all = len(uow.alerts.list(open_only=True, limit=None))

    code, output = cli(pair, pair.gp, "status", sent, "--json")
    assert [a["kind"] for a in json.loads(output)["alerts"]] == ["not-delivered"]

    code, output = cli(pair, pair.gp, "alerts", "--open")
    assert code == 0, output
    assert f"{open_in_all - 1000} more open alert(s) not shown" in output
    code, output = cli(pair, pair.gp, "alerts", "--open", "--limit", str(open_in_all))
    assert "not shown" not in output
