"""GetMessages, the poll every EPJ makes every few seconds: answered from an index of the unread
messages alone, whatever the number of messages received and read before.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from api_sites import ApiPair
from sqlalchemy import Connection, Engine, event, text

from meldingstjener.devsites import HOSPITAL_SERVICE_HER
from meldingstjener.store.audit import AuditQuery, query

READ_BEFORE = 20_000  # received and read long ago: what a server holds after some months


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def _statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements sent to the database within the block, with their parameters, as the
    driver got them."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _seed_read_messages(engine: Engine, count: int) -> None:
    """``count`` received messages to our HER-id, all read: rows the poll must not read."""
    numbers = (
        "SELECT generate_series(1, :count) AS n"
        if engine.dialect.name == "postgresql"
        else "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :count) "
        "SELECT n FROM g"
    )
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, direction, status, from_her_id, to_her_id, msg_type,"
                " attempts, read_at, created_at, updated_at, status_changed_at)"
                " SELECT 'seeded-' || n, 'in', 'delivered', '8100001', :her_id, 'DIALOG_NOTAT',"
                " 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP"
                f" FROM ({numbers}) AS numbers"
            ),
            {"count": count, "her_id": HOSPITAL_SERVICE_HER},
        )
        connection.execute(
            text("ANALYZE messages" if engine.dialect.name == "postgresql" else "ANALYZE")
        )


def test_the_unread_poll_reads_the_unread_index_not_the_table(api_pair: ApiPair) -> None:
    # The poll's own statement, as the route sends it, is asked for its plan: on a table of
    # messages all read, PostgreSQL scanned all of them. Asked for its generic plan too (the
    # one a statement psycopg prepared after five runs may get): planned for any bound value of
    # "direction", it could not use a partial index.
    engine = api_pair.pair.hospital.store.database.engine
    _seed_read_messages(engine, READ_BEFORE)
    with _statements(engine) as seen:
        polled = api_pair.hospital_http.get(
            "/Messages",
            params={"ReceiverHerIds": HOSPITAL_SERVICE_HER},
            headers=_bearer(api_pair.hospital_key),
        )
    assert polled.status_code == 200 and polled.json() == [], polled.text
    [(poll, parameters)] = [(s, p) for s, p in seen if "read_at IS NULL" in s]
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            plan = _plan(connection.exec_driver_sql("EXPLAIN QUERY PLAN " + poll, parameters))
        else:
            plan = _plan(connection.exec_driver_sql("EXPLAIN " + poll, parameters))
            assert "ix_messages_unread" in plan, plan
            plan = _generic_plan(connection, poll, parameters)
    assert "ix_messages_unread" in plan, plan


def _plan(lines: Any) -> str:
    return "\n".join(str(line[-1]) for line in lines)


def _generic_plan(connection: Connection, statement: str, parameters: dict[str, Any]) -> str:
    """PostgreSQL's plan of ``statement`` (psycopg's ``%(name)s`` placeholders) for any values
    of its parameters: the plan a prepared statement may be given after its fifth run."""
    names: list[str] = []

    def numbered(found: re.Match[str]) -> str:
        if found[1] not in names:
            names.append(found[1])
        return f"${names.index(found[1]) + 1}"

    connection.exec_driver_sql("PREPARE poll AS " + re.sub(r"%\((\w+)\)s", numbered, statement))
    connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    # literals: EXECUTE's arguments are not typed by the statement prepared (ids and numbers)
    values = ", ".join(
        str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"
        for value in (parameters[name] for name in names)
    )
    return _plan(connection.exec_driver_sql(f"EXPLAIN EXECUTE poll({values})"))


def _receive(api_pair: ApiPair, count: int) -> list[str]:
    """``count`` messages from the GP received by the hospital, each a second after the one
    before; their ids at the hospital, oldest first."""
    pair, ids = api_pair.pair, []
    for number in range(count):
        sent = api_pair.post_note(f"Notat {number}")
        assert sent.status_code == 201, sent.text
        pair.run()
        pair.clock.advance(seconds=1)
        known = {m.id for m in pair.inbound_messages(pair.hospital)}
        [new] = known - set(ids)
        ids.append(new)
    return ids


def test_the_contracts_own_spellings_of_its_parameters_are_taken(api_pair: ApiPair) -> None:
    # The contract's example OrderBy is "1" (its description: 1 = Ascending, 2 = Descending),
    # and BusinessDocumentId has minLength 0 with default null: "1" was refused 400, and an
    # empty BusinessDocumentId matched no message instead of being no filter.
    ids = _receive(api_pair, 2)

    def listed(**params: str) -> list[str]:
        answer = api_pair.hospital_http.get(
            "/Messages",
            params={"ReceiverHerIds": HOSPITAL_SERVICE_HER, **params},
            headers=_bearer(api_pair.hospital_key),
        )
        assert answer.status_code == 200, (params, answer.text)
        return [m["id"] for m in answer.json()]

    assert listed(OrderBy="1") == listed(OrderBy="Ascending") == ids
    assert listed(OrderBy="2") == listed(OrderBy="Descending") == ids[::-1]
    assert listed(BusinessDocumentId="") == ids
    msg_id = api_pair.pair.message(api_pair.pair.hospital, ids[0]).msg_id
    assert msg_id and listed(BusinessDocumentId=msg_id) == ids[:1]
    wrong = api_pair.hospital_http.get(
        "/Messages",
        params={"ReceiverHerIds": HOSPITAL_SERVICE_HER, "OrderBy": "3"},
        headers=_bearer(api_pair.hospital_key),
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid-input"


def test_a_listing_and_its_audit_rows_are_one_transaction(api_pair: ApiPair) -> None:
    # Each message listed was audited in a transaction of its own: up to 100 commits a poll.
    ids = _receive(api_pair, 3)
    engine = api_pair.pair.hospital.store.database.engine
    begun = itertools.count(1)
    audited_in: list[int] = []  # the transaction of each audit row written

    def began(connection: Connection) -> None:
        connection.info["transaction"] = next(begun)

    def executing(connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO audit_log"):
            audited_in.append(connection.info["transaction"])

    event.listen(engine, "begin", began)
    event.listen(engine, "before_cursor_execute", executing)
    try:
        answer = api_pair.hospital_http.get(
            "/Messages",
            params={"ReceiverHerIds": HOSPITAL_SERVICE_HER},
            headers=_bearer(api_pair.hospital_key),
        )
    finally:
        event.remove(engine, "begin", began)
        event.remove(engine, "before_cursor_execute", executing)
    assert [m["id"] for m in answer.json()] == ids
    assert len(audited_in) == 3 and len(set(audited_in)) == 1, audited_in
    audited = query(api_pair.pair.hospital.store, AuditQuery(client="dips"))
    listings = [row["messageId"] for row in audited if row["action"] == "list-messages"]
    assert sorted(listings) == sorted(ids)
