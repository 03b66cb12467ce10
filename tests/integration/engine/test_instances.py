"""The serve processes on one store and their heartbeats: an instance that stopped or is gone
has its own alerts (clock-skew, mailbox-unreachable) resolved, and is forgotten a week later;
``serve`` records its start, its beats and its stop; ``instances`` lists them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from engine_pair import Clock, Pair
from outage import database_away
from sqlalchemy import text
from typer.testing import CliRunner

import meldingstjener.cli.alerts_cmds  # noqa: F401  (registers the commands)
from meldingstjener.bootstrap import build_engine
from meldingstjener.cli.app import app
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, prepare_sites
from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.instances import (
    Heartbeat,
    NameKeeper,
    beat,
    instance_states,
    stopped,
    store_now,
)
from meldingstjener.engine.trust import revocation_alert_key
from meldingstjener.store.instance_lock import InstanceTaken, lock_instance
from meldingstjener.store.tables import AlertRow
from meldingstjener.store.uow import Store


def raise_for(ctx: EngineContext, kind: AlertKind, instance: str) -> None:
    with ctx.store.unit_of_work() as uow:
        raise_alert(uow, kind, f"{kind} on {instance}", at=ctx.clock(), key=instance)
        uow.commit()


def open_alerts(ctx: EngineContext) -> set[str]:
    with ctx.store.unit_of_work() as uow:
        return {a.dedup_key for a in uow.alerts.list(open_only=True)}


def instance_names(ctx: EngineContext) -> list[str]:
    with ctx.store.unit_of_work() as uow:
        return [row.name for row in uow.instances.all()]


def test_the_alerts_of_an_instance_that_is_gone_are_resolved_by_another(pair: Pair) -> None:
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    beat(ctx, "b:8080", started=True)
    raise_for(ctx, AlertKind.CLOCK_SKEW, "b:8080")
    raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, "b:8080")
    raise_for(ctx, AlertKind.CLOCK_SKEW, "a:8080")
    everything = {
        "clock-skew:b:8080",
        "mailbox-unreachable:b:8080",
        "clock-skew:a:8080",
    }
    pair.clock.advance(minutes=15)
    beat(ctx, "a:8080")
    assert open_alerts(ctx) == everything  # b missed beats, but not yet for long
    pair.clock.advance(minutes=1, seconds=1)
    beat(ctx, "a:8080")
    # a's own alert is a's to resolve; that b is gone is said instead of b's own alerts
    assert open_alerts(ctx) == {"clock-skew:a:8080", "instance-gone:b:8080"}
    assert instance_names(ctx) == ["a:8080", "b:8080"]
    pair.clock.advance(days=7)
    beat(ctx, "a:8080")
    assert instance_names(ctx) == ["a:8080"]  # forgotten


def _revocation_unknown(ctx: EngineContext, instance: str, issuer: x509.Certificate) -> str:
    """Raise ``instance``'s revocation-unknown alert of ``issuer``'s CA; its dedup key."""
    key = revocation_alert_key(instance, issuer)
    with ctx.store.unit_of_work() as uow:
        keep_alert(
            uow, AlertKind.REVOCATION_UNKNOWN, f"Instance {instance}: ...", at=ctx.clock(), key=key
        )
        uow.commit()
    return f"{AlertKind.REVOCATION_UNKNOWN}:{key}"


def test_the_revocation_alerts_of_an_instance_that_stops_or_is_gone_are_resolved(
    pair_with_gp_database: Pair,
) -> None:
    # "b" and "b:8080" are two instances: the alerts of one are not the other's
    ctx = pair_with_gp_database.gp
    ours, theirs = ctx.keys.signing_certificate, ctx.keys.encryption_certificate
    for name in ("a:8080", "b", "b:8080", "c:8080"):
        beat(ctx, name, started=True)
    of_a = _revocation_unknown(ctx, "a:8080", ours)
    of_b = {_revocation_unknown(ctx, "b", ours), _revocation_unknown(ctx, "b", theirs)}
    of_b_8080 = _revocation_unknown(ctx, "b:8080", ours)
    of_c = _revocation_unknown(ctx, "c:8080", ours)
    stopped(ctx, "c:8080")  # its own stop
    assert open_alerts(ctx) == {of_a, of_b_8080, *of_b}
    # b's last beat was long ago (by the store's clock, the database server's on PostgreSQL)
    with ctx.store.unit_of_work() as uow:
        [row] = [row for row in uow.instances.all() if row.name == "b"]
        row.last_seen_at -= timedelta(minutes=16)
        uow.commit()
    beat(ctx, "a:8080")  # b is gone: another's beat resolves its alerts
    assert open_alerts(ctx) == {of_a, of_b_8080, "instance-gone:b"}
    assert of_c not in open_alerts(ctx)  # resolved by its own stop


def test_a_start_resolves_the_revocation_alerts_of_a_version_before_they_named_an_instance(
    pair_with_gp_database: Pair,
) -> None:
    # Kept per CA alone before: no process raises or resolves that key any more, and a CA not
    # asked again would have left it open for ever.
    ctx = pair_with_gp_database.gp
    unnamed = f"issuer:{'0' * 32}"
    with ctx.store.unit_of_work() as uow:
        keep_alert(uow, AlertKind.REVOCATION_UNKNOWN, "old", at=ctx.clock(), key=unnamed)
        uow.commit()
    beat(ctx, "a:8080")  # a beat that is not a start leaves it
    assert f"{AlertKind.REVOCATION_UNKNOWN}:{unnamed}" in open_alerts(ctx)
    beat(ctx, "a:8080", started=True)
    assert f"{AlertKind.REVOCATION_UNKNOWN}:{unnamed}" not in open_alerts(ctx)
    resolved = _alert(ctx, f"{AlertKind.REVOCATION_UNKNOWN}:{unnamed}")
    assert "per CA and serve process" in resolved.summary


def _alert(ctx: EngineContext, dedup_key: str) -> AlertRow:
    with ctx.store.unit_of_work() as uow:
        found = uow.alerts.by_key(dedup_key)
        assert found is not None
        return found


def test_an_instance_that_dies_is_reported_once_until_its_name_beats_again(pair: Pair) -> None:
    # The host of the only server that collects the mailbox is lost: its mailbox-unreachable
    # goes with it, and instance-gone says instead that what it did is not being done.
    ctx = pair.gp
    for name in ("a:8080", "b:8080", "collector:8080"):
        beat(ctx, name, started=True)
    raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, "collector:8080")
    pair.clock.advance(minutes=15, seconds=1)
    beat(ctx, "a:8080")
    beat(ctx, "b:8080")
    assert open_alerts(ctx) == {"instance-gone:collector:8080"}
    gone = _alert(ctx, "instance-gone:collector:8080")
    assert gone.severity == "error"
    assert "Instance collector:8080 (host " in gone.summary
    assert "did not stop cleanly" in gone.summary and "no mail is collected" in gone.summary
    for _ in range(3):  # every beat of every instance sees it gone: told once
        pair.clock.advance(minutes=1)
        beat(ctx, "a:8080")
        beat(ctx, "b:8080")
    assert _alert(ctx, "instance-gone:collector:8080").count == 1
    beat(ctx, "collector:8080", started=True)  # started again
    assert open_alerts(ctx) == set()
    pair.clock.advance(minutes=15, seconds=1)  # and dies again: a new death, told again
    beat(ctx, "a:8080")
    again = _alert(ctx, "instance-gone:collector:8080")
    # a new incident: counted from 1, first seen at this death
    assert (again.resolved_at, again.count, again.first_seen) == (None, 1, pair.clock())
    pair.clock.advance(days=7)
    beat(ctx, "a:8080")
    assert "collector:8080" not in instance_names(ctx)
    assert open_alerts(ctx) == set()  # forgotten, and its alert with it


def test_an_instance_that_stops_cleanly_is_not_reported_gone(pair: Pair) -> None:
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    beat(ctx, "b:8080", started=True)
    stopped(ctx, "b:8080")
    pair.clock.advance(hours=1)
    beat(ctx, "a:8080")
    assert open_alerts(ctx) == set()


def test_a_stopping_instance_resolves_its_own_alerts(pair: Pair) -> None:
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, "a:8080")
    raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, "b:8080")
    stopped(ctx, "a:8080")
    assert open_alerts(ctx) == {"mailbox-unreachable:b:8080"}
    with ctx.store.unit_of_work() as uow:
        [row] = uow.instances.all()
        assert row.stopped_at is not None
    beat(ctx, "a:8080", started=True)  # started again
    with ctx.store.unit_of_work() as uow:
        [row] = uow.instances.all()
        assert row.stopped_at is None


def _stop_recorded(pair: Pair) -> bool:
    with pair.gp.store.unit_of_work() as uow:
        [row] = uow.instances.all()
        return row.stopped_at is not None


def test_serve_records_its_start_and_its_stop(pair: Pair, tmp_path: Path) -> None:
    server = RunningServer(pair.gp_site, tmp_path / "gp.log").start()
    process = server.process
    assert process is not None
    try:
        runner = CliRunner()
        result = runner.invoke(
            app, ["--config", str(pair.gp_site.config_path), "instances", "--json"]
        )
        assert result.exit_code == 0, result.output
        [shown] = [json.loads(line) for line in result.output.splitlines()]
        assert shown["name"].endswith(f":{pair.gp_site.port}")
        assert (shown["state"], shown["pid"], shown["stopped_at"]) == ("running", process.pid, None)
        process.send_signal(signal.SIGTERM)
        # a clean stop: the threads stopped and the stop recorded, not a death by the signal
        assert process.wait(timeout=30) == 0
    finally:
        server.stop()
    assert _stop_recorded(pair)


def test_a_request_that_never_ends_does_not_hold_up_the_stop(pair: Pair, tmp_path: Path) -> None:
    # A client that sends half a request and then nothing (a stalled upload, a slow attack)
    # would keep uvicorn's graceful shutdown waiting for ever, and a service manager would kill
    # the process before the workers and the stop's record. The wait is bounded.
    server = RunningServer(pair.gp_site, tmp_path / "gp.log").start()
    process = server.process
    assert process is not None
    try:
        with socket.create_connection(("127.0.0.1", pair.gp_site.port), timeout=30) as stalled:
            stalled.sendall(
                b"POST /ebms HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
            )
            # the server asks for the body once the application reads it: the request is
            # under way, and the stop must wait for it (or not)
            assert stalled.recv(100).startswith(b"HTTP/1.1 100 Continue")
            stalled.sendall(b"<partial")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    finally:
        server.stop()
    assert _stop_recorded(pair)


def test_on_postgresql_the_beats_are_judged_by_the_database_servers_clock(
    own_database: Store, tmp_path: Path
) -> None:
    # A host whose clock is an hour ahead must not take its peers for gone (nor, behind, be
    # taken for gone): on PostgreSQL the beats are written and compared in database time.
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=own_database.database.url)
    ahead = build_engine(
        load_settings(gp.config_path), clock=lambda: datetime.now(UTC) + timedelta(hours=1)
    )
    if not ahead.store.database.is_postgresql:
        # one host on SQLite: its clock is the only one, and the beats are judged by it
        with ahead.store.unit_of_work() as uow:
            assert abs(store_now(ahead.clock, uow) - ahead.clock()) < timedelta(seconds=5)
        return
    behind = build_engine(
        load_settings(gp.config_path), clock=lambda: datetime.now(UTC) - timedelta(hours=1)
    )
    beat(behind, "behind:8080", started=True)
    raise_for(behind, AlertKind.CLOCK_SKEW, "behind:8080")
    beat(ahead, "ahead:8080", started=True)
    assert "clock-skew:behind:8080" in open_alerts(ahead)
    with ahead.store.unit_of_work() as uow:
        rows = {row.name: row for row in uow.instances.all()}
        database_now = store_now(ahead.clock, uow)
    assert abs(rows["behind:8080"].last_seen_at - database_now) < timedelta(minutes=1)
    assert abs(rows["ahead:8080"].last_seen_at - database_now) < timedelta(minutes=1)


def _claimed_by(store: Store, kind: str) -> str | None:
    with store.unit_of_work() as uow:
        return uow.session.execute(
            text("SELECT claimed_by FROM jobs WHERE kind = :kind"), {"kind": kind}
        ).scalar_one()


def _name_free(store: Store, name: str) -> bool:
    try:
        lock = lock_instance(store.database, name)
    except InstanceTaken:
        return False
    lock.release()
    return True


def test_a_second_serve_with_a_name_in_use_does_not_start_nor_take_its_claims(
    own_database: Store, tmp_path: Path
) -> None:
    # Two processes with one host name and port (here: two listen addresses; in production,
    # containers with a fixed host name) share an instance name. The second must not take the
    # first's job claims back as a dead predecessor's: its jobs would run twice.
    gp_site, _ = prepare_sites(tmp_path / "sites", gp_database_url=own_database.database.url)
    first = RunningServer(gp_site, tmp_path / "first.log").start()
    name = f"{socket.gethostname()}:{gp_site.port}"
    kind = "held-by-the-first"
    with own_database.unit_of_work() as uow:
        uow.jobs.schedule(kind, datetime.now(UTC))
        uow.session.execute(
            text("UPDATE jobs SET claimed_by = :worker, claimed_until = :until WHERE kind = :kind"),
            {"worker": f"{name}/7", "until": datetime.now(UTC) + timedelta(hours=1), "kind": kind},
        )
        uow.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    try:
        config = str(gp_site.config_path)
        twin = subprocess.run(  # on another address, where the port is free
            [
                sys.executable,
                "-m",
                "meldingstjener",
                "--config",
                config,
                "serve",
                "--host",
                "127.0.0.2",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert twin.returncode == 2, twin.stderr
        assert f"running as instance {name!r}" in twin.stderr
        assert _claimed_by(own_database, kind) == f"{name}/7"
        # killed, the first leaves its claims to the next process of its name, which takes
        # them back at once (on PostgreSQL once the database has seen the session end)
        first.kill()
        deadline = time.monotonic() + 30
        while not _name_free(own_database, name):
            assert time.monotonic() < deadline, "the killed process's name is still locked"
            time.sleep(0.05)  # the database ends the session on its own: nothing to wait on
        RunningServer(gp_site, tmp_path / "second.log").start().stop()
        assert _claimed_by(own_database, kind) != f"{name}/7"
    finally:
        first.stop()


class _LostName:
    name = "msh1:8080"

    def __init__(self, answer: bool | Exception) -> None:
        self.answer = answer

    def still_held(self) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def release(self) -> None:
        return None


def test_a_check_logs_a_name_taken_by_another_process(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    NameKeeper(pair.gp, _LostName(True)).check()
    NameKeeper(pair.gp, _LostName(OSError("database away"))).check()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    NameKeeper(pair.gp, _LostName(False)).check()
    # the check's own line, then the alert's (store.alert_log)
    [own, alert] = caplog.records[1:]
    assert (own.levelname, alert.levelname) == ("ERROR", "ERROR")
    assert "another process has taken the name of instance msh1:8080" in own.getMessage()
    assert "instance-name-taken raised (error)" in alert.getMessage()


def _name_taken(ctx: EngineContext, name: str) -> AlertRow | None:
    with ctx.store.unit_of_work() as uow:
        found = uow.alerts.by_key(f"instance-name-taken:{name}")
        return found if found is not None and found.resolved_at is None else None


@pytest.mark.parametrize("own_database", ["postgresql"], indirect=True)
def test_a_name_taken_by_another_process_raises_an_alert_until_the_lock_is_held_again(
    own_database: Store, tmp_path: Path
) -> None:
    # The database restarts, and a twin of the same name (containers with one fixed host
    # name) takes the name meanwhile: jobs may run twice. A log line is read by nobody. (On
    # SQLite the name's file lock is the process's until it ends: it cannot be lost.)
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=own_database.database.url)
    clock = Clock()
    ctx = build_engine(load_settings(gp.config_path), clock=clock)
    database = own_database.database
    name = "msh1:8080"
    first = lock_instance(database, name)
    keeper = NameKeeper(ctx, first)
    locks = [first]
    try:
        keeper.check()
        assert _name_taken(ctx, name) is None
        with database_away(database.url):  # as a restart of the database: the lock is lost
            pass
        # the pool's connections ended too (a server finds out by one unit of work that fails)
        ctx.store.database.engine.dispose()
        twin = lock_instance(database, name)  # and taken by the twin before the first's check
        locks.append(twin)
        keeper.check()
        alert = _name_taken(ctx, name)
        assert alert is not None and alert.severity == "error"
        assert f"Another process has taken the name of instance {name}: the process " in (
            alert.summary
        )
        raised = alert.changed_at
        holder_now = NameKeeper(ctx, twin)
        for check in range(6):  # the loser checks every minute: told once, counted at each
            clock.advance(minutes=1)
            holder_now.check()  # the holder leaves an alert still seen alone
            keeper.check()
            alert = _name_taken(ctx, name)
            assert alert is not None and (alert.changed_at, alert.count) == (raised, check + 2)
            assert alert.last_seen == clock()
        twin.release()  # the twin stops: the first takes its name back
        keeper.check()
        assert _name_taken(ctx, name) is None
        # Lost again, and the one that lost it is killed before it holds it again: the holder
        # resolves what nobody repeats any more.
        with database_away(database.url):
            pass
        ctx.store.database.engine.dispose()
        second_twin = lock_instance(database, name)
        locks.append(second_twin)
        keeper.check()
        first.release()  # killed: it checks no more
        holder = NameKeeper(ctx, second_twin)
        clock.advance(minutes=4, seconds=59)
        holder.check()
        assert _name_taken(ctx, name) is not None
        clock.advance(seconds=2)
        holder.check()
        assert _name_taken(ctx, name) is None
    finally:
        for lock in locks:
            lock.release()
        ctx.store.database.dispose()


def test_on_postgresql_an_instance_without_its_lock_is_gone_after_two_missed_beats(
    own_database: Store, tmp_path: Path
) -> None:
    # A process killed (or its host lost) no longer holds its name's lock; one that pauses
    # (a long collection, its database connections broken for a while) still does. On
    # PostgreSQL the lock tells them apart well before the fifteen minutes without a beat.
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=own_database.database.url)
    ctx = build_engine(load_settings(gp.config_path))
    paused = lock_instance(own_database.database, "paused:8080")
    try:
        with own_database.unit_of_work() as uow:
            four_minutes_ago = store_now(ctx.clock, uow) - timedelta(minutes=4)
            for name in ("paused:8080", "killed:8080"):
                uow.instances.seen(
                    name, host="h", pid=1, version="v", at=four_minutes_ago, started=True
                )
            uow.commit()
        for name in ("paused:8080", "killed:8080"):
            raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, name)
        beat(ctx, "alive:8080", started=True)
        with own_database.unit_of_work() as uow:
            states = {
                row.name: state for row, state in instance_states(uow, store_now(ctx.clock, uow))
            }
        if own_database.database.is_postgresql:
            assert states == {
                "alive:8080": "running",
                "killed:8080": "gone",
                "paused:8080": "running",
            }
            assert open_alerts(ctx) == {
                "mailbox-unreachable:paused:8080",
                "instance-gone:killed:8080",
            }
        else:  # a file lock cannot be looked at without taking it: fifteen minutes it is
            assert set(states.values()) == {"running"}
            assert len(open_alerts(ctx)) == 2
    finally:
        paused.release()
        ctx.store.database.dispose()


@pytest.mark.parametrize("own_database", ["postgresql"], indirect=True)
def test_after_an_outage_of_the_database_the_live_instances_are_not_taken_for_gone(
    own_database: Store, tmp_path: Path
) -> None:
    # The database is away for four minutes: every instance's beats stop, and its restart
    # ends every lock of a name. The first beat of b that works again must not take a, whose
    # next beat and lock are a minute away at most, for gone (nor resolve a's own alerts).
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=own_database.database.url)
    clock = Clock()
    ctx = build_engine(load_settings(gp.config_path), clock=clock)
    database = own_database.database
    names = ("a:8080", "b:8080")
    locks = {name: lock_instance(database, name) for name in names}
    beats = {name: Heartbeat(ctx, name) for name in names}
    try:
        for name in names:
            beats[name].beat(started=True)
        raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, "a:8080")
        with database_away(database.url):
            for _ in range(4):
                clock.advance(minutes=1)
                beats["b:8080"].beat()  # fails: the store is unreachable
        assert beats["b:8080"].unreachable_since is not None
        for pool in (ctx.store.database, database):  # their connections ended with it
            pool.engine.dispose()
        # four minutes without beats, in the database server's time too
        with own_database.unit_of_work() as uow:
            uow.session.execute(
                text("UPDATE serving_instances SET last_seen_at = :at"),
                {"at": store_now(ctx.clock, uow) - timedelta(minutes=4)},
            )
            uow.commit()
        clock.advance(minutes=1)
        beats["b:8080"].beat()  # b's first beat that works: a's lock is not back yet
        assert open_alerts(ctx) == {"mailbox-unreachable:a:8080"}
        assert locks["a:8080"].still_held()  # a's next beat takes its lock again
        beats["a:8080"].beat()
        clock.advance(minutes=1)
        beats["b:8080"].beat()
        assert open_alerts(ctx) == {"mailbox-unreachable:a:8080"}
    finally:
        for lock in locks.values():
            lock.release()
        ctx.store.database.dispose()


def test_an_instance_is_judged_gone_by_its_silence_while_the_judge_beats(pair: Pair) -> None:
    # b's host was suspended for twenty minutes (or its database away): a's silence meanwhile
    # says nothing, a may have beaten as little as b. Once b beats again, a has the time an
    # instance has to show it lives; killed meanwhile, it is gone after that.
    ctx = pair.gp
    beats = {name: Heartbeat(ctx, name) for name in ("a:8080", "b:8080")}
    for heartbeat in beats.values():
        heartbeat.beat(started=True)
    raise_for(ctx, AlertKind.MAILBOX_UNREACHABLE, "a:8080")
    pair.clock.advance(minutes=20)
    beats["b:8080"].beat()
    assert open_alerts(ctx) == {"mailbox-unreachable:a:8080"}
    for _ in range(15):
        pair.clock.advance(minutes=1)
        beats["b:8080"].beat()
    assert open_alerts(ctx) == {"mailbox-unreachable:a:8080"}
    pair.clock.advance(seconds=1)
    beats["b:8080"].beat()
    assert open_alerts(ctx) == {"instance-gone:a:8080"}
