"""What ``POST /ebms`` could not take, made visible to the operator.

A message that could be read and was refused is alerted by the inbound pipeline
(``message-refused``). Here: the store failing (a full disk, the payload directory gone), which
the sender, or the EPJ, only sees as a 503 to resend on (:class:`StoreFailing`), and an error
nobody expected (a fault in the server), answered 500. Both would otherwise be a line in the
server log only. And a peer whose requests are refused before anything can be answered in
ebXML (400: no readable envelope; 413: too large) ``REFUSED_IN_A_ROW`` times in a row: one such
request may be a stray, a partner that keeps sending them has a broken MSH, and only the HTTP
answers told it so.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

from meldingstjener.ebxml import EbxmlError, unpackage_envelope
from meldingstjener.ebxml.codes import EB_NS, PARTY_TYPE_HER
from meldingstjener.ebxml.mime_headers import parse_content_type
from meldingstjener.engine import recovery
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.formats.xmlparse import XmlError, parse_xml
from meldingstjener.formats.xmlutil import plain_text
from meldingstjener.model import HerId, InvalidHerId
from meldingstjener.model.privacy import passed_through, redact
from meldingstjener.store.database import database_full, transient
from meldingstjener.store.identity import (
    CheckedPayloadStore,
    PayloadDirectoryLost,
    PayloadDirectoryNotOurs,
)
from meldingstjener.store.opening import StoreUnavailable
from meldingstjener.store.uow import UnitOfWork

if TYPE_CHECKING:  # the context holds this process's StoreFailing
    from meldingstjener.engine.context import EngineContext

log = logging.getLogger(__name__)

REFUSED_IN_A_ROW = 3  # at one process: each counts the requests it answers
# the key of the one ebms-refused alert for all peers that are not known parties
UNKNOWN = "unknown"


def refused(
    ctx: EngineContext, address: str, sender: str | None, code: str, http_status: int
) -> None:
    """A request answered 400, 408 or 413, or its head refused before it was read (431, 400:
    ``api.faults``). Counted per the envelope's From HER-id when that could be read and is a
    party we know, else per the address it came from; an alert from the
    ``REFUSED_IN_A_ROW``-th on. What such a From says is not verified: a known party has an
    alert of its own, resolved by its next message stored; requests from anybody else share
    one (``unknown``), resolved by hand, so that no sender can open an alert per request."""
    known = sender if sender is not None and _known(ctx, sender) else None
    subject = recovery.sender(known) if known else recovery.peer(address)
    count = ctx.recovery.refused(subject)
    if count < REFUSED_IN_A_ROW:
        return
    whose = (
        f"whose envelopes name {known} as their sender (not verified)"
        if known
        else f"from address {address}"
        + (f", whose envelopes name {sender} as their sender (not verified)" if sender else "")
    )
    summary = (
        f"{count} requests in a row to POST /ebms {whose} were refused before they could be "
        f"answered in ebXML (the last: HTTP {http_status}, {code}, from address {address}). "
        "Only the sending MSH saw the answers: tell the partner."
    )

    def alert(uow: UnitOfWork) -> None:
        if known is None:
            raise_alert(
                uow,
                AlertKind.EBMS_REFUSED,
                summary + " Requests of senders that are not known parties share this alert, "
                "which no request resolves: resolve it by hand.",
                at=ctx.clock(),
                key=UNKNOWN,
            )
            return
        ctx.recovery.raise_alert(
            uow,
            AlertKind.EBMS_REFUSED,
            summary,
            subject=subject,
            key=subject,
            at=ctx.clock(),
            partner_her_id=known,
        )

    _raise(ctx, alert)


def _known(ctx: EngineContext, her_id: str) -> bool:
    """Whether ``her_id`` is a party we hold a signing certificate of (current or replaced)."""
    try:
        with ctx.store.unit_of_work() as uow:
            return ctx.directory.signing_certificates(uow, her_id).known
    except Exception:  # the database may be away: one of many, then
        log.warning("could not look up the party %s", her_id, exc_info=True)
        return False


def accepted(ctx: EngineContext, address: str) -> None:
    """A request from ``address`` was taken (answered 200) and an alert about it may be open:
    resolve it (engine/recovery; the caller asked ``went_through_quietly`` first)."""
    try:
        with ctx.store.unit_of_work() as uow:
            ctx.recovery.went_through(uow, (recovery.peer(address),), at=ctx.clock())
            uow.commit()
    except Exception:  # the message is stored: its sender gets its answer all the same
        log.exception("the alerts about %s could not be resolved", address)


# What a disk that cannot take more says: full, over its quota, or mounted read-only. The EPJ
# API's calls count only these as the store failing (another OSError there is a fault of ours);
# ``POST /ebms`` counts every OSError of its payload store (its directory gone, say) too.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused because the disk cannot take more."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def store_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing for a while what a call would store: its disk
    full (the payload directory's, or the database's own: SQLite's full database, PostgreSQL's
    disk_full), or its payload directory not the store's any more (the marker gone with a
    share). What the jobs wait for (failing_jobs); the 503s count the database's other
    resources too (out of memory: a request is new each time, a job's repeat may fail alike)."""
    return disk_full(exc) or isinstance(exc, PayloadDirectoryLost) or database_full(exc)


# How old the last look at the payload directory's marker may be when /health answers: older,
# /health looks itself (StoreFailing.writable). Seconds: a load balancer polls every second or
# two, and a message stored into a folder underneath a dropped share is missing to every serve.
HEALTH_MARKER_LOOK = 5.0
# How many senders the store-failing alert and the log line at a period's end name: those with
# the most requests refused; the rest are counted together ("and N more").
SENDERS_NAMED = 10
# How many senders one period counts apart, in memory. A From is not verified (nothing is, while
# the store refuses): requests naming ever new ones must not grow the count without end; the
# refusals of senders beyond are counted with the rest.
SENDERS_KEPT = 1000


def claimed_sender(
    content_type: str, body: bytes | os.PathLike[str], *, max_xml_bytes: int
) -> str | None:
    """The HER-id the From of a ``POST /ebms`` request's envelope names, for a request the store
    refused (:meth:`StoreFailing.failed`): its envelope part alone is read again (not the
    payload's parts), bounded as the receive bounds it (``max_xml_bytes``), and its From read
    as :func:`sender_named_by` reads it (a defect elsewhere in the envelope does not hide it).
    None when it cannot be read or names no HER-id. Not verified: the signature was not (or no
    longer) what counted."""
    try:
        envelope_xml = unpackage_envelope(content_type, body)
        root = parse_xml(envelope_xml, max_bytes=max_xml_bytes)
    except (EbxmlError, XmlError, OSError):  # OSError: a spool removed meanwhile
        return None
    return sender_named_by(root)


def claimed_sender_of_head(content_type: str, head: bytes, *, max_xml_bytes: int) -> str | None:
    """:func:`claimed_sender` of a request refused before it was read whole (its spool could
    not be written), from ``head``, the first bytes of its body (those in memory then: nothing
    more is read from the network). A multipart body is cut at the last MIME boundary in
    ``head`` and closed there: the parts wholly inside are read as in the whole body, so the
    envelope (the first part, as senders put it) is read when it ends within ``head``. None
    when it does not, or the start part is not among them."""
    try:
        media, params = parse_content_type(content_type)
    except EbxmlError:
        return None
    boundary = params.get("boundary", "")
    if media != "multipart/related" or not boundary.isascii():
        return claimed_sender(content_type, head, max_xml_bytes=max_xml_bytes)
    delimiter = b"\n--" + boundary.encode("ascii")
    cut = head.rfind(delimiter)
    if cut <= 0:
        return None
    closed = head[:cut] + delimiter + b"--\r\n"
    return claimed_sender(content_type, closed, max_xml_bytes=max_xml_bytes)


_FROM_PARTY_IDS = f".//{{{EB_NS}}}MessageHeader/{{{EB_NS}}}From/{{{EB_NS}}}PartyId"


def sender_named_by(root: etree._Element | None) -> str | None:
    """The HER-id the From of an envelope parsed as XML names, whether or not the rest of it
    could be read (a request refused: the store failing, or the envelope unreadable): its
    first PartyId of type HER, read by the rule the envelope's parser reads it by (the type in
    any case, blanks around it and the value dropped, the value text alone), as a HER-id. None
    when there is none, or it is no HER-id (a PartyId of another type is any text). Not
    verified."""
    if root is None:
        return None
    for party_id in root.iterfind(_FROM_PARTY_IDS):
        qualified = party_id.get(f"{{{EB_NS}}}type")  # msg-header-2_0.xsd; some leave it bare
        kind = qualified if qualified is not None else party_id.get("type")
        if (kind or "").strip().upper() != PARTY_TYPE_HER:
            continue
        value = plain_text(party_id)  # a comment inside is refused by the parser too
        try:
            return None if value is None else str(HerId(value.strip()))
        except InvalidHerId:
            return None
    return None


class RefusedSenders:
    """The requests refused in one period of the store failing, per the HER-id their envelopes
    name as From (an organisation, no patient), so that the operator can tell which partners
    were turned away (and gave up their messages, maybe): the 503s tell only their senders."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._beyond = 0  # refusals of senders past SENDERS_KEPT

    def add(self, her_id: str) -> None:
        if her_id in self._counts or len(self._counts) < SENDERS_KEPT:
            self._counts[her_id] += 1
        else:
            self._beyond += 1

    def told(self) -> str:
        """A sentence naming the :data:`SENDERS_NAMED` senders with the most refusals (ties by
        HER-id), the rest counted; empty when no refused request named one."""
        if not self._counts:
            return ""
        ranked = sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))
        named = ranked[:SENDERS_NAMED]
        listed = ", ".join(f"{her_id} ({count})" for her_id, count in named)
        others = len(ranked) - len(named)
        others_refused = sum(count for _, count in ranked[SENDERS_NAMED:]) + self._beyond
        if others_refused:
            more = f"over {others}" if self._beyond else str(others)
            listed += f" and {more} more ({others_refused})"
        # a From naming eleven digits of a national id is masked, as every alert's text is
        return str(
            redact(
                " Requests refused per the sender their envelopes name (From HER-id, not "
                f"verified): {listed}."
            )
        )


class StoreFailing:
    """Since when this ``serve`` process could not write its store (the payload directory, or
    the database: its disk full), in memory, as the heartbeat remembers the database away: on
    a full disk the alert cannot be written either (SQLite and the payloads share ``data_dir``
    by default), and afterwards nothing would say that for an hour every message was answered
    503. So the first failure starts a period (one log line), each request refused meanwhile
    is counted (no line: a traceback per request flooded the log), and ``/health`` answers 503
    ``store-failing`` while it lasts. It ends at the first write that works: a message stored,
    or :meth:`probe` (a payload file and the alert, written), which ``/health`` and every
    heartbeat (:meth:`watch`, once a minute) try while it lasts, so that it ends on a server
    nobody sends to or asks either. The ``store-failing`` alert is raised for each refused
    request while it can be, and resolved when the period ends (or this process stores a
    received message again); when some could not be, the first commit that works raises one
    more, under the key ``<instance>:outage`` and resolved by hand, telling from when to when
    and how many requests were refused. The alert (as counted when it is written) and the log
    line at the end name the senders refused the most (:class:`RefusedSenders`, in memory: the
    database may be what refuses), so that the operator knows which partners to call.

    The heartbeat also reads the payload directory's marker (:meth:`watch`): a marker gone,
    another store's or unreadable starts a period too, its alert naming the cause, and the
    payload store refuses every write meanwhile (``store.identity.PayloadDirectoryLost``,
    answered 503 as a full disk is) until the marker is back. The worker's jobs that meet it
    wait without counting (:meth:`work_refused`): the period tells their outage too."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._since: datetime | None = None
        self._reason = ""
        self._refused = 0
        self._unalerted = 0  # refusals whose alert could not be stored
        self._senders = RefusedSenders()
        # the cause this period's alert tells, and its text (see _told_text)
        self._told: tuple[str, str] | None = None

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, request: str, sender: str | None = None) -> None:
        """``request`` (``POST /ebms``, ``POST /Messages``) was answered 503 because the store
        could not be written (``exc``): counted (per ``sender``, the HER-id a received message
        names as its From, when that could be read: :func:`claimed_sender`), and alerted if the
        alert can be stored."""
        directory = self.ctx.store.payloads.root
        reason = _reason(exc, directory)
        self._start(
            reason,
            f"a request received by instance {self.ctx.instance} ({request}) could not be "
            f"stored: its store failed ({reason}). It was answered 503 and its sender "
            f"resends, until it gives up. {_remedy(exc, directory)}; the server log says "
            "since when.",
            refused=1,
            cause=_cause(exc, reason),
            sender=sender,
        )

    def work_refused(self, exc: BaseException, work: str) -> None:
        """Work of this process (``work``: "its transmit job", "the folder inbox") met the store
        refusing (``exc``, see :func:`store_refused`) and was left to wait, not counted (the
        worker's ``failing_jobs.wait_for_store``, the folder integration's rounds). While a
        period runs that is all: its log line and alert tell the outage once, not once per job
        or file. Else (a full disk met by such work before any request) a period starts, so
        that it is told, alerted, shown by ``/health`` and ended by the heartbeat's probe."""
        if self.failing:
            return
        directory = self.ctx.store.payloads.root
        reason = _reason(exc, directory)
        self._start(
            reason,
            f"Instance {self.ctx.instance} cannot write its store ({reason}), as {work} found. "
            "The work that reads or writes a message's content (sends, resends, signals, "
            "deliveries, the folder integration) waits for it, not counted as tries; messages "
            f"received and the EPJ API's calls are answered 503. {_remedy(exc, directory)}: "
            "the next heartbeat, within a minute, ends this.",
            refused=0,
            cause=_cause(exc, reason),
        )

    def watch(self) -> None:
        """At every heartbeat of ``serve``: read the payload directory's marker again (a period
        starts when it is found gone, another store's or unreadable), and while a period lasts
        :meth:`probe` the store, so that it ends within a heartbeat of the store being
        writable again."""
        payloads = self.ctx.store.payloads
        if isinstance(payloads, CheckedPayloadStore) and self._look_at_marker(payloads):
            return
        if self.failing:
            self.probe()

    def writable(self) -> bool:
        """For ``/health``: whether the store can be written. The marker is looked at when the
        last look began :data:`HEALTH_MARKER_LOOK` seconds ago or more (a period starts as at
        the heartbeat's look): a share that dropped is seen within seconds, not the heartbeat's
        minute, by a server a load balancer polls (one read of a small file in a few seconds,
        however often it polls; one that hangs holds this call no longer than the read's
        bound). While a period lasts, the store is probed (:meth:`probe`), unless the marker is
        still missing: the probe's touch would read it once more, and be refused."""
        payloads = self.ctx.store.payloads
        if isinstance(payloads, CheckedPayloadStore):
            if payloads.look_due(HEALTH_MARKER_LOOK):
                self._look_at_marker(payloads)
            if payloads.lost:
                return False
        return not self.failing or self.probe()

    def _look_at_marker(self, payloads: CheckedPayloadStore) -> bool:
        """Read the payload directory's marker again: whether it was found not the store's
        (a period started then, alerted once, when it is found)."""
        was_lost = payloads.lost
        lost = payloads.watch_marker()
        if lost is None:
            return False
        if not was_lost or not self.failing:
            self._start(
                str(lost),
                f"Instance {self.ctx.instance} refuses to store anything: {lost}. A "
                "payload written there now would be missing to every other serve "
                "(and from the share once it is back). Messages received are answered "
                "503 (their senders resend) and so are the EPJ API's calls; /health "
                "says store-failing. Sends, resends and deliveries wait, not counted "
                "as tries; a resend whose PersistDuration runs out meanwhile is given "
                "up (not-delivered). Mount the payload share again (or put the marker "
                "back): the next heartbeat, within a minute, ends this.",
                refused=0,
                cause=_DIRECTORY_LOST,
                specific=True,
            )
        return True

    def _start(
        self,
        reason: str,
        summary: str,
        *,
        refused: int,
        cause: str,
        specific: bool = False,
        sender: str | None = None,
    ) -> None:
        """A period of failing starts (one log line), or goes on: ``refused`` requests more
        (of ``sender``), and the ``store-failing`` alert raised (see :meth:`_told_text`), naming
        the senders refused so far, if it can be stored."""
        at = self.ctx.clock()
        with self._lock:
            starts = self._since is None
            if starts:
                self._since, self._reason, self._told = at, reason, None
                self._senders = RefusedSenders()
            self._refused += refused
            if sender is not None:
                self._senders.add(sender)
            summary = self._told_text(cause, summary, specific=specific) + self._senders.told()
        if starts:
            log.error(
                "this server cannot write its store (%s): requests that store are answered 503 "
                "and /health says store-failing until a write works",
                reason,
            )

        def alert(uow: UnitOfWork) -> None:
            ctx = self.ctx
            ctx.recovery.raise_alert(
                uow,
                AlertKind.STORE_FAILING,
                summary,
                subject=recovery.store(ctx.instance),
                key=ctx.instance,
                at=at,
            )

        if not _raise(self.ctx, alert, quiet=not starts):
            with self._lock:
                self._unalerted += 1

    def _told_text(self, cause: str, summary: str, *, specific: bool) -> str:
        """The text the period's alert is raised with now: ``summary``, unless the alert tells
        the same ``cause`` already and this is not the heartbeat's own finding (``specific``).
        A request refused for the payload directory the heartbeat found lost, or for the
        same full disk, adds nothing but a count to it: its generic words ("a request could
        not be stored") must not replace the remedy told (put the marker back, naming the
        store). Called under the lock."""
        if specific or self._told is None or self._told[0] != cause:
            self._told = (cause, summary)
        return self._told[1]

    def wrote(self) -> None:
        """A write of the store worked (a commit, or :meth:`probe`'s file): a period of failing
        ends, its ``store-failing`` alert resolved, and told by one more alert when some
        refusals could not be alerted. When that cannot be stored, the period goes on (the
        database is what still fails)."""
        with self._lock:
            since, reason, refused, unalerted, senders = (
                self._since,
                self._reason,
                self._refused,
                self._unalerted,
                self._senders.told(),
            )
        if since is None:
            return
        if self._payloads_lost():
            # a write that touched no payload (a signal: the database only) proves nothing
            # while the payload directory is not the store's
            return
        until = self.ctx.clock()
        ctx = self.ctx

        def ended(uow: UnitOfWork) -> None:
            # a message stored has resolved it already; a probe's write has not
            ctx.recovery.went_through(uow, (recovery.store(ctx.instance),), at=until)
            if not unalerted:
                return
            raise_alert(
                uow,
                AlertKind.STORE_FAILING,
                f"Instance {ctx.instance} could not write its store from "
                f"{since:%Y-%m-%d %H:%M:%S} to {until:%Y-%m-%d %H:%M:%S} UTC ({reason}; by "
                f"its host's clock): {refused} requests were answered 503 meanwhile "
                f"({unalerted} of them could not be alerted then); their senders resend "
                "until they give up. It writes again: see why the disk was full, and that "
                f"what was held back has come (meldingstjener log).{senders}",
                at=until,
                key=f"{ctx.instance}:outage",
            )

        if not _raise(self.ctx, ended, quiet=True):
            return
        with self._lock:
            if self._since != since:
                return  # ended by another thread meanwhile
            self._since, self._refused, self._unalerted, self._told = None, 0, 0, None
            self._senders = RefusedSenders()
        log.warning(
            "this server writes its store again, after %s: %d requests were answered 503 since "
            "%s.%s",
            reason,
            refused,
            f"{since:%Y-%m-%d %H:%M:%S} UTC",
            senders,
        )

    def _payloads_lost(self) -> bool:
        """Whether the payload directory is still not the store's: looked at again (a read
        of the marker) only while the last look found it so."""
        payloads = self.ctx.store.payloads
        return (
            isinstance(payloads, CheckedPayloadStore)
            and payloads.lost
            and payloads.watch_marker() is not None
        )

    def probe(self) -> bool:
        """While failing: whether the store can be written now, by writing a small payload
        file (fsynced, then removed) and, when the alert of the outage is due, that alert.
        Without this a server a load balancer took out for its ``/health`` would never be
        written to again, and never be put back."""
        if not self.failing:
            return True
        payloads = self.ctx.store.payloads
        try:
            payloads.delete(payloads.put(b"probe").key)
        except (OSError, StoreUnavailable):  # StoreUnavailable: the directory not the store's
            return False
        self.wrote()
        return not self.failing


# the cause of every refusal for the payload directory not being the store's (its marker)
_DIRECTORY_LOST = "payload-directory-lost"


def _cause(exc: BaseException, reason: str) -> str:
    """Which outage ``exc`` is, for :meth:`StoreFailing._told_text`: the payload directory
    lost (whatever the words of the touch that met it), else its reason."""
    return _DIRECTORY_LOST if isinstance(exc, PayloadDirectoryNotOurs) else reason


def _reason(exc: BaseException, directory: Path | None = None) -> str:
    """What failed, for a log line and an alert: an OSError's errno and the payload directory
    (``directory``, and the path the error names when that is another: a sub-folder, a file),
    or a database's error class and the driver's code (SQLite's result code's name,
    PostgreSQL's SQLSTATE: a full disk told from memory); never an error's text, which may quote
    what was stored. Paths in the payload directory are random keys: no content."""
    if isinstance(exc, StoreUnavailable) and isinstance(exc.__context__, OSError):
        exc = exc.__context__  # the payload directory checked at a process's first file
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0) or type(exc).__name__
        where = "the payload directory" + (f" {directory}" if directory is not None else "")
        named = exc.filename
        if named is not None and not _within(Path(os.fsdecode(named)), directory):
            where += f" (at {os.fsdecode(named)})"
        return f"{name} in {where}"
    if isinstance(exc, StoreUnavailable):  # its words name a directory or database, no content
        return str(exc)
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    return f"the database: {type(exc).__name__}" + (f" ({code})" if code else "")


def _within(path: Path, directory: Path | None) -> bool:
    """Whether ``path`` is ``directory`` or in it: a file there is not named, as each request's
    file has a name of its own (a random key), and the alert's text would change with every
    request refused for the same cause."""
    return directory is not None and (path == directory or directory in path.parents)


def _remedy(exc: BaseException, directory: Path) -> str:
    """What mends the store failing by ``exc``, as exactly as its cause tells: a sentence
    without its full stop."""
    if isinstance(exc, PayloadDirectoryNotOurs):
        return (
            f"Mount the payload share at {directory} again (or put its marker back, naming "
            "this store)"
        )
    if isinstance(exc, StoreUnavailable) and isinstance(exc.__context__, OSError):
        exc = exc.__context__
    if not isinstance(exc, OSError):
        return (
            "Free disk space for the database"
            if database_full(exc)
            else "Free disk space or mend the payload directory"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"Free disk space (or quota) on the disk of the payload directory {directory}"
    if exc.errno == errno.EROFS:
        return f"Mount the file system of the payload directory {directory} writable again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"Give the server's user write permission on the payload directory {directory} "
            "and the folders in it"
        )
    return f"Mend the payload directory {directory} (a directory the server's user can write)"


def failed(ctx: EngineContext, exc: Exception) -> None:
    """An error nobody expected while receiving (a fault in the server or its data), answered
    500. The alert names the error's class only: its text may quote what was received."""
    name = type(exc).__name__[:100]
    # the traceback's places, not its texts: an error of a parser or schema may quote the
    # message, and its sender resends it, every time logged again
    log.error(
        "receiving a message failed unexpectedly (%s): answered 500\n%s", name, passed_through(exc)
    )

    def alert(uow: UnitOfWork) -> None:
        raise_alert(
            uow,
            AlertKind.EBMS_FAILING,
            f"a message received over POST /ebms failed with an unexpected error ({name}) and "
            "was answered 500; its sender resends, and may fail the same way. The server log "
            "has the details.",
            at=ctx.clock(),
            key=name,
        )

    _raise(ctx, alert)


def _raise(ctx: EngineContext, alert: Callable[[UnitOfWork], None], *, quiet: bool = False) -> bool:
    """Store ``alert``; whether that worked. The database may be what failed too (SQLite on the
    full disk): the answer to the sender must not change for it, so the log must do (one line,
    when the database failed for a while, else with the traceback; none when ``quiet``)."""
    try:
        with ctx.store.unit_of_work() as uow:
            alert(uow)
            uow.commit()
    except Exception as exc:
        if quiet:
            pass  # the caller's own line tells it (a period of the store failing)
        elif transient(exc) or disk_full(exc):
            log.warning("the alert could not be stored: %s", _reason(exc))
        else:
            log.exception("the alert could not be stored")
        return False
    return True
