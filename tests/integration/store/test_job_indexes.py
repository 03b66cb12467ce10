"""A message's jobs are found by an index: every Acknowledgment, AppRec, MessageError and give-up
deletes them, under the message's row lock, and the jobs table holds an apprec-deadline job for
every message awaiting its AppRec (a day's worth)."""

from __future__ import annotations

from sqlalchemy import event, text

from meldingstjener.store.uow import Store

MESSAGES = 2000


def _awaiting_apprecs(store: Store) -> None:
    ids = [{"m": f"m{number}"} for number in range(MESSAGES)]
    with store.database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, attempts, created_at, updated_at, "
                "status_changed_at) VALUES (:m, 'out', 'transport-acknowledged', 1, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            ids,
        )
        connection.execute(
            text(
                "INSERT INTO jobs (kind, dedup_key, message_id, due_at, attempts, crashes, "
                "created_at) VALUES ('apprec-deadline', 'apprec-deadline:' || :m, :m, "
                "CURRENT_TIMESTAMP, 0, 0, CURRENT_TIMESTAMP)"
            ),
            ids,
        )
        connection.execute(text("ANALYZE jobs" if store.database.is_postgresql else "ANALYZE"))


def test_cancelling_a_messages_jobs_reads_their_index_not_the_table(store: Store) -> None:
    database = store.database
    _awaiting_apprecs(store)
    statements: list[tuple[str, object]] = []

    def seen(_conn: object, _cursor: object, statement: str, params: object, *_: object) -> None:
        statements.append((statement, params))

    event.listen(database.engine, "before_cursor_execute", seen)
    try:
        with store.unit_of_work() as uow:
            uow.jobs.cancel_for_message("m777")
            uow.jobs.cancel_for_message("m778", "apprec-deadline")
            # rolled back: the plans are asked for below, on the table as it was
    finally:
        event.remove(database.engine, "before_cursor_execute", seen)
    cancels = [(s, p) for s, p in statements if s.startswith("DELETE FROM jobs")]
    assert len(cancels) == 2
    explain = "EXPLAIN " if database.is_postgresql else "EXPLAIN QUERY PLAN "
    for statement, parameters in cancels:
        with database.engine.connect() as connection:
            plan = " ".join(
                str(row[-1])
                for row in connection.exec_driver_sql(explain + statement, parameters)  # type: ignore[arg-type]
            )
        assert "ix_jobs_message" in plan, plan
        assert "Seq Scan" not in plan and "SCAN jobs" not in plan, plan
