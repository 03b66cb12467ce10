"""Received messages the EPJ has not taken: one ``inbox-waiting`` alert per receiving HER-id.

A message is taken when the EPJ marks it read, answers it, or the folder integration writes it
to the inbox; until then it is ``acknowledged`` (stored, and the sender told so). One that waits
longer than ``[alerts] inbox_wait_minutes`` is a deviation: the EPJ integration may have stopped,
and a referral nobody sees can harm a patient. An ``inbox-check`` job looks every five minutes;
the alert says how many wait and since when, is raised again only when that changes (else
counted: :func:`~meldingstjener.engine.alerts.keep_alert`), and is resolved when none wait.
Received AppRecs are left out: their effect on what we sent is applied on arrival, and many EPJs
read it from the sent message, never fetching the AppRec itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, select

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.receipts import APPREC
from meldingstjener.model import Direction, InboundStatus
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import ClaimedJob, UnitOfWork

INBOX_CHECK = "inbox-check"
EVERY = timedelta(minutes=5)


def schedule_check(ctx: EngineContext, uow: UnitOfWork) -> None:
    """Make sure the check is scheduled (a scheduled one keeps its time)."""
    uow.jobs.schedule_if_absent(INBOX_CHECK, ctx.clock(), dedup_key=INBOX_CHECK)


def check_inbox(ctx: EngineContext) -> dict[str, int]:
    """Raise or resolve the alerts; return how many messages wait too long, per HER-id."""
    now = ctx.clock()
    waiting = (
        select(MessageRow.to_her_id, func.count(), func.min(MessageRow.created_at))
        .where(
            MessageRow.direction == Direction.INBOUND.value,
            MessageRow.status == InboundStatus.ACKNOWLEDGED.value,
            MessageRow.created_at < now - ctx.policy.inbox_wait,
            or_(MessageRow.msg_type.is_(None), MessageRow.msg_type != APPREC),
        )
        .group_by(MessageRow.to_her_id)
    )
    found: dict[str, int] = {}
    with ctx.store.unit_of_work() as uow:
        open_alerts = {
            a.dedup_key: a
            for a in uow.alerts.list(open_only=True, limit=None, kind=AlertKind.INBOX_WAITING.value)
        }
        for her_id, count, oldest in uow.session.execute(waiting):
            found[str(her_id)] = count
            open_alerts.pop(f"{AlertKind.INBOX_WAITING}:{her_id}", None)
            summary = _summary(str(her_id), count, oldest, ctx.policy.inbox_wait)
            keep_alert(uow, AlertKind.INBOX_WAITING, summary, at=now, key=str(her_id))
        for key in open_alerts:  # nothing waits for these any more
            uow.alerts.resolve(key, at=now)
        uow.jobs.schedule(INBOX_CHECK, now + EVERY, dedup_key=INBOX_CHECK)
        uow.commit()
    return found


def _summary(her_id: str, count: int, oldest: datetime, wait: timedelta) -> str:
    minutes = int(wait.total_seconds() // 60)
    return (
        f"{count} received message(s) for HER-id {her_id} have waited more than {minutes} "
        f"minutes for the EPJ (the oldest since {oldest:%Y-%m-%d %H:%M} UTC). Check that the "
        "EPJ integration fetches and marks messages read (API), or reads the inbox folder."
    )


def inbox_check_job(ctx: EngineContext, job: ClaimedJob) -> None:
    check_inbox(ctx)  # reschedules itself under the same key
