"""Unit of work and repositories: "store + record event" as one atomic step.

The engine opens a :class:`UnitOfWork`, changes messages through the repositories and commits once.
A status change always goes through :meth:`MessageRepository.set_status` (a loaded row) or
:meth:`MessageRepository.change_state` (the hot path, without the ORM), which check the status
machine and write the event row in the same transaction. Due work is claimed with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers never take the same job; on SQLite
every transaction starts with ``BEGIN IMMEDIATE`` and claims are serialised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Result,
    Select,
    Table,
    TextClause,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.sql.selectable import TextualSelect

from meldingstjener.model import Direction, OutboundStatus, check_transition, initial_status
from meldingstjener.model.privacy import redact, redact_all
from meldingstjener.store import alert_log
from meldingstjener.store.changes import wrote_in_transaction
from meldingstjener.store.database import Database
from meldingstjener.store.instance_lock import name_key
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.tables import (
    JOB_HELD,
    JOB_WAITING,
    AgreementRow,
    AlertRow,
    ContentKeyRow,
    EventRow,
    FolderFileRow,
    InstanceRow,
    JobRow,
    MessageRow,
    PartyRow,
    ReceiptRow,
    StateRow,
    apprec_owed_sql,
    new_id,
)
from meldingstjener.store.types import utcnow

_MESSAGE_COLUMNS = cast(Table, MessageRow.__table__).c
_MESSAGE_INSERT = text(
    f"INSERT INTO messages ({', '.join(c.name for c in _MESSAGE_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c.name for c in _MESSAGE_COLUMNS)})"
).bindparams(*(bindparam(c.name, type_=c.type) for c in _MESSAGE_COLUMNS))
# what the ORM would fill in for a column left empty (MessageRepository.add sets most of them)
_MESSAGE_DEFAULTS: dict[str, Callable[[], Any]] = {
    "id": new_id,
    "attempts": lambda: 0,
    "created_at": utcnow,
    "updated_at": utcnow,
    "status_changed_at": utcnow,
}
assert {c.name for c in _MESSAGE_COLUMNS if c.default is not None} == set(_MESSAGE_DEFAULTS)


def flush(session: Session) -> None:
    """``session.flush()``, with each new message written first by one prepared INSERT: the
    ORM's insert of a 40-column row was a hot spot of every message on both sides. The row is
    then tracked as if loaded, so a later change in the unit of work is an ORM UPDATE. Messages
    go first because nothing a message row refers to is ever new in the same flush."""
    new_messages = [row for row in session.new if isinstance(row, MessageRow)]
    for row in new_messages:
        for name, default in _MESSAGE_DEFAULTS.items():
            if getattr(row, name) is None:
                setattr(row, name, default())
        values = {column.name: getattr(row, column.name) for column in _MESSAGE_COLUMNS}
        session.expunge(row)
        session.connection().execute(_MESSAGE_INSERT, values)
        make_transient_to_detached(row)
        session.add(row)
    session.flush()


def _execute_for_dialect(
    session: Session, statements: dict[str, TextualSelect], **parameters: Any
) -> Any:
    """Run the statement written for this database (they differ in their row locks)."""
    dialect = session.get_bind().dialect.name
    return session.connection().execute(statements[dialect], parameters)


class EventKind:
    """The kinds of entries in the message log."""

    STATUS = "status"
    SIGNAL_IN = "signal-in"
    SIGNAL_OUT = "signal-out"
    ATTEMPT = "attempt"
    ERROR = "error"
    NOTE = "note"


# The code of the NOTE event with which a message records that retention removed its payload
# files (engine/retention.py writes it, ``show`` reads it).
# The outbound statuses of a message that waits to be sent: the first send (``accepted``) or a
# resend (``retrying``); the transmit job sends only these.
WAITING_TO_BE_SENT: Final = frozenset(
    {OutboundStatus.ACCEPTED.value, OutboundStatus.RETRYING.value}
)
# PostgreSQL: the first key of the advisory lock (transaction-scoped) a give-up holds on the
# queue to its receiver (the second key is from the receiver's HER-id, see hold_queue_to)
QUEUE_LOCK_SPACE = 0x6D74_7175  # "mtqu"
CONTENT_REMOVED = "content-removed"


_EVENT_COLUMNS = (
    "message_id",
    "kind",
    "actor",
    "detail",
    "code",
    "from_status",
    "to_status",
    "ebxml_message_id",
    "at",
)
_EVENT_ROWS_PER_INSERT = 50


@functools.lru_cache(maxsize=_EVENT_ROWS_PER_INSERT)
def _event_insert(count: int) -> TextClause:
    """``INSERT INTO message_events ... VALUES (...), ...`` for ``count`` rows, typed binds."""
    columns = cast(Table, EventRow.__table__).c
    rows = ", ".join(
        "(" + ", ".join(f":{column}_{number}" for column in _EVENT_COLUMNS) + ")"
        for number in range(count)
    )
    binds = [bindparam(f"at_{number}", type_=columns["at"].type) for number in range(count)]
    return text(
        f"INSERT INTO message_events ({', '.join(_EVENT_COLUMNS)}) VALUES {rows}"
    ).bindparams(*binds)


class EventRepository:
    """The message log. Events are collected and written in one statement when the unit of work
    commits (after the rows they refer to), not one ORM object and round trip each."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._pending: list[dict[str, Any]] = []

    def record(
        self,
        message_id: str | None,
        kind: str,
        *,
        actor: str,
        detail: str | None = None,
        code: str | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        ebxml_message_id: str | None = None,
        at: datetime | None = None,
    ) -> None:
        self._pending.append(
            {
                "message_id": message_id,
                "kind": kind,
                "actor": actor,
                "detail": redact(detail),
                "code": code,
                "from_status": from_status,
                "to_status": to_status,
                "ebxml_message_id": ebxml_message_id,
                "at": at or utcnow(),
            }
        )

    def has_pending(self) -> bool:
        return bool(self._pending)

    def write_pending(self) -> None:
        """Write the collected events (the ORM flushes the messages they refer to first)."""
        if self._pending:
            pending, self._pending = self._pending, []
            flush(self.session)
            # One multi-row INSERT, prepared per row count: a list of parameter sets would be
            # sent as an executemany, several times the CPU for the usual one to three rows.
            for start in range(0, len(pending), _EVENT_ROWS_PER_INSERT):
                rows = pending[start : start + _EVENT_ROWS_PER_INSERT]
                parameters = {
                    f"{column}_{number}": row[column]
                    for number, row in enumerate(rows)
                    for column in _EVENT_COLUMNS
                }
                self.session.connection().execute(_event_insert(len(rows)), parameters)

    def for_message(self, message_id: str) -> list[EventRow]:
        self.write_pending()
        query = select(EventRow).where(EventRow.message_id == message_id)
        return list(self.session.scalars(query.order_by(EventRow.at, EventRow.id)))

    def latest(self, message_id: str) -> EventRow | None:
        """The message's newest event (along ``ix_message_events_message_at``)."""
        self.write_pending()
        query = select(EventRow).where(EventRow.message_id == message_id)
        return self.session.scalars(
            query.order_by(EventRow.at.desc(), EventRow.id.desc()).limit(1)
        ).first()


@dataclass(frozen=True)
class DeliveredBetween:
    """The received messages delivered to the EPJ (their status ``delivered``, whose time is
    their last change) at or after ``since`` and before ``before``: the ``apprec-owed`` check
    judges these, and the log's search for them lists the same."""

    since: datetime
    before: datetime


@dataclass(frozen=True)
class LogFilter:
    """Filters of the message log (``meldingstjener log``, the API's log search)."""

    her_id: str | None = None
    msg_type: str | None = None
    status: str | None = None
    since: datetime | None = None
    direction: str | None = None
    limit: int = 1000
    until: datetime | None = None  # at or before (the API's paging back, newest first)
    # the identities a help desk is given: every copy with the MsgId (a document the EPJ sent
    # again, or to several receivers, is a row each), the eb:MessageId, the ConversationId
    msg_id: str | None = None
    ebxml_message_id: str | None = None
    conversation_id: str | None = None
    # only received messages the EPJ has and owes an AppRec for, delivered within this window
    # (what ``apprec-owed`` counts: engine/inbox_watch.py's apprec_owed_window gives it)
    apprec_owed: DeliveredBetween | None = None


_MESSAGE_BY_EBXML_ID = text(
    "SELECT id FROM messages WHERE direction = :direction AND ebxml_message_id = :ebxml_id"
)


@dataclass(frozen=True)
class SendingView:
    """What a send needs of its message (read by ``sending_view``, or carried by a handed-over
    first send)."""

    id: str
    status: str
    from_her_id: str | None
    to_her_id: str | None
    wire_ref: str | None
    wire_content_type: str | None
    ebxml_message_id: str | None
    attempts: int
    expires_at: datetime | None  # PersistDuration: no send after it
    # the envelope's Service and Action: a CPA may bind a channel per action
    ebxml_service: str | None = None
    ebxml_action: str | None = None
    # the MsgHead type, whose agreement is checked again before each send
    msg_type: str | None = None
    # the certificate the payload was encrypted to (None: stored before it was recorded)
    encrypted_to_sha256: str | None = None


@dataclass(frozen=True)
class MessageState:
    """What a status change on the hot path needs of a message, read by
    :meth:`MessageRepository.lock_state`: loading and flushing the whole 40-column row through
    the ORM cost the sender more than twice the CPU of the statements themselves."""

    id: str
    direction: str
    status: str
    attempts: int
    expires_at: datetime | None
    msg_type: str | None
    ebxml_message_id: str | None
    to_her_id: str | None  # who may send a signal about it (with the receiver's organisation)
    receiver_org_her_id: str | None
    # the envelope we signed, whose digests an Acknowledgment must repeat (engine.signals)
    wire_ref: str | None = None
    wire_content_type: str | None = None


_STATE_COLUMNS = [_MESSAGE_COLUMNS[name] for name in MessageState.__dataclass_fields__]
_SENDING_COLUMNS = [_MESSAGE_COLUMNS[name] for name in SendingView.__dataclass_fields__]
_SENDING_VIEW = text(
    f"SELECT {', '.join(column.name for column in _SENDING_COLUMNS)} FROM messages WHERE id = :id"
).columns(*_SENDING_COLUMNS)


def _state_sql(where: str, lock: str) -> TextualSelect:
    names = ", ".join(column.name for column in _STATE_COLUMNS)
    return text(f"SELECT {names} FROM messages WHERE {where} {lock}").columns(*_STATE_COLUMNS)


# A message's row lock is FOR NO KEY UPDATE (PostgreSQL): its id never changes and the row is
# never deleted, and it lets other transactions insert rows that refer to the message (an event,
# an alert, a receipt, a job: each takes FOR KEY SHARE on it), which FOR UPDATE would block.
# Blocked, a job's handler that held its job's row and then alerted on the message deadlocked
# against an AppRec or Acknowledgment that held the message and then cancelled its jobs.
# SQLite needs no row lock: every unit of work holds the database's write lock (BEGIN IMMEDIATE)
_MESSAGE_LOCK = (("postgresql", "FOR NO KEY UPDATE"), ("sqlite", ""))
_LOCK_STATE = {dialect: _state_sql("id = :id", lock) for dialect, lock in _MESSAGE_LOCK}
_LOCK_STATE_BY_EBXML_ID = {
    dialect: _state_sql("direction = :direction AND ebxml_message_id = :ebxml_id", lock)
    for dialect, lock in _MESSAGE_LOCK
}
# the right-hand sides see the row as it was: status_changed_at moves only with the status
_CHANGE_STATE = text(
    "UPDATE messages SET status_changed_at = CASE WHEN status = :status THEN status_changed_at "
    "ELSE :at END, status = :status, attempts = :attempts, updated_at = :at, "
    "channel = COALESCE(:channel, channel), sent_endpoint = COALESCE(:endpoint, sent_endpoint) "
    "WHERE id = :id"
).bindparams(
    bindparam("at", type_=_MESSAGE_COLUMNS["updated_at"].type),
    bindparam("channel", type_=_MESSAGE_COLUMNS["channel"].type),
    bindparam("endpoint", type_=_MESSAGE_COLUMNS["sent_endpoint"].type),
)


_Query = TypeVar("_Query", bound=Select[Any])


def _locking(query: _Query) -> _Query:
    """``query`` taking the message row's lock (``FOR NO KEY UPDATE``, see ``_MESSAGE_LOCK``),
    and reading it afresh: a row this session read before the lock would otherwise keep the
    values from then (the ORM does not overwrite what it holds), and a status checked against
    them may be one another transaction has changed."""
    return query.with_for_update(key_share=True).execution_options(populate_existing=True)


_SENT_IN_CONVERSATION = text(
    "SELECT 1 FROM messages WHERE ebxml_conversation_id = :conversation"
    " AND direction = :direction AND status = :status LIMIT 1"
)


class MessageRepository:
    def __init__(self, session: Session, events: EventRepository) -> None:
        self.session = session
        self.events = events

    def add(
        self,
        row: MessageRow,
        *,
        actor: str,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> MessageRow:
        """Store a new message in its initial status and log its creation."""
        direction = Direction(row.direction)
        row.status = initial_status(direction).value
        now = at or utcnow()
        row.id = row.id or new_id()
        row.created_at = row.created_at or now
        row.status_changed_at = now
        # No flush here: a status set later in the same unit of work goes into the one INSERT,
        # and the message and its events reach the database in one round trip at commit.
        self.session.add(row)
        self.events.record(
            row.id,
            EventKind.STATUS,
            actor=actor,
            to_status=row.status,
            detail=detail,
            ebxml_message_id=row.ebxml_message_id,
            at=now,
        )
        return row

    def get(self, message_id: str, *, for_update: bool = False) -> MessageRow | None:
        query = select(MessageRow).where(MessageRow.id == message_id)
        if for_update:
            query = _locking(query)
        return self.session.scalars(query).first()

    def by_ebxml_id(
        self, direction: Direction, ebxml_message_id: str, *, for_update: bool = False
    ) -> MessageRow | None:
        if not for_update:
            # the duplicate check of every received message: almost always "no such message",
            # which a prepared statement answers for a fraction of an ORM query's CPU
            found = self.session.connection().execute(
                _MESSAGE_BY_EBXML_ID, {"direction": direction.value, "ebxml_id": ebxml_message_id}
            )
            if found.first() is None:
                return None
        query = select(MessageRow).where(
            MessageRow.direction == direction.value,
            MessageRow.ebxml_message_id == ebxml_message_id,
        )
        if for_update:
            query = _locking(query)
        return self.session.scalars(query).first()

    def sending_view(self, message_id: str) -> SendingView | None:
        """What a send needs of a message, read without loading the whole row."""
        row = self.session.connection().execute(_SENDING_VIEW, {"id": message_id}).first()
        return None if row is None else SendingView(*row)

    def sent_in_conversation(self, conversation_id: str) -> bool:
        """Whether a message of ours in the ebXML conversation is still ``sent`` (asked on every
        received message, by a statement prepared once: an ORM query there cost the receiving
        server 0.5-0.7 ms per message, docs/PERFORMANCE.md)."""
        found = self.session.execute(
            _SENT_IN_CONVERSATION,
            {
                "conversation": conversation_id,
                "direction": Direction.OUTBOUND.value,
                "status": OutboundStatus.SENT.value,
            },
        )
        return found.first() is not None

    def by_msg_id(self, direction: Direction, msg_id: str) -> list[MessageRow]:
        query = select(MessageRow).where(
            MessageRow.direction == direction.value, MessageRow.msg_id == msg_id
        )
        return list(self.session.scalars(query.order_by(MessageRow.created_at)))

    def set_status(
        self,
        row: MessageRow,
        new_status: str,
        *,
        actor: str,
        detail: str | None = None,
        code: str | None = None,
        at: datetime | None = None,
    ) -> MessageRow:
        """Change the status (raises IllegalTransition) and log it in the same transaction."""
        now = at or utcnow()
        self._log_transition(
            row.id,
            row.direction,
            row.status,
            new_status,
            row.ebxml_message_id,
            actor=actor,
            detail=detail,
            code=code,
            at=now,
        )
        row.status = new_status
        row.status_changed_at = now
        if code is not None:
            self.record_error(row, code, detail)
        return row

    def record_error(self, row: MessageRow, code: str, detail: str | None) -> None:
        """Make ``code`` and ``detail`` (masked) the message's last error: with a status change
        (:meth:`set_status`), or without one for a failure in the status it is in (a failed
        resend of a message ``retrying``: its last error is the newest failure, not the first
        of the run). Written with the row's other changes, in its one UPDATE."""
        row.last_error_code = code
        row.last_error_text = redact(detail)

    def hold_queue_to(self, to_her_id: str) -> None:
        """Make another transaction that holds the queue to ``to_her_id`` wait until this one
        ends, so that what :meth:`waits_to_be_sent` reads after it is true until the commit:
        two messages to a partner given up at once each saw the other still waiting (neither
        committed), and neither resolved the partner's alerts.

        SQLite needs nothing: a unit of work holds the database's one writer from its first
        statement. PostgreSQL takes an advisory lock on the HER-id (transaction-scoped); two
        HER-ids whose keys meet (32 bits) wait for each other's give-ups, no more."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"),
                {"space": QUEUE_LOCK_SPACE, "key": name_key(to_her_id)},
            )

    def waits_to_be_sent(self, to_her_id: str, *, other_than: str, ack_timeout_kind: str) -> bool:
        """Whether a message to ``to_her_id`` other than ``other_than`` still waits to be sent
        (``accepted``, or ``retrying``: queued for a send or a resend) or for its Acknowledgment
        (``sent`` with a job of ``ack_timeout_kind``: resent when it does not come), from any of
        our HER-ids. A ``sent`` message without that job was sent without AckRequested (a CPA's
        ackRequested never): nothing resends it, and it stays ``sent`` for good.

        Through ``ix_messages_status`` and ``ix_jobs_message``: what it reads is the queue, not
        the history. Take :meth:`hold_queue_to` first when what it says decides a change."""
        ack_awaited = (
            select(JobRow.id)
            .where(JobRow.message_id == MessageRow.id, JobRow.kind == ack_timeout_kind)
            .exists()
        )
        waiting = (
            select(MessageRow.id)
            .where(
                MessageRow.direction == Direction.OUTBOUND.value,
                MessageRow.to_her_id == to_her_id,
                MessageRow.id != other_than,
                or_(
                    MessageRow.status.in_(sorted(WAITING_TO_BE_SENT)),
                    and_(MessageRow.status == OutboundStatus.SENT.value, ack_awaited),
                ),
            )
            .limit(1)
        )
        return self.session.execute(waiting).first() is not None

    def lock_state(self, message_id: str) -> MessageState | None:
        """Read and lock (PostgreSQL: ``FOR NO KEY UPDATE``) what a status change needs of a
        message, one prepared statement instead of the ORM's load of the whole row."""
        found = _execute_for_dialect(self.session, _LOCK_STATE, id=message_id).first()
        return None if found is None else MessageState(*found)

    def lock_state_by_ebxml_id(
        self, direction: Direction, ebxml_message_id: str
    ) -> MessageState | None:
        found = _execute_for_dialect(
            self.session,
            _LOCK_STATE_BY_EBXML_ID,
            direction=direction.value,
            ebxml_id=ebxml_message_id,
        ).first()
        return None if found is None else MessageState(*found)

    def change_state(
        self,
        state: MessageState,
        *,
        status: str | None = None,
        attempts: int | None = None,
        actor: str,
        detail: str | None = None,
        at: datetime | None = None,
        delivered_to: tuple[str, str] | None = None,
    ) -> MessageState:
        """:meth:`set_status` (and the attempt count) for a message read with
        :meth:`lock_state`: the same transition check and event, written as one UPDATE.
        ``delivered_to`` (channel, endpoint) records where an attempt was delivered.
        Do not mix with an ORM row of the same message in one unit of work."""
        now = at or utcnow()
        new_status = status or state.status
        if new_status != state.status:
            self._log_transition(
                state.id,
                state.direction,
                state.status,
                new_status,
                state.ebxml_message_id,
                actor=actor,
                detail=detail,
                code=None,
                at=now,
            )
        changed = replace(
            state, status=new_status, attempts=state.attempts if attempts is None else attempts
        )
        self.session.connection().execute(
            _CHANGE_STATE,
            {
                "id": state.id,
                "status": changed.status,
                "attempts": changed.attempts,
                "at": now,
                "channel": delivered_to[0] if delivered_to else None,
                "endpoint": delivered_to[1] if delivered_to else None,
            },
        )
        return changed

    def _log_transition(
        self,
        message_id: str,
        direction: str,
        previous: str,
        new_status: str,
        ebxml_message_id: str | None,
        *,
        actor: str,
        detail: str | None,
        code: str | None,
        at: datetime,
    ) -> None:
        """The one place a status change is checked against the status machine and logged."""
        check_transition(Direction(direction), previous, new_status)
        self.events.record(
            message_id,
            EventKind.STATUS,
            actor=actor,
            from_status=previous,
            to_status=new_status,
            detail=detail,
            code=code,
            ebxml_message_id=ebxml_message_id,
            at=at,
        )

    def search(self, log_filter: LogFilter, *, newest_first: bool = False) -> list[MessageRow]:
        """Messages by the time they were made: the oldest ``limit`` of them, or the newest."""
        query = self._filtered(select(MessageRow), log_filter)
        if log_filter.since is not None:
            query = query.where(MessageRow.created_at >= log_filter.since)
        if log_filter.until is not None:
            query = query.where(MessageRow.created_at <= log_filter.until)
        if newest_first:
            # the id too: messages made in one instant come in one order on every page
            query = query.order_by(MessageRow.created_at.desc(), MessageRow.id.desc())
        else:
            query = query.order_by(MessageRow.created_at)
        return list(self.session.scalars(query.limit(log_filter.limit)))

    def log(
        self, log_filter: LogFilter, *, newest: bool = False
    ) -> list[tuple[EventRow, MessageRow | None]]:
        """Events joined with their message, oldest first, filtered like the message log: the
        first ``limit`` of them, or with ``newest`` the last ``limit``. An event of no message
        (one refused before its signature verified, not stored) matches by what it carries:
        its eb:MessageId, and its sender's HER-id as its actor names it.

        The events of stored messages and those of no message are two searches, each through
        its own indexes, merged here: one statement with the two as alternatives (an OR across
        the outer-joined tables) could use no index and read the whole log on PostgreSQL."""
        self.events.write_pending()
        f = log_filter
        criteria = self._criteria(f)
        order = (EventRow.at.desc(), EventRow.id.desc()) if newest else (EventRow.at, EventRow.id)
        stored = select(EventRow, MessageRow).join(MessageRow, EventRow.message_id == MessageRow.id)
        stored = stored.where(*self._in_time(f), *(message for message, _ in criteria))
        found: list[tuple[EventRow, MessageRow | None]] = [
            (event, message)
            for event, message in self.session.execute(stored.order_by(*order).limit(f.limit))
        ]
        unstored = [criterion for _, criterion in criteria if criterion is not None]
        if len(unstored) == len(criteria):  # (no criterion only a stored message meets)
            rowless = select(EventRow).where(
                EventRow.message_id.is_(None), *self._in_time(f), *unstored
            )
            found += [
                (event, None)
                for event in self.session.scalars(rowless.order_by(*order).limit(f.limit))
            ]
            # the order of the statements' ORDER BY: the time, then the id
            found.sort(key=lambda pair: (pair[0].at, pair[0].id), reverse=newest)
            del found[f.limit :]
        return found[::-1] if newest else found

    @staticmethod
    def _in_time(f: LogFilter) -> list[ColumnElement[bool]]:
        """The events from ``f.since`` and until ``f.until``."""
        times = []
        if f.since is not None:
            times.append(EventRow.at >= f.since)
        if f.until is not None:
            times.append(EventRow.at <= f.until)
        return times

    def _filtered(self, query: _Query, f: LogFilter) -> _Query:
        """The message criteria of ``f`` on ``query``, which selects messages."""
        return query.where(*(message for message, _ in self._criteria(f)))

    def _criteria(
        self, f: LogFilter
    ) -> list[tuple[ColumnElement[bool], ColumnElement[bool] | None]]:
        """Each criterion of ``f``, twice: as a stored message meets it, and as an event of no
        message does (its columns are what is known of the message it was about), None when
        only a stored message can."""
        criteria: list[tuple[ColumnElement[bool], ColumnElement[bool] | None]] = []
        if f.her_id:
            her_ids = (
                MessageRow.from_her_id,
                MessageRow.to_her_id,
                MessageRow.sender_org_her_id,
                MessageRow.sender_service_her_id,
                MessageRow.sender_person_her_id,
                MessageRow.receiver_org_her_id,
                MessageRow.receiver_service_her_id,
                MessageRow.receiver_person_her_id,
            )
            criteria.append(
                (
                    or_(*(column == f.her_id for column in her_ids)),
                    EventRow.actor.in_(sender_actors(f.her_id)),
                )
            )
        if f.msg_type:
            criteria.append((MessageRow.msg_type == f.msg_type, None))
        if f.status:
            criteria.append((MessageRow.status == f.status, None))
        if f.direction:
            criteria.append((MessageRow.direction == f.direction, None))
        if f.msg_id:
            criteria.append((MessageRow.msg_id == f.msg_id, None))
        if f.ebxml_message_id:
            # with the direction (either) the unique (direction, ebxml_message_id) index finds
            # it; without, PostgreSQL read the whole of that index or of the table
            directions = [direction.value for direction in Direction]
            stored = and_(
                MessageRow.direction.in_(directions),
                MessageRow.ebxml_message_id == f.ebxml_message_id,
            )
            criteria.append((stored, EventRow.ebxml_message_id == f.ebxml_message_id))
        if f.conversation_id:
            criteria.append((MessageRow.ebxml_conversation_id == f.conversation_id, None))
        if f.apprec_owed is not None:
            criteria.append((self._apprec_owed(f.apprec_owed), None))
        return criteria

    def _apprec_owed(self, delivered: DeliveredBetween) -> ColumnElement[bool]:
        """The received messages delivered in ``delivered`` the EPJ owes an AppRec for
        (tables.py's APPREC_OWED), stated so that this database's planner reads them through
        ``ix_messages_unsettled``: the one rule of the check's count and of the log's search."""
        return and_(
            text(apprec_owed_sql(self.session.get_bind().dialect.name)),
            # made before it was delivered: a bound the index's created_at can take
            MessageRow.created_at < delivered.before,
            MessageRow.status_changed_at < delivered.before,
            MessageRow.status_changed_at >= delivered.since,
        )

    def apprec_owed(self, delivered: DeliveredBetween) -> list[tuple[str | None, int, datetime]]:
        """The received messages delivered to the EPJ in ``delivered`` and owed an AppRec, per
        receiving HER-id: how many, and when the first of them was delivered (the status
        ``delivered`` is their last change). Through the partial index: what it costs is the
        messages owed an AppRec, not the settled history."""
        query = (
            select(MessageRow.to_her_id, func.count(), func.min(MessageRow.status_changed_at))
            .where(self._apprec_owed(delivered))
            .group_by(MessageRow.to_her_id)
            .order_by(MessageRow.to_her_id)
        )
        return [
            (her_id, int(count), oldest) for her_id, count, oldest in self.session.execute(query)
        ]


# The channels a message is received by: ``engine.inbound.receive``'s ``channel`` ("http" from
# the API and from the synchronous reply to a send, "smtp" from the mail intake). The events of
# a received message, and of one refused unstored, name its sender "<channel>:<HER-id>"
# (http:8142987): the log finds a refusal by these exact actors, through an index.
RECEIVING_CHANNELS: Final = ("http", "smtp")


def sender_actor(channel: str, sender: str) -> str:
    """The actor of the events of a message (or signal) received by ``channel`` from
    ``sender`` (a HER-id, or how another PartyId is shown): one rule for the engine that writes
    it and the log that searches by it."""
    return f"{channel}:{sender}"


def sender_actors(her_id: str) -> list[str]:
    """The actors the events of a message received from ``her_id`` are written with."""
    return [sender_actor(channel, her_id) for channel in RECEIVING_CHANNELS]


_CONTENT_KEY_USED = text("SELECT 1 FROM content_keys WHERE digest IN :digests LIMIT 1").bindparams(
    bindparam("digests", expanding=True)
)
_CONTENT_KEY_COLUMNS = cast(Table, ContentKeyRow.__table__).c
_CONTENT_KEY_INSERT = text(
    "INSERT INTO content_keys (digest, message_id, at) VALUES (:digest, :message_id, :at)"
).bindparams(*(bindparam(c.name, type_=c.type) for c in _CONTENT_KEY_COLUMNS))


def content_keys_used(connection: Connection, digests: frozenset[str]) -> bool:
    """Whether a message has used any of these content keys. On any connection: a received
    payload's keys are looked up outside a unit of work (:meth:`Database.reading`), between the
    signature's check and the decryption."""
    if not digests:
        return False
    found = connection.execute(_CONTENT_KEY_USED, {"digests": list(digests)})
    return found.first() is not None


class ContentKeyRepository:
    """The content keys of received payloads (by the digest of their wrapped form) and the
    message that used each: a key is used in one received message only."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def used(self, digests: frozenset[str]) -> bool:
        """Whether a message has used any of these keys."""
        if not digests:
            return False
        return content_keys_used(self.session.connection(), digests)

    def record(self, digests: frozenset[str], message_id: str, *, at: datetime) -> None:
        """Note that ``message_id`` used these keys. Raises IntegrityError (now, or at commit)
        when another message did first."""
        if not digests:
            return
        flush(self.session)  # the message row it refers to goes first
        self.session.connection().execute(
            _CONTENT_KEY_INSERT,
            [{"digest": d, "message_id": message_id, "at": at} for d in sorted(digests)],
        )


class ReceiptRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: ReceiptRow) -> ReceiptRow:
        """Write ``row`` at once as one prepared INSERT and set its id (receipts are never
        changed afterwards, so the row is not tracked). Every message has a transport receipt
        on each side, and the ORM's flush of a ReceiptRow was on that hot path."""
        flush(self.session)  # the message row it refers to goes first
        values = {column: getattr(row, column) for column in _RECEIPT_COLUMNS}
        values["description"] = redact(values["description"])
        # the codes and texts of an AppRec or MessageError, ours (an EPJ's words) or a
        # partner's, masked here for every writer, as the description is
        values["error_codes"] = redact_all(values["error_codes"])
        values["at"] = values["at"] or utcnow()
        row.id = int(self.session.connection().execute(_RECEIPT_INSERT, values).scalar_one())
        return row

    def has_incoming(self, message_id: str, ebxml_message_id: str) -> bool:
        """Whether a signal with the eb:MessageId ``ebxml_message_id`` is already a receipt of
        ``message_id`` (one prepared, indexed look-up: asked for every incoming signal)."""
        found = self.session.connection().execute(
            _INCOMING_RECEIPT, {"message_id": message_id, "ebxml_message_id": ebxml_message_id}
        )
        return found.first() is not None

    def for_message(self, message_id: str) -> list[ReceiptRow]:
        query = select(ReceiptRow).where(ReceiptRow.message_id == message_id)
        return list(self.session.scalars(query.order_by(ReceiptRow.at, ReceiptRow.id)))


_RECEIPT_COLUMNS = (
    "message_id",
    "kind",
    "direction",
    "at",
    "ebxml_message_id",
    "ref_to_message_id",
    "apprec_status",
    "error_codes",
    "description",
    "wire_ref",
    "wire_content_type",
)
_RECEIPT_TYPES = cast(Table, ReceiptRow.__table__).c
_RECEIPT_INSERT = text(
    f"INSERT INTO receipts ({', '.join(_RECEIPT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + column for column in _RECEIPT_COLUMNS)}) RETURNING id"
).bindparams(
    bindparam("at", type_=_RECEIPT_TYPES["at"].type),
    bindparam("error_codes", type_=_RECEIPT_TYPES["error_codes"].type),
)
_INCOMING_RECEIPT = text(
    "SELECT 1 FROM receipts WHERE message_id = :message_id AND direction = 'in' "
    "AND ebxml_message_id = :ebxml_message_id LIMIT 1"
)

# A problem that comes back after it was resolved reopens its alert, unacknowledged, as a new
# incident: counted from 1 and first seen now (the old one's resolution, its note and who
# resolved it, are in the audit log and the webhooks' history). In an ON CONFLICT update every
# right-hand side sees the row as it was, on both databases. A count of 1 returned is an alert
# opened or reopened.
_UPSERT_ALERT = text(
    "INSERT INTO alerts (kind, severity, dedup_key, summary, message_id, partner_her_id, "
    "first_seen, last_seen, changed_at, count) VALUES (:kind, :severity, :dedup_key, :summary, "
    ":message_id, :partner_her_id, :at, :at, :at, 1) ON CONFLICT (dedup_key) DO UPDATE SET "
    "count = CASE WHEN alerts.resolved_at IS NULL THEN alerts.count + 1 ELSE 1 END, "
    "first_seen = CASE WHEN alerts.resolved_at IS NULL THEN alerts.first_seen "
    "ELSE excluded.first_seen END, "
    "last_seen = excluded.last_seen, changed_at = excluded.changed_at, "
    "summary = excluded.summary, "
    "acknowledged_at = CASE WHEN alerts.resolved_at IS NULL THEN alerts.acknowledged_at END, "
    "acknowledged_by = CASE WHEN alerts.resolved_at IS NULL THEN alerts.acknowledged_by END, "
    "resolution_note = CASE WHEN alerts.resolved_at IS NULL THEN alerts.resolution_note END, "
    "resolved_by = NULL, "
    "resolved_at = NULL RETURNING id, count"
).bindparams(bindparam("at", type_=cast(Table, AlertRow.__table__).c.last_seen.type))

# what a resolve returns of each alert it resolved, for its log line
_RESOLVED = " RETURNING id, kind, severity, summary"

_RESOLVE_ALERT_SILENT = text(
    "UPDATE alerts SET resolved_at = :at, changed_at = :at WHERE dedup_key = :dedup_key "
    "AND resolved_at IS NULL AND last_seen < :seen_before" + _RESOLVED
).bindparams(
    bindparam("at", type_=cast(Table, AlertRow.__table__).c.resolved_at.type),
    bindparam("seen_before", type_=cast(Table, AlertRow.__table__).c.last_seen.type),
)

# still so: an open alert seen again, without counting it or telling anyone (no changed_at)
_COUNTED_AGAIN = text(
    "UPDATE alerts SET count = count + 1, last_seen = :at "
    "WHERE dedup_key = :dedup_key AND resolved_at IS NULL AND summary = :summary"
).bindparams(bindparam("at", type_=cast(Table, AlertRow.__table__).c.last_seen.type))


# a partner's open alerts of one kind but those of some keys (an empty set of keys is written
# as one by SQLAlchemy, on both databases)
_RESOLVE_PARTNER_ALERTS = text(
    "UPDATE alerts SET resolved_at = :at, changed_at = :at WHERE resolved_at IS NULL "
    "AND kind = :kind AND partner_her_id = :partner_her_id AND dedup_key NOT IN :kept" + _RESOLVED
).bindparams(
    bindparam("at", type_=cast(Table, AlertRow.__table__).c.resolved_at.type),
    # typed: an empty set is a SELECT of a NULL of the bind's type, which PostgreSQL compares
    bindparam("kept", expanding=True, type_=cast(Table, AlertRow.__table__).c.dedup_key.type),
)


# an open alert, told why it was resolved in its summary (one space before the why)
_RESOLVE_ALERT_EXPLAINED = text(
    "UPDATE alerts SET resolved_at = :at, changed_at = :at, summary = summary || ' ' || "
    ":resolution WHERE dedup_key = :dedup_key AND resolved_at IS NULL" + _RESOLVED
).bindparams(bindparam("at", type_=cast(Table, AlertRow.__table__).c.resolved_at.type))

# a partner's open alerts of one kind, each told why in its summary (one space before the why)
_RESOLVE_ALL_PARTNER_ALERTS = text(
    "UPDATE alerts SET resolved_at = :at, changed_at = :at, summary = summary || ' ' || "
    ":resolution WHERE resolved_at IS NULL AND kind = :kind AND partner_her_id = :partner_her_id"
    + _RESOLVED
).bindparams(bindparam("at", type_=cast(Table, AlertRow.__table__).c.resolved_at.type))


@functools.lru_cache(maxsize=8)
def _resolve_alerts(count: int) -> TextClause:
    """The resolve of ``count`` keys in one statement (an incoming Acknowledgment resolves two
    kinds of alert, and it is on the path of every message), prepared once per count."""
    keys = ", ".join(f":dedup_key_{number}" for number in range(count))
    return text(
        f"UPDATE alerts SET resolved_at = :at, changed_at = :at WHERE dedup_key IN ({keys}) "
        "AND resolved_at IS NULL" + _RESOLVED
    ).bindparams(bindparam("at", type_=cast(Table, AlertRow.__table__).c.resolved_at.type))


class AlertRepository:
    def __init__(
        self, session: Session, after_commit: Callable[[Callable[[], object]], None] | None = None
    ) -> None:
        self.session = session
        # an alert opened, reopened or resolved is logged once its transaction has committed
        self._after_commit = after_commit

    def _tell(self, line: Callable[[], None]) -> None:
        if self._after_commit is not None:
            self._after_commit(line)

    def raise_alert(
        self,
        kind: str,
        *,
        severity: str,
        dedup_key: str,
        summary: str,
        message_id: str | None = None,
        partner_her_id: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Open an alert, or count one more occurrence of the same open (or resolved) problem.

        One upsert: two workers that meet the same new problem at once (a partner that stops
        answering while both send to it) must not collide on the unique key, which would roll
        back the rest of the transaction that raised it."""
        flush(self.session)  # the message it names goes first
        now = at or utcnow()
        stored = redact(summary) or ""
        alert_id, count = (
            self.session.connection()
            .execute(
                _UPSERT_ALERT,
                {
                    "kind": kind,
                    "severity": severity,
                    "dedup_key": dedup_key,
                    "summary": stored,
                    "message_id": message_id,
                    "partner_her_id": partner_her_id,
                    "at": now,
                },
            )
            .one()
        )
        if count == 1:  # opened or reopened; a repeat of an open one is not news for the log
            self._tell(lambda: alert_log.raised(alert_id, kind, severity, stored))

    def get(self, alert_id: int, *, for_update: bool = False) -> AlertRow | None:
        """The alert; ``for_update`` locks its row (and reads it afresh) until the commit."""
        if for_update:
            return self.session.get(
                AlertRow, alert_id, with_for_update=True, populate_existing=True
            )
        return self.session.get(AlertRow, alert_id)

    def by_key(self, dedup_key: str) -> AlertRow | None:
        """The alert of ``dedup_key``, open or resolved; None when there never was one."""
        return self.session.scalar(select(AlertRow).where(AlertRow.dedup_key == dedup_key))

    def acknowledge(self, alert_id: int, *, by: str, at: datetime | None = None) -> AlertRow | None:
        # locked: a repeat counted at the same moment must not be acknowledged (or resolved) by
        # someone who never saw it
        row = self.get(alert_id, for_update=True)
        if row is not None and row.acknowledged_at is None:
            row.acknowledged_at = row.changed_at = at or utcnow()
            row.acknowledged_by = by
        return row

    def close(
        self, alert_id: int, *, by: str, at: datetime | None = None, note: str | None = None
    ) -> AlertRow | None:
        """Resolve an alert by hand: it was followed up (and so acknowledged, if nobody had),
        by ``by`` with the operator's ``note`` (what was done; both kept until the problem
        comes back, and told to webhooks with the resolution). A repeat of the problem opens it
        again, unacknowledged."""
        row = self.acknowledge(alert_id, by=by, at=at)
        if row is not None and row.resolved_at is None:
            row.resolved_at = row.changed_at = at or utcnow()
            row.resolution_note = note
            row.resolved_by = by
            told = (row.id, row.kind, row.severity, row.summary)
            self._tell(lambda: alert_log.resolved(*told, by=by))
        return row

    def resolve(self, dedup_key: str, *more_keys: str, at: datetime | None = None) -> None:
        """Mark the open alerts of ``dedup_key`` (and ``more_keys``) resolved, in one statement;
        none open is fine.

        Runs after every successful send (partner reachable again), hence prepared once."""
        keys = (dedup_key, *more_keys)
        binds: dict[str, object] = {f"dedup_key_{n}": key for n, key in enumerate(keys)}
        binds["at"] = at or utcnow()
        self._resolved(self.session.connection().execute(_resolve_alerts(len(keys)), binds))

    def _resolved(self, rows: Result[Any]) -> None:
        """Log each alert a resolve statement resolved (its ``_RESOLVED`` columns)."""
        told = [(row.id, row.kind, row.severity, row.summary) for row in rows]
        if told:
            self._tell(lambda: alert_log.all_resolved(told))

    def resolve_for_partner(
        self, kind: str, partner_her_id: str, *, kept: Sequence[str], at: datetime
    ) -> None:
        """Mark the open alerts of ``kind`` for ``partner_her_id`` resolved, but those whose key
        is in ``kept``, in one prepared statement; none open is fine. Runs after every
        successful send (the partner's ``partner-unreachable`` alerts but those of its other
        endpoints)."""
        self._resolved(
            self.session.connection().execute(
                _RESOLVE_PARTNER_ALERTS,
                {"kind": kind, "partner_her_id": partner_her_id, "kept": list(kept), "at": at},
            )
        )

    def resolve_all_for_partner(
        self, kind: str, partner_her_id: str, *, resolution: str, at: datetime
    ) -> None:
        """Mark every open alert of ``kind`` for ``partner_her_id`` resolved, its summary
        followed by ``resolution`` (why it was resolved: not by the problem's end but because
        nothing is left to act on); none open is fine. Logged as any other resolve."""
        self._resolved(
            self.session.connection().execute(
                _RESOLVE_ALL_PARTNER_ALERTS,
                {
                    "kind": kind,
                    "partner_her_id": partner_her_id,
                    "resolution": resolution,
                    "at": at,
                },
            )
        )

    def resolve_explained(self, dedup_key: str, *, resolution: str, at: datetime) -> None:
        """Mark the open alert of ``dedup_key`` resolved, its summary followed by
        ``resolution`` (why: not the problem's end, which a plain resolve says); none open is
        fine."""
        self._resolved(
            self.session.connection().execute(
                _RESOLVE_ALERT_EXPLAINED,
                {"dedup_key": dedup_key, "resolution": resolution, "at": at},
            )
        )

    def counted_again(self, dedup_key: str, summary: str, *, at: datetime) -> bool:
        """Count the open alert of ``dedup_key`` once more and mark it seen at ``at`` when its
        summary is ``summary``, leaving ``changed_at`` (what webhooks follow) as it is: a
        state that lasts, told once (``engine.alerts.keep_alert``). False when none such is
        open (then it is to be raised)."""
        counted = self.session.connection().execute(
            _COUNTED_AGAIN, {"dedup_key": dedup_key, "summary": summary, "at": at}
        )
        return bool(counted.rowcount)

    def resolve_if_silent(self, dedup_key: str, *, seen_before: datetime, at: datetime) -> None:
        """Resolve the open alert of ``dedup_key`` if it was last raised before ``seen_before``:
        whoever raised it has stopped doing so."""
        self._resolved(
            self.session.connection().execute(
                _RESOLVE_ALERT_SILENT,
                {"dedup_key": dedup_key, "seen_before": seen_before, "at": at},
            )
        )

    def open_keys(
        self, kinds: Sequence[str], prefixes: Sequence[str] = (), *, limit: int | None = None
    ) -> list[tuple[str, datetime]]:
        """Dedup key and last occurrence of each open alert of ``kinds``, or whose key begins
        with one of ``prefixes``; the ``limit`` last raised."""
        beginning = (AlertRow.dedup_key.startswith(prefix, autoescape=True) for prefix in prefixes)
        query = (
            select(AlertRow.dedup_key, AlertRow.last_seen)
            .where(AlertRow.resolved_at.is_(None), or_(AlertRow.kind.in_(kinds), *beginning))
            .order_by(AlertRow.last_seen.desc())
            .limit(limit)
        )
        return [(key, last_seen) for key, last_seen in self.session.execute(query)]

    def for_message(self, message_id: str) -> list[AlertRow]:
        """Every alert of one message, newest first, resolved or not: not the message's among
        the newest of all (after an outage its not-delivered alert is long out of those)."""
        query = select(AlertRow).where(AlertRow.message_id == message_id)
        return list(self.session.scalars(query.order_by(AlertRow.last_seen.desc())))

    def list(
        self,
        *,
        open_only: bool = False,
        limit: int | None = 1000,
        kind: str | None = None,
        until: datetime | None = None,
        by_id: bool = False,
        before_id: int | None = None,
    ) -> list[AlertRow]:
        """The ``limit`` alerts last seen (at or before ``until``), newest first; :meth:`count`
        tells how many there are (an operator shown the first ``limit`` is told of the rest).

        With ``by_id`` the ``limit`` last raised instead (of those before ``before_id``): the
        key to page by. ``last_seen`` moves each time a lasting state is counted again (every
        round of a check), so an alert paged back by ``until`` could move from a page not yet
        read to one read already and be missed; its id never moves."""
        query = self._matching(select(AlertRow), open_only=open_only, kind=kind)
        if until is not None:
            query = query.where(AlertRow.last_seen <= until)
        if before_id is not None:
            query = query.where(AlertRow.id < before_id)
        if by_id:
            return list(self.session.scalars(query.order_by(AlertRow.id.desc()).limit(limit)))
        order = (AlertRow.last_seen.desc(), AlertRow.id.desc())  # one order on every page
        return list(self.session.scalars(query.order_by(*order).limit(limit)))

    def count(self, *, open_only: bool = False, kind: str | None = None) -> int:
        """How many alerts :meth:`list` would list with no ``limit`` (nor ``until``)."""
        query = self._matching(select(func.count()).select_from(AlertRow), open_only, kind)
        return int(self.session.scalar(query) or 0)

    @staticmethod
    def _matching(query: Select[Any], open_only: bool, kind: str | None) -> Select[Any]:
        if open_only:
            query = query.where(AlertRow.resolved_at.is_(None))
        if kind is not None:
            query = query.where(AlertRow.kind == kind)
        return query


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    message_id: str | None
    data: dict[str, Any] | None
    attempts: int
    due_at: datetime
    claimed_until: datetime | None = None  # the end of this claim's lease
    # a transmit job handed over by the process that has just stored its message carries what
    # the send would otherwise read back (kept in memory only, never stored)
    sending: SendingView | None = None
    claimed_by: str | None = None  # the worker name the claim is stored under


def _job_sql(sql: str, **types: str) -> TextClause:
    """A job statement prepared once: building and cache-keying a SQLAlchemy construct per call
    cost more CPU than the database spends on it. Binds get the column types (SQLite stores
    times as text in our format, so they must be converted exactly as the ORM would)."""
    columns = cast(Table, JobRow.__table__).c
    binds = [bindparam(name, type_=columns[column].type) for name, column in types.items()]
    return text(sql).bindparams(*binds)


_JOB_COLUMNS = "kind, dedup_key, message_id, due_at, attempts, data, created_at"
_JOB_VALUES = ":kind, :dedup_key, :message_id, :due_at, 0, :data, :created_at"
_TYPED = {"due_at": "due_at", "created_at": "created_at", "data": "data"}  # bind -> column
_SCHEDULE = _job_sql(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_JOB_VALUES})", **_TYPED)
# a job of the same key is moved, not duplicated (its kind and attempts stay)
_SCHEDULE_DEDUP = _job_sql(
    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_JOB_VALUES}) "
    "ON CONFLICT (dedup_key) DO UPDATE SET due_at = excluded.due_at, claimed_by = NULL, "
    "claimed_until = NULL, data = excluded.data, crashes = 0",
    **_TYPED,
)
# a job of the same key is left as it is (a recurring job keeps its time and its data)
_SCHEDULE_IF_ABSENT = _job_sql(
    f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({_JOB_VALUES}) ON CONFLICT (dedup_key) DO NOTHING",
    **_TYPED,
)
# stored already claimed, for this process's own workers (see JobRepository.schedule_claimed)
_SCHEDULE_CLAIMED = _job_sql(
    f"INSERT INTO jobs ({_JOB_COLUMNS}, claimed_by, claimed_until) VALUES (:kind, :dedup_key, "
    ":message_id, :due_at, 1, :data, :created_at, :worker, :until) RETURNING id",
    until="claimed_until",
    **_TYPED,
)
_FINISH = _job_sql("DELETE FROM jobs WHERE id = :id")
_FINISH_KIND = _job_sql("DELETE FROM jobs WHERE id = :id AND kind = :kind")
_EXTEND_CLAIM = _job_sql(
    "UPDATE jobs SET claimed_until = :until WHERE id = :id AND claimed_by = :worker "
    "AND kind = :kind AND (message_id = :message_id OR (message_id IS NULL AND "
    "CAST(:message_id AS VARCHAR(36)) IS NULL))",
    until="claimed_until",
)
# a claimed job not started is given back as it was before the claim (its attempt undone)
_RELEASE_UNSTARTED = _job_sql(
    "UPDATE jobs SET claimed_by = NULL, claimed_until = NULL, attempts = attempts - 1 "
    "WHERE id = :id AND claimed_by = :worker AND attempts > 0 AND kind = :kind AND "
    "(message_id = :message_id OR (message_id IS NULL AND "
    "CAST(:message_id AS VARCHAR(36)) IS NULL))"
)
# a claimed job its store refused (a share away, a full disk) waits for ``due_at`` as before the
# claim: neither its attempt nor an error counted (see failing_jobs.store_refused)
_PUT_BACK = _job_sql(
    "UPDATE jobs SET claimed_by = NULL, claimed_until = NULL, due_at = :due_at, "
    "attempts = attempts - 1 WHERE id = :id AND claimed_by = :worker AND attempts > 0 AND "
    "kind = :kind AND (message_id = :message_id OR (message_id IS NULL AND "
    "CAST(:message_id AS VARCHAR(36)) IS NULL))",
    due_at="due_at",
)
# a recurring job's turn taken by hand (its due time and attempts stay), and given back
_CLAIM_KEY = _job_sql(
    "UPDATE jobs SET claimed_by = :worker, claimed_until = :until, attempts = attempts + 1 "
    f"WHERE dedup_key = :dedup_key AND {JOB_WAITING} "
    "RETURNING id, kind, message_id, attempts",
    until="claimed_until",
    now="claimed_until",
)
_GIVE_BACK_DONE = _job_sql(
    "UPDATE jobs SET claimed_by = NULL, claimed_until = NULL, due_at = :due_at, data = NULL, "
    "crashes = 0 WHERE id = :id AND claimed_by = :worker",
    due_at="due_at",
)
_CANCEL = _job_sql("DELETE FROM jobs WHERE message_id = :message_id")
_CANCEL_KIND = _job_sql("DELETE FROM jobs WHERE message_id = :message_id AND kind = :kind")
# the job row becomes another job of its message, unless one of that key exists already
_BECOME = _job_sql(
    "UPDATE jobs SET kind = :kind, dedup_key = :dedup_key, due_at = :due_at, attempts = 0, "
    "data = NULL, claimed_by = NULL, claimed_until = NULL, crashes = 0 WHERE id = :id "
    "AND NOT EXISTS (SELECT 1 FROM jobs WHERE dedup_key = :dedup_key)",
    due_at="due_at",
)
# a handler's own rescheduling: the job did what it does, so its count of crashes starts again
_RESCHEDULE = _job_sql(
    "UPDATE jobs SET due_at = :due_at, claimed_by = NULL, claimed_until = NULL, crashes = 0 "
    "WHERE id = :id",
    due_at="due_at",
)
# the worker's, after an unexpected error: only a claim it still holds, with its count
_CRASHES_OF_OWN = _job_sql("SELECT crashes FROM jobs WHERE id = :id AND claimed_by = :worker")
_RESCHEDULE_CRASHED = _job_sql(
    "UPDATE jobs SET due_at = :due_at, claimed_by = NULL, claimed_until = NULL, "
    "crashes = :crashes WHERE id = :id AND claimed_by = :worker",
    due_at="due_at",
)


def _claim_sql(lock: str) -> TextualSelect:
    columns = cast(Table, JobRow.__table__).c
    return _job_sql(
        "UPDATE jobs SET claimed_by = :worker, claimed_until = :until, attempts = attempts + 1 "
        "WHERE id IN (SELECT id FROM jobs WHERE due_at <= :now "
        f"AND {JOB_WAITING} AND kind <> :skip_kind "
        f"ORDER BY due_at, id LIMIT :limit {lock}) "
        "RETURNING id, kind, message_id, data, attempts, due_at",
        until="claimed_until",
        now="due_at",
    ).columns(
        columns.id, columns.kind, columns.message_id, columns.data, columns.attempts, columns.due_at
    )


# PostgreSQL: concurrent workers skip each other's rows. SQLite has one writer at a time.
_CLAIM = {"postgresql": _claim_sql("FOR UPDATE SKIP LOCKED"), "sqlite": _claim_sql("")}


@dataclass(frozen=True)
class OverdueJob:
    """A job due and not done (see :meth:`JobRepository.oldest_free`, ``oldest_held``)."""

    id: int
    kind: str
    message_id: str | None
    due_at: datetime
    claimed_by: str | None
    claimed_until: datetime | None
    attempts: int  # a claim adds one: (id, claimed_by, attempts) names one claim of the job


def _oldest_sql(claimed: str) -> TextualSelect:
    columns = cast(Table, JobRow.__table__).c
    # Along ix_jobs_due from the oldest, up to the first that qualifies: the jobs passed are
    # the others (the claims running now, or the free ones).
    return _job_sql(
        "SELECT id, kind, message_id, due_at, claimed_by, claimed_until, attempts FROM jobs "
        f"WHERE due_at <= :now AND kind <> :skip_kind AND {claimed} "
        "ORDER BY due_at, id LIMIT 1",
        now="due_at",
    ).columns(
        columns.id,
        columns.kind,
        columns.message_id,
        columns.due_at,
        columns.claimed_by,
        columns.claimed_until,
        columns.attempts,
    )


# free for a claim, as a worker claims (never claimed, or its lease ran out); and claimed
_OLDEST_FREE = _oldest_sql(JOB_WAITING)
_OLDEST_HELD = _oldest_sql(JOB_HELD)


class JobRepository:
    """Due work. Each operation is one prepared statement: this is the hot path of every
    message (a message needs about six job operations on its way)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.stored_unclaimed = False  # some job waits for a claim: workers should be told
        self.stored_claimed = 0  # jobs stored claimed, to be handed over after the commit

    def _run(self, statement: TextClause | TextualSelect, **parameters: Any) -> Any:
        return self.session.connection().execute(statement, parameters)

    def schedule(
        self,
        kind: str,
        due_at: datetime,
        *,
        message_id: str | None = None,
        data: dict[str, Any] | None = None,
        dedup_key: str | None = None,
    ) -> None:
        """Schedule due work. With ``dedup_key``, an existing job of that key is moved instead."""
        self.stored_unclaimed = True
        statement = _SCHEDULE if dedup_key is None else _SCHEDULE_DEDUP
        self._insert(statement, kind, due_at, message_id, data, dedup_key)

    def schedule_if_absent(
        self, kind: str, due_at: datetime, *, dedup_key: str, data: dict[str, Any] | None = None
    ) -> None:
        """Schedule a recurring job unless one of ``dedup_key`` exists (then it stays as it is)."""
        self.stored_unclaimed = True
        self._insert(_SCHEDULE_IF_ABSENT, kind, due_at, None, data, dedup_key)

    def _insert(
        self,
        statement: TextClause,
        kind: str,
        due_at: datetime,
        message_id: str | None,
        data: dict[str, Any] | None,
        dedup_key: str | None,
        **claim: Any,
    ) -> Any:
        if message_id is not None:
            flush(self.session)  # the message row this job refers to goes first
        return self._run(
            statement,
            kind=kind,
            dedup_key=dedup_key,
            message_id=message_id,
            due_at=due_at,
            data=data,
            created_at=utcnow(),
            **claim,
        )

    def schedule_claimed(
        self,
        kind: str,
        *,
        now: datetime,
        worker: str,
        lease: timedelta,
        message_id: str | None = None,
        data: dict[str, Any] | None = None,
        dedup_key: str | None = None,
        sending: SendingView | None = None,
    ) -> ClaimedJob:
        """Store work due now already claimed by ``worker`` until ``now + lease``, as if it had
        been stored and then claimed: the caller hands it to its own worker after commit, which
        saves the claim's transaction. If this process dies first, the lease runs out (or the
        restarted instance takes its claims back) and any worker claims it as usual. A job of
        the same ``dedup_key`` must not exist (a new message's first job)."""
        until = now + lease
        self.stored_claimed += 1
        inserted = self._insert(
            _SCHEDULE_CLAIMED, kind, now, message_id, data, dedup_key, worker=worker, until=until
        )
        job_id = inserted.scalar_one()
        return ClaimedJob(
            int(job_id), kind, message_id, data, 1, now, until, sending, claimed_by=worker
        )

    def claim_due(
        self, worker: str, *, now: datetime, limit: int, lease: timedelta, skip_kind: str = ""
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs for ``worker`` until ``now + lease``, none of
        ``skip_kind`` (work this process is not configured for, left to one that is).

        A job whose lease ran out (its worker died) is due again. The caller commits. One
        ``UPDATE ... RETURNING`` over a ``FOR UPDATE SKIP LOCKED`` selection (PostgreSQL), so
        concurrent workers never take the same job and a claim costs one round trip.
        """
        until = now + lease
        rows = _execute_for_dialect(
            self.session,
            _CLAIM,
            worker=worker,
            until=until,
            now=now,
            limit=limit,
            skip_kind=skip_kind,
        )
        claimed = [
            ClaimedJob(job_id, kind, message_id, data, attempts, due_at, until, claimed_by=worker)
            for job_id, kind, message_id, data, attempts, due_at in rows
        ]
        # RETURNING has no order: hand the jobs out oldest first, as selected
        return sorted(claimed, key=lambda job: (job.due_at, job.id))

    def release_claims(self, worker_prefix: str) -> int:
        """Release every lease held by workers whose name starts with ``worker_prefix``.

        A restarted server calls this for its own instance: its earlier claims died with the
        previous process, and their work should not wait for the lease to run out.
        """
        result = self.session.execute(
            update(JobRow)
            .where(JobRow.claimed_by.startswith(worker_prefix, autoescape=True))
            .values(claimed_by=None, claimed_until=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    def release_unstarted(self, jobs: list[ClaimedJob]) -> int:
        """Give back claimed jobs that were not started (a stop, or a lease run low): they are
        due again at once for any worker, and the claim's attempt is undone, so that a stop
        does not count against a job's tries. A claim that is no longer the job's own is left
        as it is. Returns how many were given back."""
        released = 0
        for job in jobs:
            if job.claimed_by is None:
                continue
            result = self._run(
                _RELEASE_UNSTARTED,
                id=job.id,
                worker=job.claimed_by,
                kind=job.kind,
                message_id=job.message_id,
            )
            released += result.rowcount
        return released

    def put_back(self, job: ClaimedJob, due_at: datetime) -> bool:
        """Give back a claimed job that could not do its work for a while (its store refused
        it): due again at ``due_at``, its claim's attempt undone and its errors in a row left as
        they were, so that the while does not count as a try of the job. Whether the claim was
        still the job's own (else it is left as it is)."""
        if job.claimed_by is None:
            return False
        result = self._run(
            _PUT_BACK,
            id=job.id,
            worker=job.claimed_by,
            due_at=due_at,
            kind=job.kind,
            message_id=job.message_id,
        )
        return bool(result.rowcount)

    def claim_key(
        self, dedup_key: str, worker: str, *, now: datetime, lease: timedelta
    ) -> ClaimedJob | None:
        """Claim the job of ``dedup_key`` for ``worker`` until ``now + lease`` unless another
        holds it (or there is none): None then, as :meth:`claim_due` claims, whatever its due
        time. A command that does a recurring job's work by hand takes its turn so, and gives
        it back with :meth:`give_back` or, as it was, :meth:`release_unstarted`."""
        until = now + lease
        row = self._run(
            _CLAIM_KEY, dedup_key=dedup_key, worker=worker, until=until, now=now
        ).first()
        if row is None:
            return None
        job_id, kind, message_id, attempts = row
        return ClaimedJob(job_id, kind, message_id, None, attempts, now, until, claimed_by=worker)

    def claim_holder(self, dedup_key: str) -> tuple[str | None, datetime | None] | None:
        """Who holds the job of ``dedup_key`` and until when; None when there is no such job."""
        row = self.session.execute(
            select(JobRow.claimed_by, JobRow.claimed_until).where(JobRow.dedup_key == dedup_key)
        ).first()
        return None if row is None else (row[0], row[1])

    def give_back(self, job: ClaimedJob, *, done_until: datetime) -> None:
        """Give back a job whose work was done by hand (see :meth:`claim_key`), if its claim is
        still its holder's: it is next due ``done_until``, its data (a count of failures)
        cleared."""
        self._run(_GIVE_BACK_DONE, id=job.id, worker=job.claimed_by, due_at=done_until)

    def finish(self, job_id: int) -> None:
        self._run(_FINISH, id=job_id)

    def finish_if(self, job_id: int, kind: str) -> None:
        """:meth:`finish` the job unless its row has become a job of another kind."""
        self._run(_FINISH_KIND, id=job_id, kind=kind)

    def extend_claim(self, job: ClaimedJob, *, worker: str, until: datetime) -> bool:
        """Keep ``worker``'s claim on a job it is still running until ``until``. False when the
        claim is no longer its own (finished, rescheduled, reused as the next job, or taken).
        The kind and message must match too: SQLite may give a finished job's id to a new one."""
        extended = self._run(
            _EXTEND_CLAIM,
            id=job.id,
            worker=worker,
            until=until,
            kind=job.kind,
            message_id=job.message_id,
        )
        return bool(extended.rowcount)

    def finish_and_schedule(
        self, job_id: int, kind: str, due_at: datetime, *, message_id: str, dedup_key: str
    ) -> None:
        """:meth:`finish` this job of ``message_id`` and :meth:`schedule` its next one (a sent
        message's ``ack-timeout``): the job row becomes the next job, one UPDATE instead of a
        DELETE and an INSERT. If a job of ``dedup_key`` exists already, that one is moved."""
        self.stored_unclaimed = True
        moved = self._run(_BECOME, id=job_id, kind=kind, due_at=due_at, dedup_key=dedup_key)
        if moved.rowcount != 1:
            self.finish(job_id)
            self.schedule(kind, due_at, message_id=message_id, dedup_key=dedup_key)

    def reschedule(self, job_id: int, due_at: datetime) -> None:
        self._run(_RESCHEDULE, id=job_id, due_at=due_at)

    def crashes_of_own(self, job: ClaimedJob) -> int | None:
        """The unexpected errors in a row of a job this claim still holds (its lease did not
        run out and pass it to another worker meanwhile); None when it is not its own."""
        row = self._run(_CRASHES_OF_OWN, id=job.id, worker=job.claimed_by).first()
        return None if row is None else int(row[0])

    def reschedule_crashed(self, job: ClaimedJob, due_at: datetime, *, crashes: int) -> bool:
        """Reschedule a job this claim still holds with its count of errors in a row; whether
        it still held it."""
        changed = self._run(
            _RESCHEDULE_CRASHED, id=job.id, worker=job.claimed_by, due_at=due_at, crashes=crashes
        )
        return bool(changed.rowcount)

    def crashes(self, job_ids: list[int]) -> dict[int, int]:
        """Each existing job's errors in a row, by id (a job not in the answer is gone)."""
        if not job_ids:
            return {}
        rows = self.session.execute(select(JobRow.id, JobRow.crashes).where(JobRow.id.in_(job_ids)))
        return {int(job_id): int(crashes) for job_id, crashes in rows}

    def cancel_for_message(self, message_id: str, kind: str | None = None) -> None:
        if kind is None:
            self._run(_CANCEL, message_id=message_id)
        else:
            self._run(_CANCEL_KIND, message_id=message_id, kind=kind)

    def oldest_free(self, *, now: datetime, skip_kind: str) -> OverdueJob | None:
        """The job due longest of those free for a claim at ``now``, none of ``skip_kind``: the
        next a worker claims. One indexed statement."""
        row = self._run(_OLDEST_FREE, now=now, skip_kind=skip_kind).first()
        return None if row is None else OverdueJob(*row)

    def oldest_held(self, *, now: datetime, skip_kind: str) -> OverdueJob | None:
        """The job due longest of those claimed at ``now``, none of ``skip_kind``. One indexed
        statement (it passes the free jobs due before it: few, unless no worker claims)."""
        row = self._run(_OLDEST_HELD, now=now, skip_kind=skip_kind).first()
        return None if row is None else OverdueJob(*row)

    def next_due(self) -> datetime | None:
        return self.session.scalar(select(func.min(JobRow.due_at)))

    def count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(JobRow)) or 0


class StateRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, key: str) -> str | None:
        row = self.session.get(StateRow, key)
        return None if row is None else row.value

    def set(self, key: str, value: str) -> None:
        row = self.session.get(StateRow, key)
        if row is None:
            self.session.add(StateRow(key=key, value=value))
        else:
            row.value = value

    def delete(self, key: str) -> None:
        self.session.execute(delete(StateRow).where(StateRow.key == key))

    def keys_unchanged_since(self, prefix: str, before: datetime) -> list[str]:
        """The keys beginning with ``prefix`` whose value was last written before ``before``."""
        return list(
            self.session.scalars(
                select(StateRow.key).where(
                    StateRow.key.startswith(prefix, autoescape=True),
                    StateRow.updated_at < before,
                )
            )
        )

    def delete_many(self, keys: Sequence[str]) -> None:
        for at in range(0, len(keys), 500):  # well under every database's bind limit
            piece = list(keys[at : at + 500])
            self.session.execute(delete(StateRow).where(StateRow.key.in_(piece)))


class InstanceRepository:
    """The ``serve`` processes on this store (see :mod:`meldingstjener.engine.instances`)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def seen(
        self, name: str, *, host: str, pid: int, version: str, at: datetime, started: bool
    ) -> None:
        """Record a heartbeat of ``name``; ``started``: it (re)started now."""
        row = self.session.get(InstanceRow, name)
        if row is None:
            row = InstanceRow(name=name, started_at=at)
            self.session.add(row)
        if started:
            row.started_at = at
        row.host, row.pid, row.version = host, pid, version
        row.last_seen_at = at
        row.stopped_at = None

    def stopped(self, name: str, *, at: datetime) -> None:
        row = self.session.get(InstanceRow, name)
        if row is not None:
            row.stopped_at = at

    def all(self) -> list[InstanceRow]:
        return list(self.session.scalars(select(InstanceRow).order_by(InstanceRow.name)))

    def forget(self, name: str, *, seen_before: datetime) -> None:
        """Delete ``name`` if it has not been seen since ``seen_before`` (one statement: two
        instances tidying at once both may try; a restart meanwhile keeps it)."""
        self.session.execute(
            delete(InstanceRow).where(
                InstanceRow.name == name, InstanceRow.last_seen_at < seen_before
            )
        )


class PartyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, her_id: str) -> PartyRow | None:
        return self.session.get(PartyRow, her_id)

    def upsert(self, row: PartyRow, *, at: datetime | None = None) -> PartyRow:
        """Insert ``row`` or write it over the stored one, keeping a replaced signing
        certificate as the previous one (see :func:`_keep_replaced_signing_certificate`)."""
        known = self.session.get(PartyRow, row.her_id)
        if known is not None:
            _keep_replaced_signing_certificate(known, row, at or utcnow())
        return self.session.merge(row)

    def all(self) -> Sequence[PartyRow]:
        return list(self.session.scalars(select(PartyRow)))

    def with_services(self, her_id: str) -> list[PartyRow]:
        """The party ``her_id`` and the parties whose parent organisation it is."""
        query = select(PartyRow).where(
            or_(PartyRow.her_id == her_id, PartyRow.parent_her_id == her_id)
        )
        return list(self.session.scalars(query))


def _keep_replaced_signing_certificate(known: PartyRow, new: PartyRow, at: datetime) -> None:
    """A party's signing certificate that changes is kept as its previous one, with the time
    we learnt of the change; otherwise the stored previous one stays.

    A partner rolling its certificate over has messages in flight signed with the old key:
    its resends (the same signed envelope, for up to its PersistDuration) and signals. Without
    the old certificate every one of them would fail verification here and be refused.

    A change back to the certificate just replaced is not a new rollover: it keeps the time of
    the first change, so two sources that disagree (a ``[[partners]]`` entry written at every
    start, and the address register) cannot keep both certificates accepted for ever.

    A certificate withdrawn (the new row has none) is replaced too: its window starts now."""
    if known.signing_certificate and new.signing_certificate != known.signing_certificate:
        back = (
            new.signing_certificate is not None
            and new.signing_certificate == known.previous_signing_certificate
        )
        new.previous_signing_certificate = known.signing_certificate
        new.signing_cert_replaced_at = known.signing_cert_replaced_at if back else at
    else:
        new.previous_signing_certificate = known.previous_signing_certificate
        new.signing_cert_replaced_at = known.signing_cert_replaced_at


class AgreementRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def for_pair(self, our_her_id: str, counterparty_her_id: str) -> AgreementRow | None:
        return self.session.scalars(
            select(AgreementRow).where(
                AgreementRow.our_her_id == our_her_id,
                AgreementRow.counterparty_her_id == counterparty_her_id,
            )
        ).first()

    def for_counterparty(self, counterparty_her_id: str) -> list[AgreementRow]:
        return self.for_counterparties({counterparty_her_id})

    def for_counterparties(self, her_ids: set[str]) -> list[AgreementRow]:
        query = select(AgreementRow).where(AgreementRow.counterparty_her_id.in_(her_ids))
        return list(self.session.scalars(query))

    def add(self, row: AgreementRow) -> AgreementRow:
        self.session.add(row)
        return row

    def all(self) -> list[AgreementRow]:
        query = select(AgreementRow).order_by(AgreementRow.counterparty_her_id)
        return list(self.session.scalars(query))


@dataclass(frozen=True)
class HeldContent:
    """A message that still holds payload files, as retention reads it."""

    id: str
    payload_ref: str | None
    wire_ref: str | None
    status: str


# Where a retention pass resumes: the last message of the batch before, by the index walked.
RetentionKey = tuple[datetime, str]


class RetentionRepository:
    """What retention reads and deletes, a batch at a time (see
    :mod:`meldingstjener.engine.retention`, which decides what is settled, as a condition on
    the message row, and when). Every
    statement here is bounded by ``limit`` and walks an index from where the batch before
    stopped, so a run reads each row once and no transaction holds its locks for long. Rows
    are locked as they are read (PostgreSQL; SQLite's write lock covers the transaction) and
    rows another transaction holds are left for the next run, not waited for."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _settled(settled: ColumnElement[bool], before: datetime) -> ColumnElement[bool]:
        return and_(settled, MessageRow.status_changed_at < before)

    def holding_content(
        self,
        settled: ColumnElement[bool],
        *,
        before: datetime,
        by_wire: bool,
        after: str | None,
        limit: int,
    ) -> list[HeldContent]:
        """Settled messages (``settled``: the condition on the row) that have held their
        status since before ``before`` and still hold files: walked along the index of their
        payload reference (or, ``by_wire``, of the wire form's, for those with no payload),
        which holds no row whose files are gone, from the key after ``after``."""
        column = MessageRow.wire_ref if by_wire else MessageRow.payload_ref
        query = select(
            MessageRow.id, MessageRow.payload_ref, MessageRow.wire_ref, MessageRow.status
        ).where(column.is_not(None), self._settled(settled, before))
        if by_wire:
            query = query.where(MessageRow.payload_ref.is_(None))
        if after is not None:
            query = query.where(column > after)
        query = query.order_by(column).limit(limit)
        query = query.with_for_update(key_share=True, skip_locked=True)
        return [HeldContent(*row) for row in self.session.execute(query)]

    def count_holding_content(self, settled: ColumnElement[bool], *, before: datetime) -> int:
        query = select(func.count()).where(
            or_(MessageRow.payload_ref.is_not(None), MessageRow.wire_ref.is_not(None)),
            self._settled(settled, before),
        )
        return self.session.scalar(query) or 0

    def forget_content(self, message_ids: Sequence[str], *, at: datetime) -> None:
        """The rows let go of their payload files (deleted after the commit, by the caller)."""
        self.session.execute(
            update(MessageRow)
            .where(MessageRow.id.in_(list(message_ids)))
            .values(payload_ref=None, wire_ref=None, updated_at=at)
            .execution_options(synchronize_session=False)
        )

    def settled_messages(
        self,
        settled: ColumnElement[bool],
        *,
        before: datetime,
        after: RetentionKey | None,
        limit: int,
    ) -> list[tuple[RetentionKey, list[str]]]:
        """Settled messages that have held their status since before ``before``, oldest first
        along the index of their creation (a message is made before it settles), from the one
        after ``after``; each with its key and its files (payload, wire form, its receipts')."""
        query = select(
            MessageRow.created_at, MessageRow.id, MessageRow.payload_ref, MessageRow.wire_ref
        ).where(MessageRow.created_at < before, self._settled(settled, before))
        if after is not None:
            query = query.where(
                or_(
                    MessageRow.created_at > after[0],
                    and_(MessageRow.created_at == after[0], MessageRow.id > after[1]),
                )
            )
        query = query.order_by(MessageRow.created_at, MessageRow.id).limit(limit)
        found = list(self.session.execute(query.with_for_update(skip_locked=True)))
        receipt_files: dict[str, list[str]] = {}
        if found:
            ids = [row.id for row in found]
            for message_id, wire_ref in self.session.execute(
                select(ReceiptRow.message_id, ReceiptRow.wire_ref).where(
                    ReceiptRow.message_id.in_(ids), ReceiptRow.wire_ref.is_not(None)
                )
            ):
                if message_id is not None and wire_ref is not None:
                    receipt_files.setdefault(message_id, []).append(wire_ref)
        return [
            (
                (row.created_at, row.id),
                [ref for ref in (row.payload_ref, row.wire_ref) if ref]
                + receipt_files.get(row.id, []),
            )
            for row in found
        ]

    def count_settled(self, settled: ColumnElement[bool], *, before: datetime) -> int:
        query = select(func.count()).where(
            MessageRow.created_at < before, self._settled(settled, before)
        )
        return self.session.scalar(query) or 0

    def delete_messages(self, message_ids: Sequence[str]) -> None:
        """Delete the messages and what is theirs alone: events, receipts, jobs and content
        keys (said here, not left to the foreign keys' cascade, which SQLite applies only with
        its foreign keys on); their alerts stay, without the message (the key's SET NULL,
        along ix_alerts_message)."""
        ids = list(message_ids)
        for table in (EventRow, ReceiptRow, JobRow, ContentKeyRow):
            self.session.execute(delete(table).where(table.message_id.in_(ids)))
        self.session.execute(
            update(AlertRow)
            .where(AlertRow.message_id.in_(ids))
            .values(message_id=None)
            .execution_options(synchronize_session=False)
        )
        self.session.execute(delete(MessageRow).where(MessageRow.id.in_(ids)))

    def folder_files_done(
        self, done: ColumnElement[bool], *, after: int | None, limit: int
    ) -> list[int]:
        """The folder integration's rows it needs no more (``done``: the condition on the row),
        along the primary key from the one after ``after`` (no other index of the table leads
        with what ``done`` asks: see docs/OPERATIONS.md)."""
        query = select(FolderFileRow.id).where(done)
        if after is not None:
            query = query.where(FolderFileRow.id > after)
        query = query.order_by(FolderFileRow.id).limit(limit)
        return list(self.session.scalars(query.with_for_update(skip_locked=True)))

    def count_folder_files_done(self, done: ColumnElement[bool]) -> int:
        return self.session.scalar(select(func.count()).where(done)) or 0

    def delete_folder_files(self, row_ids: Sequence[int]) -> None:
        self.session.execute(
            delete(FolderFileRow)
            .where(FolderFileRow.id.in_(list(row_ids)))
            .execution_options(synchronize_session=False)
        )

    def longest_persist_duration(self) -> timedelta | None:
        """The longest PersistDuration of the agreements (how long a partner may resend a
        message to us); None without agreements."""
        seconds = self.session.scalar(select(func.max(AgreementRow.persist_duration_seconds)))
        return None if seconds is None else timedelta(seconds=seconds)


class UnitOfWork:
    """One transaction over every repository. Use as a context manager; call :meth:`commit`.

    Leaving the block without a commit rolls back, so a crash half-way leaves nothing behind.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._after_commit: list[Callable[[], object]] = []

    def after_commit(self, action: Callable[[], object]) -> None:
        """Run ``action`` once this unit of work has committed (never if it rolls back)."""
        self._after_commit.append(action)

    def __enter__(self) -> UnitOfWork:
        self.database.transaction_begins()  # refused at once, not after a wait for the lock
        if self.database.write_lock is not None:
            self.database.write_lock.acquire()
        self.session = self.database.sessions()
        self.events = EventRepository(self.session)
        self.messages = MessageRepository(self.session, self.events)
        self.receipts = ReceiptRepository(self.session)
        self.content_keys = ContentKeyRepository(self.session)
        self.alerts = AlertRepository(self.session, self.after_commit)
        self.jobs = JobRepository(self.session)
        self.state = StateRepository(self.session)
        self.instances = InstanceRepository(self.session)
        self.parties = PartyRepository(self.session)
        self.agreements = AgreementRepository(self.session)
        self.retention = RetentionRepository(self.session)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed and detaches the objects without
        # expiring them, so values read inside the block stay readable after it. A block that
        # only read ends with a COMMIT instead: the same for the database, but a rollback makes
        # psycopg drop every prepared statement of the connection.
        try:
            if exc_type is None and self._only_read():
                self.session.commit()
            self.session.close()
        finally:
            if self.database.write_lock is not None:
                self.database.write_lock.release()

    def commit(self) -> None:
        self.events.write_pending()
        self.session.commit()
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    def _only_read(self) -> bool:
        """An open transaction in which nothing was written or is waiting to be flushed."""
        session = self.session
        transaction = session.get_transaction()
        if transaction is None or not transaction.is_active or self.events.has_pending():
            return False  # nothing begun, or a failed flush: only a rollback ends it
        if session.new or session.dirty or session.deleted:
            return False
        return not wrote_in_transaction(session.connection())

    def rollback(self) -> None:
        self.session.rollback()


class Store:
    """The database and the payload store together: what the engine needs to persist anything."""

    def __init__(self, database: Database, payloads: PayloadStore) -> None:
        self.database = database
        self.payloads = payloads

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    def close(self) -> None:
        """Close the database's pooled connections (on SQLite three files each: the database,
        its WAL and shared memory; on PostgreSQL a socket and a server backend). A process that
        opens stores and goes on (a command run in a test or a script, a test of its own) holds
        them until the pool is collected otherwise. The store may still be used after it: a
        unit of work then opens a new connection."""
        self.database.dispose()
