"""Store commands: ``db upgrade``, ``log`` (the message log), ``show`` (one timeline),
``sweep`` (payload files nothing refers to) and ``retention`` (the [retention] rules, now)."""

from __future__ import annotations

import json
import re
import string
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meldingstjener.cli.app import app, closed_at_end, settings_from, store_from
from meldingstjener.model.status import ALL_STATUSES

# The store (SQLAlchemy), its views and rich's tables are imported by the functions that use
# them: importing the command line, for --help or a command without a store, costs none of it.
if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy.orm import InstrumentedAttribute

    from meldingstjener.engine.status_report import AnswerSent
    from meldingstjener.store.tables import EventRow, MessageRow
    from meldingstjener.store.uow import UnitOfWork

# The option of ``show`` and ``status``: a receipt's error words may name the patient, so they are
# printed only when asked for.
ReceiptTexts = Annotated[
    bool,
    typer.Option(
        "--texts",
        help="Also the words of its receipts' errors and their descriptions, as an EPJ or "
        "a partner wrote them: they may name the patient.",
    ),
]

db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the database schema to the newest revision."""
    from meldingstjener.bootstrap import open_store
    from meldingstjener.store.migrate import current_revision

    settings = settings_from(ctx)
    store = closed_at_end(ctx, open_store(settings, migrate=True))
    revision = current_revision(store.database)
    typer.echo(f"database {store.database.engine.url.render_as_string()} at revision {revision}")


# The one rule of --since (log, audit), said in their help: a time without a zone is UTC, as the
# store keeps and the tables print every time ("time (UTC)"), not the operator's local time.
SINCE_HELP = (
    "a date (2026-11-23: its midnight UTC) or date and time, ISO 8601; a time without a zone "
    "is UTC: give it, e.g. 2026-11-23T08:00+01:00, for a local time"
)


def parse_since(value: str | None) -> datetime | None:
    """``--since``: a date or date-time, UTC unless it names its zone (``SINCE_HELP``)."""
    from meldingstjener.store.types import as_utc

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not a date or time (use e.g. 2026-11-23 or 2026-11-23T08:00)",
                param_hint="--since",
            ) from None
    return as_utc(parsed)


def wide_console() -> Console:
    """A console that does not squeeze tables to 80 columns when output goes to a file or pipe."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


@app.command("log")
def log_command(
    ctx: typer.Context,
    her_id: Annotated[
        str | None, typer.Option("--her-id", help="Only messages to or from this HER-id.")
    ] = None,
    msg_type: Annotated[
        str | None, typer.Option("--type", help="Only this message type, e.g. DIALOG_NOTAT.")
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only messages now in this status.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help=f"Only events from this time: {SINCE_HELP}.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many events.")] = 1000,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event (JSON lines).")
    ] = False,
    msg_id: Annotated[
        str | None,
        typer.Option("--msg-id", help="Only messages with this MsgHead MsgId (every copy)."),
    ] = None,
    ebxml_id: Annotated[
        str | None,
        typer.Option(
            "--ebxml-id",
            help="Only the message with this ebXML MessageId (also one refused, not stored).",
        ),
    ] = None,
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", help="Only messages of this ebXML ConversationId."),
    ] = None,
    apprec_owed: Annotated[
        bool,
        typer.Option(
            "--apprec-owed",
            help="Only received messages the EPJ has taken and not answered by an AppRec yet, "
            "delivered longer than [alerts] apprec_owed_hours and within apprec_owed_days ago "
            "(what the apprec-owed alert counts; with --her-id, its HER-id's).",
        ),
    ] = False,
) -> None:
    """The message log: every status change and signal, oldest first; the last --limit
    events (from --since: the first ones after it). A message refused before its signature
    verified (not stored) is found by its ebXML MessageId and its sender's HER-id."""
    if status is not None and status not in ALL_STATUSES:
        raise typer.BadParameter(
            f"unknown status {status!r}; known: {', '.join(sorted(ALL_STATUSES))}",
            param_hint="--status",
        )
    store = store_from(ctx)
    # imported once the store opened (after the settings: a configuration error is quick)
    from rich.table import Table

    from meldingstjener.bootstrap import build_policy
    from meldingstjener.engine.inbox_watch import apprec_owed_window
    from meldingstjener.store.types import utcnow
    from meldingstjener.store.uow import LogFilter
    from meldingstjener.views import event_dict, message_summary

    # the alert's window now, by this configuration: the listing is what the alert counts
    owed = apprec_owed_window(build_policy(settings_from(ctx)), utcnow()) if apprec_owed else None

    log_filter = LogFilter(
        her_id=her_id,
        msg_type=msg_type,
        status=status,
        since=parse_since(since),
        limit=limit,
        msg_id=msg_id,
        ebxml_message_id=ebxml_id,
        conversation_id=conversation,
        apprec_owed=owed,
    )
    with store.unit_of_work() as uow:
        rows = uow.messages.log(log_filter, newest=log_filter.since is None)
    if as_json:
        for event, message in rows:
            typer.echo(json.dumps({**event_dict(event), **message_summary(message)}))
        return
    table = Table("time (UTC)", "message", "dir", "type", "from", "to", "event", "detail")
    for event, message in rows:
        change = (
            f"{event.from_status or '·'} → {event.to_status}" if event.to_status else event.kind
        )
        table.add_row(
            event.at.strftime("%Y-%m-%d %H:%M:%S"),
            (message.id[:8] if message else "-"),
            message.direction if message else "",
            (message.msg_type or "") if message else "",
            (message.from_her_id or "") if message else "",
            (message.to_her_id or "") if message else "",
            change,
            " ".join(part for part in (event.code, event.detail) if part),
        )
    wide_console().print(table)
    if not rows:
        typer.echo("no events match")


@app.command("show")
def show_command(
    ctx: typer.Context,
    message_id: Annotated[
        str,
        typer.Argument(
            help="Our message id (or its first 8 or more characters, as log prints it), its "
            "ebXML MessageId or its MsgHead MsgId (blanks and <> around it are dropped; an "
            "ebXML MessageId or MsgId no message has so is looked for in any case)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print as one JSON object.")] = False,
    texts: ReceiptTexts = False,
) -> None:
    """One message's timeline: its identities, addressing, status and every event (with
    ``--json`` its receipts too: their error codes, their words only with ``--texts``). A MsgId
    several messages have (sent again, to several receivers) shows each of them (``--json``: a
    list); an ebXML MessageId of a message refused before its signature verified shows the
    refusal: such a message is not stored."""
    store = store_from(ctx)
    # imported once the store opened (after the settings: a configuration error is quick)
    from meldingstjener.engine.copies import links
    from meldingstjener.engine.status_report import answers_sent, receipt_document
    from meldingstjener.views import content_dict, event_dict, message_summary

    with store.unit_of_work() as uow:
        messages, refusal = messages_or_refusal(uow, message_id)
        timelines = [
            (
                message,
                uow.events.for_message(message.id),
                uow.receipts.for_message(message.id),
                answers_sent(uow, message.id),
            )
            for message in messages
        ]
        copies = [links(uow, message) for message in messages]
    if not messages:
        show_refusal(message_id, refusal, as_json=as_json)
        return
    if as_json:
        documents = []
        for (message, events, receipts, answers), linked in zip(timelines, copies, strict=True):
            document = message_summary(message)
            document.update(linked)  # sent_again_as, copy_of
            document["last_error"] = {
                "code": message.last_error_code,
                "text": message.last_error_text,
            }
            document["attempts"] = message.attempts
            document["content"] = content_dict(message, events)
            document["events"] = [event_dict(event) for event in events]
            document["receipts"] = [
                receipt_document(receipt, answers, texts=texts) for receipt in receipts
            ]
            documents.append(document)
        typer.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
        return
    console = wide_console()
    if len(messages) > 1:
        console.print(several_share(message_id, messages), highlight=False)
    for number, (message, events, _receipts, answers) in enumerate(timelines):
        if number:
            console.print()
        _print_timeline(console, message, events, answers, copies[number])


def _print_timeline(
    console: Console,
    message: MessageRow,
    events: list[EventRow],
    answers: list[AnswerSent],
    linked: dict[str, str | None],
) -> None:
    from rich.table import Table

    from meldingstjener.views import content_dict, message_summary

    summary = message_summary(message)
    for key in (
        "message_id",
        "direction",
        "status",
        "msg_type",
        "msg_type_version",
        "msg_id",
        "ebxml_message_id",
        "conversation_id",
        "cpa_id",
        "from_her_id",
        "to_her_id",
    ):
        console.print(f"[bold]{key:>18}[/bold]  {summary[key] or ''}")
    for side in ("sender", "receiver"):
        levels = summary[side]
        console.print(
            f"[bold]{side:>18}[/bold]  org {levels['organisation'] or '-'} / "
            f"service {levels['service'] or '-'} / person {levels['person'] or '-'}"
        )
    content = content_dict(message, events)
    if content["removed_at"]:
        state = f"removed {content['removed_at'][:10]} by retention ([retention] payload_days)"
    else:
        state = "stored" if content["stored"] else "not stored"
    console.print(f"[bold]{'content':>18}[/bold]  {state}", highlight=False)
    if message.last_error_code:
        console.print(
            f"[bold]{'last error':>18}[/bold]  "
            f"{message.last_error_code} {message.last_error_text or ''}"
        )
    for answer in answers:
        console.print(f"[bold]{'answer':>18}[/bold]  {answer.line()}", highlight=False)
    # a message sent again (meldingstjener resend) and its copy name each other
    for key, label in (("sent_again_as", "sent again as"), ("copy_of", "a new copy of")):
        if linked[key]:
            console.print(f"[bold]{label:>18}[/bold]  {linked[key]}", highlight=False)
    table = Table("time (UTC)", "event", "actor", "code", "detail")
    for event in events:
        change = (
            f"{event.from_status or '·'} → {event.to_status}" if event.to_status else event.kind
        )
        table.add_row(
            event.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            change,
            event.actor,
            event.code or "",
            event.detail or "",
        )
    console.print(table)


@app.command("sweep")
def sweep_command(
    ctx: typer.Context,
    older_than_hours: Annotated[
        float,
        typer.Option(
            "--older-than",
            min=0.0,
            help="Only files last written longer ago than this many hours (at least 1; "
            "0 with --dry-run, or with --move-to when every serve of this store is stopped).",
        ),
    ] = 24.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    move_to: Annotated[
        Path | None,
        typer.Option(
            "--move-to",
            help="Move the files into this directory (their paths kept; made if missing; "
            "outside the payload directory) instead of removing them. After the database was "
            "restored from a backup they include the only copies of the messages received "
            "after it: see docs/OPERATIONS.md.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as one JSON object.")] = False,
) -> None:
    """Remove payload files no message or receipt refers to (left by a crash), or move them
    aside (--move-to).

    ``serve`` does this daily by itself; this looks at every file, not only the newest.
    """
    settings_from(ctx)  # first: a configuration error is said before the imports
    from datetime import timedelta

    from meldingstjener.engine.housekeeping import record_sweep
    from meldingstjener.store.orphans import sweep

    if older_than_hours < 1 and move_to is None and not dry_run:
        # a younger file may be one a unit of work is about to refer to: removed, it is lost;
        # moved, it can be put back
        raise typer.BadParameter(
            "below 1 hour only with --dry-run or --move-to", param_hint="--older-than"
        )
    store = store_from(ctx)
    if move_to is not None and move_to.resolve().is_relative_to(store.payloads.root.resolve()):
        raise typer.BadParameter("must be outside the payload directory", param_hint="--move-to")
    report = sweep(store, grace=timedelta(hours=older_than_hours), dry_run=dry_run, move_to=move_to)
    with store.unit_of_work() as uow:  # what was moved, also when a move stopped the sweep
        record_sweep(uow, report, actor="cli:sweep", dry_run=dry_run, moved_to=move_to)
        uow.commit()
    if report.stopped is not None:
        typer.echo(
            f"error: {report.stopped} ({len(report.orphans)} file(s) moved before it)", err=True
        )
        raise typer.Exit(code=1)
    moved = 0 if dry_run or move_to is None else len(report.orphans)
    figures = {
        "examined": report.examined,
        "orphans": len(report.orphans),
        "orphan_bytes": report.orphan_bytes,
        "unfinished_spools": report.temporaries,
        "removed": 0 if dry_run or move_to is not None else len(report.orphans),
        "moved": moved,
    }
    if as_json:
        typer.echo(json.dumps(figures))
        return
    done = "would remove" if dry_run else "removed" if move_to is None else "moved"
    where = "" if dry_run or move_to is None else f" into {move_to}"
    typer.echo(
        f"examined {report.examined} file(s) older than {older_than_hours:g} h; {done} "
        f"{len(report.orphans)} that nothing refers to ({report.orphan_bytes} bytes, "
        f"{report.temporaries} unfinished spool(s)){where}"
    )


@app.command("retention")
def retention_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted now.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as one JSON object.")] = False,
) -> None:
    """Apply the [retention] rules now: delete the payload files of messages settled longer
    than payload_days, whole messages settled longer than message_days and audit log entries
    older than audit_days (0: kept).
    ``serve`` does this daily by itself. Refused (exit 2), deleting nothing, when
    message_days is shorter than a partner may resend a message."""
    rules = settings_from(ctx).retention  # first: a configuration error before the imports
    from meldingstjener.bootstrap import build_policy
    from meldingstjener.engine import retention
    from meldingstjener.engine.context import utc_now
    from meldingstjener.store.identity import check_payload_directory

    store = store_from(ctx)
    now = utc_now()
    if not dry_run:
        # before any row lets go of its files: on a host without the payload share the rows
        # forgot their content and the first file delete failed, the files left for good
        check_payload_directory(store.database, store.payloads.root)
    with store.unit_of_work() as uow:
        try:
            retention.message_cutoff(uow, rules, now)
        except retention.MessageDaysTooShort as refused:
            typer.echo(f"configuration error: {refused}", err=True)
            raise typer.Exit(2) from None
    policy = build_policy(settings_from(ctx))  # its apprec-owed window holds back some
    report = retention.run(store, rules, now=now, dry_run=dry_run, policy=policy)
    if not dry_run:
        with store.unit_of_work() as uow:
            retention.record(uow, report, actor="cli:retention", at=now)
            uow.commit()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "payload_days": rules.payload_days,
                    "message_days": rules.message_days,
                    "contents_removed": report.contents_removed,
                    "messages_deleted": report.messages_deleted,
                    # of those two: received, delivered and never answered by an AppRec
                    "unanswered_contents_removed": report.unanswered_contents_removed,
                    "unanswered_messages_deleted": report.unanswered_messages_deleted,
                    "folder_records_deleted": report.folder_files,
                    "audit_days": rules.audit_days,
                    "audit_rows_deleted": report.audit_rows,
                    "files_deleted": report.files,
                }
            )
        )
        return
    kept = ", ".join(
        f"{name} = {days or 'kept'}"
        for name, days in (
            ("payload_days", rules.payload_days),
            ("message_days", rules.message_days),
            ("audit_days", rules.audit_days),
        )
    )
    typer.echo(f"{report.line()} ({kept})")


# The start of our id that ``log`` and ``demo`` print is 8 hex digits; a shorter one would
# too often fit several messages.
_ID_PREFIX = re.compile(r"^(?=(?:[0-9a-f]-?){8})[0-9a-f-]{8,36}$")
# A character after every one an id has ([0-9a-f-]) in code order: the ids that start with a
# prefix lie from the prefix up to the prefix and this.
_PAST_ID_CHARACTERS = "g"


def find_messages(uow: UnitOfWork, identifier: str) -> list[MessageRow]:
    """The messages an identifier names, oldest first: ours by our id, else by ebXML MessageId
    (either direction), else by MsgId, else by the start of our id (at least 8 hex digits, as
    ``log`` prints it), else by an ebXML MessageId, then a MsgId, that differs from it only in
    the case of its letters (A-Z). A MsgId names every copy: one the EPJ sent again (a new row,
    after the first was given up), one to each receiver, one that came to us more than once;
    the first of them alone told a help desk "not delivered" of a document delivered since. A
    start that several messages share is a usage error that names them.

    The identifier is read as :func:`id_given` reads it (blanks and a pair of <> around it
    dropped). Each step is a look-up through an index; the case is tried last, only when
    nothing else matched (:func:`_by_id_in_any_case`)."""
    from meldingstjener.store.tables import MessageRow
    from meldingstjener.store.uow import LogFilter

    identifier = id_given(identifier)
    if not identifier:
        return []
    message = uow.messages.get(identifier)
    if message is not None:
        return [message]
    for named in (LogFilter(ebxml_message_id=identifier), LogFilter(msg_id=identifier)):
        found = uow.messages.search(named)
        if found:
            return found
    message = _by_id_prefix(uow, identifier.lower())
    if message is not None:
        return [message]
    for column in (MessageRow.ebxml_message_id, MessageRow.msg_id):
        found = _by_id_in_any_case(uow, column, identifier)
        if found:
            return found
    return []


def id_given(identifier: str) -> str:
    """An id as a help desk pastes it: without the blanks around it, nor a pair of angle
    brackets around it (``<b9a5...@msh-...>``, as a MIME Content-ID or a mail's Message-Id
    writes an ebXML MessageId), nor the blanks inside those."""
    identifier = identifier.strip()
    if len(identifier) >= 2 and identifier[0] == "<" and identifier[-1] == ">":
        identifier = identifier[1:-1].strip()
    return identifier


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def same_but_case(one: str | None, other: str) -> bool:
    """Whether two ids are the same but for the case of their letters A-Z."""
    return one is not None and one.translate(_ASCII_LOWER) == other.translate(_ASCII_LOWER)


def _has_letters(identifier: str) -> bool:
    """Whether ``identifier`` has another spelling: a letter A-Z."""
    return any(character in string.ascii_letters for character in identifier)


def _by_id_in_any_case(
    uow: UnitOfWork, column: InstrumentedAttribute[str | None], identifier: str
) -> list[MessageRow]:
    """The messages whose ``column`` (an ebXML MessageId or a MsgId) is ``identifier`` but for
    the case of its letters A-Z (an EPJ's GUID written in capitals, a MessageId copied from a
    mail header), oldest first.

    One descent of the index of ``lower(column)`` (migration 0033), under any collation: the
    rows whose column the database's ``lower`` makes the same as the id (SQLite's lowers A-Z
    only, PostgreSQL's every letter), of which those the same but for A-Z are kept. An id
    without letters has no other spelling."""
    from sqlalchemy import func, select

    from meldingstjener.store.tables import MessageRow

    if not _has_letters(identifier):
        return []
    query = select(MessageRow.id, column).where(func.lower(column) == func.lower(identifier))
    ids = [found for found, value in uow.session.execute(query) if same_but_case(value, identifier)]
    messages = [uow.messages.get(found) for found in ids]
    return sorted((m for m in messages if m is not None), key=lambda m: (m.created_at, m.id))


def several_share(identifier: str, messages: list[MessageRow]) -> str:
    """The line above several messages one identifier named: which copy is which follows."""
    identifier = id_given(identifier)
    which = (
        "MsgId" if all(same_but_case(m.msg_id, identifier) for m in messages) else "ebXML MessageId"
    )
    return f"{len(messages)} messages have the {which} {identifier} (each below):"


def messages_or_refusal(
    uow: UnitOfWork, identifier: str
) -> tuple[list[MessageRow], list[EventRow]]:
    """What ``show`` and ``status`` tell of ``identifier``: the messages it names, or else the
    events of a message refused unstored with it as eb:MessageId; exit 1 when neither."""
    messages = find_messages(uow, identifier)
    if messages:
        return messages, []
    refusal = refused_unstored(uow, id_given(identifier))
    if not refusal:
        typer.echo(f"no message with id {identifier!r}", err=True)
        raise typer.Exit(1)
    return [], refusal


def refused_unstored(uow: UnitOfWork, ebxml_message_id: str) -> list[EventRow]:
    """The log's events of a message with this eb:MessageId refused without a row: one refused
    before its signature verified is not stored (inbound), and only its events know it. As
    :func:`find_messages`: exactly, else the same but for the case of its letters A-Z."""
    from sqlalchemy import func, select

    from meldingstjener.store.tables import EventRow
    from meldingstjener.store.uow import LogFilter

    if not ebxml_message_id:  # (no criterion: every refusal's events)
        return []
    found = uow.messages.log(LogFilter(ebxml_message_id=ebxml_message_id))
    events = [event for event, message in found if message is None]
    if events or not _has_letters(ebxml_message_id):
        return events
    # in another case, as find_messages tries it last: along the index of lower(...) of the
    # events of no message (migration 0033)
    query = (
        select(EventRow)
        .where(
            EventRow.message_id.is_(None),
            func.lower(EventRow.ebxml_message_id) == func.lower(ebxml_message_id),
        )
        .order_by(EventRow.at, EventRow.id)
        .limit(LogFilter().limit)
    )
    return [
        event
        for event in uow.session.scalars(query)
        if same_but_case(event.ebxml_message_id, ebxml_message_id)
    ]


def show_refusal(ebxml_message_id: str, events: list[EventRow], *, as_json: bool) -> None:
    """What ``show`` and ``status`` say of a message not stored, its events being all there is:
    one refused before its signature verified (or a signal of a message we do not know)."""
    from rich.markup import escape

    from meldingstjener.store.uow import EventKind
    from meldingstjener.views import event_dict

    ebxml_message_id = id_given(ebxml_message_id)
    refused = any(event.kind == EventKind.ERROR for event in events)
    if as_json:
        document = {
            "ebxml_message_id": ebxml_message_id,
            "status": "refused-not-stored" if refused else "not-stored",
            "events": [event_dict(event) for event in events],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    console = wide_console()
    state = (
        "refused, not stored[/] (refused before its signature verified)"
        if refused
        else "not stored[/] (only the log's events name it)"
    )
    console.print(f"[bold]{escape(ebxml_message_id)}[/]: [bold]{state}", highlight=False)
    for event in events:
        console.print(
            f"  {event.at:%Y-%m-%d %H:%M:%S} UTC {event.actor} {event.code or ''} "
            f"{escape(event.detail or '')}",
            highlight=False,
        )


def _by_id_prefix(uow: UnitOfWork, prefix: str) -> MessageRow | None:
    from sqlalchemy import select

    from meldingstjener.store.tables import MessageRow

    if not _ID_PREFIX.match(prefix):
        return None
    # By the range PostgreSQL reads only that part of the primary key; by the LIKE alone only
    # under the collation "C" (not C.UTF-8): it walked the whole key, 0.1 s at 400,000
    # messages for an id no message has. The range is right only where text sorts by code
    # (Database.orders_text_by_code): under a language's collation it misses ids, and the LIKE
    # alone, slower, is what is right. The LIKE keeps the exact rule.
    starts = MessageRow.id.startswith(prefix, autoescape=True)
    query = select(MessageRow.id).where(starts).order_by(MessageRow.id).limit(6)
    if uow.database.orders_text_by_code:
        query = query.where(MessageRow.id >= prefix, MessageRow.id < prefix + _PAST_ID_CHARACTERS)
    found = list(uow.session.scalars(query))
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise typer.BadParameter(
            f"{prefix!r} is the start of several messages' ids ({shown}); give more of it",
            param_hint="MESSAGE_ID",
        )
    return uow.messages.get(found[0]) if found else None


@app.command("resend")
def resend_command(
    ctx: typer.Context,
    message_id: Annotated[
        str,
        typer.Argument(
            help="The not-delivered message: our id (or its first 8 or more characters), its "
            "ebXML MessageId or its MsgHead MsgId, as show takes it."
        ),
    ],
    by: Annotated[
        str, typer.Option("--by", help="Who sends it again (the logs and the audit log).")
    ] = "operator",
    checked: Annotated[
        str | None,
        typer.Option(
            "--checked",
            help="What the receiver said when asked whether the message arrived (needed when "
            "its server took an attempt but no Acknowledgment came back): kept, masked, as "
            "the note of the alert the resend resolves.",
        ),
    ] = None,
) -> None:
    """Send a not-delivered message again, once its receiver is back: a new ebXML message (new
    MessageId, same conversation) of the same business document, checked, encrypted and signed
    as any message now (the receiver's current endpoint and certificate). Prints the new
    message's id. Both messages' logs name the other, and the old one's not-delivered alert is
    resolved. Refused (exit 1, with a code) for any other status, for a message sent again
    already (its copy named), and for one the receiving side took (maybe-received) until
    --checked gives the receiver's word that it did not arrive."""
    settings = settings_from(ctx)  # first: a configuration error is said before the imports
    from meldingstjener.bootstrap import build_engine, open_store
    from meldingstjener.engine.errors import SubmitRejected
    from meldingstjener.engine.resend import Operator, resend

    # the server's store as it is, as `send` takes it (no new store, no migration under it)
    store = closed_at_end(ctx, open_store(settings, create=False, migrate=False))
    engine = build_engine(settings, store=store)
    with engine.store.unit_of_work() as uow:
        messages = find_messages(uow, message_id)
    if not messages:
        typer.echo(f"no message with id {message_id!r}", err=True)
        raise typer.Exit(1)
    if len(messages) > 1:
        # a MsgId names every copy of the document: the operator chooses which one
        shown = ", ".join(f"{m.id} ({m.direction}, {m.status})" for m in messages)
        typer.echo(f"{several_share(message_id, messages)} {shown}; give our id", err=True)
        raise typer.Exit(2)
    try:
        done = resend(engine, messages[0].id, operator=Operator("cli", by), checked=checked)
    except SubmitRejected as refused:
        typer.echo(f"refused ({refused.code}): {refused.message}", err=True)
        for problem in refused.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(done.copy_id)
    if done.checked_kept is False:
        typer.echo(
            "warning: the receiver's word (--checked) was not kept: the not-delivered alert "
            "was resolved already; keep it where your desk keeps such answers",
            err=True,
        )
