"""The messages under way (store/tables.py's ``UNSETTLED``, the partial index /metrics counts
through) are exactly those retention's one rule does not call settled; and the figures'
statements go through their indexes, not through a year of messages.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from statement_plans import planned

from meldingstjener.engine.retention import settled
from meldingstjener.model import InboundStatus, OutboundStatus
from meldingstjener.store.figures import read_figures
from meldingstjener.store.tables import UNSETTLED, UNSETTLED_STATUSES, MessageRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

SETTLED_MESSAGES = 20_000


def test_the_messages_under_way_are_those_not_settled(store: Store) -> None:
    statuses = {"out": list(OutboundStatus), "in": list(InboundStatus)}
    with store.unit_of_work() as uow:
        for direction, of_direction in statuses.items():
            for status in of_direction:
                for msg_type in ("APPREC", "DIALOG_NOTAT", None):
                    uow.session.add(
                        MessageRow(direction=direction, status=status.value, msg_type=msg_type)
                    )
        uow.commit()
    with store.database.engine.connect() as connection:
        every = set(connection.execute(select(MessageRow.id)).scalars())
        done = set(connection.execute(select(MessageRow.id).where(settled())).scalars())
        under_way = {
            (row.id, row.direction, row.status)
            for row in connection.execute(
                select(MessageRow.id, MessageRow.direction, MessageRow.status).where(
                    text(UNSETTLED)
                )
            )
        }
    assert {id_ for id_, _, _ in under_way} == every - done
    named = {(direction, status) for _, direction, status in under_way}
    assert named == {(d, s) for d, of_direction in UNSETTLED_STATUSES.items() for s in of_direction}


def _plans(store: Store) -> list[str]:
    """The plan of each statement :func:`read_figures` runs, as it runs it (its parameters)."""

    def figures() -> None:
        with store.database.engine.connect() as connection:
            read_figures(connection, utcnow())

    return planned(store, figures)[1]


def test_the_figures_go_through_their_indexes(store: Store) -> None:
    """A year's settled messages and a few under way: the count of those under way reads the
    partial index, not the table (PostgreSQL's planner, ANALYZEd, chooses it on its own)."""
    with store.database.engine.begin() as connection:
        connection.execute(
            text(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :count)"
                " INSERT INTO messages (id, direction, status, msg_type, attempts, created_at,"
                " updated_at, status_changed_at)"
                " SELECT 'm-' || n, CASE WHEN n % 2 = 0 THEN 'out' ELSE 'in' END,"
                " CASE WHEN n % 2 = 0 THEN 'apprec-ok' ELSE 'delivered' END,"
                " CASE WHEN n % 2 = 0 THEN 'DIALOG_NOTAT' ELSE 'APPREC' END, 1, :at, :at, :at"
                " FROM g"
            ),
            {"count": SETTLED_MESSAGES, "at": utcnow().replace(tzinfo=None)},
        )
        connection.execute(
            text(
                "UPDATE messages SET status = 'sent', msg_type = 'DIALOG_NOTAT'"
                " WHERE id IN ('m-2', 'm-4', 'm-6')"
            )
        )
        connection.execute(text("ANALYZE"))
    with store.database.engine.connect() as connection:
        figures = read_figures(connection, utcnow())
    assert [(m.direction, m.status, m.count) for m in figures.messages] == [("out", "sent", 3)]
    with store.database.engine.connect() as connection:
        total = connection.execute(select(func.count()).select_from(MessageRow)).scalar_one()
    assert total == SETTLED_MESSAGES

    messages, job_kinds, alerts = _plans(store)  # no job: none of their counts
    assert "ix_messages_unsettled" in messages, messages
    assert "Seq Scan" not in messages, messages
    if store.database.dialect == "sqlite":
        # its "SCAN messages USING INDEX" of the partial index reads the messages under way;
        # PostgreSQL's bitmap heap scan reads the rows the index names (Seq Scan: every row)
        reads = [line for line in messages.splitlines() if "messages" in line]
        assert all("ix_messages_unsettled" in line for line in reads), messages
        # PostgreSQL reads tables as small as these whole
        assert "ix_jobs_kind_due" in job_kinds, job_kinds
        assert "ix_alerts_open" in alerts, alerts
