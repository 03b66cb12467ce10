"""Unit of work and repositories: "store + record event" as one atomic step.

The engine opens a :class:`UnitOfWork`, changes messages through the repositories and commits once.
A status change always goes through :meth:`MessageRepository.set_status`, which checks the status
machine and writes the event row in the same transaction. Due work is claimed with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers never take the same job; on SQLite
every transaction starts with ``BEGIN IMMEDIATE`` and claims are serialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, cast

from sqlalchemy import Insert, Select, Table, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from meldingstjener.model import Direction, check_transition, initial_status
from meldingstjener.model.privacy import redact
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.tables import (
    AgreementRow,
    AlertRow,
    EventRow,
    JobRow,
    MessageRow,
    PartyRow,
    ReceiptRow,
    StateRow,
    new_id,
)
from meldingstjener.store.types import utcnow


class EventKind:
    """The kinds of entries in the message log."""

    STATUS = "status"
    SIGNAL_IN = "signal-in"
    SIGNAL_OUT = "signal-out"
    ATTEMPT = "attempt"
    ERROR = "error"
    NOTE = "note"


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

    def write_pending(self) -> None:
        """Write the collected events (the ORM flushes the messages they refer to first)."""
        if self._pending:
            pending, self._pending = self._pending, []
            self.session.flush()
            # Core, not ORM bulk: the ORM splits rows by which values are None, Core sends one
            # multi-row INSERT.
            self.session.connection().execute(insert(cast(Table, EventRow.__table__)), pending)

    def for_message(self, message_id: str) -> list[EventRow]:
        self.write_pending()
        query = select(EventRow).where(EventRow.message_id == message_id)
        return list(self.session.scalars(query.order_by(EventRow.at, EventRow.id)))


@dataclass(frozen=True)
class LogFilter:
    """Filters of the message log (``meldingstjener log``, the API's log search)."""

    her_id: str | None = None
    msg_type: str | None = None
    status: str | None = None
    since: datetime | None = None
    direction: str | None = None
    limit: int = 1000


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
            query = query.with_for_update()
        return self.session.scalars(query).first()

    def by_ebxml_id(
        self, direction: Direction, ebxml_message_id: str, *, for_update: bool = False
    ) -> MessageRow | None:
        query = select(MessageRow).where(
            MessageRow.direction == direction.value,
            MessageRow.ebxml_message_id == ebxml_message_id,
        )
        if for_update:
            query = query.with_for_update()
        return self.session.scalars(query).first()

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
        check_transition(Direction(row.direction), row.status, new_status)
        now = at or utcnow()
        previous = row.status
        row.status = new_status
        row.status_changed_at = now
        if code is not None:
            row.last_error_code = code
            row.last_error_text = redact(detail)
        self.events.record(
            row.id,
            EventKind.STATUS,
            actor=actor,
            from_status=previous,
            to_status=new_status,
            detail=detail,
            code=code,
            ebxml_message_id=row.ebxml_message_id,
            at=now,
        )
        return row

    def search(self, log_filter: LogFilter) -> list[MessageRow]:
        return list(self.session.scalars(self._filtered(select(MessageRow), log_filter)))

    def log(self, log_filter: LogFilter) -> list[tuple[EventRow, MessageRow | None]]:
        """Events joined with their message, oldest first, filtered like the message log."""
        self.events.write_pending()
        query: Select[Any] = select(EventRow, MessageRow).outerjoin(  # type: ignore[assignment]
            MessageRow, EventRow.message_id == MessageRow.id
        )
        if log_filter.since is not None:
            query = query.where(EventRow.at >= log_filter.since)
        query = self._filtered(query, log_filter, with_since=False)
        query = query.order_by(EventRow.at, EventRow.id).limit(log_filter.limit)
        return [(event, message) for event, message in self.session.execute(query)]

    @staticmethod
    def _filtered(query: Select[Any], f: LogFilter, *, with_since: bool = True) -> Select[Any]:
        if f.her_id:
            query = query.where(
                or_(
                    *(
                        column == f.her_id
                        for column in (
                            MessageRow.from_her_id,
                            MessageRow.to_her_id,
                            MessageRow.sender_org_her_id,
                            MessageRow.sender_service_her_id,
                            MessageRow.sender_person_her_id,
                            MessageRow.receiver_org_her_id,
                            MessageRow.receiver_service_her_id,
                            MessageRow.receiver_person_her_id,
                        )
                    )
                )
            )
        if f.msg_type:
            query = query.where(MessageRow.msg_type == f.msg_type)
        if f.status:
            query = query.where(MessageRow.status == f.status)
        if f.direction:
            query = query.where(MessageRow.direction == f.direction)
        if with_since and f.since is not None:
            query = query.where(MessageRow.created_at >= f.since)
        if with_since:
            query = query.order_by(MessageRow.created_at).limit(f.limit)
        return query


class ReceiptRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: ReceiptRow) -> ReceiptRow:
        row.description = redact(row.description)
        self.session.add(row)
        return row

    def for_message(self, message_id: str) -> list[ReceiptRow]:
        query = select(ReceiptRow).where(ReceiptRow.message_id == message_id)
        return list(self.session.scalars(query.order_by(ReceiptRow.at, ReceiptRow.id)))


class AlertRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

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
    ) -> AlertRow:
        """Open an alert, or count one more occurrence of the same open (or resolved) problem."""
        now = at or utcnow()
        existing = self.session.scalars(
            select(AlertRow).where(AlertRow.dedup_key == dedup_key).with_for_update()
        ).first()
        if existing is not None:
            existing.count += 1
            existing.last_seen = now
            existing.summary = redact(summary) or ""
            if existing.resolved_at is not None:  # the problem came back
                existing.resolved_at = None
                existing.acknowledged_at = None
                existing.acknowledged_by = None
            return existing
        row = AlertRow(
            kind=kind,
            severity=severity,
            dedup_key=dedup_key,
            summary=redact(summary) or "",
            message_id=message_id,
            partner_her_id=partner_her_id,
            first_seen=now,
            last_seen=now,
            count=1,
        )
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, alert_id: int) -> AlertRow | None:
        return self.session.get(AlertRow, alert_id)

    def acknowledge(self, alert_id: int, *, by: str, at: datetime | None = None) -> AlertRow | None:
        row = self.session.get(AlertRow, alert_id)
        if row is not None and row.acknowledged_at is None:
            row.acknowledged_at = at or utcnow()
            row.acknowledged_by = by
        return row

    def resolve(self, dedup_key: str, *, at: datetime | None = None) -> None:
        """Mark the open alert of ``dedup_key`` resolved (one statement; none open is fine)."""
        self.session.execute(
            update(AlertRow)
            .where(AlertRow.dedup_key == dedup_key, AlertRow.resolved_at.is_(None))
            .values(resolved_at=at or utcnow())
            .execution_options(synchronize_session=False)
        )

    def list(self, *, open_only: bool = False, limit: int = 1000) -> list[AlertRow]:
        query = select(AlertRow)
        if open_only:
            query = query.where(AlertRow.resolved_at.is_(None))
        return list(self.session.scalars(query.order_by(AlertRow.last_seen.desc()).limit(limit)))


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    message_id: str | None
    data: dict[str, Any] | None
    attempts: int
    due_at: datetime


class JobRepository:
    """Due work. Each operation is one statement: this is the hot path of every message."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def _insert(self) -> Any:
        dialect = self.session.get_bind().dialect.name
        return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(JobRow)

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
        values = {
            "kind": kind,
            "due_at": due_at,
            "message_id": message_id,
            "data": data,
            "dedup_key": dedup_key,
            "attempts": 0,
            "created_at": utcnow(),
        }
        statement: Insert
        if dedup_key is None:
            statement = insert(JobRow).values(**values)
        else:
            statement = (
                self._insert()
                .values(**values)
                .on_conflict_do_update(
                    index_elements=[JobRow.dedup_key],
                    set_={
                        "due_at": due_at,
                        "claimed_by": None,
                        "claimed_until": None,
                        "data": data,
                    },
                )
            )
        self.session.execute(statement)

    def claim_due(
        self, worker: str, *, now: datetime, limit: int, lease: timedelta
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs for ``worker`` until ``now + lease``.

        A job whose lease ran out (its worker died) is due again. The caller commits. One
        ``UPDATE ... RETURNING`` over a ``FOR UPDATE SKIP LOCKED`` selection (PostgreSQL), so
        concurrent workers never take the same job and a claim costs one round trip.
        """
        due = (
            select(JobRow.id)
            .where(
                JobRow.due_at <= now,
                or_(JobRow.claimed_until.is_(None), JobRow.claimed_until < now),
            )
            .order_by(JobRow.due_at, JobRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(JobRow)
            .where(JobRow.id.in_(due))
            .values(claimed_by=worker, claimed_until=now + lease, attempts=JobRow.attempts + 1)
            .returning(
                JobRow.id,
                JobRow.kind,
                JobRow.message_id,
                JobRow.data,
                JobRow.attempts,
                JobRow.due_at,
            )
            .execution_options(synchronize_session=False)
        )
        claimed = [ClaimedJob(*row) for row in self.session.execute(statement)]
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

    def finish(self, job_id: int) -> None:
        self.session.execute(
            delete(JobRow).where(JobRow.id == job_id).execution_options(synchronize_session=False)
        )

    def reschedule(self, job_id: int, due_at: datetime) -> None:
        self.session.execute(
            update(JobRow)
            .where(JobRow.id == job_id)
            .values(due_at=due_at, claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )

    def cancel_for_message(self, message_id: str, kind: str | None = None) -> None:
        statement = delete(JobRow).where(JobRow.message_id == message_id)
        if kind is not None:
            statement = statement.where(JobRow.kind == kind)
        self.session.execute(statement.execution_options(synchronize_session=False))

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


class PartyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, her_id: str) -> PartyRow | None:
        return self.session.get(PartyRow, her_id)

    def upsert(self, row: PartyRow) -> PartyRow:
        return self.session.merge(row)

    def all(self) -> Sequence[PartyRow]:
        return list(self.session.scalars(select(PartyRow)))


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
        return list(
            self.session.scalars(
                select(AgreementRow).where(AgreementRow.counterparty_her_id == counterparty_her_id)
            )
        )

    def add(self, row: AgreementRow) -> AgreementRow:
        self.session.add(row)
        return row

    def all(self) -> list[AgreementRow]:
        query = select(AgreementRow).order_by(AgreementRow.counterparty_her_id)
        return list(self.session.scalars(query))


class UnitOfWork:
    """One transaction over every repository. Use as a context manager; call :meth:`commit`.

    Leaving the block without a commit rolls back, so a crash half-way leaves nothing behind.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    def __enter__(self) -> UnitOfWork:
        if self.database.write_lock is not None:
            self.database.write_lock.acquire()
        self.session = self.database.sessions()
        self.events = EventRepository(self.session)
        self.messages = MessageRepository(self.session, self.events)
        self.receipts = ReceiptRepository(self.session)
        self.alerts = AlertRepository(self.session)
        self.jobs = JobRepository(self.session)
        self.state = StateRepository(self.session)
        self.parties = PartyRepository(self.session)
        self.agreements = AgreementRepository(self.session)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # close() rolls back whatever was not committed and detaches the objects without
        # expiring them, so values read inside the block stay readable after it.
        try:
            self.session.close()
        finally:
            if self.database.write_lock is not None:
                self.database.write_lock.release()

    def commit(self) -> None:
        self.events.write_pending()
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()


class Store:
    """The database and the payload store together: what the engine needs to persist anything."""

    def __init__(self, database: Database, payloads: PayloadStore) -> None:
        self.database = database
        self.payloads = payloads

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.database)
