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
    assert "host-a:8080 is 300 s ahead of the database server's" in summary

    clock.offset = -timedelta(minutes=5)
    check_clock(engine, "host-a:8080")
    [(_, summary)] = open_alerts(engine)
    assert "300 s behind" in summary

    clock.offset = timedelta(0)
    check_clock(engine, "host-a:8080")
    assert open_alerts(engine) == []


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
