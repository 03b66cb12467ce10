"""Retention: what the server stores is deleted once the organisation's rules say so.

An MSH is not the patient record: the EPJ keeps the document, the server only carries it. So the
``[retention]`` settings (:class:`meldingstjener.config.RetentionSettings`) delete, for messages
that are *settled* and have been for so many days:

- ``payload_days`` (default 90): the payload files, the business document (on the receiving side
  the decrypted fagmelding in clear text) and the wire form. The row, its events and receipts
  stay, so the help desk still sees what became of the message; the row lets go of the files and
  a NOTE event ``content-removed`` says when and why.
- ``message_days`` (default 0, kept): the whole message with its events, receipts, jobs and content
  keys, and the files of its receipts; its alerts stay, without the message. In the same run
  the folder integration's rows (``folder_files``) that exactly-once needs no more go
  (:func:`folder_files_done` says which and why).

Apart from the messages, ``audit_days`` (default 0, kept for ever) deletes the rows of the API's
audit log older than that many days, by their own time (a row says what was done, whatever
became of its message). The database refuses every other DELETE of them: a batch goes through
a permit (:func:`meldingstjener.store.audit.delete_batch`, migration 0028), and two runs at once
take their batches in turn (:func:`meldingstjener.store.audit.older_than`). The log's growth is
bounded where it grew, too: a listing is audited once per message and client
(:func:`meldingstjener.store.audit.listed_before`).

*Settled* is this module's one rule (:func:`settled`): no step of the server needs the content
again. Outbound: the partner acknowledged it, answered it with an AppRec, or it was given up
(``not-delivered``; only a late receipt may follow, which needs no content). Inbound: it was
answered (``apprec-sent``), rejected or purged, or the EPJ has it (``delivered``) and owes no
AppRec for it: an AppRec, which is never answered (:data:`NEVER_ANSWERED`). A delivered message
the EPJ has not answered yet is not settled: its AppRec is built from the content, and the
partner waits for it. Not settled, never touched: a message on its way (``accepted``, ``sent``,
``retrying``), one an operator may still resend (``transport-error``), and one the EPJ has not
taken (``received``, ``acknowledged``). The status machine's final states alone would be too
few: a received message may be reported as misaddressed after its AppRec, so none would ever
lose its clear text; and ``payload_days`` is at least
:data:`meldingstjener.config.PAYLOAD_DAYS_FLOOR` (or 0, kept): the settings refuse less.

The passes take one more kind of message as settled, by its age (:func:`retained_no_longer`):
a received message the EPJ has and never answered (``delivered``, of any type), once it has
been delivered longer ago than the pass's days and its ebXML conversation has had no message
since (:func:`left_unanswered`). The EPJ answers some types only by a dialog message, and some
EPJs send no AppRecs: without this such a message, with its patient data, was kept for ever.
``delivered`` is the EPJ having it, not its being offered: the API marks a message delivered
only when the EPJ marks it read (or answers it), the folder integration only once its files are
in the inbox folder, which keeps them whatever becomes of ours. A message waiting for the EPJ
(``acknowledged``: unread, or not yet written to the folder) is never touched, nor one the
folder wrote but an API client of the same HER-id still lists as unread (:func:`epj_has_it`).
Nor one the ``apprec-owed`` alert still counts: the settings let ``[alerts] apprec_owed_days``
outlast ``payload_days``, so the pass's cutoff for these is the earlier of its own and the
alert's window (:func:`unanswered_cutoff`). An AppRec the EPJ sends after the content is gone
is refused as for any message whose content went (``purged`` from
``send_apprec``, ``already-answered`` for an AppRec document), and the message stays
``delivered`` until ``message_days`` deletes it.

A partner resends a message until its PersistDuration has passed, and a resend is known as a
duplicate by the received message's row (its eb:MessageId). So ``message_days`` shorter than the
longest PersistDuration of the agreements plus :data:`RESEND_MARGIN` deletes no message
(:func:`message_cutoff`), checked at every run against the store's agreements, which change.

Work is done in batches of :data:`BATCH` messages, each its own short transaction that locks
only its rows (those another transaction holds are left for the next run). Files are deleted
after their rows' commit, by the rule every purge uses
(:func:`meldingstjener.engine.housekeeping.delete_after_commit`): a crash in between leaves a
``payload-delete`` job that removes them. ``serve`` runs this daily as the ``retention`` job, at
most :data:`BATCHES_PER_RUN` batches per kind at a time (the rest a minute later, so other
jobs get their turn); ``meldingstjener retention`` runs it at once, or counts with
``--dry-run``. What a run deleted is counted in the message log (a NOTE event ``retention``,
numbers only) and in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import ColumnElement, String, and_, exists, func, literal, or_, select
from sqlalchemy.orm import aliased

from meldingstjener.config import RetentionSettings
from meldingstjener.engine import housekeeping
from meldingstjener.engine.context import EngineContext, Policy
from meldingstjener.engine.inbox_watch import apprec_owed_window
from meldingstjener.engine.receipts import APPREC
from meldingstjener.model import Direction, InboundStatus
from meldingstjener.model.status import SETTLED
from meldingstjener.store import audit
from meldingstjener.store.tables import (
    FOLDER_CLIENT_PREFIX,
    FOLDER_INBOX,
    FOLDER_OUTBOX,
    FOLDER_WRITTEN,
    FolderFileRow,
    MessageRow,
)
from meldingstjener.store.uow import (
    CONTENT_REMOVED,
    ClaimedJob,
    EventKind,
    RetentionKey,
    Store,
    UnitOfWork,
)

log = logging.getLogger(__name__)

# SETTLED (model/status.py, by status) and NEVER_ANSWERED (by type) are the rule; store/tables.py's
# UNSETTLED is it turned round, in the literal SQL of a partial index (migration 0025, what
# /metrics counts): a change here is a change there and a migration, which
# tests/integration/store/test_unsettled.py asks for.
# Received message types the EPJ owes no AppRec for once it has them (``delivered``): only an
# AppRec, which receipts.send_apprec refuses to answer (``apprec-for-apprec``). Every other
# delivered message waits for the EPJ's AppRec (or the agreement's automatic one), built from
# its content, until it has waited as long as retention keeps anything (left_unanswered, by its
# age: not in SETTLED, nor in UNSETTLED's index). (The engine keeps no per-message "AppRec
# wanted" of its own.)
NEVER_ANSWERED = frozenset({APPREC})
RESEND_MARGIN = timedelta(days=1)
# PartnerSettings' and an agreement's default PersistDuration, for a store without agreements
DEFAULT_PERSIST_DURATION = timedelta(days=4)
BATCH = 200
BATCHES_PER_RUN = 50
RETENTION_NOTE = "retention"
REFUSED_NOTE = "retention-refused"


def settled() -> ColumnElement[bool]:
    """The one rule of what is settled (the module's docstring), as a condition on the row."""
    return or_(
        *(
            and_(MessageRow.direction == direction, MessageRow.status.in_(sorted(states)))
            for direction, states in SETTLED.items()
        ),
        and_(
            MessageRow.direction == Direction.INBOUND.value,
            MessageRow.status == InboundStatus.DELIVERED.value,
            MessageRow.msg_type.in_(sorted(NEVER_ANSWERED)),
        ),
    )


def left_unanswered(before: datetime) -> ColumnElement[bool]:
    """Received messages the EPJ has and never answered (``delivered``), delivered before
    ``before`` (their ``status_changed_at``), whose ebXML conversation has had no other message
    stored since: settled for a pass whose ``before`` is :func:`unanswered_cutoff`'s. A received
    AppRec (:data:`NEVER_ANSWERED`) is settled by :func:`settled` whatever its conversation;
    that it is named here too changes nothing."""
    # A conversation with a message since the cutoff is still going (a dialog answered by a
    # dialog, a question the EPJ has replied to and the partner followed up): an answer of
    # ours in it takes its ConversationId and Service from this message's row
    # (receipts.answered_copy), and the EPJ may still answer it with an AppRec, built from its
    # content. An anti-join along ix_messages_conversation; none without a ConversationId. The
    # message itself needs no excluding (an "other.id != id" did): it was stored before it was
    # delivered, before the cutoff. With it PostgreSQL read every message of the conversation
    # per message, 4 s for a dry run among 100,000 in conversations of 100 (now 0.3 s). A NOT
    # IN of the conversations stored since was faster while they were hashed, but falls back to
    # reading them all per message when they exceed work_mem (211 s among 20,000).
    other = aliased(MessageRow)
    return and_(
        MessageRow.direction == Direction.INBOUND.value,
        MessageRow.status == InboundStatus.DELIVERED.value,
        # the pass asks it of every settled message, but with its own, later cutoff
        MessageRow.status_changed_at < before,
        epj_has_it(),
        ~exists().where(
            other.ebxml_conversation_id == MessageRow.ebxml_conversation_id,
            other.created_at >= before,
        ),
    )


def epj_has_it() -> ColumnElement[bool]:
    """A delivered message every way of the EPJ has: marked read through the API, or its files
    written to the inbox folder (its ``folder_files`` row ``written``). The folder integration
    marks a message delivered without ``read_at``, and it acts for every HER-id by default: a
    client of the API for the same HER-id still lists it as unread (api/unread.py), and would
    find its document gone."""
    return or_(
        MessageRow.read_at.is_not(None),
        exists().where(
            FolderFileRow.kind == FOLDER_INBOX,
            FolderFileRow.key == MessageRow.id,  # an inbox row's key is its message's id
            FolderFileRow.outcome == FOLDER_WRITTEN,
        ),
    )


def unanswered_cutoff(before: datetime, policy: Policy, now: datetime) -> datetime:
    """The cutoff of :func:`left_unanswered` in a pass whose cutoff is ``before``: that, or
    earlier while the ``apprec-owed`` alert still counts a message delivered then
    (:func:`meldingstjener.engine.inbox_watch.apprec_owed_window`). The settings do not tie
    ``[alerts] apprec_owed_days`` to ``payload_days``; content removed while the alert counts
    the message would have the EPJ's AppRec refused (``purged``)."""
    return min(before, apprec_owed_window(policy, now).since)


def retained_no_longer(before: datetime, unanswered_before: datetime) -> ColumnElement[bool]:
    """What a pass whose cutoff is ``before`` takes as settled (the module's docstring):
    :func:`settled`, or :func:`left_unanswered` as of ``unanswered_before``
    (:func:`unanswered_cutoff`). The repository adds, for both, that the message has held its
    status since before ``before``."""
    return or_(settled(), left_unanswered(unanswered_before))


def only_left_unanswered(before: datetime) -> ColumnElement[bool]:
    """Those of :func:`retained_no_longer` that :func:`settled` alone would keep: received
    messages delivered and never answered by an AppRec, for ``before`` the pass's
    :func:`unanswered_cutoff`. Counted apart in a run's report (:class:`RetentionReport`): the
    first run after an upgrade from a release without this rule removes, at once, every such
    message's content older than ``payload_days``."""
    # left_unanswered holds them to inbound and delivered, where settled() is true only for a
    # type in NEVER_ANSWERED; a message without a type is not one (NOT IN of NULL is NULL)
    return and_(
        left_unanswered(before),
        or_(MessageRow.msg_type.is_(None), MessageRow.msg_type.not_in(sorted(NEVER_ANSWERED))),
    )


def _count_among(uow: UnitOfWork, message_ids: list[str], condition: ColumnElement[bool]) -> int:
    """How many of a batch's messages ``condition`` holds for (read before the batch's change)."""
    query = select(func.count()).where(MessageRow.id.in_(message_ids), condition)
    return uow.session.scalar(query) or 0


def folder_files_done(before: datetime) -> ColumnElement[bool]:
    """The folder integration's rows (``folder_files``) that exactly-once no longer needs, for
    ``before`` the cutoff of ``message_days`` (see the rule below)."""
    # A row is what keeps integration/folder.py exactly-once across crashes; one deleted while
    # it may still be asked for would have a restarted server send a file twice, or write an
    # inbox file again after the EPJ took it. So it goes only when all of these hold:
    # - Its message is gone (deleted by this job), found as folder.py finds it: by the row's
    #   message_id (an inbox row's is its message), or for an outbox file by the client_id it
    #   was sent as (``folder:<key>``; a ``pending`` row whose submit committed before a crash
    #   has no message_id yet). While the message is there, an inbox row says its files were
    #   written or staged (``_still_to_write``, ``_publish_staged``: gone, a message still
    #   ``acknowledged`` would be written again, or a staged temporary swept), and it is what
    #   the help desk can tie to a file.
    # - An outbox file has left the outbox (``moved_at`` set: moved to sent/ or failed/ by
    #   ``_move_out``, or found gone by ``_left_the_outbox``), however old the row: a file still
    #   there, or back after a crash with its time or inode changed, is known as the file sent
    #   only by its row (``_claim``), and would be sent again without it.
    # - It left (or was last written, for an inbox row) more than message_days ago, at least
    #   PAYLOAD_DAYS_FLOOR days. A file that left comes back with its key only as the leftover of
    #   a process that died moving it, which the next round of any process on the outbox puts
    #   back and moves out (outbox_moves.put_back_leftovers); it waits in the server's own folder
    #   only while a file of its name is in the outbox. Any other file of its name and content
    #   is a new drop, which folder.py sends as one.
    # An unknown kind is kept.
    # One NOT EXISTS for both ways to its message, outside the OR of the kinds: PostgreSQL
    # then probes messages' two indexes per row (an anti-join); one inside the OR was planned
    # as a hashed subplan reading every message at each batch. An inbox row's key is its
    # message's id: no message was sent as "folder:" and that (an outbox key is 64 hex digits).
    sent_as = literal(FOLDER_CLIENT_PREFIX, String) + FolderFileRow.key
    its_message = or_(MessageRow.id == FolderFileRow.message_id, MessageRow.client_id == sent_as)
    return and_(
        FolderFileRow.at < before,
        ~exists().where(its_message),
        or_(
            FolderFileRow.kind == FOLDER_INBOX,
            and_(
                FolderFileRow.kind == FOLDER_OUTBOX,
                FolderFileRow.moved_at.is_not(None),
                FolderFileRow.moved_at < before,
            ),
        ),
    )


class MessageDaysTooShort(ValueError):
    """``message_days`` would delete messages a partner may still resend."""


@dataclass
class RetentionReport:
    """What a run deleted (or, dry, would delete)."""

    dry_run: bool
    contents_removed: int = 0  # messages whose payload files went
    messages_deleted: int = 0
    # of those two: received messages delivered and never answered (only_left_unanswered)
    unanswered_contents_removed: int = 0
    unanswered_messages_deleted: int = 0
    folder_files: int = 0  # folder integration rows no longer needed (folder_files_done)
    audit_rows: int = 0  # rows of the API's audit log older than audit_days
    # payload files deleted after the commits (a dry run: none); one gone already is not
    # counted (removed)
    files: int = 0
    refused: str | None = None  # why no message was deleted (message_days too short)
    more: bool = False  # a kind stopped at BATCHES_PER_RUN with more to do

    def removed(self, files: int) -> None:
        """Count the files a batch's deletes, after its commit, found there to remove."""
        self.files += files

    def any(self) -> bool:
        return bool(
            self.contents_removed or self.messages_deleted or self.folder_files or self.audit_rows
        )

    def line(self) -> str:
        """Counts only: what the log and the message log say of a run."""
        done = "would delete" if self.dry_run else "deleted"
        return (
            f"{done} the content of {self.contents_removed} settled message(s)"
            + _of_them_unanswered(self.unanswered_contents_removed)
            + f" and {self.messages_deleted} settled message(s) whole"
            + _of_them_unanswered(self.unanswered_messages_deleted)
            + (
                f"; {done} {self.folder_files} folder integration record(s) no longer needed"
                if self.folder_files
                else ""
            )
            + (f"; {done} {self.audit_rows} audit log row(s)" if self.audit_rows else "")
            + (f"; {self.files} payload file(s) deleted" if self.files else "")
        )


def _of_them_unanswered(count: int) -> str:
    # said only when there are some: the operator sees them apart from the answered ones
    return (
        f" ({count} of them received, delivered and never answered by an AppRec)" if count else ""
    )


def message_cutoff(uow: UnitOfWork, rules: RetentionSettings, now: datetime) -> datetime | None:
    """Before when a settled message is deleted whole; None when ``message_days`` is 0. Refused
    (:class:`MessageDaysTooShort`) when a partner may still resend a message that old."""
    if not rules.message_days:
        return None
    longest = uow.retention.longest_persist_duration() or DEFAULT_PERSIST_DURATION
    shortest = longest + RESEND_MARGIN
    kept = timedelta(days=rules.message_days)
    if kept < shortest:
        raise MessageDaysTooShort(
            f"[retention] message_days = {rules.message_days} is shorter than the longest "
            f"PersistDuration of the agreements ({longest.total_seconds() / 86400:g} days) "
            f"plus {RESEND_MARGIN.days} day: a partner's resend would no longer be known as a "
            f"duplicate; no message is deleted (set at least "
            f"{-(-shortest.total_seconds() // 86400):.0f}, or 0 to keep them)"
        )
    return now - kept


def run(
    store: Store,
    rules: RetentionSettings,
    *,
    now: datetime,
    dry_run: bool = False,
    batches: int | None = None,
    policy: Policy | None = None,
) -> RetentionReport:
    """Apply ``rules`` as of ``now`` (at most ``batches`` batches of each kind; None: all).
    ``policy`` is the engine's, whose ``apprec-owed`` window holds back
    :func:`left_unanswered` (:func:`unanswered_cutoff`); None: the defaults of ``[alerts]``."""
    report = RetentionReport(dry_run=dry_run)
    owed = Policy() if policy is None else policy
    if rules.payload_days:
        before = now - timedelta(days=rules.payload_days)
        _remove_contents(store, before, unanswered_cutoff(before, owed, now), now, report, batches)
    with store.unit_of_work() as uow:
        try:
            cutoff = message_cutoff(uow, rules, now)
        except MessageDaysTooShort as refused:
            report.refused = str(refused)
            cutoff = None
    if cutoff is not None:
        unanswered = unanswered_cutoff(cutoff, owed, now)
        _delete_messages(store, cutoff, unanswered, now, report, batches)
        # after the messages: a row whose message this run deleted goes in the same run
        _delete_folder_files(store, cutoff, report, batches)
    if rules.audit_days:
        _delete_audit_rows(store, now - timedelta(days=rules.audit_days), report, batches)
    return report


Resume = TypeVar("Resume")


def _in_batches(
    store: Store,
    report: RetentionReport,
    batches: int | None,
    batch: Callable[[UnitOfWork, Resume | None], Resume | None],
) -> None:
    """Run ``batch`` again and again, each time in a unit of work of its own that is committed
    after it, until it finds nothing more (returns None) or ``batches`` have run
    (``report.more``). ``batch`` is given where the one before stopped (None at first) and
    returns where it stopped; it counts what it did in ``report``, which a failed commit leaves
    unreturned (the error goes out of :func:`run`)."""
    after: Resume | None = None
    done = 0
    while True:
        if batches is not None and done >= batches:
            report.more = True
            return
        done += 1
        with store.unit_of_work() as uow:
            after = batch(uow, after)
            if after is None:
                return
            uow.commit()


def _remove_contents(
    store: Store,
    before: datetime,
    unanswered_before: datetime,
    now: datetime,
    report: RetentionReport,
    batches: int | None,
) -> None:
    done = retained_no_longer(before, unanswered_before)
    if report.dry_run:
        with store.unit_of_work() as uow:
            report.contents_removed = uow.retention.count_holding_content(done, before=before)
            report.unanswered_contents_removed = uow.retention.count_holding_content(
                only_left_unanswered(unanswered_before), before=before
            )
        return
    # messages with a payload, then those with a wire form only (refused before decryption)
    for by_wire in (False, True):

        def remove(uow: UnitOfWork, after: str | None, by_wire: bool = by_wire) -> str | None:
            held = uow.retention.holding_content(
                done, before=before, by_wire=by_wire, after=after, limit=BATCH
            )
            if not held:
                return None
            keys = [ref for message in held for ref in (message.payload_ref, message.wire_ref)]
            files = [key for key in keys if key]
            unanswered = _count_among(
                uow, [message.id for message in held], only_left_unanswered(unanswered_before)
            )
            uow.retention.forget_content([message.id for message in held], at=now)
            for message in held:
                uow.events.record(
                    message.id,
                    EventKind.NOTE,
                    actor="msh:retention",
                    code=CONTENT_REMOVED,
                    detail=f"content removed: {message.status} for more than "
                    f"{(now - before).days} days ([retention] payload_days)",
                    at=now,
                )
            housekeeping.delete_after_commit(store, uow, files, now=now, removed=report.removed)
            report.contents_removed += len(held)
            report.unanswered_contents_removed += unanswered
            return held[-1].wire_ref if by_wire else held[-1].payload_ref

        _in_batches(store, report, batches, remove)


def _delete_messages(
    store: Store,
    before: datetime,
    unanswered_before: datetime,
    now: datetime,
    report: RetentionReport,
    batches: int | None,
) -> None:
    done = retained_no_longer(before, unanswered_before)
    if report.dry_run:
        with store.unit_of_work() as uow:
            report.messages_deleted = uow.retention.count_settled(done, before=before)
            report.unanswered_messages_deleted = uow.retention.count_settled(
                only_left_unanswered(unanswered_before), before=before
            )
        return

    def delete(uow: UnitOfWork, after: RetentionKey | None) -> RetentionKey | None:
        found = uow.retention.settled_messages(done, before=before, after=after, limit=BATCH)
        if not found:
            return None
        files = [key for _, keys in found for key in keys]
        ids = [key[1] for key, _ in found]
        unanswered = _count_among(uow, ids, only_left_unanswered(unanswered_before))
        uow.retention.delete_messages(ids)
        housekeeping.delete_after_commit(store, uow, files, now=now, removed=report.removed)
        report.messages_deleted += len(found)
        report.unanswered_messages_deleted += unanswered
        return found[-1][0]

    _in_batches(store, report, batches, delete)


def _delete_folder_files(
    store: Store, before: datetime, report: RetentionReport, batches: int | None
) -> None:
    done = folder_files_done(before)
    if report.dry_run:
        with store.unit_of_work() as uow:
            report.folder_files = uow.retention.count_folder_files_done(done)
        return

    def delete(uow: UnitOfWork, after: int | None) -> int | None:
        found = uow.retention.folder_files_done(done, after=after, limit=BATCH)
        if not found:
            return None
        uow.retention.delete_folder_files(found)
        report.folder_files += len(found)
        return found[-1]

    _in_batches(store, report, batches, delete)


def _delete_audit_rows(
    store: Store, before: datetime, report: RetentionReport, batches: int | None
) -> None:
    if report.dry_run:
        with store.unit_of_work() as uow:
            report.audit_rows = audit.count_older_than(uow, before)
        return

    def delete(uow: UnitOfWork, after: audit.AuditKey | None) -> audit.AuditKey | None:
        found = audit.older_than(uow, before, after=after, limit=BATCH)
        if not found:
            return None
        audit.delete_batch(uow, before, found[-1], first=found[0])
        report.audit_rows += len(found)
        return found[-1]

    _in_batches(store, report, batches, delete)


def record(uow: UnitOfWork, report: RetentionReport, *, actor: str, at: datetime) -> None:
    """Put a run in the message log: its counts, and a refusal of ``message_days``. A run that
    found nothing to do is quiet."""
    if report.any():
        uow.events.record(
            None, EventKind.NOTE, actor=actor, code=RETENTION_NOTE, detail=report.line(), at=at
        )
    if report.refused:
        uow.events.record(
            None, EventKind.NOTE, actor=actor, code=REFUSED_NOTE, detail=report.refused, at=at
        )


CONTINUE_AFTER = timedelta(minutes=1)  # a run that stopped at BATCHES_PER_RUN goes on then


def retention_job(ctx: EngineContext, job: ClaimedJob) -> None:
    """The daily run of ``serve`` (scheduled with the payload sweep, see
    :func:`meldingstjener.engine.housekeeping.schedule_sweep`)."""
    now = ctx.clock()
    report = run(
        ctx.store, ctx.policy.retention, now=now, batches=BATCHES_PER_RUN, policy=ctx.policy
    )
    if report.any():
        log.info("retention: %s", report.line())
    if report.refused:
        log.warning("retention: %s", report.refused)
    with ctx.store.unit_of_work() as uow:
        record(uow, report, actor="msh:retention", at=now)
        due = now + (CONTINUE_AFTER if report.more else housekeeping.EVERY)
        uow.jobs.schedule(housekeeping.RETENTION, due, dedup_key=housekeeping.RETENTION)
        uow.commit()
