"""A database that goes away under a serving worker: told once when it goes and once when it
is back, the claims spaced out meanwhile (bounded), instead of a traceback at every poll. A
fault that is no outage keeps its traceback, once a minute."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from engine_pair import Clock
from outage import database_away
from sqlalchemy import text

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import prepare_sites
from meldingstjener.engine.worker import Worker
from meldingstjener.store.uow import Store

ON_POSTGRESQL = pytest.mark.parametrize("own_database", ["postgresql"], indirect=True)


class Ticks:
    """A monotonic clock the test moves: what the log says "once a minute" is judged by."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "meldingstjener.engine.worker"]


@ON_POSTGRESQL
def test_an_outage_is_told_once_and_its_end_once_with_claims_spaced_out(
    own_database: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = own_database.database
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=database.url)
    ctx = build_engine(load_settings(gp.config_path), clock=Clock())
    worker = Worker(ctx, "a:8080/run/0", batch=4, lease=timedelta(minutes=2), poll_interval=0.2)
    worker.failures.monotonic = ticks = Ticks()
    caplog.set_level(logging.INFO)
    try:
        assert worker.claim_turn() == (0, 0.2)
        pauses = []
        with database_away(database.url):
            for _ in range(40):  # 40 polls: what 8 s of a 0.2 s poll made 40 tracebacks of
                ran, pause = worker.claim_turn()
                assert ran == 0
                pauses.append(pause)
                ticks.now += pause
        said = _records(caplog)
        assert len(said) == 1 and said[0].levelno == logging.WARNING
        assert "the database cannot be reached" in said[0].getMessage()
        assert said[0].exc_info is None and "Traceback" not in caplog.text
        assert pauses[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0] and max(pauses) == 10.0
        caplog.clear()
        assert worker.claim_turn() == (0, 0.2)  # back: the usual poll again
        worker.claim_turn()
        said = _records(caplog)
        assert [r.getMessage().split(": ", 1)[1] for r in said] == [
            f"the database answers again after {ticks.now:.0f} s"
        ]
    finally:
        ctx.store.database.dispose()


@ON_POSTGRESQL
def test_a_fault_that_is_no_outage_keeps_its_traceback_once_a_minute(
    own_database: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = own_database.database
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=database.url)
    ctx = build_engine(load_settings(gp.config_path), clock=Clock())
    worker = Worker(ctx, "a:8080/run/0", batch=4, lease=timedelta(minutes=2), poll_interval=0.2)
    worker.failures.monotonic = ticks = Ticks()
    with database.engine.begin() as connection:  # a store the code does not fit: a fault
        connection.execute(text("ALTER TABLE jobs RENAME TO jobs_elsewhere"))
    caplog.set_level(logging.INFO)
    try:
        for _ in range(301):  # a minute of polls
            assert worker.claim_turn() == (0, 0.2)  # no outage: the usual poll
            ticks.now += 0.2
        said = _records(caplog)
        assert [r.levelno for r in said] == [logging.ERROR, logging.ERROR]
        assert "ProgrammingError" in said[0].getMessage() and "raised through" in caplog.text
        assert "(299 more since the last one told)" in said[1].getMessage()
    finally:
        ctx.store.database.dispose()


class _Rounds(threading.Event):
    """The stop event of a dispatcher's run loop, which the test's script sets: its wait
    between rounds returns at once (the rounds are driven, not waited for)."""

    def wait(self, timeout: float | None = None) -> bool:
        return self.is_set()


@ON_POSTGRESQL
def test_the_webhook_rounds_tell_each_outage_once_not_each_round(
    own_database: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The real run loop: an outage is told once, its end once, and a second outage (within
    # ten minutes of the first) is told again: the loop's state was never told a round worked.
    from meldingstjener.config import WebhookSettings
    from meldingstjener.integration import webhooks

    database = own_database.database
    gp, _ = prepare_sites(tmp_path / "sites", gp_database_url=database.url)
    ctx = build_engine(load_settings(gp.config_path), clock=Clock())
    dispatcher = webhooks.WebhookDispatcher(ctx, WebhookSettings())
    stop = _Rounds()
    script = ["away"] * 5 + ["back"] + ["away"] * 5 + ["back"]
    real_run_once = dispatcher.run_once

    def scripted_round() -> int:
        step = script.pop(0)
        if not script:
            stop.set()
        if step == "back":
            return real_run_once()
        with database_away(database.url):
            return real_run_once()

    dispatcher.run_once = scripted_round  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    try:
        dispatcher.run(stop)
    finally:
        ctx.store.database.dispose()
    said = [r.getMessage() for r in caplog.records if r.name == webhooks.log.name]
    assert len(said) == 4, said
    assert ["cannot be reached" in m for m in said] == [True, False, True, False]
    assert all("answers again" in m for m in said[1::2])
    assert "Traceback" not in caplog.text and "raised through" not in caplog.text
