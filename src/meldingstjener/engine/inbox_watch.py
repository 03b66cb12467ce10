"""Received messages the EPJ has not taken, or has taken and not answered: one ``inbox-waiting``
and one ``apprec-owed`` alert per receiving HER-id.

A message is taken when the EPJ marks it read, answers it, or the folder integration writes it
to the inbox; until then it is ``acknowledged`` (stored, and the sender told so). One that waits
longer than ``[alerts] inbox_wait_minutes`` is a deviation: the EPJ integration may have stopped,
and a referral nobody sees can harm a patient. Received AppRecs are left out: their effect on
what we sent is applied on arrival, and many EPJs read it from the sent message, never fetching
the AppRec itself.

A message taken (``delivered``) is to be answered with an AppRec (every business message but an
AppRec itself is, under the Norwegian messaging rules); the sender waits for it, and raises its
own ``apprec-missing`` in the end. One delivered longer than ``[alerts] apprec_owed_hours``
ago (0: not watched) and not answered (``apprec-sent``), rejected or purged is owed: the EPJ does
not answer that type, or its answers do not reach us. The store's rule of what is owed is
``store/tables.py``'s APPREC_OWED.

An ``inbox-check`` job looks every five minutes, for both; each alert says how many and since
when, is raised again only when that changes (else counted:
:func:`~meldingstjener.engine.alerts.keep_alert`), and is resolved when none are left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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

# per receiving HER-id: how many, and the oldest time
_PerHerId = Iterable[tuple[str | None, int, datetime]]


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
    with ctx.store.unit_of_work() as uow:
        rows = [(her_id, count, oldest) for her_id, count, oldest in uow.session.execute(waiting)]
        found = _keep_per_her_id(
            uow,
            AlertKind.INBOX_WAITING,
            rows,
            lambda her_id, count, oldest: _summary(her_id, count, oldest, ctx.policy.inbox_wait),
            at=now,
        )
        uow.jobs.schedule(INBOX_CHECK, now + EVERY, dedup_key=INBOX_CHECK)
        uow.commit()
    return found


def check_apprec_owed(ctx: EngineContext) -> dict[str, int]:
    """Raise or resolve the ``apprec-owed`` alerts; return how many messages delivered longer
    than ``[alerts] apprec_owed_hours`` ago owe an AppRec, per HER-id (none when it is 0: the
    alerts open are resolved)."""
    now = ctx.clock()
    owed_after = ctx.policy.apprec_owed
    with ctx.store.unit_of_work() as uow:
        rows = [] if owed_after is None else uow.messages.apprec_owed(now - owed_after)
        found = _keep_per_her_id(
            uow,
            AlertKind.APPREC_OWED,
            rows,
            lambda her_id, count, oldest: _owed_summary(her_id, count, oldest, owed_after),
            at=now,
        )
        uow.commit()
    return found


def _keep_per_her_id(
    uow: UnitOfWork,
    kind: AlertKind,
    rows: _PerHerId,
    summary: Callable[[str, int, datetime], str],
    *,
    at: datetime,
) -> dict[str, int]:
    """Keep one alert of ``kind`` per HER-id found, and resolve the open ones of the others."""
    open_alerts = {
        a.dedup_key: a for a in uow.alerts.list(open_only=True, limit=None, kind=kind.value)
    }
    found: dict[str, int] = {}
    for her_id, count, oldest in rows:
        found[str(her_id)] = count
        open_alerts.pop(f"{kind}:{her_id}", None)
        keep_alert(uow, kind, summary(str(her_id), count, oldest), at=at, key=str(her_id))
    for key in open_alerts:  # none left for these
        uow.alerts.resolve(key, at=at)
    return found


def _summary(her_id: str, count: int, oldest: datetime, wait: timedelta) -> str:
    minutes = int(wait.total_seconds() // 60)
    return (
        f"{count} received message(s) for HER-id {her_id} have waited more than {minutes} "
        f"minutes for the EPJ (the oldest since {oldest:%Y-%m-%d %H:%M} UTC). Check that the "
        "EPJ integration fetches and marks messages read (API), or reads the inbox folder."
    )


def _owed_summary(her_id: str, count: int, oldest: datetime, owed_after: timedelta | None) -> str:
    hours = int((owed_after or timedelta()).total_seconds() // 3600)
    return (
        f"{count} received message(s) for HER-id {her_id} were delivered to the EPJ more than "
        f"{hours} hours ago and not answered with an AppRec (the oldest delivered "
        f"{oldest:%Y-%m-%d %H:%M} UTC); their senders wait for it. List them with "
        f"meldingstjener log --apprec-owed --her-id {her_id} (or GET "
        f"/api/log?apprec_owed=true&her_id={her_id}), and have the EPJ answer them (or check "
        "that its AppRecs reach this server)."
    )


def inbox_check_job(ctx: EngineContext, job: ClaimedJob) -> None:
    check_inbox(ctx)  # reschedules itself under the same key
    # one job looks at both ends of the EPJ's part: a check that fails fails the job, tried
    # again as the worker tries any, and the inbox check's alerts are kept meanwhile
    check_apprec_owed(ctx)
