"""The engine's wiring: store, own identity and keys, partner directory, transports, clock.

Built once by ``bootstrap.build_engine``; every service of the engine takes this one object.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from meldingstjener import __version__
from meldingstjener.config import RetentionSettings
from meldingstjener.ebxml import MshDescription, Party
from meldingstjener.engine.directory import PartyDirectory
from meldingstjener.engine.ebms_alerts import StoreFailing
from meldingstjener.engine.overdue_jobs import OverdueWatch
from meldingstjener.engine.recovery import RecoveryWatch
from meldingstjener.security.validation import CertificateValidator
from meldingstjener.store.uow import ClaimedJob, SendingView, Store, UnitOfWork
from meldingstjener.transport.base import Transport

if TYPE_CHECKING:
    from meldingstjener.engine.register_sync import RegisterSync


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class OwnKeys:
    """Our signing pair and the pairs we can decrypt with (current first, then previous)."""

    signing_key: rsa.RSAPrivateKey
    signing_certificate: x509.Certificate
    encryption_certificate: x509.Certificate
    decryption_candidates: Sequence[tuple[rsa.RSAPrivateKey, x509.Certificate]]
    # where each pair comes from ("signing", "encryption": the [keys] setting and its file),
    # for the texts that tell an operator which file to renew
    sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    environment: str = "test"
    schema_dir: Path | None = None
    allow_sha1: bool = True
    allow_3des: bool = True
    compress_payloads: bool = False
    max_xml_bytes: int = 64 * 1024 * 1024
    default_apprec_deadline: timedelta = timedelta(hours=24)
    apprec_deadlines: Mapping[str, timedelta] = field(default_factory=dict)
    inbox_wait: timedelta = timedelta(minutes=60)  # a received message not taken by the EPJ
    # a received message taken by the EPJ and not answered with an AppRec; None: not watched
    apprec_owed: timedelta | None = timedelta(hours=24)
    # how long after that such a message is counted, no longer
    apprec_owed_look_back: timedelta = timedelta(days=14)
    previous_signing_grace: timedelta = timedelta(days=7)  # a partner's replaced certificate
    clock_skew: timedelta = timedelta(seconds=10)  # this host's clock off the database's
    retention: RetentionSettings = field(default_factory=RetentionSettings)  # [retention]

    def apprec_deadline(self, msg_type: str | None) -> timedelta:
        """How long after the transport receipt an AppRec may take before an alert."""
        return self.apprec_deadlines.get(msg_type or "", self.default_apprec_deadline)


class Wakeup:
    """Lets a producer wake an in-process worker at once instead of at its next poll.

    Each notice wakes ONE waiting worker (or is kept for the next one that waits): waking every
    worker for every new message made all but one of them claim nothing, each a round trip and
    a commit. A worker that filled its batch claims again at once, so a burst still spreads out;
    one that claimed less took everything stored before its claim, and waits for the next notice.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._pending = 0
        self._handed: deque[ClaimedJob] = deque()

    def hand_over(self, job: ClaimedJob) -> None:
        """Give a job stored already claimed (see :class:`Handoff`) to a waiting worker."""
        with self._condition:
            self._handed.append(job)
            self._condition.notify()

    def handed_count(self) -> int:
        with self._condition:
            return len(self._handed)

    def take_handed(self, limit: int) -> list[ClaimedJob]:
        with self._condition:
            return [self._handed.popleft() for _ in range(min(limit, len(self._handed)))]

    def notify(self) -> None:
        with self._condition:
            self._pending += 1
            self._condition.notify()

    def wake_all(self) -> None:
        """Wake every waiting worker (shutdown: each must see the stop at once)."""
        with self._condition:
            self._condition.notify_all()

    def claiming(self) -> None:
        """A worker is about to claim: it will see every job stored before now, so the notices
        given so far are answered (keeping them would send idle workers to claim nothing)."""
        with self._condition:
            self._pending = 0

    def wait(self, timeout: float) -> bool:
        """Wait for a notice, a handed job or ``timeout``; whether the store should be claimed
        from now (a notice, or the poll time) rather than only handed jobs be run."""
        with self._condition:
            if self._pending == 0 and not self._handed:
                self._condition.wait(timeout)
            if self._pending > 0:
                self._pending -= 1
                return True
            return not self._handed


# At most this many synchronous replies the store refused are held by one process; beyond them
# a reply is let go, and its message's ack-timeout resends (see HeldReplies)
HELD_REPLIES = 1000


@dataclass(frozen=True)
class SyncReply:
    """A partner's signal that came back in the HTTP response to the send of job ``job_id``,
    of message ``message_id``."""

    job_id: int
    message_id: str
    content_type: str
    body: bytes


class HeldReplies:
    """The synchronous replies this process holds while its store refuses them (see
    ``worker.ReplyWaits``), one per message, oldest first.

    They belong to the process, not to the worker that sent: any of its workers offers them
    again (:meth:`offer`), and the ack-timeout of a message takes its reply first
    (:meth:`take_for`), whichever worker claimed it, so that no worker resends or gives up a
    message whose Acknowledgment is held here. One lock covers the offers and the takes, each
    to its end: an ack-timeout never runs while another worker is storing its reply. (Another
    process cannot see them: its workers may resend or give up such a message.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # by message id, oldest first: (when to offer it again, reply)
        self._held: dict[str, tuple[datetime, SyncReply]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def hold(self, reply: SyncReply, offer_at: datetime) -> bool:
        """Hold ``reply`` until ``offer_at``; False when it is let go (``HELD_REPLIES`` held)."""
        with self._lock:
            self._held.pop(reply.message_id, None)  # a later send's reply replaces an earlier
            if len(self._held) >= HELD_REPLIES:
                return False
            self._held[reply.message_id] = (offer_at, reply)
            return True

    def offer(
        self,
        take: Callable[[SyncReply], bool],
        now: datetime,
        again_at: datetime,
        *,
        every_one: bool = False,
    ) -> None:
        """Offer the replies due at ``now`` (``every_one``: all held) to ``take``, which says
        whether one is done with; the first it refuses puts them all off until ``again_at``."""
        with self._lock:
            for message_id, (due, reply) in list(self._held.items()):
                if not (every_one or due <= now):
                    return  # held in order: the rest are due later still
                if not take(reply):
                    self._held = {key: (again_at, held) for key, (_, held) in self._held.items()}
                    return
                del self._held[message_id]

    def take_for(self, message_id: str, take: Callable[[SyncReply], bool]) -> bool:
        """Offer the reply held for ``message_id`` to ``take`` now, due or not: whether none
        is held any longer (none was, or it is done with); a reply refused stays held."""
        with self._lock:
            entry = self._held.get(message_id)
            if entry is None:
                return True
            if not take(entry[1]):
                return False
            del self._held[message_id]
            return True


@dataclass(frozen=True)
class Handoff:
    """Work this process stores for its own workers goes to them directly.

    A job due now (a new message's send, an Acknowledgment to send) is stored already claimed by
    ``worker`` with the workers' lease and handed to a waiting worker after the commit, instead of
    being stored unclaimed and then claimed in a transaction of its own. At most ``capacity`` jobs
    wait in memory; beyond that work is stored unclaimed as usual. Only ``serve`` sets this up
    (a process without workers must leave its jobs to the workers of another).
    """

    worker: str
    lease: timedelta
    capacity: int


@dataclass
class EngineContext:
    store: Store
    own_her_ids: frozenset[str]
    keys: OwnKeys
    directory: PartyDirectory
    transports: Mapping[str, Transport]
    policy: Policy = field(default_factory=Policy)
    clock: Callable[[], datetime] = utc_now
    host: str = "meldingstjener.local"
    wakeup: Wakeup = field(default_factory=Wakeup)
    application: str = "meldingstjener"
    validator: CertificateValidator | None = None
    organisation_her_id: str | None = None  # ours; None only where no organisation is configured
    handoff: Handoff | None = None  # set by ``serve``, which runs workers in this process
    register_sync: RegisterSync | None = None  # how to sync the address register, if configured
    # the open alerts a good message resolves, known without a statement per message
    recovery: RecoveryWatch = field(default_factory=RecoveryWatch)
    # what this process's heartbeats saw of the jobs (engine/overdue_jobs)
    overdue: OverdueWatch = field(default_factory=OverdueWatch)
    # the name of this process among those on the store, as ``serve`` runs under it
    # ([server] instance_name, or host:port): its own alerts are keyed by it
    instance: str = "meldingstjener"
    # this process's writes of its store failing: counted by /ebms and the EPJ API, ended by
    # a write that works, /health's probe or the heartbeat's (engine/ebms_alerts)
    store_failing: StoreFailing = field(init=False, repr=False, compare=False)
    # the synchronous replies this process's workers hold while the store refuses them
    held_replies: HeldReplies = field(default_factory=HeldReplies, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.store_failing = StoreFailing(self)

    def schedule_now(
        self,
        uow: UnitOfWork,
        kind: str,
        *,
        message_id: str | None = None,
        data: dict[str, Any] | None = None,
        dedup_key: str | None = None,
        sending: SendingView | None = None,
    ) -> None:
        """Schedule work due now: handed to this process's workers after the commit when they
        have room (:class:`Handoff`), else stored for any worker to claim. Callers tell the
        workers afterwards with :meth:`notify_workers`. ``sending`` goes with a handed-over
        transmit job (see :class:`ClaimedJob`)."""
        handoff = self.handoff
        waiting = self.wakeup.handed_count() + uow.jobs.stored_claimed  # incl. this transaction's
        if handoff is None or waiting >= handoff.capacity:
            uow.jobs.schedule(
                kind, self.clock(), message_id=message_id, data=data, dedup_key=dedup_key
            )
            return
        job = uow.jobs.schedule_claimed(
            kind,
            now=self.clock(),
            worker=handoff.worker,
            lease=handoff.lease,
            message_id=message_id,
            data=data,
            dedup_key=dedup_key,
            sending=sending,
        )
        uow.after_commit(lambda: self.wakeup.hand_over(job))

    def notify_workers(self, uow: UnitOfWork) -> None:
        """After a commit: wake a worker if the unit of work stored a job for claiming (a job
        handed over has woken one already)."""
        if uow.jobs.stored_unclaimed:
            self.wakeup.notify()

    @property
    def organisation(self) -> str:
        """Our organisation's HER-id: what we answer from when the addressed HER-id is not ours."""
        return self.organisation_her_id or min(self.own_her_ids, key=int)

    def description(self) -> MshDescription:
        return MshDescription(
            msh_system="meldingstjener",
            msh_version=__version__,
            application=self.application,
            application_version=__version__,
        )

    def our_party(self, her_id: str) -> Party:
        return Party(her_id=her_id, role="Utleverer")
