"""Rotating a client's API key with an overlap: the new key works at once, the old one until the
overlap ends (judged by the engine's clock, which the tests move), then is refused exactly as a
wrong key; a second rotation never lengthens an older key's life; revoking ends every key.
The operator's ``clients rotate`` and ``clients list`` as an operator runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from api_sites import ApiPair
from sqlalchemy import func, select
from typer.testing import CliRunner

import meldingstjener.cli.api_cmds  # noqa: F401  (registers the commands)
from meldingstjener.api.clients import rotate_client
from meldingstjener.cli.app import app
from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.store.audit import AuditQuery, query
from meldingstjener.store.tables import ApiClientOldKeyRow

CLIENT = "dips"  # the hospital's EPJ, made by the api_pair fixture
WRONG_KEY = "mtk_not-a-key-of-anyone"


def _poll(api_pair: ApiPair, key: str) -> httpx.Response:
    return api_pair.hospital_http.get(
        "/Messages",
        params={"ReceiverHerIds": HOSPITAL_SERVICE_HER},
        headers={"Authorization": f"Bearer {key}"},
    )


def _works(api_pair: ApiPair, key: str) -> bool:
    answer = _poll(api_pair, key)
    assert answer.status_code in (200, 401), answer.text
    if answer.status_code == 401:  # refused as a wrong key is, word for word
        assert _problem(answer) == _problem(_poll(api_pair, WRONG_KEY))
    return answer.status_code == 200


def _problem(answer: httpx.Response) -> dict[str, object]:
    """The answer's problem document but its request id (each request's own)."""
    return {k: v for k, v in answer.json().items() if k != "requestId"}


def _rotate(api_pair: ApiPair, hours: float) -> str:
    pair = api_pair.pair
    _, key = rotate_client(
        pair.hospital.store,
        CLIENT,
        overlap=timedelta(hours=hours),
        actor="cli",
        now=pair.clock(),
    )
    return key


def _old_keys_kept(api_pair: ApiPair) -> int:
    with api_pair.pair.hospital.store.unit_of_work() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(ApiClientOldKeyRow)) or 0)


def test_the_old_key_works_until_the_overlap_ends_then_is_refused(api_pair: ApiPair) -> None:
    old = api_pair.hospital_key
    assert _works(api_pair, old)  # now kept by the key check's cache
    new = _rotate(api_pair, hours=24)
    assert new != old
    assert _works(api_pair, new) and _works(api_pair, old)
    api_pair.pair.clock.advance(hours=23, minutes=59, seconds=59)
    assert _works(api_pair, old)
    api_pair.pair.clock.advance(seconds=1)  # the overlap's end: no cache lets the old key in
    assert not _works(api_pair, old)
    assert _works(api_pair, new)
    assert _old_keys_kept(api_pair) == 0  # its hash is not kept past its end
    assert not _works(api_pair, old)


def test_an_overlap_of_zero_stops_the_old_key_at_once(api_pair: ApiPair) -> None:
    old = api_pair.hospital_key
    assert _works(api_pair, old)
    new = _rotate(api_pair, hours=0)
    assert not _works(api_pair, old)
    assert _works(api_pair, new)
    assert _old_keys_kept(api_pair) == 0


def test_a_second_rotation_leaves_each_older_key_its_own_end_never_a_later_one(
    api_pair: ApiPair,
) -> None:
    first = api_pair.hospital_key
    second = _rotate(api_pair, hours=24)
    api_pair.pair.clock.advance(hours=12)
    # the operator lost the printed key and rotates again: the EPJ's key keeps working
    third = _rotate(api_pair, hours=48)
    assert all(_works(api_pair, key) for key in (first, second, third))
    api_pair.pair.clock.advance(hours=12)  # the first rotation's end, not the second's
    assert not _works(api_pair, first)
    assert _works(api_pair, second) and _works(api_pair, third)
    # a rotation with a shorter overlap cuts the longer one of the key before
    fourth = _rotate(api_pair, hours=1)
    api_pair.pair.clock.advance(hours=1)
    assert not _works(api_pair, second) and not _works(api_pair, third)
    assert _works(api_pair, fourth)


def test_a_rotation_with_overlap_zero_stops_every_older_key(api_pair: ApiPair) -> None:
    first = api_pair.hospital_key
    second = _rotate(api_pair, hours=24)
    third = _rotate(api_pair, hours=0)  # the keys leaked: none of them may work on
    assert not _works(api_pair, first) and not _works(api_pair, second)
    assert _works(api_pair, third)
    assert _old_keys_kept(api_pair) == 0


def test_revoking_a_rotated_client_refuses_its_old_and_new_key(api_pair: ApiPair) -> None:
    old = api_pair.hospital_key
    new = _rotate(api_pair, hours=24)
    assert _works(api_pair, old) and _works(api_pair, new)
    code, output = _cli(api_pair, "revoke", CLIENT)
    assert code == 0, output
    assert not _works(api_pair, old) and not _works(api_pair, new)
    assert _old_keys_kept(api_pair) == 0
    code, output = _cli(api_pair, "rotate", CLIENT)  # no new life for a revoked client
    assert code == 2 and "error (revoked)" in output, output


def _cli(api_pair: ApiPair, *args: str) -> tuple[int, str]:
    config = str(api_pair.pair.hospital_site.config_path)
    result = CliRunner().invoke(app, ["--config", config, "clients", *args])
    return result.exit_code, result.output


def _listed(api_pair: ApiPair) -> dict[str, dict[str, object]]:
    code, output = _cli(api_pair, "list", "--json")
    assert code == 0, output
    return {c["name"]: c for c in map(json.loads, output.splitlines())}


def test_the_operator_rotates_a_key_and_sees_until_when_the_old_one_works(
    api_pair: ApiPair,
) -> None:
    old = api_pair.hospital_key
    assert _listed(api_pair)[CLIENT]["oldKeyUntil"] is None
    before = datetime.now(UTC)
    code, output = _cli(api_pair, "rotate", CLIENT)  # the default overlap: a day
    after = datetime.now(UTC)
    assert code == 0, output
    new = output.splitlines()[-1]  # printed once, last, as `clients add` prints it
    assert new.startswith("mtk_") and new != old
    assert "the old key works until" in output
    listed = _listed(api_pair)
    until = listed[CLIENT]["oldKeyUntil"]
    assert isinstance(until, str)
    ends = datetime.fromisoformat(until)
    assert before + timedelta(hours=24) <= ends <= after + timedelta(hours=24)
    assert listed["ops"]["oldKeyUntil"] is None  # the other clients: no key being replaced
    assert listed[CLIENT]["oldKeyLastUsed"] is None  # no request with the old key yet
    code, table = _cli(api_pair, "list")
    assert code == 0 and "old key until" in table and until[:19] in table, table
    for shown in (json.dumps(listed), table):  # never a key, nor its hash
        assert old not in shown and new not in shown and "key_hash" not in shown
    [audited] = query(api_pair.pair.hospital.store, AuditQuery(None, "cli", None, 10))
    assert audited["action"] == "client-rotate-key" and CLIENT in str(audited["detail"])
    assert _works(api_pair, old) and _works(api_pair, new)
    # whether the EPJ's instances all use the new key: when the old one last came
    used = _listed(api_pair)[CLIENT]["oldKeyLastUsed"]
    assert isinstance(used, str)
    assert datetime.fromisoformat(used) == api_pair.pair.clock()
    api_pair.pair.clock.now = ends - timedelta(seconds=1)
    assert _works(api_pair, old)
    api_pair.pair.clock.now = ends
    assert not _works(api_pair, old) and _works(api_pair, new)
    assert _listed(api_pair)[CLIENT]["oldKeyUntil"] is None


def test_the_operator_is_told_what_is_wrong_with_a_rotation(api_pair: ApiPair) -> None:
    code, output = _cli(api_pair, "rotate", CLIENT, "--overlap-hours", "-1")
    assert code == 2 and "error (invalid-overlap)" in output, output
    code, output = _cli(api_pair, "rotate", CLIENT, "--overlap-hours", "10000")
    assert code == 2 and "error (invalid-overlap)" in output, output
    for not_a_number in ("nan", "inf"):  # timedelta's own ValueError, OverflowError
        code, output = _cli(api_pair, "rotate", CLIENT, "--overlap-hours", not_a_number)
        assert code == 2 and "error (invalid-overlap)" in output, (not_a_number, output)
    code, output = _cli(api_pair, "rotate", "no-such-epj")
    assert code == 2 and "error (not-found)" in output, output
    assert _works(api_pair, api_pair.hospital_key)  # nothing changed
    code, output = _cli(api_pair, "rotate", CLIENT, "--overlap-hours", "0")
    assert code == 0 and "the old key stops now" in output, output
    assert not _works(api_pair, api_pair.hospital_key)


def test_the_operator_adding_and_revoking_a_client_is_audited_as_a_rotation_is(
    api_pair: ApiPair,
) -> None:
    # A rotation was recorded and the stronger change, revoking a leaked key, was not.
    code, output = _cli(api_pair, "add", "lab-epj", "--scope", "receive")
    assert code == 0, output
    code, output = _cli(api_pair, "revoke", "lab-epj")
    assert code == 0, output
    code, output = _cli(api_pair, "revoke", "lab-epj")  # again: said, nothing changed
    assert code == 0, output
    rows = query(api_pair.pair.hospital.store, AuditQuery(None, "cli", None, 10))
    assert [(row["action"], row["outcome"]) for row in rows] == [
        ("client-add", "ok"),
        ("client-revoke", "ok"),
        ("client-revoke", "ok"),
    ]
    assert all("lab-epj" in str(row["detail"]) for row in rows)
    assert "nothing changed" in str(rows[2]["detail"])
    assert "nothing changed" not in str(rows[1]["detail"])


def test_noting_an_old_keys_use_leaves_the_key_cache_working(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The use was written into the clients' tables, whose every write voids the cache: while an
    # old key was in use, every request of every client went to the database.
    from meldingstjener.api import clients

    old = api_pair.hospital_key
    _rotate(api_pair, hours=24)
    other = api_pair.hospital_admin_key
    looked_up: list[str] = []
    find_by_hash = clients._find_by_hash

    def counted(store: Any, key_hash: str, now: datetime) -> Any:
        looked_up.append(key_hash)
        return find_by_hash(store, key_hash, now)

    monkeypatch.setattr(clients, "_find_by_hash", counted)
    cache = clients.ClientCache(
        api_pair.pair.hospital.store, seconds=3600, clock=api_pair.pair.clock
    )
    for _ in range(5):
        assert cache.find(old) is not None and cache.find(other) is not None
    assert len(looked_up) == 2  # each key read once, then kept
    used = _listed(api_pair)[CLIENT]["oldKeyLastUsed"]
    assert used is not None and datetime.fromisoformat(str(used)) == api_pair.pair.clock()
