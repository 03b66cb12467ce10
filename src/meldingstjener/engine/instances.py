"""The ``serve`` processes on one store, known by their heartbeats.

Some deviations belong to one process: its host clock is off (``clock-skew``), it cannot reach
the mailbox (``mailbox-unreachable``). Only that process can see them end, so when it stops, or
its host is replaced or renamed, nobody would resolve them and they would stay open for ever.
Each ``serve`` therefore records itself at start, beats every minute, and marks itself stopped
when it stops. Every beat also looks at the others: an instance that stopped, or has not beaten
for ``GONE_AFTER``, has its own alerts resolved (its deviations ended with it) and, a week
later, is forgotten. ``meldingstjener instances`` lists them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from meldingstjener import __version__
from meldingstjener.engine import failing_jobs
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.register_sync import schedule_register_sync
from meldingstjener.store.instance_lock import InstanceLock, names_locked
from meldingstjener.store.tables import InstanceRow
from meldingstjener.store.uow import UnitOfWork

log = logging.getLogger(__name__)

HEARTBEAT = timedelta(minutes=1)
GONE_AFTER = timedelta(minutes=15)  # fifteen missed beats: not a pause, a process that is gone
# On PostgreSQL a live process holds its name's lock (store/instance_lock.py), also through a
# pause in its beats; one that does not, and has missed two beats, is gone. (The grace: after
# a restart of the database the locks come back with each process's next beat.)
UNLOCKED_GONE_AFTER = 3 * HEARTBEAT
FORGET_AFTER = timedelta(days=7)  # kept this long for the operator to see what ran
# the alerts raised per instance (their dedup key is "<kind>:<instance name>")
INSTANCE_ALERTS = (AlertKind.CLOCK_SKEW, AlertKind.MAILBOX_UNREACHABLE)


def store_now(ctx_clock: Callable[[], datetime], uow: UnitOfWork) -> datetime:
    """The time heartbeats are written and judged by. On PostgreSQL the database server's: the
    hosts sharing it judge each other's beats, and a host whose clock is off (the very thing
    the clock-skew alert is about) would otherwise look gone, or take the others for gone. On
    SQLite, one host: its clock."""
    if uow.session.get_bind().dialect.name == "postgresql":
        now = uow.session.execute(text("SELECT clock_timestamp()")).scalar_one()
        assert isinstance(now, datetime)
        return now.astimezone(UTC)  # the session's zone may keep summer time
    return ctx_clock()


def instance_state(
    last_seen: datetime, stopped: datetime | None, now: datetime, *, locked: bool | None = None
) -> str:
    """``running``, ``stopped`` or ``gone``: no beat for ``GONE_AFTER``, or (``locked`` is
    False: its name's lock is not held) for ``UNLOCKED_GONE_AFTER``. ``locked`` None: unknown."""
    if stopped is not None:
        return "stopped"
    silent = now - last_seen
    if silent > GONE_AFTER or (locked is False and silent > UNLOCKED_GONE_AFTER):
        return "gone"
    return "running"


def instance_states(uow: UnitOfWork, now: datetime) -> list[tuple[InstanceRow, str]]:
    """Every instance on the store, with its state."""
    rows = uow.instances.all()
    locked = names_locked(uow.session, [row.name for row in rows])
    return [
        (
            row,
            instance_state(
                row.last_seen_at,
                row.stopped_at,
                now,
                locked=None if locked is None else locked[row.name],
            ),
        )
        for row in rows
    ]


def beat(ctx: EngineContext, name: str, *, started: bool = False) -> None:
    """Record that ``name`` runs, and tidy after the instances that do not any more."""
    with ctx.store.unit_of_work() as uow:
        now = store_now(ctx.clock, uow)
        uow.instances.seen(
            name,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            at=now,
            started=started,
        )
        _tidy(uow, name, now)
        failing_jobs.tidy(uow, now)
        # alerts raised by other processes that a good message here resolves (engine/recovery)
        ctx.recovery.load(uow, at=now)
        # The register's sync job is shared; should a server without the register have ended
        # it (or it be lost), one with it puts it back here.
        schedule_register_sync(ctx, uow)
        uow.commit()


def stopped(ctx: EngineContext, name: str) -> None:
    """``name`` stops: its own alerts end with it."""
    with ctx.store.unit_of_work() as uow:
        now = store_now(ctx.clock, uow)
        uow.instances.stopped(name, at=now)
        _resolve_alerts_of(uow, name, now)
        uow.commit()


def _tidy(uow: UnitOfWork, own: str, now: datetime) -> None:
    for row, state in instance_states(uow, now):
        if row.name == own or state == "running":
            continue
        _resolve_alerts_of(uow, row.name, now)
        if now - (row.stopped_at or row.last_seen_at) > FORGET_AFTER:
            uow.instances.forget(row.name, seen_before=now - FORGET_AFTER)


def _resolve_alerts_of(uow: UnitOfWork, name: str, now: datetime) -> None:
    for kind in INSTANCE_ALERTS:
        uow.alerts.resolve(f"{kind}:{name}", at=now)


def start_heartbeat(ctx: EngineContext, name: str, stop: threading.Event) -> threading.Thread:
    """Beat now (as a start), then every minute until ``stop`` in a thread of its own. A beat
    that fails is logged and made again at the next turn: the database may be away a while."""
    _beat_or_log(ctx, name, started=True)

    def run() -> None:
        while not stop.wait(HEARTBEAT.total_seconds()):
            _beat_or_log(ctx, name, started=False)

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    return thread


def start_name_keeper(name_lock: InstanceLock, stop: threading.Event) -> threading.Thread:
    """Check every minute that the instance's name is still locked (see
    ``store.instance_lock``), taking the lock again after a restart of the database. In a
    thread of its own: a check that hangs (a connection whose far end stopped answering
    without closing) must not stop the beats."""

    def run() -> None:
        while not stop.wait(HEARTBEAT.total_seconds()):
            check_name_lock(name_lock)

    thread = threading.Thread(target=run, name="instance-name", daemon=True)
    thread.start()
    return thread


def check_name_lock(name_lock: InstanceLock) -> None:
    try:
        kept = name_lock.still_held()
    except Exception as exc:  # the database may be away: asked again at the next beat
        log.warning("could not check the lock on instance %s's name: %s", name_lock.name, exc)
        return
    if not kept:
        # Lost while the database restarted, and taken by a process with the same name: each
        # may take back the other's job claims at a start, and run jobs twice.
        log.error(
            "another process has taken the name of instance %s; stop one of them and give it "
            "a name of its own ([server] instance_name)",
            name_lock.name,
        )


def _beat_or_log(ctx: EngineContext, name: str, *, started: bool) -> None:
    try:
        beat(ctx, name, started=started)
    except Exception as exc:  # names of hosts and processes only: no patient data
        log.warning("could not record this instance's heartbeat: %s", exc)
