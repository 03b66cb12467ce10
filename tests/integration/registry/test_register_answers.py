"""Register answers that are no register answer: JSON nested thousands deep, or more than the
client reads of one answer (``max_answer_bytes``). Each stops the sync as a register error (a
SyncInterrupted the next run resumes from), never as a bare RecursionError or a full memory; a
file nested too deeply is refused by ``ar import`` alone, the other files still go in."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import AnswerTooLarge, StaticToken
from meldingstjener.registry.errors import ArFormatError
from meldingstjener.registry.fakes import FakeAddressRegister, Reply, Request, serve
from meldingstjener.registry.store import import_files
from meldingstjener.registry.sync import SyncInterrupted, last_synced_sequence, sync_register
from meldingstjener.store.uow import Store

DEEP = b"[" * 200_000


def _record(her_id: int, name: str) -> dict[str, Any]:
    return {"herId": her_id, "name": name, "type": "Organization", "ediAddress": f"{her_id}@edi"}


def _in_front(
    fake: FakeAddressRegister, answer: Callable[[Request], Reply | None]
) -> Callable[[Request], Reply]:
    """The fake register, with ``answer`` given first say (None: the fake answers)."""

    def app(request: Request) -> Reply:
        return answer(request) or fake(request)

    return app


def _name(store: Store, her_id: str) -> str | None:
    with store.unit_of_work() as uow:
        row = uow.parties.get(her_id)
        return row.name if row is not None else None


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/event"), ("POST", "/api/v1/communicationparty")],
    ids=["events", "bulk-lookup"],
)
def test_json_nested_too_deeply_stops_the_sync_as_a_format_error(
    store: Store, method: str, path: str
) -> None:
    fake = FakeAddressRegister()
    fake.put_party(_record(1001, "Legekontor"))
    deep = [False]

    def nested(request: Request) -> Reply | None:
        if deep[0] and (request.method, request.path) == (method, path):
            return Reply(200, b'{"results":' + DEEP)
        return None

    with serve(_in_front(fake, nested)) as url:
        client = ArClient(url, StaticToken(""))
        sync_register(store, client)
        fake.put_party(_record(1001, "Legekontor Flyttet"))
        deep[0] = True
        with pytest.raises(SyncInterrupted) as stopped:
            sync_register(store, client)
        assert isinstance(stopped.value.__cause__, ArFormatError)
        assert "nested too deeply" in str(stopped.value)
        with store.unit_of_work() as uow:
            assert last_synced_sequence(uow) == 1  # not past the event it could not read
        deep[0] = False
        assert sync_register(store, client).last_sequence_number == 2
        client.close()
    assert _name(store, "1001") == "Legekontor Flyttet"


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_an_answer_over_the_limit_is_not_read(store: Store, gzipped: bool) -> None:
    # plain: the declared length is over the limit; gzip: a few hundred bytes sent, ten
    # thousand once decompressed (read a piece at a time and stopped at the limit)
    fake = FakeAddressRegister()
    fake.put_party(_record(1001, "Legekontor " + "x" * 10_000))

    def compressed(request: Request) -> Reply | None:
        if not gzipped:
            return None
        reply = fake(request)
        return Reply(reply.status, gzip.compress(reply.body), headers={"Content-Encoding": "gzip"})

    with serve(_in_front(fake, compressed)) as url:
        small = ArClient(url, StaticToken(""), max_answer_bytes=4096)
        with pytest.raises(SyncInterrupted) as stopped:
            sync_register(store, small)
        small.close()
        cause = stopped.value.__cause__
        assert isinstance(cause, AnswerTooLarge) and cause.code == "register-answer-too-large"
        assert "more than 4096 bytes for /api/v1/communicationparty" in str(cause)
        assert _name(store, "1001") is None
        # the default limit reads it (and an answer rebuilt from a gzip body reads as sent)
        client = ArClient(url, StaticToken(""))
        assert sync_register(store, client).parties_written == 1
        client.close()
    assert (_name(store, "1001") or "").startswith("Legekontor xxx")


def test_an_import_refuses_a_file_nested_too_deeply_and_takes_the_others(
    store: Store, tmp_path: Path, ar_samples: Path
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_bytes(DEEP)
    nav = ar_samples / "nav-NavCommunicationParty.json"
    with store.unit_of_work() as uow:
        report = import_files(uow, [deep, nav])
        uow.commit()
    assert "nested too deeply" in report.refused[str(deep)]
    assert report.imported == {str(nav): 1}
    assert _name(store, "79768") == "NAV IKT"
