"""What one database statement costs the server's CPU, by the way it is executed.

A message costs the sending server about 17 statements in 4 transactions and the receiving one
about 8 in 4 (see docs/PERFORMANCE.md), so the client-side CPU of each statement matters.
This prints the CPU time (of this process: Python, the driver and the kernel's share of the
socket calls) per single-row INSERT with two parameters, a text and a timestamp with time
zone, as the hot path's statements have:

- SQLAlchemy ``Connection.execute`` of a ``text()`` statement with typed binds (how the hot
  path's prepared statements are run today);
- SQLAlchemy ``exec_driver_sql`` (the driver's SQL, no compilation);
- psycopg's own cursor with a prepared statement (what is left without SQLAlchemy).

Run: ``python benchmarks/statement_cost.py [--url URL] [--rounds N]``. The table is a temporary
one of the benchmark's own connection: nothing is left behind.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import DateTime, bindparam, create_engine, text

CREATE = (
    "CREATE TEMPORARY TABLE statement_cost (id serial PRIMARY KEY, a varchar(40), at timestamptz)"
)
DRIVER_SQL = "INSERT INTO statement_cost (a, at) VALUES (%(a)s, %(at)s)"
WARM_UP = 200


def _cpu_microseconds(rounds: int, run: Callable[[], Any]) -> float:
    for _ in range(WARM_UP):
        run()
    start = time.process_time()
    for _ in range(rounds):
        run()
    return (time.process_time() - start) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1/postgres")
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    engine = create_engine(args.url)
    statement = text("INSERT INTO statement_cost (a, at) VALUES (:a, :at)").bindparams(
        bindparam("at", type_=DateTime(timezone=True))
    )
    with engine.connect() as connection:
        connection.exec_driver_sql(CREATE)
        driver = connection.connection.dbapi_connection
        assert isinstance(driver, psycopg.Connection), "a PostgreSQL URL with psycopg"
        cursor = driver.cursor()

        def values() -> dict[str, Any]:
            return {"a": "x", "at": datetime.now(UTC)}

        figures = {
            "SQLAlchemy execute(text())": lambda: connection.execute(statement, values()),
            "SQLAlchemy exec_driver_sql": lambda: connection.exec_driver_sql(DRIVER_SQL, values()),
            "psycopg cursor, prepared": lambda: cursor.execute(DRIVER_SQL, values(), prepare=True),
        }
        for name, run in figures.items():
            print(f"{name:30s} {_cpu_microseconds(args.rounds, run):7.1f} µs CPU per statement")
        connection.rollback()
    engine.dispose()


if __name__ == "__main__":
    main()
