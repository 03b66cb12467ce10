"""The plans of the SELECTs a piece of code runs, as it runs them (its statements and their
parameters), from SQLite's EXPLAIN QUERY PLAN or PostgreSQL's EXPLAIN: a test reads whether an
index is used by the code's own statements, not by a copy of their SQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import event

from meldingstjener.store.uow import Store

T = TypeVar("T")


def planned(store: Store, run: Callable[[], T]) -> tuple[T, list[str]]:
    """What ``run()`` returns, and the plan of each SELECT it ran on the store's engine."""
    ran: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith(("SELECT", "WITH")):  # not a connection's own set-up
            ran.append((statement, parameters))

    engine = store.database.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        found = run()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    explain = "EXPLAIN QUERY PLAN " if store.database.dialect == "sqlite" else "EXPLAIN "
    plans = []
    with engine.connect() as connection:
        for statement, parameters in ran:
            rows = connection.exec_driver_sql(explain + statement, parameters)
            plans.append("\n".join(str(row[-1]) for row in rows))
    return found, plans
