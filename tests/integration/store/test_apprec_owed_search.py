"""The received messages owed an AppRec (delivered to the EPJ, not answered, not an AppRec):
the ``apprec-owed`` check's count and the log's search for them (``GET /api/log?apprec_owed``)
find exactly those, and read them through the partial index ``ix_messages_unsettled``, not a
year of settled messages (of which received AppRecs, ``delivered`` for ever, are half)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text
from statement_plans import planned

from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import DeliveredBetween, LogFilter, Store

SETTLED_MESSAGES = 20_000
HER_ID = "8200002"


def _fill(store: Store) -> None:
    """A year of settled messages (half received AppRecs, delivered; half answered notes), and
    a few under way: notes delivered long ago and lately, one delivered to another HER-id, and
    others in the partial index that owe nothing (waiting for the EPJ, on their way out)."""
    now = utcnow().replace(tzinfo=None)
    with store.database.engine.begin() as connection:
        connection.execute(
            text(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :count)"
                " INSERT INTO messages (id, direction, status, msg_type, to_her_id, attempts,"
                " created_at, updated_at, status_changed_at)"
                " SELECT 'm-' || n, 'in', CASE WHEN n % 2 = 0 THEN 'apprec-sent' ELSE 'delivered'"
                " END, CASE WHEN n % 2 = 0 THEN 'DIALOG_NOTAT' ELSE 'APPREC' END, :her_id, 1,"
                " :at, :at, :at FROM g"
            ),
            {"count": SETTLED_MESSAGES, "at": now - timedelta(days=200), "her_id": HER_ID},
        )
        rows = [
            ("old-1", "in", "delivered", "DIALOG_NOTAT", HER_ID, timedelta(days=3)),
            ("old-2", "in", "delivered", None, HER_ID, timedelta(days=2)),
            ("other", "in", "delivered", "DIALOG_NOTAT", "8200003", timedelta(days=2)),
            ("young", "in", "delivered", "DIALOG_NOTAT", HER_ID, timedelta(hours=1)),
            # owed, but delivered before the window: an AppRec owed that long is no news
            ("ancient", "in", "delivered", "DIALOG_NOTAT", HER_ID, timedelta(days=16)),
            ("waiting", "in", "acknowledged", "DIALOG_NOTAT", HER_ID, timedelta(days=3)),
            ("sending", "out", "sent", "DIALOG_NOTAT", HER_ID, timedelta(days=3)),
        ]
        for id_, direction, status, msg_type, her_id, age in rows:
            connection.execute(
                text(
                    "INSERT INTO messages (id, direction, status, msg_type, to_her_id, attempts,"
                    " created_at, updated_at, status_changed_at)"
                    " VALUES (:id, :direction, :status, :msg_type, :her_id, 1, :made, :at, :at)"
                ),
                {
                    "id": id_,
                    "direction": direction,
                    "status": status,
                    "msg_type": msg_type,
                    "her_id": her_id,
                    "made": now - age - timedelta(hours=1),
                    "at": now - age,
                },
            )
        connection.execute(text("ANALYZE"))


def _plans(store: Store, search: Any) -> tuple[Any, list[str]]:
    """What ``search(uow)`` returns, and the plan of each statement it ran, as it ran it."""

    def in_a_unit_of_work() -> Any:
        with store.unit_of_work() as uow:
            return search(uow)

    return planned(store, in_a_unit_of_work)


def _through_the_index(store: Store, plan: str) -> None:
    assert "ix_messages_unsettled" in plan, plan
    assert "Seq Scan" not in plan, plan
    if store.database.dialect == "sqlite":
        reads = [line for line in plan.splitlines() if "messages" in line]
        assert all("ix_messages_unsettled" in line for line in reads), plan


def test_the_owed_are_counted_and_listed_through_the_partial_index(store: Store) -> None:
    _fill(store)
    before = utcnow() - timedelta(hours=24)
    window = DeliveredBetween(since=before - timedelta(days=14), before=before)

    owed, [plan] = _plans(store, lambda uow: uow.messages.apprec_owed(window))
    assert [(her_id, count) for her_id, count, _ in owed] == [(HER_ID, 2), ("8200003", 1)]
    [(_, _, oldest), _] = owed
    assert utcnow() - timedelta(days=3, minutes=1) < oldest < utcnow() - timedelta(days=3)
    _through_the_index(store, plan)

    listed, [plan] = _plans(
        store,
        lambda uow: [
            m.id
            for m in uow.messages.search(
                LogFilter(her_id=HER_ID, apprec_owed=window), newest_first=True
            )
        ],
    )
    assert listed == ["old-2", "old-1"]  # what the count counts: not "young", nor "ancient"
    _through_the_index(store, plan)

    with store.unit_of_work() as uow:  # the message log's events of them (none were written)
        assert uow.messages.log(LogFilter(apprec_owed=window)) == []
