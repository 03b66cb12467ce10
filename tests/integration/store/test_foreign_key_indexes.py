"""Every foreign key is the first column of an index: deleting a message (the purge) sets or
cascades along each of them, once per message, and reading a message's rows by it must not read
a whole table. The alerts were the one table without (migration 0023)."""

from __future__ import annotations

import warnings

from sqlalchemy import inspect, select, text

from meldingstjener.store.tables import AlertRow
from meldingstjener.store.uow import Store

MESSAGES = 2000


def test_every_foreign_key_is_the_first_column_of_an_index(store: Store) -> None:
    schema = inspect(store.database.engine)
    checked = 0
    for table in schema.get_table_names():
        with warnings.catch_warnings():
            # SQLite's reflection cannot read an index of an expression (``lower(msg_id)``,
            # migration 0033), which leads with no column: no foreign key's index
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression")
            indexes = schema.get_indexes(table)
        leading = {index["column_names"][0] for index in indexes if index["column_names"]}
        unique = {c["column_names"][0] for c in schema.get_unique_constraints(table)}
        primary = schema.get_pk_constraint(table)["constrained_columns"][:1]
        for key in schema.get_foreign_keys(table):
            assert key["constrained_columns"][0] in leading | unique | set(primary), (table, key)
            checked += 1
    assert checked >= 6  # alerts, content_keys, jobs, message_events, receipts, deliveries


def test_a_messages_alerts_are_read_by_their_index(store: Store) -> None:
    database = store.database
    ids = [{"m": f"m{number}"} for number in range(MESSAGES)]
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, attempts, created_at, updated_at, "
                "status_changed_at) VALUES (:m, 'out', 'not-delivered', 1, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            ids,
        )
        connection.execute(
            text(
                "INSERT INTO alerts (kind, severity, dedup_key, message_id, summary, first_seen, "
                "last_seen, count) VALUES ('not-delivered', 'error', 'not-delivered:' || :m, :m, "
                "'s', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)"
            ),
            ids,
        )
        connection.execute(text("ANALYZE alerts" if database.is_postgresql else "ANALYZE"))
    with store.unit_of_work() as uow:
        assert [alert.dedup_key for alert in uow.alerts.for_message("m777")] == [
            "not-delivered:m777"
        ]
    query = select(AlertRow).where(AlertRow.message_id == "m777")
    compiled = query.compile(database.engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN " if database.is_postgresql else "EXPLAIN QUERY PLAN "
    with database.engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql(explain + str(compiled)))
    assert "ix_alerts_message" in plan, plan
    assert "Seq Scan" not in plan and "SCAN alerts" not in plan, plan
