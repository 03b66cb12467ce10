"""The audit log: who read or changed which message, when, and with what outcome.

Rows are only added: a refused attempt in its own transaction, so it is recorded even though the
request itself fails; a sent message in the transaction that stores it, so neither exists
without the other; the messages a listing shows in one transaction with it (one commit per
request, not per message listed), each the first time it is listed to that client and person
(:func:`listed_before`): an EPJ polls every few seconds, and a row per unread message per poll
made some 17,000 rows a day of one message waiting. Details are composed from ids and codes,
never copied from message content.

The rows are written by the API (every request), the command line (an alert followed up) and
the engine (a resend, retention): so the log, and the one rule of what a row holds, is the
store's, and nothing below the API imports the API for it.

No row is changed, and none deleted but by retention (``[retention] audit_days``, 0: kept for
ever), a batch at a time through a permit (:func:`delete_batch`): the database refuses every
other UPDATE and DELETE (migration 0002's triggers, and 0028's, which let a permit's batch
through and nothing else). Where the last deletion left the log is kept (:func:`kept_from`), so
that ``meldingstjener audit`` can say how far back it reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, and_, bindparam, func, insert, or_, select, text

from meldingstjener.model.privacy import redact
from meldingstjener.store.tables import (
    RESOLUTION_NOTE_CHARS,
    AlertRow,
    AuditRetentionPermitRow,
    AuditRow,
)
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store, UnitOfWork

_COLUMNS = ("at", "client", "person", "action", "message_id", "her_id", "outcome", "detail")
_TABLE = cast(Table, AuditRow.__table__)
_INSERT = text(
    f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(':' + column for column in _COLUMNS)})"
).bindparams(bindparam("at", type_=_TABLE.c.at.type))
# kv_state: the latest cutoff retention deleted rows by (ISO 8601); the log is whole from it
DELETED_BEFORE = "audit.deleted_before"
# Where a deletion of audit rows resumes, and how far a permit's batch reaches: the last row of
# a batch, in the order of ix_audit_log_at (``at``, then ``id``).
AuditKey = tuple[datetime, int]
# PostgreSQL: the advisory lock (transaction-scoped) a batch of retention's pass holds from its
# choice of rows to its commit (see older_than)
RETENTION_LOCK = (0x6D74_6175, 1)  # "mtau"
# what the columns hold (PostgreSQL refuses a longer text; SQLite would keep it)
_CLIENT_CHARS = cast(String, _TABLE.c.client.type).length or 128
_PERSON_CHARS = cast(String, _TABLE.c.person.type).length or 128
_FOLLOWED_BY_CHARS = cast(String, cast(Table, AlertRow.__table__).c.acknowledged_by.type).length


class Outcome:
    OK = "ok"
    REFUSED = "refused"
    NOT_FOUND = "not-found"
    INVALID = "invalid"


@dataclass(frozen=True)
class FollowUp:
    """An alert acknowledged or resolved, and what its follow-up was before. ``note_not_kept``:
    a note came with a resolve of an alert resolved already, with another note or none (it
    was not kept: the resolution it would tell of is another's)."""

    alert: AlertRow
    acknowledged_before: str | None
    resolved_before: bool
    note_not_kept: bool = False


class NoteRefused(ValueError):
    """A resolution note that cannot be kept as given (``str()``: why, without the note)."""


def resolution_note(note: str | None) -> str | None:
    """The note an alert resolved by hand keeps, from what an operator gave (the command line
    and the operator API both come here): stripped, masked as every stored text; None when
    nothing is left of it. Refused (:class:`NoteRefused`) when longer than its column after
    masking, which may lengthen it: cut, it would lose its end."""
    if note is None or not note.strip():
        return None
    kept = redact(note.strip()) or ""
    if len(kept) > RESOLUTION_NOTE_CHARS:
        raise NoteRefused(
            f"the note is {len(kept)} characters (a national identity number in it counts as "
            f"the 13 of [redacted-id]); a note holds {RESOLUTION_NOTE_CHARS} at most"
        )
    return kept


def follow_up_alert(
    uow: UnitOfWork,
    alert_id: int,
    *,
    resolve: bool,
    client: str,
    person: str | None,
    by: str,
    at: datetime | None = None,
    note: str | None = None,
) -> FollowUp | None:
    """Acknowledge (or resolve) one alert in the caller's transaction, and audit it when that
    changed it; None when there is no such alert. The command line and the operator API both
    come here. The alert keeps who acknowledged it and who resolved it (``by``, masked like
    every stored text and cut to its column after masking) only for the incident at hand (a
    repeat of the problem clears them), so each change, and who made it, is in the audit log.
    A resolve keeps ``note`` with the alert (as :func:`resolution_note` makes it, which may
    refuse it, before anything is changed; never in the audit log or the server log: an
    operator's free text). A note for an alert resolved already is not kept, and the answer
    says so (``note_not_kept``), unless it is the note the alert has (a repeat)."""
    kept = resolution_note(note) if resolve else None
    # locked before what it was is read: two at once would both find it open, and both be
    # audited (and told) as the one who acknowledged it
    found = uow.alerts.get(alert_id, for_update=True)
    if found is None:
        return None
    acknowledged_before, resolved_before = found.acknowledged_by, found.resolved_at is not None
    if resolved_before and kept is not None and kept != found.resolution_note:
        # its resolution is told already (by the server, or with another note): nothing changed
        return FollowUp(found, acknowledged_before, resolved_before, note_not_kept=True)
    masked = (redact(by) or by)[: _FOLLOWED_BY_CHARS or 128]
    if resolve:
        alert = uow.alerts.close(alert_id, by=masked, at=at, note=kept)
    else:
        alert = uow.alerts.acknowledge(alert_id, by=masked, at=at)
    if alert is None:  # gone meanwhile
        return None
    changed = not resolved_before if resolve else acknowledged_before is None
    if changed:
        add(
            uow,
            client=client,
            person=person,
            action="alert-resolve" if resolve else "alert-acknowledge",
            outcome=Outcome.OK,
            message_id=alert.message_id,
            her_id=alert.partner_her_id,
            detail=f"alert {alert.id} {alert.kind}",
        )
    return FollowUp(alert, acknowledged_before, resolved_before)


def record(
    store: Store,
    *,
    client: str,
    person: str | None,
    action: str,
    outcome: str,
    message_id: str | None = None,
    her_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Add one row in its own transaction (refusals: the request itself fails)."""
    with store.unit_of_work() as uow:
        add(
            uow,
            client=client,
            person=person,
            action=action,
            outcome=outcome,
            message_id=message_id,
            her_id=her_id,
            detail=detail,
        )
        uow.commit()


def add(
    uow: UnitOfWork,
    *,
    client: str,
    person: str | None,
    action: str,
    outcome: str,
    message_id: str | None = None,
    her_id: str | None = None,
    detail: str | None = None,
) -> None:
    """Add one row in the caller's transaction (a sent message and its audit row commit
    together), written at once by a prepared INSERT: every API request adds one, and the ORM's
    flush of it was the last one left on the submit path."""
    uow.session.connection().execute(
        _INSERT,
        {
            "at": utcnow(),
            "client": client[:_CLIENT_CHARS],
            # An HPR number or HelseID subject is expected; anything shaped like a
            # national identity number is masked like every other stored text. Cut after
            # masking: the mask is longer than the number it hides.
            "person": _cut(redact(person), _PERSON_CHARS),
            "action": action,
            "message_id": message_id,
            "her_id": her_id,
            "outcome": outcome,
            "detail": redact(detail),
        },
    )


def listed_before(
    uow: UnitOfWork, *, client: str, person: str | None, action: str, message_ids: list[str]
) -> set[str]:
    """Those of ``message_ids`` a row of ``action`` names for this client and person already
    (as :func:`add` stores them): who first saw which message is kept, the polls after are
    not. One statement along ix_audit_log_message."""
    if not message_ids:
        return set()
    stored_person = _cut(redact(person), _PERSON_CHARS)
    query = select(AuditRow.message_id).where(
        AuditRow.message_id.in_(message_ids),
        AuditRow.action == action,
        AuditRow.client == client[:_CLIENT_CHARS],
        AuditRow.person.is_(None) if stored_person is None else AuditRow.person == stored_person,
    )
    return {message_id for message_id in uow.session.scalars(query) if message_id is not None}


def _cut(value: str | None, chars: int) -> str | None:
    return None if value is None else value[:chars]


def older_than(
    uow: UnitOfWork, before: datetime, *, after: AuditKey | None, limit: int
) -> list[AuditKey]:
    """The keys of up to ``limit`` rows older than ``before``, oldest first, from the one after
    ``after``: a range of ix_audit_log_at (``id`` follows ``at`` in it on SQLite; PostgreSQL
    sorts the ties of one time).

    The first statement of a batch: it waits for another retention run's batch (the daily job
    and ``meldingstjener retention`` at once) until that one's transaction ends, and then finds
    what that one left. A permit deletes every row up to its batch's end, not only those chosen:
    two batches chosen at once, each skipping the other's rows, interleaved, and each one's
    permit waited for the other's rows (a deadlock, and the failed run's counts lost). SQLite
    needs no lock: a unit of work holds the database's one writer from its first statement."""
    if uow.database.is_postgresql:
        uow.session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": RETENTION_LOCK[0], "key": RETENTION_LOCK[1]},
        )
    query = select(AuditRow.at, AuditRow.id).where(AuditRow.at < before)
    if after is not None:
        query = query.where(
            or_(AuditRow.at > after[0], and_(AuditRow.at == after[0], AuditRow.id > after[1]))
        )
    query = query.order_by(AuditRow.at, AuditRow.id).limit(limit)
    return [(at, row_id) for at, row_id in uow.session.execute(query)]


def count_older_than(uow: UnitOfWork, before: datetime) -> int:
    """How many rows are older than ``before`` (what a dry run of retention would delete)."""
    return uow.session.scalar(select(func.count()).where(AuditRow.at < before)) or 0


def delete_batch(
    uow: UnitOfWork, before: datetime, through: AuditKey, *, first: AuditKey | None = None
) -> None:
    """Delete, in the caller's transaction, the rows older than ``before`` from ``first`` up to
    ``through`` (the first and last keys :func:`older_than` gave; no ``first``: from the log's
    first row): the INSERT of a permit, whose trigger deletes them and the permit (migration
    0028); a DELETE of its own would be refused. ``first`` makes the DELETE a range of
    ix_audit_log_at bounded both ways, which PostgreSQL reads along the index even without
    statistics on the table, and which does not walk again what earlier batches deleted. The
    log is then
    kept whole from ``before`` on, or from a later cutoff a run used before (``audit_days``
    made longer brings back nothing), which :func:`kept_from` tells."""
    uow.session.execute(
        insert(AuditRetentionPermitRow).values(
            cutoff=before,
            from_at=None if first is None else first[0],
            from_id=None if first is None else first[1],
            through_at=through[0],
            through_id=through[1],
        )
    )
    earlier = _deleted_before(uow)
    if earlier is None or earlier < before:
        uow.state.set(DELETED_BEFORE, before.isoformat())


def kept_from(store: Store) -> datetime | None:
    """Since when the log is kept whole: the latest cutoff retention deleted rows by; None
    when it never deleted any (the log reaches back to its first row)."""
    with store.unit_of_work() as uow:
        return _deleted_before(uow)


def _deleted_before(uow: UnitOfWork) -> datetime | None:
    stored = uow.state.get(DELETED_BEFORE)
    return None if stored is None else datetime.fromisoformat(stored)


@dataclass(frozen=True)
class AuditQuery:
    message_id: str | None = None
    client: str | None = None
    since: datetime | None = None
    limit: int = 1000
    until: datetime | None = None  # at or before
    newest_first: bool = False  # the newest ``limit`` rows (the API), else the oldest (the CLI)


def query(store: Store, q: AuditQuery) -> list[dict[str, Any]]:
    """Audit rows, oldest first (or newest first), as plain dictionaries (for JSON and the
    CLI)."""
    statement = select(AuditRow)
    if q.message_id:
        statement = statement.where(AuditRow.message_id == q.message_id)
    if q.client:
        statement = statement.where(AuditRow.client == q.client)
    if q.since is not None:
        statement = statement.where(AuditRow.at >= q.since)
    if q.until is not None:
        statement = statement.where(AuditRow.at <= q.until)
    if q.newest_first:
        statement = statement.order_by(AuditRow.at.desc(), AuditRow.id.desc())
    else:
        statement = statement.order_by(AuditRow.at, AuditRow.id)
    statement = statement.limit(q.limit)
    with store.unit_of_work() as uow:
        return [
            {
                "id": row.id,
                "at": row.at.isoformat(),
                "client": row.client,
                "person": row.person,
                "action": row.action,
                "messageId": row.message_id,
                "herId": row.her_id,
                "outcome": row.outcome,
                "detail": row.detail,
            }
            for row in uow.session.scalars(statement)
        ]
