"""Jobs nobody runs: every heartbeat looks at the job due longest of those free for a claim and
at the claim held longest, and raises jobs-overdue when no worker has taken a job for five
minutes while jobs are ten minutes late, or one claim has been held for an hour; a beat that
sees both move on resolves it. A queue that drains, however long, is no alarm."""

from __future__ import annotations

from datetime import timedelta

from engine_pair import Pair
from sqlalchemy import event, text

from meldingstjener.devsites import dialog_note
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.instances import beat, store_now
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.register_sync import REGISTER_SYNC
from meldingstjener.engine.worker import Worker
from meldingstjener.store.tables import AlertRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

KEY = "jobs-overdue:global"


def _overdue(ctx: EngineContext) -> AlertRow | None:
    """The jobs-overdue alert while it is open."""
    with ctx.store.unit_of_work() as uow:
        found = uow.alerts.by_key(KEY)
        return found if found is not None and found.resolved_at is None else None


def test_a_send_no_worker_takes_raises_jobs_overdue_until_a_worker_runs(pair: Pair) -> None:
    # Every worker hangs (a failover left their connections hanging): the message stays
    # accepted, and nothing but the heartbeat, in a thread of its own, can tell.
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "Hei"), actor="t")
    for _ in range(9):
        pair.clock.advance(minutes=1)
        beat(ctx, "a:8080")
        assert _overdue(ctx) is None  # not yet ten minutes
    pair.clock.advance(minutes=1)
    beat(ctx, "a:8080")
    alert = _overdue(ctx)
    assert alert is not None and alert.severity == "error"
    assert "no worker has taken one for 5 minutes" in alert.summary
    for _ in range(3):  # still so: counted, not told again (each raise is a webhook call)
        pair.clock.advance(minutes=1)
        beat(ctx, "a:8080")
    alert = _overdue(ctx)
    assert alert is not None and (alert.count, alert.changed_at) == (4, alert.first_seen)
    assert Worker(ctx, "a:8080/0").run_once() >= 1  # a worker runs again
    beat(ctx, "a:8080")
    assert _overdue(ctx) is None


def test_a_queue_that_drains_slowly_is_no_alarm(pair: Pair) -> None:
    # Thirty messages submitted at once to a partner that does not answer, one worker that
    # takes two jobs a minute: the last waits far longer than ten minutes, but the workers
    # work. (Age alone raised jobs-overdue here, again and again as the job it named changed.)
    ctx = pair.gp
    pair.network.down.add(pair.hospital_site.endpoint)
    beat(ctx, "a:8080", started=True)
    for _ in range(30):
        submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "Hei"), actor="t")
    for _ in range(20):
        pair.clock.advance(minutes=1)
        assert Worker(ctx, "a:8080/0", batch=2).run_once() == 2
        beat(ctx, "a:8080")
        assert _overdue(ctx) is None


def test_a_claim_held_an_hour_raises_jobs_overdue(pair: Pair) -> None:
    # A worker hangs inside a job: its lease keeper (a thread of its own) keeps the claim
    # alive, so the job never looks free. An hour of that is far beyond any job.
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule("inbox-check", ctx.clock(), dedup_key="inbox-check")
        [job] = uow.jobs.claim_due("a:8080/3", now=ctx.clock(), limit=1, lease=timedelta(minutes=2))
        uow.commit()
    for _ in range(60):  # the keeper extends the claim, the beats see it held
        with ctx.store.unit_of_work() as uow:
            assert uow.jobs.extend_claim(
                job, worker="a:8080/3", until=ctx.clock() + timedelta(minutes=2)
            )
            uow.commit()
        beat(ctx, "a:8080")
        assert _overdue(ctx) is None
        pair.clock.advance(minutes=1)
    beat(ctx, "a:8080")  # an hour since the first beat that saw it held
    alert = _overdue(ctx)
    assert alert is not None
    assert "Worker a:8080/3 has held a job for more than an hour" in alert.summary
    with ctx.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)
        uow.commit()
    beat(ctx, "a:8080")
    assert _overdue(ctx) is None


def test_jobs_waiting_behind_a_long_send_are_no_alarm(pair: Pair) -> None:
    # The one worker uploads a large message for twenty minutes (its keeper extends the
    # claim) while other sends wait behind it: the queue does not move, but a worker works.
    # "No serve process is running jobs, restart them" would have the upload cut off.
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule("inbox-check", ctx.clock(), dedup_key="inbox-check")
        [job] = uow.jobs.claim_due("a:8080/0", now=ctx.clock(), limit=1, lease=timedelta(minutes=2))
        uow.commit()
    submit(ctx, dialog_note(pair.gp_site, pair.hospital_site, "Venter"), actor="t")
    for _ in range(20):
        pair.clock.advance(minutes=1)
        with ctx.store.unit_of_work() as uow:
            assert uow.jobs.extend_claim(
                job, worker="a:8080/0", until=ctx.clock() + timedelta(minutes=2)
            )
            uow.commit()
        beat(ctx, "a:8080")
        assert _overdue(ctx) is None


def test_a_job_that_waited_long_and_runs_briefly_is_not_held_too_long(pair: Pair) -> None:
    # A job that waited an hour past its due time (a queue, a night without a server) is
    # taken and runs a few seconds: its claim is judged by how long it has been held, not by
    # the job's due time.
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    for _ in range(60):  # the instance has served an hour
        pair.clock.advance(minutes=1)
        beat(ctx, "a:8080")
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule(
            "inbox-check", ctx.clock() - timedelta(minutes=65), dedup_key="inbox-check"
        )
        [job] = uow.jobs.claim_due("a:8080/0", now=ctx.clock(), limit=1, lease=timedelta(minutes=2))
        uow.commit()
    beat(ctx, "a:8080")  # while it runs
    assert _overdue(ctx) is None
    with ctx.store.unit_of_work() as uow:
        uow.jobs.finish(job.id)
        uow.commit()
    pair.clock.advance(minutes=1)
    beat(ctx, "a:8080")
    assert _overdue(ctx) is None


def test_jobs_left_while_no_server_ran_are_not_overdue_before_the_workers_had_their_turn(
    pair: Pair,
) -> None:
    # A store left alone overnight has every job overdue at the start: that is not a fault.
    ctx = pair.gp
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule("inbox-check", ctx.clock() - timedelta(days=1), dedup_key="inbox-check")
        uow.jobs.schedule("certificate-check", ctx.clock() - timedelta(days=1))
        [held] = uow.jobs.claim_due(
            "a:8080/0", now=ctx.clock(), limit=1, lease=timedelta(minutes=2)
        )
        uow.commit()
    beat(ctx, "a:8080", started=True)
    pair.clock.advance(minutes=9)
    with ctx.store.unit_of_work() as uow:  # the first ran (a day late), and then no worker
        uow.jobs.finish(held.id)
        uow.commit()
    beat(ctx, "a:8080")
    assert _overdue(ctx) is None
    pair.clock.advance(minutes=1)
    beat(ctx, "a:8080")
    alert = _overdue(ctx)
    assert alert is not None  # ten minutes of serving, and the second job still waits
    assert "no worker has taken one for 5 minutes" in alert.summary


def test_the_register_sync_is_left_to_its_own_alert(pair: Pair) -> None:
    # A server without [address_register] url does not claim it, and ar sync by hand holds
    # it as long as it runs: register-sync-failed speaks for it.
    ctx = pair.gp
    beat(ctx, "a:8080", started=True)
    with ctx.store.unit_of_work() as uow:
        uow.jobs.schedule(REGISTER_SYNC, ctx.clock(), dedup_key=REGISTER_SYNC)
        uow.commit()
    pair.clock.advance(hours=2)
    beat(ctx, "a:8080")
    assert _overdue(ctx) is None


def test_the_check_reads_the_due_times_index(own_database: Store) -> None:
    # One statement per beat and instance: along ix_jobs_due, not through the whole table
    # (which holds a job per message waiting for its Acknowledgment or AppRec).
    database = own_database.database
    with own_database.unit_of_work() as uow:
        now = store_now(utcnow, uow)
        for number in range(2000):  # due later, as most of them are
            uow.jobs.schedule("ack-timeout", now + timedelta(minutes=number))
        uow.commit()
    with database.engine.begin() as connection:
        connection.execute(text("ANALYZE jobs"))
    statements: list[tuple[str, object]] = []

    def seen(_conn: object, _cursor: object, statement: str, params: object, *_: object) -> None:
        statements.append((statement, params))

    event.listen(database.engine, "before_cursor_execute", seen)
    try:
        with own_database.unit_of_work() as uow:
            before = now - timedelta(minutes=1)  # all due later, as most of them are
            free = uow.jobs.oldest_free(now=before, skip_kind=REGISTER_SYNC)
            held = uow.jobs.oldest_held(now=before, skip_kind=REGISTER_SYNC)
    finally:
        event.remove(database.engine, "before_cursor_execute", seen)
    assert free is None and held is None
    queries = [(s, p) for s, p in statements if "FROM jobs" in s]
    assert len(queries) == 2
    explain = "EXPLAIN " if database.is_postgresql else "EXPLAIN QUERY PLAN "
    for statement, parameters in queries:
        with database.engine.connect() as connection:
            plan = " ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(explain + statement, parameters)  # type: ignore[arg-type]
            )
        assert "ix_jobs_due" in plan, plan
        assert "Seq Scan" not in plan and "SCAN jobs" not in plan, plan
