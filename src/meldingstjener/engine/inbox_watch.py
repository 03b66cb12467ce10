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
``store/tables.py``'s APPREC_OWED. A message is counted for ``[alerts] apprec_owed_days`` (14)
after that, no longer (:func:`apprec_owed_window`): an AppRec owed longer is no news its sender
waits for, and without a bound the first check after an upgrade counted every message of years
of history the EPJ never answered, which nobody will answer now. The log's search for them
(``log --apprec-owed``, ``GET /api/log?apprec_owed=true``) takes the same window, so that it
lists what the alert counts.

An ``inbox-check`` job looks every five minutes, for both; each alert says how many and since
when, is raised again only when that changes (else counted:
:func:`~meldingstjener.engine.alerts.keep_alert`), and is resolved when none are left. An
``apprec-owed`` alert whose messages were not answered but aged out of ``apprec_owed_days`` says
so when it is resolved (:func:`_resolve_owed`): resolved plainly it read as answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.context import EngineContext, Policy
from meldingstjener.engine.receipts import APPREC
from meldingstjener.model import Direction, InboundStatus
from meldingstjener.store.tables import AlertRow, MessageRow
from meldingstjener.store.uow import ClaimedJob, DeliveredBetween, UnitOfWork

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
            lambda alert: uow.alerts.resolve(alert.dedup_key, at=now),
            at=now,
        )
        uow.jobs.schedule(INBOX_CHECK, now + EVERY, dedup_key=INBOX_CHECK)
        uow.commit()
    return found


def apprec_owed_window(policy: Policy, now: datetime) -> DeliveredBetween:
    """The messages the ``apprec-owed`` check judges at ``now``, and the log's search for them
    lists: delivered to the EPJ longer than ``[alerts] apprec_owed_hours`` ago, and not more
    than ``apprec_owed_days`` before that (with the hours 0, not watched, the search lists those
    delivered within the days)."""
    before = now - (policy.apprec_owed or timedelta())
    return DeliveredBetween(since=before - policy.apprec_owed_look_back, before=before)


def check_apprec_owed(ctx: EngineContext) -> dict[str, int]:
    """Raise or resolve the ``apprec-owed`` alerts; return how many messages owe an AppRec, of
    those :func:`apprec_owed_window` judges, per HER-id (none when ``[alerts]
    apprec_owed_hours`` is 0: the alerts open are resolved)."""
    now = ctx.clock()
    owed_after = ctx.policy.apprec_owed
    window = apprec_owed_window(ctx.policy, now)
    with ctx.store.unit_of_work() as uow:
        rows = [] if owed_after is None else uow.messages.apprec_owed(window)
        found = _keep_per_her_id(
            uow,
            AlertKind.APPREC_OWED,
            rows,
            lambda her_id, count, oldest: _owed_summary(her_id, count, oldest, ctx.policy),
            lambda alert: _resolve_owed(uow, alert, ctx.policy, now),
            at=now,
        )
        uow.commit()
    return found


def _keep_per_her_id(
    uow: UnitOfWork,
    kind: AlertKind,
    rows: _PerHerId,
    summary: Callable[[str, int, datetime], str],
    resolve: Callable[[AlertRow], None],
    *,
    at: datetime,
) -> dict[str, int]:
    """Keep one alert of ``kind`` per HER-id found, and ``resolve`` the open ones of the
    others."""
    open_alerts = {
        a.dedup_key: a for a in uow.alerts.list(open_only=True, limit=None, kind=kind.value)
    }
    found: dict[str, int] = {}
    for her_id, count, oldest in rows:
        found[str(her_id)] = count
        open_alerts.pop(f"{kind}:{her_id}", None)
        keep_alert(uow, kind, summary(str(her_id), count, oldest), at=at, key=str(her_id))
    for alert in open_alerts.values():  # none left for these
        resolve(alert)
    return found


def _resolve_owed(uow: UnitOfWork, alert: AlertRow, policy: Policy, now: datetime) -> None:
    """Resolve an ``apprec-owed`` alert none are counted for any more. Its messages were
    answered (or rejected or purged), or the check was turned off: resolved plainly. Some aged
    out of ``apprec_owed_days`` unanswered (those its last count judged, delivered before what
    is judged now, and still owed): resolved saying so, and how to list them, for a resolve
    that read as "answered" hid an EPJ that never answers."""
    her_id = alert.dedup_key.removeprefix(f"{AlertKind.APPREC_OWED}:")
    aged_out = 0
    if policy.apprec_owed is not None:
        judged_now = apprec_owed_window(policy, now)
        judged_last = apprec_owed_window(policy, alert.last_seen)
        left = DeliveredBetween(since=judged_last.since, before=judged_now.since)
        owed = uow.messages.apprec_owed(left)
        aged_out = sum(count for owed_to, count, _ in owed if str(owed_to) == her_id)
    if aged_out == 0:
        uow.alerts.resolve(alert.dedup_key, at=now)
        return
    uow.alerts.resolve_explained(
        alert.dedup_key, resolution=_aged_out(her_id, aged_out, now, policy), at=now
    )


def _aged_out(her_id: str, count: int, at: datetime, policy: Policy) -> str:
    hours = int((policy.apprec_owed or timedelta()).total_seconds() // 3600)
    return (
        f"Resolved {at:%Y-%m-%d %H:%M} UTC without their AppRecs: {count} still unanswered, "
        f"delivered more than {hours} hours and {policy.apprec_owed_look_back.days} days ago "
        "([alerts] apprec_owed_hours and apprec_owed_days), are no longer counted. List them "
        f"with meldingstjener log --status delivered --her-id {her_id}."
    )


def _summary(her_id: str, count: int, oldest: datetime, wait: timedelta) -> str:
    minutes = int(wait.total_seconds() // 60)
    return (
        f"{count} received message(s) for HER-id {her_id} have waited more than {minutes} "
        f"minutes for the EPJ (the oldest since {oldest:%Y-%m-%d %H:%M} UTC). Check that the "
        "EPJ integration fetches and marks messages read (API), or reads the inbox folder."
    )


def _owed_summary(her_id: str, count: int, oldest: datetime, policy: Policy) -> str:
    hours = int((policy.apprec_owed or timedelta()).total_seconds() // 3600)
    return (
        f"{count} received message(s) for HER-id {her_id} were delivered to the EPJ more than "
        f"{hours} hours ago and not answered with an AppRec (each counted for "
        f"{policy.apprec_owed_look_back.days} days after that: [alerts] apprec_owed_days; the "
        "oldest delivered "
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
