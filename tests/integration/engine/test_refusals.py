"""Received messages we refuse: what we store of them, and the alerts that make them visible."""

from __future__ import annotations

import pytest
from engine_pair import Pair
from sqlalchemy import text

from meldingstjener.devsites import dialog_note
from meldingstjener.engine import payload_io
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit


def stored_text(ctx: EngineContext) -> str:
    """Every row of the tables that keep texts about messages, as one string."""
    with ctx.store.unit_of_work() as uow:
        return "\n".join(
            str(tuple(row))
            for table in ("messages", "message_events", "receipts", "alerts")
            for row in uow.session.execute(text(f"SELECT * FROM {table}"))
        )


def test_a_fagmelding_that_is_not_xml_is_stored_with_codes_only(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A partner whose MSH does not check what its EPJ wrote: the Notat's text went into the
    # XML unescaped. The parser's message quotes it ("... value for attribute Nordmann").
    seal = payload_io.seal

    def unescaped(ctx: EngineContext, payload: object, *rest: object, **kw: object) -> object:
        assert isinstance(payload, bytes)
        return seal(ctx, payload.replace(b"PASIENT", b"<Kari Nordmann>"), *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(payload_io, "seal", unescaped)
    note = dialog_note(pair.gp_site, pair.hospital_site, "Ring pasient PASIENT i morgen")
    message_id = submit(pair.gp, note, actor="t")
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "transport-error" and sent.last_error_code == "OtherXml"
    with pair.gp.store.unit_of_work() as uow:
        [error] = uow.receipts.for_message(message_id)
    assert "Nordmann" in str(error.description)  # the sender is told about its own message
    stored = stored_text(pair.hospital)
    assert "Nordmann" not in stored and "Kari" not in stored
    [refused] = pair.inbound_messages(pair.hospital)
    assert refused.status == "rejected" and refused.last_error_code == "OtherXml"
    assert str(refused.last_error_text).endswith("cannot be interpreted (xml-malformed)")
