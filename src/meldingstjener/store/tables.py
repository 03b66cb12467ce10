"""The tables, as SQLAlchemy 2 typed ORM classes. Migrations in ``migrations/`` create them.

Patient data never goes into these columns: a message row holds ids, HER-ids, types and a reference
to the payload file; event and alert texts are written by our code, not copied from payloads.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meldingstjener.model.status import SETTLED, Direction, InboundStatus, OutboundStatus
from meldingstjener.store.types import UtcDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT primary keys autoincrement on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    return str(uuid.uuid4())


# The received messages not read yet: what GetMessages polls for. The partial index below holds
# only these, so a poll reads the waiting messages, not every message ever received. A query
# states this predicate as written here, with literal values: a plan made for any value of a
# bound "direction = $1" (PostgreSQL's generic plan of a statement psycopg has prepared after
# a few runs of it) cannot use the partial index.
UNREAD_INBOUND = "direction = 'in' AND read_at IS NULL"
# An event of no message: one of a message refused before its signature verified (not stored),
# which only its eb:MessageId and its actor ("http:<sender's HER-id>") name. The log's search
# for such events goes through partial indexes of these alone (MessageRepository.log).
UNSTORED_EVENT = "message_id IS NULL"
# A job waits for a worker when none holds it: never claimed, or its lease ran out (its worker
# died or hung). A worker holds the others; NULL counts as waiting, so the two split every job.
# One rule for the claim, the heartbeat's look for jobs overdue and /metrics (``:now`` is the
# time they are judged at, bound as the statement's).
JOB_WAITING = "(claimed_until IS NULL OR claimed_until < :now)"
JOB_HELD = "claimed_until >= :now"
# The jobs claimed (held, or a lease run out and not claimed again yet): the partial index
# ix_jobs_held holds only these, along which /metrics counts those held (a JOB_HELD implies it)
JOB_CLAIMED = "claimed_until IS NOT NULL"
# The received messages the EPJ has (``delivered``) and has not answered with an AppRec, of a
# type owed one (every type but an AppRec: engine/retention.py's NEVER_ANSWERED): the last arm
# of UNSETTLED, so that the ``apprec-owed`` check (engine/inbox_watch.py) and the log's search
# for them (LogFilter.apprec_owed) read the partial index below (apprec_owed_sql).
APPREC_OWED = (
    "direction = 'in' AND status = 'delivered' AND (msg_type IS NULL OR msg_type <> 'APPREC')"
)
# The messages not settled yet: engine/retention.py's one rule of what is settled, turned round
# and written out (tests/integration/store/test_unsettled.py holds the two together): on their
# way out, or not yet answered or taken by the EPJ. The partial index below holds only these, so
# that the figures /metrics reads by status and time cost what is under way, not a year of
# messages. Stated with literal values, as UNREAD_INBOUND is, and by a query exactly as written.
UNSETTLED = (
    "(direction = 'out' AND status IN ('accepted', 'retrying', 'sent', 'transport-error'))"
    " OR (direction = 'in' AND status IN ('acknowledged', 'received'))"
    f" OR ({APPREC_OWED})"
)


def apprec_owed_sql(dialect: str) -> str:
    """APPREC_OWED as a query on ``dialect`` states it to read ``ix_messages_unsettled``.

    PostgreSQL proves the index's predicate from its last arm alone, and can then read the
    index in ``created_at`` order. SQLite takes a partial index only for a query that states
    each of its terms, here the whole OR: the same messages, as APPREC_OWED is one of its arms
    (on PostgreSQL that form became three index scans OR'ed and sorted)."""
    return APPREC_OWED if dialect == "postgresql" else f"({UNSETTLED}) AND ({APPREC_OWED})"


# the statuses UNSETTLED names, by direction: every status not settled by its status alone
# (a received ``delivered`` is named, as most of its kind are under way; an AppRec's is not)
UNSETTLED_STATUSES: dict[str, tuple[str, ...]] = {
    direction.value: tuple(s.value for s in statuses if s not in SETTLED[direction.value])
    for direction, statuses in (
        (Direction.OUTBOUND, OutboundStatus),
        (Direction.INBOUND, InboundStatus),
    )
}


# The MsgHead's HER-ids of a service or a person: on some messages, NULL on the others. Their
# indexes leave out the NULLs (a search by a HER-id never looks for NULL, and a message without
# one costs the index nothing); each is named "ix_messages_<column less _her_id>".
OPTIONAL_HER_ID_COLUMNS = (
    "sender_service_her_id",
    "sender_person_her_id",
    "receiver_service_her_id",
    "receiver_person_her_id",
)


def _her_id_index(column: str) -> Index:
    present = text(f"{column} IS NOT NULL")
    name = f"ix_messages_{column.removesuffix('_her_id')}"
    return Index(name, column, postgresql_where=present, sqlite_where=present)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class MessageRow(Base):
    """One message, inbound or outbound: identities, addressing, payload reference, status."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("direction", "ebxml_message_id", name="uq_messages_direction_ebxml_id"),
        Index("ix_messages_status", "status"),
        Index("ix_messages_created_at", "created_at"),
        Index("ix_messages_msg_id", "msg_id"),
        # an id looked up in another case (``show``, ``status``, ``resend``; migration 0033)
        Index("ix_messages_msg_id_lower", text("lower(msg_id)")),
        Index("ix_messages_ebxml_id_lower", text("lower(ebxml_message_id)")),
        Index("ix_messages_conversation", "ebxml_conversation_id"),
        Index("ix_messages_sender_org", "sender_org_her_id"),
        Index("ix_messages_receiver_org", "receiver_org_her_id"),
        Index("ix_messages_from_to", "from_her_id", "to_her_id"),
        # the rest of the HER-id columns ``log --her-id`` (and the API's log) searches, an OR of
        # the eight: with one column unindexed PostgreSQL read the whole table (migration 0026)
        Index("ix_messages_to", "to_her_id"),
        *(_her_id_index(column) for column in OPTIONAL_HER_ID_COLUMNS),
        Index("ix_messages_client_id", "client_id"),
        Index("ix_messages_payload_ref", "payload_ref"),  # the sweep of unreferenced files
        Index("ix_messages_wire_ref", "wire_ref"),
        # a retried API request with the same Idempotency-Key finds the message it created
        Index("uq_messages_idempotency_key", "idempotency_key", unique=True),
        Index(
            "ix_messages_unread",
            "to_her_id",
            "created_at",
            postgresql_where=text(UNREAD_INBOUND),
            sqlite_where=text(UNREAD_INBOUND),
        ),
        # the messages under way, by status and age (migration 0025)
        Index(
            "ix_messages_unsettled",
            "direction",
            "status",
            "created_at",
            postgresql_where=text(UNSETTLED),
            sqlite_where=text(UNSETTLED),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    direction: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(16))
    # outbound: where the last delivered attempt went (the channel above is then its channel);
    # a MessageError is taken from a party served there even after the receiver has moved
    sent_endpoint: Mapped[str | None] = mapped_column(Text)
    environment: Mapped[str | None] = mapped_column(String(8))

    # ebXML envelope
    ebxml_message_id: Mapped[str | None] = mapped_column(String(255))
    ebxml_conversation_id: Mapped[str | None] = mapped_column(String(255))
    ebxml_ref_to_message_id: Mapped[str | None] = mapped_column(String(255))
    cpa_id: Mapped[str | None] = mapped_column(String(255))
    ebxml_service: Mapped[str | None] = mapped_column(String(255))
    ebxml_action: Mapped[str | None] = mapped_column(String(255))
    from_her_id: Mapped[str | None] = mapped_column(String(16))
    to_her_id: Mapped[str | None] = mapped_column(String(16))

    # MsgHead
    msg_id: Mapped[str | None] = mapped_column(String(255))
    msg_type: Mapped[str | None] = mapped_column(String(64))
    msg_type_version: Mapped[str | None] = mapped_column(String(64))
    conversation_ref_to_parent: Mapped[str | None] = mapped_column(String(255))
    conversation_ref_to_conversation: Mapped[str | None] = mapped_column(String(255))
    sender_org_her_id: Mapped[str | None] = mapped_column(String(16))
    sender_service_her_id: Mapped[str | None] = mapped_column(String(16))
    sender_person_her_id: Mapped[str | None] = mapped_column(String(16))
    receiver_org_her_id: Mapped[str | None] = mapped_column(String(16))
    receiver_service_her_id: Mapped[str | None] = mapped_column(String(16))
    receiver_person_her_id: Mapped[str | None] = mapped_column(String(16))
    patient_present: Mapped[bool | None] = mapped_column(Boolean)

    # payload (the fagmelding in clear text, in the payload store) and the wire form
    payload_ref: Mapped[str | None] = mapped_column(String(64))
    payload_size: Mapped[int | None] = mapped_column(BigInteger)
    payload_sha256: Mapped[str | None] = mapped_column(String(64))
    wire_ref: Mapped[str | None] = mapped_column(String(64))
    wire_content_type: Mapped[str | None] = mapped_column(String(512))
    # an outbound message's: the SHA-256 (hex) of the receiver's encryption certificate its
    # payload was encrypted to, so that no send goes out to one the receiver has since replaced
    encrypted_to_sha256: Mapped[str | None] = mapped_column(String(64))

    # scheduling and outcome
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error_text: Mapped[str | None] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(String(128))
    # of one client ("<credential>:<length of name>:<name>:<key>", see api/idempotency.py), of
    # the folder outbox ("folder:<digest>") or of a message sent again ("resend:<id of the
    # original>", engine/copies.py: one copy each)
    idempotency_key: Mapped[str | None] = mapped_column(String(400))
    # the request the key was first given with (the API's SHA-256 of document, receiver and
    # overrides): the key again with another request is refused, not answered with this message
    idempotency_digest: Mapped[str | None] = mapped_column(String(64))
    read_at: Mapped[datetime | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventRow(Base):
    """The message log: every status change and every signal, with time, actor and detail."""

    __tablename__ = "message_events"
    __table_args__ = (
        Index("ix_message_events_message_at", "message_id", "at"),
        Index("ix_message_events_at", "at"),
        Index(
            "ix_message_events_unstored_ebxml",
            "ebxml_message_id",
            postgresql_where=text(UNSTORED_EVENT),
            sqlite_where=text(UNSTORED_EVENT),
        ),
        # a refused message's eb:MessageId looked up in another case (migration 0033)
        Index(
            "ix_message_events_unstored_ebxml_lower",
            text("lower(ebxml_message_id)"),
            postgresql_where=text(UNSTORED_EVENT),
            sqlite_where=text(UNSTORED_EVENT),
        ),
        Index(
            "ix_message_events_unstored_actor",
            "actor",
            postgresql_where=text(UNSTORED_EVENT),
            sqlite_where=text(UNSTORED_EVENT),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    ebxml_message_id: Mapped[str | None] = mapped_column(String(255))


class ContentKeyRow(Base):
    """A content key of a received payload, named by the digest of its wrapped form, and the
    message that used it. A key is used in one received message only: see
    :func:`meldingstjener.security.cms_enveloped.wrapped_keys` (no padding oracle)."""

    __tablename__ = "content_keys"
    __table_args__ = (Index("ix_content_keys_message", "message_id"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256, hex
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ReceiptRow(Base):
    """A transport receipt, an ebXML error or an AppRec, sent or received, tied to its message."""

    __tablename__ = "receipts"
    __table_args__ = (
        Index("ix_receipts_message", "message_id"),
        Index("ix_receipts_wire_ref", "wire_ref"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # acknowledgment | message-error | apprec
    direction: Mapped[str] = mapped_column(String(3))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    ebxml_message_id: Mapped[str | None] = mapped_column(String(255))
    ref_to_message_id: Mapped[str | None] = mapped_column(String(255))
    apprec_status: Mapped[str | None] = mapped_column(String(8))
    error_codes: Mapped[list[Any] | None]
    description: Mapped[str | None] = mapped_column(Text)
    wire_ref: Mapped[str | None] = mapped_column(String(64))
    wire_content_type: Mapped[str | None] = mapped_column(String(512))


RESOLUTION_NOTE_CHARS = 500  # an alert's resolution note, at most


class AlertRow(Base):
    """An avvik: a problem an operator must follow up, deduplicated by ``dedup_key``."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_open", "resolved_at", "acknowledged_at"),
        Index("ix_alerts_changed", "changed_at", "id"),
        Index("ix_alerts_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(48))
    severity: Mapped[str] = mapped_column(String(16))
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    partner_her_id: Mapped[str | None] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    count: Mapped[int] = mapped_column(Integer, default=1)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    # the last change that is told (raised, acknowledged, resolved; not a lasting state
    # counted again): webhooks follow it
    changed_at: Mapped[datetime | None]
    # what the operator who resolved it by hand wrote (``alerts resolve --note``), until it
    # opens again
    resolution_note: Mapped[str | None] = mapped_column(String(RESOLUTION_NOTE_CHARS))
    # who resolved it by hand (masked, as acknowledged_by), until it opens again; None when the
    # server resolved it (the problem ended), or it was resolved before migration 0032
    resolved_by: Mapped[str | None] = mapped_column(String(128))


class PartyRow(Base):
    """A communication party from the address register, kept locally."""

    __tablename__ = "communication_parties"
    __table_args__ = (
        Index("ix_communication_parties_parent", "parent_her_id"),
        Index("ix_communication_parties_orgnr", "organisation_number"),
    )

    her_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    parent_her_id: Mapped[str | None] = mapped_column(String(16))
    party_type: Mapped[str] = mapped_column(String(16))
    organisation_number: Mapped[str | None] = mapped_column(String(9))
    name: Mapped[str] = mapped_column(String(512))
    display_name: Mapped[str | None] = mapped_column(String(512))
    parent_name: Mapped[str | None] = mapped_column(String(512))
    business_types: Mapped[list[Any] | None]
    edi_address: Mapped[str | None] = mapped_column(String(255))
    amqp_queues: Mapped[dict[str, Any] | None]
    signing_certificate: Mapped[str | None] = mapped_column(Text)  # base64 DER
    signing_cert_not_after: Mapped[datetime | None]
    # the signing certificate the current one replaced, and when we learnt of the change: a
    # partner's resends signed before its rollover still verify for a while (engine.directory)
    previous_signing_certificate: Mapped[str | None] = mapped_column(Text)  # base64 DER
    signing_cert_replaced_at: Mapped[datetime | None]
    encryption_certificate: Mapped[str | None] = mapped_column(Text)  # base64 DER
    encryption_cert_not_after: Mapped[datetime | None]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    valid_from: Mapped[datetime | None]
    valid_to: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(32), default="manual")
    details: Mapped[dict[str, Any] | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AgreementRow(Base):
    """A partner agreement: what we agreed with one counterparty and how to reach it."""

    __tablename__ = "partner_agreements"
    __table_args__ = (
        UniqueConstraint("our_her_id", "counterparty_her_id", name="uq_partner_agreements_pair"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    our_her_id: Mapped[str] = mapped_column(String(16))
    counterparty_her_id: Mapped[str] = mapped_column(String(16))
    cpa_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(24), default="ordered")
    channel: Mapped[str] = mapped_column(String(16), default="http")
    endpoint: Mapped[str | None] = mapped_column(String(512))
    message_types: Mapped[list[Any]] = mapped_column(JSON, default=list)
    retries: Mapped[int] = mapped_column(Integer, default=5)
    retry_interval_seconds: Mapped[int] = mapped_column(Integer, default=12 * 3600)
    persist_duration_seconds: Mapped[int] = mapped_column(Integer, default=4 * 24 * 3600)
    ack_requested: Mapped[bool] = mapped_column(Boolean, default=True)
    duplicate_elimination: Mapped[bool] = mapped_column(Boolean, default=True)
    sync_reply_mode: Mapped[str] = mapped_column(String(32), default="none")
    apprec_version: Mapped[str | None] = mapped_column(String(8))
    auto_apprec: Mapped[bool] = mapped_column(Boolean, default=False)
    contacts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(16), default="manual")
    activation_date: Mapped[datetime | None]
    # when the agreement ends (a CPA's end): nothing is sent under it afterwards
    valid_to: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobRow(Base):
    """Due work (transmit, retry, time-outs): claimed by workers with a lease.

    Scheduling lives in the store so it survives restarts and is shared by several workers.
    """

    __tablename__ = "jobs"
    # AUTOINCREMENT: SQLite must not give a deleted job's id to a new one (jobs are finished,
    # rescheduled and extended by id)
    # ix_jobs_message: a message's jobs are deleted by its every receipt (and with the message)
    # ix_jobs_kind_due: /metrics counts each kind's jobs due along it, up to a bound (0029)
    # ix_jobs_held: /metrics counts the jobs held, all, through it (0031)
    __table_args__ = (
        Index("ix_jobs_due", "due_at"),
        Index("ix_jobs_kind_due", "kind", "due_at"),
        Index(
            "ix_jobs_held",
            "claimed_until",
            postgresql_where=text(JOB_CLAIMED),
            sqlite_where=text(JOB_CLAIMED),
        ),
        Index("ix_jobs_message", "message_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    dedup_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    due_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # unexpected errors in a row (see engine/failing_jobs.py); a handler's own outcome resets it
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None]
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StateRow(Base):
    """Small named values that must survive restarts (e.g. the last synced register event)."""

    __tablename__ = "kv_state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class InstanceRow(Base):
    """A ``serve`` process on this store, known by its heartbeat: what only it can resolve (its
    clock-skew and mailbox-unreachable alerts) is resolved when it has stopped or is gone."""

    __tablename__ = "serving_instances"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)  # host:port
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    version: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]


# --- EPJ integration: API clients, audit log, webhooks, folder drop ---------------------------


class ApiClientRow(Base):
    """A client system (an EPJ) allowed to use the API: scopes and the own HER-ids it acts for.

    Only a SHA-256 hash of the key is kept; the key itself is shown once when the client is made.
    """

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    her_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class ApiClientOldKeyRow(Base):
    """A client's key replaced by ``clients rotate``, still accepted until ``expires_at`` so that
    the EPJ's instances can be given the new key meanwhile (api/clients.py). Only its hash is
    kept, and only until then: an expired row is deleted the first time it is met."""

    __tablename__ = "api_client_old_keys"
    __table_args__ = (Index("ix_api_client_old_keys_client", "client_id"),)

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[int] = mapped_column(BigId, ForeignKey("api_clients.id", ondelete="CASCADE"))
    replaced_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class ApiClientKeyUseRow(Base):
    """When a request last came with a replaced key (``api_client_old_keys``), for the operator:
    have the EPJ's instances all taken the new key? A table of its own, not a column there: the
    API's key cache is voided by every write to the clients' tables (store/changes.py), and a
    use noted there at each look-up voided it for every client."""

    __tablename__ = "api_client_key_uses"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_used_at: Mapped[datetime]


class AuditRow(Base):
    """Who read or changed which message, when, and with what outcome. Rows are only ever added;
    retention alone deletes those older than ``[retention] audit_days`` (migration 0028)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_message", "message_id"),
        Index("ix_audit_log_client", "client"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    client: Mapped[str] = mapped_column(String(128))
    person: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(48))
    message_id: Mapped[str | None] = mapped_column(String(36))
    her_id: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused | not-found | invalid
    detail: Mapped[str | None] = mapped_column(Text)


class AuditRetentionPermitRow(Base):
    """Retention's leave to delete one batch of audit rows older than ``cutoff``: those from
    the batch's first row (``from_at``, ``from_id``; none: from the log's first) up to its last
    (``through_at``, ``through_id``). Never seen committed: migration
    0028's trigger deletes the batch and then the permit in the INSERT that writes it, and the
    audit log's guard lets a DELETE through only while a permit exists (see that migration)."""

    __tablename__ = "audit_log_retention_permits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cutoff: Mapped[datetime]
    from_at: Mapped[datetime | None]
    from_id: Mapped[int | None] = mapped_column(BigInteger)
    through_at: Mapped[datetime]
    through_id: Mapped[int] = mapped_column(BigInteger)


class Credential:
    """How an API client proved itself. A key client's name and a token's ``client_id`` come from
    two places (``clients add``, the issuer) and may be the same text: what belongs to a client
    (its webhooks) is kept under both, and a key client's revocation ends only its own."""

    API_KEY = "api-key"
    JWT = "jwt"


# A webhook that is called (switched off ones stay, as disabled, until removed): its client,
# credential and URL are unique among these (uq_webhooks_active_url).
WEBHOOK_ACTIVE = "active"


class WebhookRow(Base):
    """A client URL notified of events (new message, status change, alert), signed with HMAC."""

    __tablename__ = "webhooks"
    __table_args__ = (
        # one active webhook per client, credential and URL (migration 0022): a client that
        # registered the same URL again (an EPJ at each start-up) was told of every message
        # once per registration, each with its own delivery id
        Index(
            "uq_webhooks_active_url",
            "client_name",
            "credential",
            "url",
            unique=True,
            sqlite_where=text(WEBHOOK_ACTIVE),
            postgresql_where=text(WEBHOOK_ACTIVE),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client_name: Mapped[str] = mapped_column(String(128))
    # how the client that registered it proved itself (Credential): the name is its client's
    # together with this
    credential: Mapped[str] = mapped_column(
        String(16), default=Credential.API_KEY, server_default=Credential.API_KEY
    )
    url: Mapped[str] = mapped_column(String(1024))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    her_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]
    # after a failed call none of its deliveries is tried before this (a receiver that is down
    # is asked once per wait, however many deliveries are due)
    paused_until: Mapped[datetime | None]
    # the scopes of the client that registered it, which decide what it hears of (a message
    # received needs "receive", one sent "send", an alert "admin"); None: registered by a JWT
    # client before they were recorded (migration 0015), not checked
    scopes: Mapped[list[Any] | None] = mapped_column(JSON)
    # a JWT client's: the issuer of its token (it is called while tokens of that issuer are taken)
    issuer: Mapped[str | None] = mapped_column(String(1024))


class WebhookDeliveryRow(Base):
    """One notification owed to one webhook; retried with backoff until sent or given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_key", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "state", "due_at"),
        Index("uq_webhook_deliveries_delivery_id", "delivery_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # the id the receiver is told (X-Meldingstjener-Delivery, the body's deliveryId): random,
    # not the row's id, which a store restored from an older backup hands out again for other
    # news (migration 0024); every retry of this delivery carries the same one
    delivery_id: Mapped[str] = mapped_column(String(36), default=new_id)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_key: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# folder_files.kind as the folder integration (integration/folder.py) writes it, and the client_id
# of the message an outbox file was sent as: FOLDER_CLIENT_PREFIX and the file's row's key. Here,
# not in folder.py, so that retention (engine/retention.py) finds a row's message by the same rule.
FOLDER_OUTBOX, FOLDER_INBOX = "outbox", "inbox"
FOLDER_CLIENT_PREFIX = "folder:"
# the outcome of an inbox row whose message's files are in the inbox folder: the EPJ has it
# (retention's epj_has_it; the engine does not import the integration)
FOLDER_WRITTEN = "written"


class FolderFileRow(Base):
    """A file taken from the outbox folder, or a message written to the inbox folder.

    The row is what makes the folder integration exactly-once across crashes: an outbox file is
    submitted only if no row with its key exists, nor one of the same name and content whose file
    never left that outbox (``outbox_tag`` its outbox's, ``moved_at`` unset: its time or inode
    changed while the server was down); an inbox message's files are written only if no row for
    its message exists, and those of a row left ``staging`` by a crash are put in place only if
    their temporary names (``staged_as``) are still there.
    """

    __tablename__ = "folder_files"
    __table_args__ = (
        UniqueConstraint("kind", "key", name="uq_folder_files_kind_key"),
        # an outbox's rows whose file has not left it: read every round (few)
        Index("ix_folder_files_unmoved", "outbox_tag", "moved_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))  # outbox | inbox
    key: Mapped[str] = mapped_column(String(255))  # outbox: name + sha256; inbox: message id
    file_name: Mapped[str] = mapped_column(String(512))
    message_id: Mapped[str | None] = mapped_column(String(36))
    outcome: Mapped[str] = mapped_column(String(16))  # pending | sent | failed | staging | written
    at: Mapped[datetime] = mapped_column(default=utcnow)
    content_sha256: Mapped[str | None] = mapped_column(String(64))  # outbox: the content read
    moved_at: Mapped[datetime | None] = mapped_column()  # outbox: when the file left the outbox
    outbox_tag: Mapped[str | None] = mapped_column(String(16))  # outbox: which (folder._outbox_tag)
    staged_as: Mapped[str | None] = mapped_column(String(255))  # inbox, staging: temporaries
