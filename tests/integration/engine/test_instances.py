"""The serve processes on one store and their heartbeats: an instance that stopped or is gone
has its own alerts (clock-skew, mailbox-unreachable) resolved, and is forgotten a week later;
``serve`` records its start, its beats and its stop; ``instances`` lists them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from engine_pair import Pair
from typer.testing import CliRunner

import meldingstjener.cli.alerts_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.devsites import RunningServer
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.instances import beat, stopped


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
    assert open_alerts(ctx) == {"clock-skew:a:8080"}  # a's own alert is a's to resolve
    assert instance_names(ctx) == ["a:8080", "b:8080"]
    pair.clock.advance(days=7)
    beat(ctx, "a:8080")
    assert instance_names(ctx) == ["a:8080"]  # forgotten


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


def test_serve_records_its_start_and_its_stop(pair: Pair, tmp_path: Path) -> None:
    server = RunningServer(pair.gp_site, tmp_path / "gp.log").start()
    assert server.process is not None
    pid = server.process.pid
    try:
        runner = CliRunner()
        result = runner.invoke(
            app, ["--config", str(pair.gp_site.config_path), "instances", "--json"]
        )
        assert result.exit_code == 0, result.output
        [shown] = [json.loads(line) for line in result.output.splitlines()]
        assert shown["name"].endswith(f":{pair.gp_site.port}")
        assert (shown["state"], shown["pid"], shown["stopped_at"]) == ("running", pid, None)
    finally:
        server.stop()
    with pair.gp.store.unit_of_work() as uow:
        [row] = uow.instances.all()
        assert row.stopped_at is not None and row.last_seen_at - row.started_at < timedelta(
            minutes=5
        )
