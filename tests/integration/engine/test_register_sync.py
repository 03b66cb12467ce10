"""The address register kept current by the ``register-sync`` job: over real HTTP against the
fake register and the fake HelseID (private_key_jwt, DPoP), rescheduled after each run, with an
alert after failures in a row that the next good sync resolves; and ``serve`` scheduling it."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from engine_pair import Pair
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select

from meldingstjener.bootstrap import build_engine, build_register_sync
from meldingstjener.config import ConfigError, load_settings
from meldingstjener.devsites import RunningServer
from meldingstjener.engine import register_sync
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.instances import beat
from meldingstjener.engine.register_sync import (
    REGISTER_SYNC,
    SyncBusy,
    schedule_register_sync,
    sync_turn,
)
from meldingstjener.registry.fakes import FakeAddressRegister, FakeHelseId, serve
from meldingstjener.store.tables import AlertRow, EventRow, JobRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import ClaimedJob, Store

PARTY = 500001
Register = tuple[FakeHelseId, FakeAddressRegister, str, str, rsa.RSAPrivateKey]


@pytest.fixture
def register() -> Iterator[Register]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    helseid = FakeHelseId(keys={"msh": key.public_key()}, require_dpop=True, nonce="n1")
    fake = FakeAddressRegister(guard=helseid.guard)
    fake.put_party({"herId": PARTY, "name": "Tønsberg legevakt", "type": "Organization"})
    with serve(helseid) as sts, serve(fake) as url:
        yield helseid, fake, f"{sts}/connect/token", url, key


def configure(
    pair: Pair, token_url: str, url: str, key: rsa.RSAPrivateKey, **register: object
) -> EngineContext:
    """The GP's configuration gets [helseid] and [address_register]; its engine built again."""
    key_file = pair.gp_site.directory / "helseid-client.jwk"
    key_file.write_text(json.dumps({**RSAAlgorithm.to_jwk(key, as_dict=True), "kid": "k1"}))
    extra = "".join(f"{name} = {value}\n" for name, value in register.items())
    config = pair.gp_site.config_path
    config.write_text(
        config.read_text()
        + f'\n[helseid]\ntoken_url = "{token_url}"\nclient_id = "msh"\nkey_file = "{key_file}"\n'
        + f'\n[address_register]\nurl = "{url}"\nsync_minutes = 15\n{extra}'
    )
    pair.gp.store.database.dispose()
    settings = load_settings(config)
    gp = build_engine(settings, clock=pair.clock)
    gp.register_sync = build_register_sync(settings)  # as serve does
    gp.transports = {"http": pair.network}
    pair.network.engines[pair.gp_site.endpoint] = gp
    pair.gp = gp
    return gp


def first_sync(pair: Pair, gp: EngineContext) -> None:
    """As serve does at start: the sync scheduled, then run when due (a minute later)."""
    with gp.store.unit_of_work() as uow:
        schedule_register_sync(gp, uow)
        uow.commit()
    pair.clock.advance(minutes=2)
    pair.run()


def sync_job(ctx: EngineContext) -> JobRow:
    with ctx.store.unit_of_work() as uow:
        [job] = uow.session.scalars(select(JobRow).where(JobRow.kind == REGISTER_SYNC))
        return job


def party_name(ctx: EngineContext) -> str | None:
    with ctx.store.unit_of_work() as uow:
        row = uow.parties.get(str(PARTY))
        return row.name if row is not None else None


def open_alerts(ctx: EngineContext) -> list[str]:
    with ctx.store.unit_of_work() as uow:
        return [
            a.summary for a in uow.alerts.list(open_only=True) if a.kind == "register-sync-failed"
        ]


def test_the_job_syncs_the_register_and_comes_back(pair: Pair, register: Register) -> None:
    helseid, fake, token_url, url, key = register
    gp = configure(pair, token_url, url, key)
    assert party_name(gp) is None
    first_sync(pair, gp)
    assert party_name(gp) == "Tønsberg legevakt"
    assert sync_job(gp).due_at.replace(tzinfo=None) == (
        pair.clock() + timedelta(minutes=15)
    ).replace(tzinfo=None)
    assert all(bound is not None for bound in helseid.issued.values())  # DPoP-bound tokens
    with gp.store.unit_of_work() as uow:
        [synced] = uow.session.scalars(select(EventRow).where(EventRow.code == "register-synced"))
        assert synced.detail.startswith("1 parties written")

    fake.put_party(
        {"herId": PARTY, "name": "Tønsberg interkommunale legevakt", "type": "Organization"}
    )
    pair.run()  # not due yet
    assert party_name(gp) == "Tønsberg legevakt"
    pair.clock.advance(minutes=16)
    pair.run()
    assert party_name(gp) == "Tønsberg interkommunale legevakt"
    assert len(helseid.issued) == 1  # the token was kept between the syncs


def test_failures_in_a_row_raise_an_alert_that_the_next_good_sync_resolves(
    pair: Pair, register: Register
) -> None:
    _, fake, token_url, url, key = register
    gp = configure(pair, token_url, url, key, alert_after_failures=2)
    first_sync(pair, gp)
    fake.put_party({"herId": PARTY, "name": "Ny", "type": "Organization"})
    fake.fail_party_lookups_after = fake.party_lookups  # the register is down from now
    pair.clock.advance(minutes=16)
    pair.run()
    assert open_alerts(gp) == []  # one failure is not yet a deviation
    assert (sync_job(gp).data or {}).get("failures") == 1
    pair.clock.advance(minutes=16)
    pair.run()
    [summary] = open_alerts(gp)
    assert "2 syncs in a row failed" in summary and "503" in summary
    raised = sync_failed_alert(gp)
    for _ in range(10):  # it lasts: counted at each sync, told (a webhook call) once
        pair.clock.advance(minutes=16)
        pair.run()
    lasting = sync_failed_alert(gp)
    assert (lasting.count, lasting.changed_at, lasting.summary) == (
        11,
        raised.changed_at,
        raised.summary,
    )
    assert lasting.last_seen == pair.clock()
    fake.fail_party_lookups_after = None
    pair.clock.advance(minutes=16)
    pair.run()
    assert open_alerts(gp) == [] and party_name(gp) == "Ny"
    assert sync_job(gp).data is None  # the count of failures starts again
    fake.put_party({"herId": PARTY, "name": "Nyere", "type": "Organization"})
    fake.fail_party_lookups_after = fake.party_lookups  # down again: told anew
    for _ in range(2):
        pair.clock.advance(minutes=16)
        pair.run()
    again = sync_failed_alert(gp)
    assert again.resolved_at is None and again.changed_at == pair.clock()


def sync_failed_alert(ctx: EngineContext) -> AlertRow:
    with ctx.store.unit_of_work() as uow:
        alert = uow.alerts.by_key("register-sync-failed:global")
        assert alert is not None
        return alert


def refused_alerts(ctx: EngineContext) -> list[str]:
    with ctx.store.unit_of_work() as uow:
        return [
            a.summary
            for a in uow.alerts.list(open_only=True)
            if a.kind == "register-parties-refused"
        ]


def test_a_record_that_cannot_be_read_raises_one_alert_until_it_is_read(
    pair: Pair, register: Register
) -> None:
    _, fake, token_url, url, key = register
    gp = configure(pair, token_url, url, key, alert_after_failures=1)
    first_sync(pair, gp)
    fake.put_party({"herId": 500002, "name": "Ny tjeneste", "type": "ExternalService"})
    fake.put_party({"herId": 500003, "name": "Ny avdeling", "type": "ExternalService"})
    fake.put_party({"herId": PARTY, "name": "Tønsberg legevakt Ny", "type": "Organization"})
    pair.clock.advance(minutes=16)
    pair.run()
    assert party_name(gp) == "Tønsberg legevakt Ny"  # the sync went on past them
    assert open_alerts(gp) == [] and sync_job(gp).data is None  # not a failed sync
    [summary] = refused_alerts(gp)
    assert "records of 2 parties could not be used" in summary
    assert "500002 (communication party 500002 has an unknown type 'ExternalService'" in summary
    assert "500003 (" in summary

    fake.put_party({"herId": 500002, "name": "Ny tjeneste", "type": "Service"})
    pair.clock.advance(minutes=16)
    pair.run()
    [summary] = refused_alerts(gp)  # one of them read: the same alert, naming the other
    assert "records of 1 party could not be used" in summary and "500002" not in summary
    fake.put_party({"herId": 500003, "name": "Ny avdeling", "type": "Organization"})
    pair.clock.advance(minutes=16)
    pair.run()
    assert refused_alerts(gp) == []
    with gp.store.unit_of_work() as uow:
        [alert] = [a for a in uow.alerts.list() if a.kind == "register-parties-refused"]
        assert alert.count == 1 and alert.resolved_at is not None


def test_a_client_key_that_cannot_be_used_stops_the_start(pair: Pair, register: Register) -> None:
    _, _, token_url, url, key = register
    configure(pair, token_url, url, key)
    (pair.gp_site.directory / "helseid-client.jwk").write_text('{"kty": "RSA"}')
    with pytest.raises(ConfigError, match=r"helseid\.key_file: .* holds no private key"):
        build_register_sync(load_settings(pair.gp_site.config_path))
    # the commands that do not sync (send, ...) need not read the key
    build_engine(load_settings(pair.gp_site.config_path), clock=pair.clock)


def test_serve_schedules_the_sync(pair: Pair, register: Register, tmp_path: Path) -> None:
    _, _, token_url, url, key = register
    gp = configure(pair, token_url, url, key)
    server = RunningServer(pair.gp_site, tmp_path / "gp.log").start()
    try:
        job = sync_job(gp)  # stored before serve listens
        assert job.claimed_by is None and job.data is None
    finally:
        server.stop()


def test_a_long_sync_goes_on_run_after_run(pair: Pair, register: Register) -> None:
    # The whole register takes hours: each run gets its share of a worker and then lets the
    # jobs due meanwhile go first. Here the share is nothing: one chunk (10 parties) a run.
    _, fake, token_url, url, key = register
    for her_id in range(600001, 600121):
        fake.put_party({"herId": her_id, "name": f"Part {her_id}", "type": "Organization"})
    gp = configure(pair, token_url, url, key)
    assert gp.register_sync is not None and gp.register_sync.run_seconds == 30.0
    gp.register_sync = dataclasses.replace(gp.register_sync, run_seconds=0.0)
    first_sync(pair, gp)
    with gp.store.unit_of_work() as uow:
        synced = list(
            uow.session.scalars(select(EventRow).where(EventRow.code == "register-synced"))
        )
        stored = {row.her_id for row in uow.parties.all()}
    assert {str(PARTY), *(str(h) for h in range(600001, 600121))} <= stored
    assert [e.detail.split()[0] for e in synced] == ["10"] * 12 + ["1"]
    assert sync_job(gp).due_at.replace(tzinfo=None) == (
        pair.clock() + timedelta(minutes=15)
    ).replace(tzinfo=None)


def test_a_server_without_the_register_leaves_the_job_to_one_with_it(
    pair: Pair, register: Register
) -> None:
    _, _, token_url, url, key = register
    gp = configure(pair, token_url, url, key)
    with gp.store.unit_of_work() as uow:
        schedule_register_sync(gp, uow)
        uow.commit()
    configured, gp.register_sync = gp.register_sync, None  # as another server sees the store
    pair.clock.advance(minutes=2)
    pair.run()
    assert party_name(gp) is None
    job = sync_job(gp)  # not claimed: left as it was for a server with the register
    assert job.claimed_by is None and job.attempts == 0
    with gp.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)  # gone, as by an older server that ended it
        uow.commit()
    gp.register_sync = configured
    beat(gp, "gp:8080")  # a configured server's heartbeat puts it back
    pair.clock.advance(minutes=2)
    pair.run()
    assert party_name(gp) == "Tønsberg legevakt"


def test_an_unexpected_error_counts_as_a_failure_too(
    pair: Pair, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, token_url, url, key = register
    gp = configure(pair, token_url, url, key, alert_after_failures=1)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(register_sync, "sync_register", broken)
    first_sync(pair, gp)
    [summary] = open_alerts(gp)
    assert "(unexpected RuntimeError)" in summary and "went away" not in summary
    assert (sync_job(gp).data or {}).get("failures") == 1  # not retried every 30 s


def test_the_alert_names_what_stopped_the_sync(pair: Pair, register: Register) -> None:
    helseid, _, token_url, url, key = register
    gp = configure(pair, token_url, url, key, alert_after_failures=1)
    helseid.keys.clear()  # HelseID no longer knows our key
    first_sync(pair, gp)
    [summary] = open_alerts(gp)
    assert "(helseid-token: the token endpoint refused client msh" in summary


def _schedule_the_sync(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.jobs.schedule_if_absent(
            REGISTER_SYNC, utcnow() - timedelta(seconds=1), dedup_key=REGISTER_SYNC
        )
        uow.commit()


def _claim_for_a_server(store: Store) -> list[ClaimedJob]:
    with store.unit_of_work() as uow:
        claimed = uow.jobs.claim_due("host:1/0", now=utcnow(), limit=5, lease=timedelta(minutes=2))
        uow.commit()
    return claimed


def test_a_sync_by_hand_holds_the_jobs_turn_and_gives_it_back(store: Store) -> None:
    _schedule_the_sync(store)
    with sync_turn(store, "ar-sync:test:1"):
        assert _claim_for_a_server(store) == []  # no server syncs meanwhile
        with pytest.raises(SyncBusy) as busy, sync_turn(store, "ar-sync:test:2"):
            pass
        assert busy.value.code == "ar-sync-busy" and "ar-sync:test:1" in str(busy.value)
    # given back as it was: due, its attempts untouched
    [job] = _claim_for_a_server(store)
    assert (job.kind, job.attempts) == (REGISTER_SYNC, 1)
    # while a server syncs, a sync by hand is refused
    with pytest.raises(SyncBusy) as busy, sync_turn(store, "ar-sync:test:3"):
        pass
    assert "host:1/0" in str(busy.value)


def test_a_long_sync_by_hand_keeps_its_turn(store: Store) -> None:
    _schedule_the_sync(store)
    lease = timedelta(seconds=0.4)  # extended every tenth of a second
    with sync_turn(store, "ar-sync:test:1", lease=lease):
        with store.unit_of_work() as uow:
            first = uow.jobs.claim_holder(REGISTER_SYNC)
        assert first is not None and first[0] == "ar-sync:test:1" and first[1] is not None
        deadline = time.monotonic() + 30
        while True:  # until the keeper has extended the claim past its first lease
            with store.unit_of_work() as uow:
                now = uow.jobs.claim_holder(REGISTER_SYNC)
            assert now is not None
            if now[1] is not None and now[1] > first[1] + lease:
                break
            assert time.monotonic() < deadline, "the turn was never extended"
    with store.unit_of_work() as uow:
        assert uow.jobs.claim_holder(REGISTER_SYNC) == (None, None)


def test_without_the_job_a_sync_by_hand_just_runs(store: Store) -> None:
    with sync_turn(store, "ar-sync:test:1"), store.unit_of_work() as uow:
        assert uow.jobs.claim_holder(REGISTER_SYNC) is None


def test_a_sync_by_hand_that_worked_counts_as_the_turns_sync(store: Store) -> None:
    from meldingstjener.engine.alerts import AlertKind, raise_alert

    with store.unit_of_work() as uow:
        uow.jobs.schedule(
            REGISTER_SYNC,
            utcnow() - timedelta(seconds=1),
            dedup_key=REGISTER_SYNC,
            data={"failures": 3, "failing_since": "2026-12-04T00:00:00+00:00"},
        )
        raise_alert(uow, AlertKind.REGISTER_SYNC_FAILED, "stale", at=utcnow())
        uow.commit()
    every = timedelta(minutes=15)
    with pytest.raises(RuntimeError), sync_turn(store, "ar-sync:test:1", every=every):
        raise RuntimeError("the sync failed")
    with store.unit_of_work() as uow:  # a failed one gives the turn back as it was
        [row] = uow.session.scalars(select(JobRow))
        assert row.data is not None and row.data["failures"] == 3 and row.claimed_by is None
        assert row.due_at <= utcnow()
    before = utcnow()
    with sync_turn(store, "ar-sync:test:1", every=every):
        pass
    with store.unit_of_work() as uow:
        [row] = uow.session.scalars(select(JobRow))
        assert row.data is None and row.claimed_by is None
        assert before + every <= row.due_at <= utcnow() + every
        assert [a for a in uow.alerts.list(open_only=True)] == []
