"""Retention (``[retention]``, engine/retention.py) on SQLite and PostgreSQL: the content of
settled messages goes after ``payload_days``, whole settled messages after ``message_days``
(never while a partner may resend); a message on its way is
never touched; files go only after the rows' commit, and a crash in between leaves a job that
deletes them."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import func, select, update

from meldingstjener.api.unread import unread_query
from meldingstjener.config import (
    PAYLOAD_DAYS_FLOOR,
    RETENTION_DAYS_CEILING,
    ConfigError,
    RetentionSettings,
    load_settings,
)
from meldingstjener.engine import housekeeping, receipts, retention
from meldingstjener.engine.context import EngineContext, Policy
from meldingstjener.engine.inbox_watch import apprec_owed_window
from meldingstjener.store.tables import (
    AgreementRow,
    AlertRow,
    ContentKeyRow,
    EventRow,
    FolderFileRow,
    MessageRow,
    ReceiptRow,
)
from meldingstjener.store.uow import CONTENT_REMOVED, Store
from meldingstjener.views import content_dict

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def _message(
    store: Store,
    direction: str,
    status: str,
    *,
    settled_days_ago: float,
    wire_only: bool = False,
    msg_type: str = "DIALOG_NOTAT",
    conversation: str | None = None,
    read: bool = True,
) -> tuple[str, list[str]]:
    """A message in ``status`` since ``settled_days_ago`` (stored a day before), with its files
    and in the ebXML ``conversation``; its id and keys. A received one ``delivered`` is marked
    read then, as the API does, unless not ``read`` (as the folder integration leaves it)."""
    payload = None if wire_only else store.payloads.put(b"<MsgHead>clear text</MsgHead>")
    wire = store.payloads.put(b"--wire form--")
    since = NOW - timedelta(days=settled_days_ago)
    with store.unit_of_work() as uow:
        row = MessageRow(
            direction=direction,
            payload_ref=None if payload is None else payload.key,
            wire_ref=wire.key,
            msg_type=msg_type,
            from_her_id="8100001",
            to_her_id="8200002",
            ebxml_conversation_id=conversation,
        )
        uow.messages.add(row, actor="test", at=since - timedelta(days=1))
        uow.commit()
        message_id = row.id
    with store.unit_of_work() as uow:
        uow.session.execute(
            update(MessageRow)
            .where(MessageRow.id == message_id)
            .values(
                status=status,
                status_changed_at=since,
                read_at=since if read and (direction, status) == ("in", "delivered") else None,
            )
        )
        uow.commit()
    return message_id, [ref.key for ref in (payload, wire) if ref is not None]


def _row(store: Store, message_id: str) -> MessageRow | None:
    with store.unit_of_work() as uow:
        return uow.messages.get(message_id)


def test_the_content_of_settled_messages_goes_after_payload_days_and_the_rows_stay(
    store: Store,
) -> None:
    received, received_files = _message(store, "in", "apprec-sent", settled_days_ago=91)
    answered, answered_files = _message(store, "out", "apprec-ok", settled_days_ago=100)
    refused, refused_files = _message(store, "in", "rejected", settled_days_ago=95, wire_only=True)
    recent, recent_files = _message(store, "in", "apprec-sent", settled_days_ago=89)
    waiting, waiting_files = _message(store, "in", "acknowledged", settled_days_ago=400)
    on_its_way, on_its_way_files = _message(store, "out", "transport-error", settled_days_ago=400)
    rules = RetentionSettings()  # the defaults: content 90 days, rows and audit kept

    counted = retention.run(store, rules, now=NOW, dry_run=True)
    assert counted.contents_removed == 3 and counted.messages_deleted == 0
    assert all(store.payloads.exists(key) for key in received_files + answered_files)

    report = retention.run(store, rules, now=NOW)

    assert (report.contents_removed, report.files) == (3, 5)
    for message_id, files in (
        (received, received_files),
        (answered, answered_files),
        (refused, refused_files),
    ):
        row = _row(store, message_id)
        assert row is not None and row.payload_ref is None and row.wire_ref is None
        assert not any(store.payloads.exists(key) for key in files)
        with store.unit_of_work() as uow:
            events = uow.events.for_message(message_id)
        content = content_dict(row, events)
        assert content["stored"] is False and content["removed_by"] == "retention"
    for message_id, files in (
        (recent, recent_files),
        (waiting, waiting_files),
        (on_its_way, on_its_way_files),
    ):
        row = _row(store, message_id)
        assert row is not None and row.payload_ref is not None
        assert all(store.payloads.exists(key) for key in files)
    assert retention.run(store, rules, now=NOW).contents_removed == 0  # done once


def test_a_delivered_message_never_answered_goes_after_the_retention_periods(
    store: Store,
) -> None:
    # It stayed delivered for good (a type the EPJ answers by a dialog message, an EPJ that
    # sends no AppRecs), and its content and row with it. Now judged by when it was delivered,
    # as an answered one is by when it was answered. One the EPJ has not taken (unread) waits.
    unanswered, unanswered_files = _message(store, "in", "delivered", settled_days_ago=91)
    recent, recent_files = _message(store, "in", "delivered", settled_days_ago=89)
    unread, unread_files = _message(store, "in", "acknowledged", settled_days_ago=400)
    with store.unit_of_work() as uow:  # marked read as they were delivered, as the API does
        for message_id, days in ((unanswered, 91), (recent, 89)):
            read = uow.messages.get(message_id)
            assert read is not None
            read.read_at = NOW - timedelta(days=days)
        uow.commit()
        listed = {row.id for row in uow.session.scalars(unread_query([8200002]))}
    assert listed == {unread}  # what the EPJ API lists as unread (the folder: not written)
    rules = RetentionSettings()  # content 90 days

    assert retention.run(store, rules, now=NOW, dry_run=True).contents_removed == 1
    report = retention.run(store, rules, now=NOW)

    assert (report.contents_removed, report.files) == (1, 2)
    gone = _row(store, unanswered)
    assert gone is not None and gone.payload_ref is None and gone.wire_ref is None
    assert gone.status == "delivered"
    assert not any(store.payloads.exists(key) for key in unanswered_files)
    for message_id, files in ((recent, recent_files), (unread, unread_files)):
        row = _row(store, message_id)
        assert row is not None and row.payload_ref is not None
        assert all(store.payloads.exists(key) for key in files)
    # the EPJ's AppRec after that is refused, as for any message whose content went; the
    # message stays delivered
    ctx = cast(EngineContext, SimpleNamespace(store=store))
    with pytest.raises(receipts.AppRecRefused) as refused:
        receipts.send_apprec(ctx, unanswered, status=1, errors=[], actor="epj")
    assert refused.value.code == "purged"
    after = _row(store, unanswered)
    assert after is not None and after.status == "delivered"

    whole = RetentionSettings(payload_days=0, message_days=90)
    assert retention.run(store, whole, now=NOW, dry_run=True).messages_deleted == 1
    assert retention.run(store, whole, now=NOW).messages_deleted == 1
    assert _row(store, unanswered) is None
    assert _row(store, recent) is not None and _row(store, unread) is not None


def test_a_delivered_message_never_answered_stays_while_its_conversation_goes_on(
    store: Store,
) -> None:
    # A question the EPJ answered by a dialog message, the partner following up since: an
    # answer of ours takes its ConversationId from the question's row, and its AppRec may
    # still come. Judged by the conversation's last message, not the question's delivery.
    question, question_files = _message(
        store, "in", "delivered", settled_days_ago=400, conversation="going-on"
    )
    _message(store, "out", "apprec-ok", settled_days_ago=9, conversation="going-on")
    quiet, _ = _message(store, "in", "delivered", settled_days_ago=400, conversation="quiet")
    _message(store, "out", "apprec-ok", settled_days_ago=200, conversation="quiet")
    rules = RetentionSettings(payload_days=90, message_days=90)

    counted = retention.run(store, rules, now=NOW, dry_run=True)
    assert (counted.contents_removed, counted.messages_deleted) == (2, 2)
    report = retention.run(store, rules, now=NOW)

    assert report.messages_deleted == 2 and _row(store, quiet) is None
    kept = _row(store, question)
    assert kept is not None and kept.payload_ref is not None
    assert all(store.payloads.exists(key) for key in question_files)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        # owed, its content removed (delivered longer than payload_days): README's "purged"
        ("delivered", "purged"),
        # answered (its content removed since), or rejected before it was decrypted (it never
        # had content): "already-answered", not "purged" ("no content any more"), not why
        ("apprec-sent", "already-answered"),
        ("rejected", "already-answered"),
    ],
)
def test_an_apprec_for_a_message_without_content_is_refused_for_its_reason(
    store: Store, status: str, code: str
) -> None:
    message_id, _ = _message(store, "in", status, settled_days_ago=100)
    with store.unit_of_work() as uow:
        uow.retention.forget_content([message_id], at=NOW)
        uow.commit()
    ctx = cast(EngineContext, SimpleNamespace(store=store))
    with pytest.raises(receipts.AppRecRefused) as refused:
        receipts.send_apprec(ctx, message_id, status=1, errors=[], actor="epj")
    assert refused.value.code == code


@pytest.mark.parametrize("setting", ["payload_days", "message_days"])
@pytest.mark.parametrize("days", [1, PAYLOAD_DAYS_FLOOR - 1])
def test_days_shorter_than_the_contents_floor_are_refused(days: int, setting: str) -> None:
    # a whole message deleted takes its content with it: message_days has the floor too
    from pydantic import ValidationError

    with pytest.raises(
        ValidationError, match=f"{setting} = {days} .* set at least {PAYLOAD_DAYS_FLOOR}, or 0"
    ):
        RetentionSettings(**{setting: days})
    assert getattr(RetentionSettings(**{setting: 0}), setting) == 0
    floor = RetentionSettings(**{setting: PAYLOAD_DAYS_FLOOR})
    assert getattr(floor, setting) == PAYLOAD_DAYS_FLOOR


@pytest.mark.parametrize("setting", ["payload_days", "message_days", "audit_days"])
def test_days_beyond_a_hundred_years_are_a_configuration_error(
    setting: str, store: Store, tmp_path: Path
) -> None:
    # a cutoff that far back cannot be reckoned: the settings passed, and each run failed
    # (OverflowError)
    refused = rf"retention\.{setting}: {setting} = 1000000 is more than 36500 days"
    with pytest.raises(ConfigError, match=refused):
        load_settings(data_dir=tmp_path, retention={setting: 1_000_000})
    longest = RetentionSettings(**{setting: RETENTION_DAYS_CEILING})
    assert not retention.run(store, longest, now=NOW).any()  # reckoned, and nothing that old


def test_whole_settled_messages_go_after_message_days_and_their_alerts_stay(
    store: Store,
) -> None:
    old, old_files = _message(store, "in", "apprec-sent", settled_days_ago=40)
    kept, _ = _message(store, "in", "apprec-sent", settled_days_ago=20)
    unread, _ = _message(store, "in", "acknowledged", settled_days_ago=400)
    receipt_wire = store.payloads.put(b"our acknowledgment")
    with store.unit_of_work() as uow:
        uow.receipts.add(
            ReceiptRow(
                message_id=old, kind="acknowledgment", direction="out", wire_ref=receipt_wire.key
            )
        )
        uow.content_keys.record(frozenset({"a" * 64}), old, at=NOW)
        uow.jobs.schedule("apprec-deadline", NOW, message_id=old)
        uow.alerts.raise_alert(
            "apprec-unsent",
            severity="warning",
            dedup_key="alert-of-old",
            summary="an alert",
            message_id=old,
            at=NOW,
        )
        uow.commit()
    rules = RetentionSettings(payload_days=0, message_days=30)

    report = retention.run(store, rules, now=NOW)

    assert report.messages_deleted == 1 and report.refused is None
    assert _row(store, old) is None
    assert _row(store, kept) is not None and _row(store, unread) is not None
    assert not any(store.payloads.exists(key) for key in [*old_files, receipt_wire.key])
    with store.unit_of_work() as uow:
        for table in (EventRow, ReceiptRow, ContentKeyRow):
            left = uow.session.scalar(
                select(func.count()).select_from(table).where(table.message_id == old)
            )
            assert left == 0, table
        alert = uow.alerts.by_key("alert-of-old")
    assert alert is not None and alert.message_id is None


def _a_partner_resending_for(store: Store, *, days: int) -> None:
    """An agreement whose partner may resend a message for ``days`` (its PersistDuration)."""
    with store.unit_of_work() as uow:
        uow.agreements.add(
            AgreementRow(
                our_her_id="8200002",
                counterparty_her_id="8100001",
                persist_duration_seconds=days * 86400,
            )
        )
        uow.commit()


def test_message_days_shorter_than_a_partner_may_resend_deletes_no_message(store: Store) -> None:
    old, _ = _message(store, "in", "rejected", settled_days_ago=36)
    _a_partner_resending_for(store, days=40)
    too_short = RetentionSettings(payload_days=0, message_days=35)

    report = retention.run(store, too_short, now=NOW)

    assert report.messages_deleted == 0 and _row(store, old) is not None
    assert report.refused is not None and "PersistDuration" in report.refused
    assert "set at least 41" in report.refused
    with store.unit_of_work() as uow:
        retention.record(uow, report, actor="test", at=NOW)
        uow.commit()
        notes = uow.session.scalars(
            select(EventRow.code).where(EventRow.code == retention.REFUSED_NOTE)
        ).all()
    assert notes == [retention.REFUSED_NOTE]


def test_a_run_in_batches_stops_and_says_there_is_more(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    ids = [_message(store, "out", "apprec-ok", settled_days_ago=200)[0] for _ in range(5)]

    first = retention.run(store, RetentionSettings(), now=NOW, batches=1)
    assert (first.contents_removed, first.more) == (2, True)
    rest = retention.run(store, RetentionSettings(), now=NOW)
    assert rest.contents_removed == 3
    assert all(_row(store, message_id).payload_ref is None for message_id in ids)  # type: ignore[union-attr]


KILLED_BETWEEN_COMMIT_AND_DELETE = """
import os, signal, sys
from datetime import datetime
from pathlib import Path
from meldingstjener.config import PAYLOAD_DAYS_FLOOR, RetentionSettings
from meldingstjener.engine import retention
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.uow import Store

def dies(self, key):
    os.kill(os.getpid(), signal.SIGKILL)

PayloadStore.delete = dies
store = Store(Database(sys.argv[1]), PayloadStore(Path(sys.argv[2])))
retention.run(store, RetentionSettings(), now=datetime.fromisoformat(sys.argv[3]))
"""


def test_a_crash_between_the_commit_and_the_delete_leaves_a_job_that_deletes_the_files(
    store: Store,
) -> None:
    message_id, files = _message(store, "in", "apprec-sent", settled_days_ago=120)
    url = store.database.engine.url.render_as_string(hide_password=False)
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_BETWEEN_COMMIT_AND_DELETE,
            url,
            str(store.payloads.root),
            NOW.isoformat(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode(errors="replace")[-2000:]
    row = _row(store, message_id)
    assert row is not None and row.payload_ref is None  # committed
    assert all(store.payloads.exists(key) for key in files)  # the clear text is still there

    with store.unit_of_work() as uow:
        jobs = uow.jobs.claim_due(
            "test", now=NOW + timedelta(hours=1), limit=10, lease=timedelta(minutes=5)
        )
        uow.commit()
    [job] = [job for job in jobs if job.kind == housekeeping.PAYLOAD_DELETE]
    housekeeping.payload_delete_job(cast(EngineContext, SimpleNamespace(store=store)), job)

    assert not any(store.payloads.exists(key) for key in files)


def _kinds(store: Store) -> dict[str, Any]:
    with store.unit_of_work() as uow:
        return {
            code: count
            for code, count in uow.session.execute(
                select(EventRow.code, func.count())
                .where(EventRow.code.in_([CONTENT_REMOVED, retention.RETENTION_NOTE]))
                .group_by(EventRow.code)
            )
        }


def test_a_run_is_counted_in_the_message_log_without_names(store: Store) -> None:
    _message(store, "out", "apprec-ok", settled_days_ago=100)
    report = retention.run(store, RetentionSettings(), now=NOW)
    with store.unit_of_work() as uow:
        retention.record(uow, report, actor="msh:retention", at=NOW)
        uow.commit()
        [note] = uow.session.scalars(
            select(EventRow.detail).where(EventRow.code == retention.RETENTION_NOTE)
        ).all()
    assert note == (
        "deleted the content of 1 settled message(s) and 0 settled message(s) whole; "
        "2 payload file(s) deleted"
    )
    assert _kinds(store) == {CONTENT_REMOVED: 1, retention.RETENTION_NOTE: 1}


def test_a_file_gone_already_is_not_counted_as_deleted_nor_an_error(store: Store) -> None:
    # Files an operator removed by hand, or a payload-delete job of an earlier purge: the row
    # still lets go of them, and the count (the report, its line, the message log) is of the
    # files this run removed, not of the references it dropped.
    emptied, emptied_files = _message(store, "out", "apprec-ok", settled_days_ago=100)
    half, half_files = _message(store, "in", "apprec-sent", settled_days_ago=100)
    whole, whole_files = _message(store, "in", "apprec-sent", settled_days_ago=100)
    for key in [*emptied_files, half_files[0]]:
        store.payloads.delete(key)

    report = retention.run(store, RetentionSettings(), now=NOW)

    assert (report.contents_removed, report.files) == (3, 3)  # 6 references, 3 files there
    assert report.line().endswith("; 3 payload file(s) deleted")
    for message_id in (emptied, half, whole):
        row = _row(store, message_id)
        assert row is not None and row.payload_ref is None and row.wire_ref is None
    assert not any(store.payloads.exists(key) for key in [*half_files, *whole_files])

    # whole messages: only the files of the first (the second's are gone)
    first, first_files = _message(store, "in", "apprec-sent", settled_days_ago=100)
    second, second_files = _message(store, "in", "apprec-sent", settled_days_ago=100)
    for key in second_files:
        store.payloads.delete(key)
    wholly = retention.run(store, RetentionSettings(payload_days=0, message_days=30), now=NOW)
    assert (wholly.messages_deleted, wholly.files) == (5, 2)
    assert _row(store, first) is None and _row(store, second) is None
    assert not any(store.payloads.exists(key) for key in first_files)


def test_a_run_counts_the_received_messages_never_answered_apart(store: Store) -> None:
    """An upgrade's first run removes the content of every old delivered message no AppRec
    answered (a rule of this release): the report, its line and a dry run say how many."""
    _message(store, "in", "delivered", settled_days_ago=100)  # never answered
    _message(store, "in", "delivered", settled_days_ago=100, msg_type="APPREC")  # settled
    _message(store, "in", "apprec-sent", settled_days_ago=100)
    _message(store, "out", "apprec-ok", settled_days_ago=100)
    rules = RetentionSettings(payload_days=90, message_days=60)
    apart = "(1 of them received, delivered and never answered by an AppRec)"

    counted = retention.run(store, rules, now=NOW, dry_run=True)
    assert (counted.contents_removed, counted.unanswered_contents_removed) == (4, 1)
    assert (counted.messages_deleted, counted.unanswered_messages_deleted) == (4, 1)
    assert counted.line() == (
        f"would delete the content of 4 settled message(s) {apart} "
        f"and 4 settled message(s) whole {apart}"
    )
    report = retention.run(store, rules, now=NOW)
    assert (report.contents_removed, report.unanswered_contents_removed) == (4, 1)
    assert (report.messages_deleted, report.unanswered_messages_deleted) == (4, 1)
    assert report.line().startswith(
        f"deleted the content of 4 settled message(s) {apart} "
        f"and 4 settled message(s) whole {apart}"
    )


def test_alerts_table_untouched_by_content_removal(store: Store) -> None:
    message_id, _ = _message(store, "out", "not-delivered", settled_days_ago=100)
    with store.unit_of_work() as uow:
        uow.alerts.raise_alert(
            "not-delivered",
            severity="critical",
            dedup_key="nd",
            summary="not delivered",
            message_id=message_id,
            at=NOW,
        )
        uow.commit()
    retention.run(store, RetentionSettings(), now=NOW)
    with store.unit_of_work() as uow:
        alert = uow.session.scalars(select(AlertRow)).one()
    assert alert.message_id == message_id


# --- the folder integration's rows (folder_files) ----------------------------------------------

FOLDER_RULES = RetentionSettings(payload_days=0, message_days=30)
CUTOFF = NOW - timedelta(days=30)
SECOND = timedelta(seconds=1)
GONE = "00000000-0000-4000-8000-000000000000"  # a message retention deleted


def _folder_row(
    store: Store,
    name: str,
    kind: str,
    outcome: str,
    *,
    at: datetime,
    moved_at: datetime | None = None,
    message_id: str | None = None,
) -> None:
    """A folder_files row as integration/folder.py leaves it (``name``: its key, to find it)."""
    with store.unit_of_work() as uow:
        uow.session.add(
            FolderFileRow(
                kind=kind,
                key=name,
                file_name=f"digest-of-{name}",
                message_id=message_id,
                outcome=outcome,
                at=at,
                content_sha256="c" * 64 if kind == "outbox" else None,
                moved_at=moved_at,
                outbox_tag="t" * 16 if kind == "outbox" else None,
                staged_as=".m.json.1.tmp/.m.xml.2.tmp" if outcome == "staging" else None,
            )
        )
        uow.commit()


def _folder_rows(store: Store) -> set[str]:
    with store.unit_of_work() as uow:
        return set(uow.session.scalars(select(FolderFileRow.key)))


def test_outbox_rows_go_once_their_file_left_before_message_days_and_their_message_is_gone(
    store: Store,
) -> None:
    long_ago = NOW - timedelta(days=1000)
    # the file moved out just before the cutoff, and just after it
    _folder_row(
        store,
        "just-outside",
        "outbox",
        "sent",
        at=CUTOFF - SECOND,
        moved_at=CUTOFF - SECOND,
        message_id=GONE,
    )
    _folder_row(
        store,
        "just-inside",
        "outbox",
        "sent",
        at=CUTOFF - SECOND,
        moved_at=CUTOFF + SECOND,
        message_id=GONE,
    )
    # refused, moved to failed/ long ago: it never had a message
    _folder_row(store, "refused", "outbox", "failed", at=long_ago, moved_at=long_ago)
    # claimed long ago and still in the outbox (sent/ unusable, a crash before the move): its
    # row is all that tells it from a new file, however old
    _folder_row(store, "unmoved-pending", "outbox", "pending", at=long_ago)
    _folder_row(store, "unmoved-sent", "outbox", "sent", at=long_ago, message_id=GONE)
    # its message is still there (on its way): found by message_id, and, for a submit that
    # committed before a crash left the row pending, by the client_id it was sent as
    waiting, _ = _message(store, "out", "transport-error", settled_days_ago=400)
    submitted, _ = _message(store, "out", "transport-error", settled_days_ago=400)
    with store.unit_of_work() as uow:
        uow.session.execute(
            update(MessageRow).where(MessageRow.id == submitted).values(client_id="folder:crashed")
        )
        uow.commit()
    _folder_row(
        store, "message-kept", "outbox", "sent", at=long_ago, moved_at=long_ago, message_id=waiting
    )
    _folder_row(store, "crashed", "outbox", "pending", at=long_ago, moved_at=long_ago)
    every = _folder_rows(store)

    # message_days 0 keeps the messages, and so the rows that go with them
    assert retention.run(store, RetentionSettings(message_days=0), now=NOW).folder_files == 0
    assert retention.run(store, FOLDER_RULES, now=NOW, dry_run=True).folder_files == 2
    assert _folder_rows(store) == every

    report = retention.run(store, FOLDER_RULES, now=NOW)

    assert (report.folder_files, report.messages_deleted) == (2, 0)
    assert _folder_rows(store) == every - {"just-outside", "refused"}
    assert "deleted 2 folder integration record(s) no longer needed" in report.line()
    assert retention.run(store, FOLDER_RULES, now=NOW).folder_files == 0  # done once


def test_inbox_rows_go_with_their_message_and_not_while_it_waits_for_its_files(
    store: Store,
) -> None:
    # delivered and answered 40 days ago: the message goes in this run, its row with it
    answered, _ = _message(store, "in", "apprec-sent", settled_days_ago=40)
    _folder_row(
        store, "answered", "inbox", "written", at=NOW - timedelta(days=41), message_id=answered
    )
    # the message was deleted before: written just before the cutoff goes, just after stays
    _folder_row(store, "just-outside", "inbox", "written", at=CUTOFF - SECOND, message_id=GONE)
    _folder_row(store, "just-inside", "inbox", "written", at=CUTOFF + SECOND, message_id=GONE)
    # still acknowledged a year on (an inbox share not mounted): staged, its temporaries are to
    # be renamed into place; written, a crash came before the delivery (gone, the files would
    # be written again after the EPJ may have taken them)
    for name in ("staged", "written"):
        waiting, _ = _message(store, "in", "acknowledged", settled_days_ago=400)
        outcome = "staging" if name == "staged" else "written"
        _folder_row(store, name, "inbox", outcome, at=NOW - timedelta(days=400), message_id=waiting)
    every = _folder_rows(store)

    report = retention.run(store, FOLDER_RULES, now=NOW)

    assert (report.messages_deleted, report.folder_files) == (1, 2)
    assert _folder_rows(store) == every - {"answered", "just-outside"}


def test_folder_rows_go_in_batches_and_not_while_message_days_is_refused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    long_ago = NOW - timedelta(days=100)
    for number in range(5):
        _folder_row(store, f"f{number}", "outbox", "failed", at=long_ago, moved_at=long_ago)
    _a_partner_resending_for(store, days=40)
    refused = retention.run(store, FOLDER_RULES, now=NOW)
    assert refused.refused is not None and refused.folder_files == 0
    assert len(_folder_rows(store)) == 5

    rules = RetentionSettings(payload_days=0, message_days=41)
    first = retention.run(store, rules, now=NOW, batches=1)
    assert (first.folder_files, first.more) == (2, True)
    assert retention.run(store, rules, now=NOW).folder_files == 3
    assert _folder_rows(store) == set()


def test_the_command_on_a_host_without_the_payload_share_changes_nothing(tmp_path: Path) -> None:
    # The review: the rows let go of their content, then the first file delete failed (exit 3),
    # and `show` said "content removed" while the files stayed. Refused before any change.
    import os

    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings
    from meldingstjener.devsites import prepare_sites
    from meldingstjener.store.identity import claim_payload_directory

    gp, _ = prepare_sites(tmp_path / "sites")
    settings = load_settings(gp.config_path)
    store = open_store(settings)
    claim_payload_directory(store)
    _message(store, "in", "apprec-sent", settled_days_ago=(datetime.now(UTC) - NOW).days + 200)
    store.database.dispose()
    admin = gp.config_path.read_text().replace(
        f'data_dir = "{gp.directory / "data"}"', f'data_dir = "{tmp_path / "admin-host"}"'
    )
    database = f'url = "sqlite:///{settings.data_dir / "meldingstjener.db"}"'
    admin = (
        admin.replace("[database]", f"[database]\n{database}")
        if "[database]" in admin
        else f"{admin}\n[database]\n{database}\n"
    )
    config = tmp_path / "admin.toml"
    config.write_text(admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    done = subprocess.run(
        [sys.executable, "-m", "meldingstjener", "--config", str(config), "retention"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert "empty and unmarked" in done.stderr
    store = open_store(settings)
    try:
        with store.unit_of_work() as uow:
            kept = uow.session.scalar(
                select(func.count()).where(MessageRow.payload_ref.is_not(None))
            )
        assert kept == 1
    finally:
        store.database.dispose()


def _retention_json(data_dir: Path, settings: dict[str, str], *options: str) -> dict[str, Any]:
    """What ``meldingstjener retention --json`` says run on ``data_dir`` with ``settings``
    (``MELDINGSTJENER_`` variables, and none from this environment)."""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    env.update(settings)
    command = [sys.executable, "-m", "meldingstjener", "--data-dir", str(data_dir), "retention"]
    done = subprocess.run(
        [*command, *options, "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    said: dict[str, Any] = json.loads(done.stdout)
    return said


def test_the_command_counts_the_folder_records_it_deletes(tmp_path: Path) -> None:
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings

    store = open_store(load_settings(data_dir=tmp_path))
    long_ago = datetime.now(UTC) - timedelta(days=400)
    for number in range(3):
        _folder_row(store, f"f{number}", "outbox", "failed", at=long_ago, moved_at=long_ago)
    store.database.dispose()
    settings = {"MELDINGSTJENER_RETENTION__MESSAGE_DAYS": "60"}
    for extra, counted in ((["--dry-run"], 3), ([], 3), ([], 0)):
        said = _retention_json(tmp_path, settings, *extra)
        assert said["folder_records_deleted"] == counted, extra


def test_the_command_counts_the_delivered_messages_never_answered(tmp_path: Path) -> None:
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings

    store = open_store(load_settings(data_dir=tmp_path))
    days_ago = (NOW - datetime.now(UTC)).days + 400  # of NOW: delivered 400 days ago
    _message(store, "in", "delivered", settled_days_ago=days_ago)
    store.database.dispose()
    settings = {"MELDINGSTJENER_RETENTION__MESSAGE_DAYS": "60"}
    for extra, counted in ((["--dry-run"], 1), ([], 1), ([], 0)):
        said = _retention_json(tmp_path, settings, *extra)
        assert (said["contents_removed"], said["messages_deleted"]) == (counted, counted), extra
        apart = (said["unanswered_contents_removed"], said["unanswered_messages_deleted"])
        assert apart == (counted, counted), extra


def test_a_delivered_message_keeps_its_content_while_apprec_owed_still_counts_it(
    store: Store,
) -> None:
    # [alerts] apprec_owed_days 60 and [retention] payload_days 30 are both accepted: the
    # message's content stays as long as the alert counts it, or the EPJ's AppRec for it would
    # be refused ("purged") while the alert asks for one.
    owed, _ = _message(store, "in", "delivered", settled_days_ago=40)
    policy = Policy(apprec_owed=timedelta(hours=24), apprec_owed_look_back=timedelta(days=60))
    rules = RetentionSettings(payload_days=30)
    with store.unit_of_work() as uow:  # counted by the alert, for its receiver
        [(her_id, count, _)] = uow.messages.apprec_owed(apprec_owed_window(policy, NOW))
    assert (her_id, count) == ("8200002", 1)

    counted = retention.run(store, rules, now=NOW, dry_run=True, policy=policy)
    assert counted.contents_removed == 0
    assert retention.run(store, rules, now=NOW, policy=policy).contents_removed == 0
    kept = _row(store, owed)
    assert kept is not None and kept.payload_ref is not None

    later = NOW + timedelta(days=22)  # 62 days: no longer counted (24 hours + 60 days)
    with store.unit_of_work() as uow:
        assert not uow.messages.apprec_owed(apprec_owed_window(policy, later))
    assert retention.run(store, rules, now=later, policy=policy).contents_removed == 1


@pytest.mark.parametrize(("folder_outcome", "removed"), [(None, 0), ("staging", 0), ("written", 1)])
def test_a_delivered_message_unread_keeps_its_content_unless_written_to_the_inbox_folder(
    store: Store, folder_outcome: str | None, removed: int
) -> None:
    # The folder integration marks a message delivered without read_at, for every HER-id by
    # default: a client of the API for the same HER-id still lists it as unread. Only its
    # files written to the inbox folder say the EPJ has it.
    delivered, _ = _message(store, "in", "delivered", settled_days_ago=400, read=False)
    with store.unit_of_work() as uow:
        if folder_outcome is not None:
            uow.session.add(
                FolderFileRow(
                    kind="inbox",
                    key=delivered,
                    file_name=f"{delivered}.xml",
                    message_id=delivered,
                    outcome=folder_outcome,
                    at=NOW - timedelta(days=400),
                )
            )
            uow.commit()
        listed = [row.id for row in uow.session.scalars(unread_query([8200002]))]
    assert listed == [delivered]  # what the EPJ API lists as unread
    rules = RetentionSettings(payload_days=90, message_days=90)

    counted = retention.run(store, rules, now=NOW, dry_run=True)
    assert (counted.contents_removed, counted.messages_deleted) == (removed, removed)
    report = retention.run(store, rules, now=NOW)

    assert (report.contents_removed, report.messages_deleted) == (removed, removed)
    assert (_row(store, delivered) is None) == bool(removed)


def test_the_command_holds_back_what_the_apprec_owed_alert_still_counts(tmp_path: Path) -> None:
    from meldingstjener.bootstrap import open_store

    store = open_store(load_settings(data_dir=tmp_path))
    days_ago = (NOW - datetime.now(UTC)).days + 40  # of NOW: delivered 40 days ago
    _message(store, "in", "delivered", settled_days_ago=days_ago)
    store.database.dispose()
    for owed_days, counted in (("60", 0), ("14", 1)):
        settings = {
            "MELDINGSTJENER_RETENTION__PAYLOAD_DAYS": "30",
            "MELDINGSTJENER_ALERTS__APPREC_OWED_DAYS": owed_days,
        }
        said = _retention_json(tmp_path, settings, "--dry-run")
        assert said["contents_removed"] == counted, owed_days
