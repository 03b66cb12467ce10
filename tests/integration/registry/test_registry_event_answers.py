"""An event answer of another shape than the register's (a gateway's 200 with a message, a
wrapper renamed, events that are not objects) stops the sync as a format error: it was read as
"no events", the sync reported success (exit 0, 'applied 0 events') and resolved the alert of
the syncs that had failed, while the partner's change went unseen."""

from __future__ import annotations

from typing import Any

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.errors import ArFormatError
from meldingstjener.registry.fakes import FakeAddressRegister, Reply, Request, serve
from meldingstjener.registry.sync import SyncInterrupted, last_synced_sequence, sync_register
from meldingstjener.store.uow import Store


def _record(edi_address: str) -> dict[str, Any]:
    return {
        "herId": 100001,
        "name": "Legekontor A",
        "type": "Organization",
        "ediAddress": edi_address,
    }


@pytest.mark.parametrize(
    "answer",
    [
        {"message": "upstream temporarily unavailable"},
        {"items": [{"sequenceNumber": 2, "herId": 100001}]},
        {"results": None},
        {"results": [7]},
        [{"sequenceNumber": 2, "herId": 100001}],
    ],
    ids=["gateway-message", "renamed", "null", "not-objects", "bare-list"],
)
def test_an_event_answer_of_another_shape_stops_the_sync(store: Store, answer: Any) -> None:
    fake = FakeAddressRegister()
    fake.put_party(_record("a-old@edi.nhn.no"))
    garbled = [False]

    def app(request: Request) -> Reply:
        if garbled[0] and request.path.rstrip("/") == "/api/v1/event":
            return Reply.json(answer)
        return fake(request)

    with serve(app) as url:
        client = ArClient(url, StaticToken(""))
        try:
            sync_register(store, client)
            fake.put_party(_record("a-new@edi.nhn.no"))  # the partner moves
            garbled[0] = True
            with pytest.raises(SyncInterrupted) as stopped:
                sync_register(store, client)
            assert isinstance(stopped.value.__cause__, ArFormatError)
            assert "the register's event answer" in str(stopped.value)
            with store.unit_of_work() as uow:
                assert last_synced_sequence(uow) == 1
            garbled[0] = False  # the register's own answer again: the move is seen
            assert sync_register(store, client).events_applied == 1
        finally:
            client.close()
    with store.unit_of_work() as uow:
        row = uow.parties.get("100001")
        assert row is not None and row.edi_address == "a-new@edi.nhn.no"
