"""A signal received again (a resend, or a replay of a captured one: its signature still
verifies) is logged and changes nothing: no second receipt, no alert raised or reopened."""

from __future__ import annotations

from engine_pair import Pair, sent_header

from meldingstjener.devsites import dialog_note
from meldingstjener.ebxml import ErrorCode, ErrorDetail, OriginalIds, Severity
from meldingstjener.engine import inbound, signals
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.store.tables import EventRow, ReceiptRow


def receipts(ctx: EngineContext, message_id: str) -> list[ReceiptRow]:
    with ctx.store.unit_of_work() as uow:
        return uow.receipts.for_message(message_id)


def repeats_logged(ctx: EngineContext, message_id: str) -> list[EventRow]:
    with ctx.store.unit_of_work() as uow:
        return [e for e in uow.events.for_message(message_id) if e.code == "signal-repeated"]


def open_alerts(ctx: EngineContext) -> dict[str, int]:
    with ctx.store.unit_of_work() as uow:
        return {a.dedup_key: a.count for a in uow.alerts.list(open_only=True)}


def test_an_acknowledgment_received_again_is_logged_and_stored_once(pair: Pair) -> None:
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    [ack] = [d for d in pair.network.sent if d.endpoint == pair.gp_site.endpoint]
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    [receipt] = receipts(pair.gp, message_id)
    assert receipt.kind == "acknowledgment"
    body = ack.body if isinstance(ack.body, bytes) else ack.body.read_bytes()

    inbound.receive(pair.gp, ack.content_type, body)

    assert [r.id for r in receipts(pair.gp, message_id)] == [receipt.id]
    [logged] = repeats_logged(pair.gp, message_id)
    assert logged.ebxml_message_id == receipt.ebxml_message_id
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_message_error_replayed_reopens_no_alert_an_operator_resolved(pair: Pair) -> None:
    pair.network.down.add(pair.hospital_site.endpoint)  # the hospital's answer is made below
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    error = ErrorDetail(ErrorCode.SECURITY_FAILURE, Severity.ERROR, "cid", "not decryptable")
    wire = signals.build_error(
        pair.hospital, OriginalIds.of(sent_header(pair, message_id)), [error], "8200002"
    )
    inbound.receive(pair.gp, wire.content_type, wire.body)
    [receipt] = receipts(pair.gp, message_id)
    alert_key = f"message-error-received:{message_id}"
    assert open_alerts(pair.gp)[alert_key] == 1
    with pair.gp.store.unit_of_work() as uow:
        uow.alerts.resolve(alert_key)  # the operator has dealt with it
        uow.commit()

    inbound.receive(pair.gp, wire.content_type, wire.body)

    assert [r.id for r in receipts(pair.gp, message_id)] == [receipt.id]
    assert alert_key not in open_alerts(pair.gp)
    assert len(repeats_logged(pair.gp, message_id)) == 1
