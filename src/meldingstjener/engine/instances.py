"""The ``serve`` processes on one store, known by their heartbeats.

Some deviations belong to one process: its host clock is off (``clock-skew``), it cannot reach
the mailbox (``mailbox-unreachable``), it cannot write its payload store (``store-failing``),
it cannot find out whether a CA's certificates are revoked (``revocation-unknown``).
Only that process can see them end, so when it stops, or its host is replaced or renamed,
nobody would resolve them and they would stay open for ever.
Each ``serve`` therefore records itself at start, beats every minute, and marks itself stopped
when it stops. Every beat also looks at the others: an instance that stopped, or has not beaten
for ``GONE_AFTER``, has its own alerts resolved (its deviations ended with it) and, a week
later, is forgotten. ``meldingstjener instances`` lists them.

A long outage of the database leaves no trace otherwise: nothing can be written while it
lasts, and afterwards nothing would say that the server could not work for two hours. So the
heartbeat remembers (in memory) since when the store has been unreachable, and the first beat
that works after five minutes or more raises ``store-unreachable`` with both times.

A server nobody sends to or asks would also keep a ``store-failing`` open for ever after its
disk is writable again (only a write ended it), and would not see its payload share drop. So
every beat, first and whether the database answers or not, has the process's store watched
(:meth:`~meldingstjener.engine.ebms_alerts.StoreFailing.watch`: the payload directory's marker
read again, and the store probed while it fails).

Resolving a gone instance's alerts also hides what it no longer does: when the host of the only
server that collected the mailbox is lost, its ``mailbox-unreachable`` would go, and nothing
would say that no mail is collected. So an instance that goes from running to gone without a
clean stop raises ``instance-gone``, once per death, resolved when its name beats again or is
forgotten.
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
from meldingstjener.engine.alerts import AlertKind, keep_alert, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.register_sync import REGISTER_SYNC, schedule_register_sync
from meldingstjener.engine.trust import (
    resolve_unnamed_revocation_alerts,
    revocation_alerts_prefix,
)
from meldingstjener.store.database import unreachable
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
# A process that could not beat for longer than this (its database away, its host suspended)
# was away too: the others' silence meanwhile says nothing of them (see Heartbeat)
AWAY_AFTER = 2 * HEARTBEAT
FORGET_AFTER = timedelta(days=7)  # kept this long for the operator to see what ran
# the alerts raised per instance (their dedup key is "<kind>:<instance name>")
INSTANCE_ALERTS = (
    AlertKind.CLOCK_SKEW,
    AlertKind.MAILBOX_UNREACHABLE,
    AlertKind.INSTANCE_NAME_TAKEN,
    AlertKind.STORE_FAILING,
)
# A process that finds its name taken marks instance-name-taken seen at every check; the holder
# of the name resolves one nobody has seen for this long: the other was killed, and cannot.
TWIN_SILENT_AFTER = 5 * HEARTBEAT
# An outage of the store this long is told afterwards: a restart of the database takes seconds,
# a failover a minute or two; five minutes and more held messages back
UNREACHABLE_TOLD_AFTER = timedelta(minutes=5)


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


def instance_states(
    uow: UnitOfWork, now: datetime, *, present_since: datetime | None = None
) -> list[tuple[InstanceRow, str]]:
    """Every instance on the store, with its state. ``present_since``: silence before then is
    not counted (the one who judges was away itself, see :class:`Heartbeat`)."""
    rows = uow.instances.all()
    locked = names_locked(uow.session, [row.name for row in rows])
    return [
        (
            row,
            instance_state(
                row.last_seen_at if present_since is None else max(row.last_seen_at, present_since),
                row.stopped_at,
                now,
                locked=None if locked is None else locked[row.name],
            ),
        )
        for row in rows
    ]


def beat(
    ctx: EngineContext,
    name: str,
    *,
    started: bool = False,
    outage: tuple[datetime, datetime] | None = None,
    present_since: datetime | None = None,
    back: bool = False,
) -> datetime:
    """Record that ``name`` runs, and tidy after the instances that do not any more.
    ``outage``: from when to when (this host's clock) the store could not be reached by
    ``name``, to be told. ``present_since`` (the store's time): since when ``name`` has beaten
    without a gap; the others' silence before then is not counted. ``back``: it has been away
    (or starts) and beats again now, so that is now. None of these: the others are judged by
    their silence alone. Returns since when ``name`` is present (see :class:`Heartbeat`)."""
    with ctx.store.unit_of_work() as uow:
        now = store_now(ctx.clock, uow)
        if back:
            present_since = now
        if outage is not None:
            _report_outage(uow, name, outage, now)
        uow.instances.seen(
            name,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            at=now,
            started=started,
        )
        # its name beats again: whatever instance-gone said of it is over
        uow.alerts.resolve(_gone_key(name), at=now)
        if started:
            resolve_unnamed_revocation_alerts(uow, now)
        states = instance_states(uow, now, present_since=present_since)
        _tidy(uow, name, now, states)
        failing_jobs.tidy(uow, now)
        # in the heartbeat's own thread: a check that workers which hang cannot stop
        serving_since = min(
            (row.started_at for row, state in states if state == "running"), default=now
        )
        ctx.overdue.check(uow, ctx.clock(), now - serving_since, REGISTER_SYNC)
        # alerts raised by other processes that a good message here resolves (engine/recovery)
        ctx.recovery.load(uow, at=now)
        # The register's sync job is shared; should a server without the register have ended
        # it (or it be lost), one with it puts it back here.
        schedule_register_sync(ctx, uow)
        uow.commit()
    return present_since or now


def stopped(ctx: EngineContext, name: str) -> None:
    """``name`` stops: its own alerts end with it."""
    with ctx.store.unit_of_work() as uow:
        now = store_now(ctx.clock, uow)
        uow.instances.stopped(name, at=now)
        _resolve_alerts_of(uow, name, now)
        uow.alerts.resolve(_gone_key(name), at=now)  # it ran until now, and stops cleanly
        uow.commit()


def _tidy(uow: UnitOfWork, own: str, now: datetime, states: list[tuple[InstanceRow, str]]) -> None:
    for row, state in states:
        if row.name == own or state == "running":
            continue
        _resolve_alerts_of(uow, row.name, now)
        if now - (row.stopped_at or row.last_seen_at) > FORGET_AFTER:
            uow.instances.forget(row.name, seen_before=now - FORGET_AFTER)
            # after a week the operator has moved its work or let it go: not news any more
            uow.alerts.resolve(_gone_key(row.name), at=now)
        elif state == "gone":
            _report_gone(uow, row, now)


def _gone_key(name: str) -> str:
    return f"{AlertKind.INSTANCE_GONE}:{name}"


def _report_gone(uow: UnitOfWork, row: InstanceRow, now: datetime) -> None:
    """Raise ``instance-gone`` for an instance that died, once per death: an alert of its name
    raised after its last beat (by any instance; open, acknowledged or resolved) has told it.
    Kept in the alert itself, so that neither a restart of this process nor the beats of the
    other instances tell it again."""
    told = uow.alerts.by_key(_gone_key(row.name))
    if told is not None and told.last_seen >= row.last_seen_at:
        return
    raise_alert(
        uow,
        AlertKind.INSTANCE_GONE,
        f"Instance {row.name} (host {row.host}, pid {row.pid}) last beat at "
        f"{row.last_seen_at:%Y-%m-%d %H:%M:%S} UTC and did not stop cleanly: its process was "
        "killed or its host lost. What only it did is not being done: if it collected a "
        "mailbox, watched a folder drop or was the address partners send to, no mail is "
        "collected, no file taken and nothing received there. Its own alerts (clock-skew, "
        "mailbox-unreachable, store-failing, revocation-unknown) were resolved with it and "
        "no longer show that. The jobs it had claimed pass to the other servers when their "
        "leases run out. Start it again, or let another server take over its work.",
        at=now,
        key=row.name,
    )


def _report_outage(
    uow: UnitOfWork, name: str, outage: tuple[datetime, datetime], now: datetime
) -> None:
    since, until = outage
    minutes = int((until - since).total_seconds() // 60)
    raise_alert(
        uow,
        AlertKind.STORE_UNREACHABLE,
        f"Instance {name} could not reach the database from {since:%Y-%m-%d %H:%M} to "
        f"{until:%Y-%m-%d %H:%M} UTC (about {minutes} minutes, by its host's clock). In that "
        "time it could not store what partners and the EPJ sent (they were answered 503 and "
        "should send again), nor send messages, Acknowledgments or AppRecs, nor run its timed "
        "checks, nor raise alerts. It works again: see that what was held back has gone "
        "(meldingstjener log, alerts --open), and why the database was away.",
        at=now,
        key=name,
    )


def _resolve_alerts_of(uow: UnitOfWork, name: str, now: datetime) -> None:
    """Resolve the alerts of ``name`` alone: those keyed by its name, and its
    ``revocation-unknown`` of each CA (engine/trust.py)."""
    keys = [f"{kind}:{name}" for kind in INSTANCE_ALERTS]
    keys += [key for key, _ in uow.alerts.open_keys((), (revocation_alerts_prefix(name),))]
    uow.alerts.resolve(*keys, at=now)


def start_heartbeat(ctx: EngineContext, name: str, stop: threading.Event) -> threading.Thread:
    """Beat now (as a start), then every minute until ``stop`` in a thread of its own. A beat
    that fails is logged and made again at the next turn: the database may be away a while."""
    heartbeat = Heartbeat(ctx, name)
    heartbeat.beat(started=True)

    def run() -> None:
        while not stop.wait(HEARTBEAT.total_seconds()):
            heartbeat.beat()

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    return thread


def start_name_keeper(
    ctx: EngineContext, name_lock: InstanceLock, stop: threading.Event
) -> threading.Thread:
    """Check every minute that the instance's name is still locked (see
    ``store.instance_lock``), taking the lock again after a restart of the database. In a
    thread of its own: a check that hangs (a connection whose far end stopped answering
    without closing) must not stop the beats."""
    keeper = NameKeeper(ctx, name_lock)

    def run() -> None:
        while not stop.wait(HEARTBEAT.total_seconds()):
            keeper.check()

    thread = threading.Thread(target=run, name="instance-name", daemon=True)
    thread.start()
    return thread


class NameKeeper:
    """Whether this process still holds its instance's name, told as ``instance-name-taken``.

    The lock can be lost while the database restarts, and taken meanwhile by a process of the
    same name (two listen addresses, containers with one fixed host name): each may then take
    back the other's job claims when it starts, and run jobs twice (send a message twice). A
    log line alone is read by nobody, so the process that lost the name raises the alert, once,
    and counts it at every check after (its ``last_seen`` and ``count``, not told to a webhook:
    :func:`~meldingstjener.engine.alerts.keep_alert`); it resolves it once it holds the lock
    again (the other has gone). Should the other be killed before that, the holder resolves an
    alert nobody has seen for ``TWIN_SILENT_AFTER``, and a clean stop of either resolves it as
    one of its own."""

    def __init__(self, ctx: EngineContext, name_lock: InstanceLock) -> None:
        self.ctx = ctx
        self.name_lock = name_lock
        self._raised = False  # this process raised the alert and has not resolved it

    def check(self) -> None:
        name = self.name_lock.name
        try:
            kept = self.name_lock.still_held()
        except Exception as exc:  # the database may be away: asked again at the next beat
            log.warning("could not check the lock on instance %s's name: %s", name, exc)
            return
        if not kept:
            log.error(
                "another process has taken the name of instance %s; stop one of them and give "
                "it a name of its own ([server] instance_name)",
                name,
            )
        try:
            self._tell(kept)
        except Exception as exc:  # the database may be away: told at the next check
            log.warning("could not record whether instance %s's name is taken: %s", name, exc)

    def _tell(self, kept: bool) -> None:
        name = self.name_lock.name
        key = f"{AlertKind.INSTANCE_NAME_TAKEN}:{name}"
        now = self.ctx.clock()
        with self.ctx.store.unit_of_work() as uow:
            if not kept:
                # told once (each raise is a webhook call) and counted at every check: the
                # holder goes by when it was last seen
                keep_alert(
                    uow,
                    AlertKind.INSTANCE_NAME_TAKEN,
                    f"Another process has taken the name of instance {name}: the process "
                    f"{os.getpid()} on host {socket.gethostname()} lost it (its lock ended "
                    "with a restart of the database, say). Two serve processes run with "
                    "one name: each may take back the other's job claims when it starts, "
                    "and run jobs twice (send a message twice). Stop one of them and give "
                    "it a name of its own ([server] instance_name).",
                    at=now,
                    key=name,
                )
            elif self._raised:
                uow.alerts.resolve(key, at=now)  # the name is this process's again
            else:
                uow.alerts.resolve_if_silent(key, seen_before=now - TWIN_SILENT_AFTER, at=now)
            uow.commit()
        self._raised = not kept


class Heartbeat:
    """The beats of one instance, and what they remember between them: since when the store
    has been unreachable (in memory, as nothing can be written meanwhile). The first beat that
    works after ``UNREACHABLE_TOLD_AFTER`` or more raises ``store-unreachable``, from the start
    of the first beat that failed to the start of the one that works; it is resolved by hand
    (it tells of something past). A beat that fails for another reason (the database busy: a
    deadlock, a lock timeout; or a fault of ours) is logged and changes nothing: the outage,
    if one is under way, is told by the next beat that works.

    And since when this process has been present: beating, with no more than ``AWAY_AFTER``
    between its beats that worked. A process that could not beat for longer (the database was
    away, its host suspended) does not know what the others did meanwhile: after a restart of
    the database every instance's beats stopped with its own, and every lock of a name ended,
    to come back with each one's next beat. So the others are judged gone only by their silence
    while this process was present (from its start, too): each has the full time to beat again
    after the database is back."""

    def __init__(self, ctx: EngineContext, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.unreachable_since: datetime | None = None
        self.last_beat_at: datetime | None = None  # the last beat that worked (this host's clock)
        self.present_since: datetime | None = None  # the store's time

    def beat(self, *, started: bool = False) -> None:
        try:
            self.ctx.store_failing.watch()
        except Exception:  # a fault of ours: the beat itself must go on
            log.exception("could not watch this instance's store")
        at = self.ctx.clock()
        since = self.unreachable_since
        outage = None
        if since is not None and at - since >= UNREACHABLE_TOLD_AFTER:
            outage = (since, at)
        last = self.last_beat_at
        back = started or last is None or at - last > AWAY_AFTER
        try:
            present_since = beat(
                self.ctx,
                self.name,
                started=started,
                outage=outage,
                present_since=self.present_since,
                back=back,
            )
        except Exception as exc:  # names of hosts and processes only: no patient data
            if unreachable(exc):  # the database is away, or its connections are
                if self.unreachable_since is None:
                    self.unreachable_since = at
                log.warning("could not record this instance's heartbeat: the database: %s", exc)
            else:  # busy (a deadlock, a lock timeout) or a fault: the database is there
                log.warning("could not record this instance's heartbeat: %s", exc)
            return
        self.unreachable_since = None
        self.last_beat_at, self.present_since = at, present_since
