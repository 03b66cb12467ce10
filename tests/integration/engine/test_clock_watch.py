"""A serve process whose host clock is off the database server's raises a clock-skew alert."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import prepare_sites
from meldingstjener.engine.clock_watch import check_clock, start_clock_watch
from meldingstjener.engine.context import EngineContext
from meldingstjener.store.tables import AlertRow
from meldingstjener.store.uow import Store


class OffsetClock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def engine_on(store: Store, tmp_path: Path, clock: OffsetClock) -> EngineContext:
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=store.database.url)
    return build_engine(load_settings(gp.config_path), clock=clock)


def open_alerts(ctx: EngineContext) -> list[tuple[str, str]]:
    with ctx.store.unit_of_work() as uow:
        return [(a.dedup_key, a.summary) for a in uow.alerts.list(open_only=True)]


def test_a_clock_off_the_database_servers_raises_an_alert_until_it_is_right(
    own_database: Store, tmp_path: Path
) -> None:
    clock = OffsetClock()
    engine = engine_on(own_database, tmp_path, clock)
    if not engine.store.database.is_postgresql:
        # one host: the database's clock is this host's, nothing to compare and no alert
        assert check_clock(engine, "host-a:8080") is None
        assert open_alerts(engine) == []
        return
    measured = check_clock(engine, "host-a:8080")
    assert measured is not None and abs(measured) < timedelta(seconds=2)
    assert open_alerts(engine) == []

    clock.offset = timedelta(minutes=5)
    measured = check_clock(engine, "host-a:8080")
    assert measured is not None and timedelta(minutes=4) < measured < timedelta(minutes=6)
    [(key, summary)] = open_alerts(engine)
    assert key == "clock-skew:host-a:8080"
    # the limit (10 s) doubled as often as the offset passes it: 10, 20, 40, 80, 160
    assert "host-a:8080 is more than 160 s ahead of the database server's" in summary

    clock.offset = -timedelta(minutes=5)
    check_clock(engine, "host-a:8080")
    [(_, summary)] = open_alerts(engine)
    assert "more than 160 s behind" in summary

    clock.offset = timedelta(0)
    check_clock(engine, "host-a:8080")
    assert open_alerts(engine) == []


def the_alert(ctx: EngineContext, key: str) -> AlertRow | None:
    with ctx.store.unit_of_work() as uow:
        return uow.alerts.by_key(key)


def test_a_clock_that_stays_off_is_told_once_and_counted_at_every_check(
    own_database: Store, tmp_path: Path
) -> None:
    # Every ten minutes a check finds the clock still off: each raise is a webhook call, so a
    # clock off over a weekend was some 300 pager calls. Told once, counted at each check; a
    # clock that drifts on is told again when its offset has doubled; one that was right
    # again and goes off again is told anew.
    clock = OffsetClock()
    engine = engine_on(own_database, tmp_path, clock)
    if not engine.store.database.is_postgresql:
        return  # nothing to compare on SQLite (see above)
    key = "clock-skew:host-d:8080"
    for check in range(120):
        clock.offset = timedelta(seconds=300 + check % 7)  # it moves a little at each check
        check_clock(engine, "host-d:8080")
        if check == 0:
            raised = the_alert(engine, key)
            assert raised is not None
    alert = the_alert(engine, key)
    assert alert is not None and alert.resolved_at is None
    assert (alert.count, alert.changed_at, alert.first_seen) == (
        120,
        raised.changed_at,
        raised.first_seen,
    )
    assert alert.last_seen > raised.last_seen  # still seen: how long it lasts shows

    clock.offset = timedelta(minutes=11)  # twice as far off: news
    check_clock(engine, "host-d:8080")
    worse = the_alert(engine, key)
    assert worse is not None and worse.changed_at is not None and raised.changed_at is not None
    assert worse.changed_at > raised.changed_at and "more than 640 s ahead" in worse.summary

    clock.offset = timedelta(0)
    check_clock(engine, "host-d:8080")
    clock.offset = timedelta(minutes=11)
    check_clock(engine, "host-d:8080")
    again = the_alert(engine, key)
    assert again is not None and again.resolved_at is None and again.changed_at is not None
    assert again.changed_at > worse.changed_at


def test_serve_checks_at_start_and_stops_watching_when_told(
    own_database: Store, tmp_path: Path
) -> None:
    clock = OffsetClock()
    clock.offset = timedelta(minutes=-3)
    engine = engine_on(own_database, tmp_path, clock)
    stop = threading.Event()
    thread = start_clock_watch(engine, "host-b:8080", stop)
    if not engine.store.database.is_postgresql:
        assert thread is None
        return
    assert thread is not None and thread.is_alive()
    assert [key for key, _ in open_alerts(engine)] == ["clock-skew:host-b:8080"]
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_failed_check_does_not_stop_the_start(
    own_database: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from meldingstjener.engine import clock_watch

    engine = engine_on(own_database, tmp_path, OffsetClock())

    def database_away(ctx: EngineContext, instance: str) -> None:
        raise ConnectionError("the database server is restarting")

    monkeypatch.setattr(clock_watch, "check_clock", database_away)
    stop = threading.Event()
    thread = start_clock_watch(engine, "host-c:8080", stop)
    stop.set()
    if not engine.store.database.is_postgresql:
        assert thread is None
        return
    assert thread is not None
    thread.join(timeout=10)
    assert "the database server is restarting" in caplog.text
