"""This host's clock against the database server's: a ``clock-skew`` alert per serving instance.

Every job is judged by the clock of the host that runs it: claim leases, retry and
Acknowledgment deadlines, TimeToLive, certificate validity. On PostgreSQL several hosts share the
jobs, so a host whose clock is ahead by more than a lease takes over claims that another host is
still running, and one that is behind sends retries late and accepts what has expired. Hosts
are meant to keep time with NTP; this check shows when one does not. Each ``serve`` process
measures its offset from the database server's clock (half-way through one round trip) at start
and every ten minutes, raises the alert when it exceeds ``[alerts] clock_skew_seconds`` and
resolves it when the clock is right again, or when the instance stops or is gone (see
:mod:`meldingstjener.engine.instances`). A clock that stays off is told once, not every ten
minutes (:func:`~meldingstjener.engine.alerts.keep_alert`): the alert gives the offset as the
limit doubled so often as it passes (more than 10 s, 20 s, 40 s ...), so a clock that drifts
on is told again when its offset has doubled, not with every second. On SQLite the database is
on the same host: there is nothing to compare.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import text

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.context import EngineContext

log = logging.getLogger(__name__)

EVERY = timedelta(minutes=10)


def clock_offset(ctx: EngineContext) -> timedelta | None:
    """How far this host's clock is ahead of the database server's (negative: behind); None
    on SQLite."""
    if not ctx.store.database.is_postgresql:
        return None
    with ctx.store.database.engine.connect() as connection:
        before = ctx.clock()
        database_now = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
        after = ctx.clock()
    return before + (after - before) / 2 - database_now


def check_clock(ctx: EngineContext, instance: str) -> timedelta | None:
    """Measure the offset, raise or resolve this instance's alert; return the offset."""
    offset = clock_offset(ctx)
    if offset is None:
        return None
    now = ctx.clock()
    with ctx.store.unit_of_work() as uow:
        if abs(offset) > ctx.policy.clock_skew:
            seconds = _more_than(abs(offset), ctx.policy.clock_skew)
            keep_alert(
                uow,
                AlertKind.CLOCK_SKEW,
                f"The clock of {instance} is more than {seconds:.0f} s "
                f"{'ahead of' if offset > timedelta(0) else 'behind'} the database server's. "
                "Leases, retries, deadlines and certificate checks depend on it: make the host "
                "keep time (NTP, chrony).",
                at=now,
                key=instance,
            )
        else:
            uow.alerts.resolve(f"{AlertKind.CLOCK_SKEW}:{instance}", at=now)
        uow.commit()
    return offset


def _more_than(offset: timedelta, limit: timedelta) -> float:
    """The seconds the alert names: the limit, doubled as often as ``offset`` still exceeds
    it. The offset itself moves a little at every check; this changes (and the alert is told
    again) only when the clock has gone twice as far wrong."""
    bound = limit
    while offset > 2 * bound:
        bound *= 2
    return bound.total_seconds()


def start_clock_watch(
    ctx: EngineContext, instance: str, stop: threading.Event
) -> threading.Thread | None:
    """Check now, then every ten minutes until ``stop`` in a thread of its own (None on
    SQLite: no thread is needed). A failed check is logged and made again at the next turn:
    the database may be away for a while, and serving must not wait for it."""
    if not ctx.store.database.is_postgresql:
        return None
    _check_or_log(ctx, instance)

    def watch() -> None:
        while not stop.wait(EVERY.total_seconds()):
            _check_or_log(ctx, instance)

    thread = threading.Thread(target=watch, name="clock-watch", daemon=True)
    thread.start()
    return thread


def _check_or_log(ctx: EngineContext, instance: str) -> None:
    try:
        check_clock(ctx, instance)
    except Exception as exc:  # a statement about clocks: its error carries no patient data
        log.warning("could not compare this host's clock with the database's: %s", exc)
