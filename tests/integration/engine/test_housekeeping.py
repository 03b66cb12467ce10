"""The daily payload sweep as the workers run it: scheduled once, run when due, rescheduled with
what it swept; and the ``sweep`` command an operator runs."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

from engine_pair import Pair
from sqlalchemy import select
from typer.testing import CliRunner

import meldingstjener.cli.store_cmds  # noqa: F401  (registers the commands)
from meldingstjener.cli.app import app
from meldingstjener.engine import housekeeping
from meldingstjener.store.tables import EventRow, JobRow


def sweep_job(pair: Pair) -> JobRow:
    with pair.gp.store.unit_of_work() as uow:
        [job] = uow.session.scalars(select(JobRow).where(JobRow.kind == "payload-sweep"))
        return job


def orphan_events(pair: Pair) -> list[EventRow]:
    with pair.gp.store.unit_of_work() as uow:
        return list(uow.session.scalars(select(EventRow).where(EventRow.code == "orphan-files")))


def test_the_sweep_job_removes_orphans_and_comes_back_daily(pair: Pair) -> None:
    with pair.gp.store.unit_of_work() as uow:
        housekeeping.schedule_sweep(pair.gp, uow)
        uow.commit()
    first_due = sweep_job(pair).due_at
    pair.clock.advance(minutes=5)
    with pair.gp.store.unit_of_work() as uow:  # a restart: the scheduled sweep stays as it is
        housekeeping.schedule_sweep(pair.gp, uow)
        uow.commit()
    assert sweep_job(pair).due_at == first_due
    orphan = pair.gp.store.payloads.put(b"what a crash before the commit left")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(pair.gp.store.payloads.path(orphan.key), (two_days_ago, two_days_ago))

    pair.run()
    assert pair.gp.store.payloads.exists(orphan.key)  # not due yet
    pair.clock.advance(minutes=6)
    pair.run()
    assert not pair.gp.store.payloads.exists(orphan.key)
    job = sweep_job(pair)
    assert job.data is not None and job.data["swept_until"] > two_days_ago
    assert job.due_at - pair.clock() == housekeeping.EVERY
    [event] = orphan_events(pair)
    assert event.message_id is None and event.detail is not None
    assert "removed 1 payload file(s)" in event.detail


def test_the_sweep_command_counts_then_removes(pair: Pair) -> None:
    orphan = pair.gp.store.payloads.put(b"left by a crash")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(pair.gp.store.payloads.path(orphan.key), (two_days_ago, two_days_ago))
    config = str(pair.gp_site.config_path)

    dry = CliRunner().invoke(app, ["--config", config, "sweep", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output) == {
        "examined": 1,
        "orphans": 1,
        "orphan_bytes": len(b"left by a crash"),
        "unfinished_spools": 0,
        "removed": 0,
        "moved": 0,
    }
    assert pair.gp.store.payloads.exists(orphan.key)
    done = CliRunner().invoke(app, ["--config", config, "sweep"])
    assert done.exit_code == 0, done.output
    assert "removed 1 that nothing refers to" in done.output
    assert not pair.gp.store.payloads.exists(orphan.key)
    assert [e.actor for e in orphan_events(pair)] == ["cli:sweep", "cli:sweep"]
    refused = CliRunner().invoke(app, ["--config", config, "sweep", "--older-than", "0.5"])
    assert refused.exit_code != 0  # less than an hour could take files still being committed


def test_a_payload_delete_job_of_an_earlier_version_still_deletes_its_file(pair: Pair) -> None:
    # An earlier version queued a purge's delete as {"key": key}; today's name a list of keys.
    # A job left queued across the upgrade must still delete its (decrypted) file.
    old = pair.gp.store.payloads.put(b"a purged message, queued before the upgrade")
    new = [pair.gp.store.payloads.put(b"purged payload"), pair.gp.store.payloads.put(b"wire")]
    with pair.gp.store.unit_of_work() as uow:
        uow.jobs.schedule(housekeeping.PAYLOAD_DELETE, pair.clock(), data={"key": old.key})
        housekeeping.schedule_payload_delete(uow, *(p.key for p in new), now=pair.clock())
        uow.commit()
    pair.clock.advance(seconds=(housekeeping.DELETE_CHECK_AFTER + timedelta(minutes=1)).seconds)
    pair.run()
    for key in (old.key, *(p.key for p in new)):
        assert not pair.gp.store.payloads.exists(key)
    with pair.gp.store.unit_of_work() as uow:
        left = uow.session.scalars(select(JobRow).where(JobRow.kind == "payload-delete"))
        assert list(left) == []
