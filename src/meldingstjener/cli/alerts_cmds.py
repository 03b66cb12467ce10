"""Operator commands: ``alerts`` (list, ack, resolve), ``status`` (one message, end to end) and
``instances`` (the serve processes on the store)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meldingstjener.cli.app import app, store_from
from meldingstjener.cli.store_cmds import (
    ReceiptTexts,
    messages_or_refusal,
    several_share,
    show_refusal,
    wide_console,
)

if TYPE_CHECKING:
    from rich.console import Console

    from meldingstjener.store.audit import FollowUp
    from meldingstjener.store.tables import AlertRow, MessageRow

alerts_app = typer.Typer(
    help="Alerts (avvik): problems an operator must follow up.", invoke_without_command=True
)
app.add_typer(alerts_app, name="alerts")


@alerts_app.callback()
def alerts_list(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="Only alerts not resolved.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per alert.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many (the rest are counted).")
    ] = 1000,
) -> None:
    """List alerts, newest first, at most --limit, and how many more there are (``alerts ack
    ID`` acknowledges one, ``alerts resolve ID`` resolves one by hand)."""
    if ctx.invoked_subcommand is not None:
        return

    store = store_from(ctx)
    # imported once the store opened (after the settings: a configuration error is quick)
    from rich.markup import escape
    from rich.table import Table

    from meldingstjener.views import alert_dict

    with store.unit_of_work() as uow:
        # one more than shown tells whether there are more; only then are they counted
        alerts = uow.alerts.list(open_only=open_only, limit=limit + 1)
        more = uow.alerts.count(open_only=open_only) - limit if len(alerts) > limit else 0
    alerts = alerts[:limit]
    # after an outage the oldest alerts, the not-delivered ones among them, are the ones past
    # the limit: never left out without a word (on stderr, so --json stays one alert a line)
    not_shown = f"{more} more {'open ' if open_only else ''}alert(s) not shown (see --limit)"
    if as_json:
        for alert in alerts:
            typer.echo(json.dumps(alert_dict(alert)))
        if more:
            typer.echo(not_shown, err=True)
        return
    table = Table("id", "severity", "kind", "count", "last seen (UTC)", "ack", "summary")
    for alert in alerts:
        table.add_row(
            str(alert.id),
            alert.severity,
            alert.kind,
            str(alert.count),
            alert.last_seen.strftime("%Y-%m-%d %H:%M"),
            _ack_column(alert),
            escape(alert.summary + _note_of(alert)),  # a note's [ ] are no markup
        )
    wide_console().print(table)
    if not alerts:
        typer.echo("no alerts")
    if more:
        typer.echo(not_shown)


def _ack_column(alert: AlertRow) -> str:
    """``resolved``, or who acknowledged an open alert. Resolving sets ``acknowledged_by`` to the
    resolver when nobody acknowledged it before: the name alone read as an open alert someone
    was on. Who resolved it is in the audit log."""
    from rich.markup import escape  # as the listing: rich is imported once the store opened

    if alert.resolved_at is not None:
        return "resolved"
    if alert.acknowledged_by:
        return escape(f"acknowledged by {alert.acknowledged_by}")  # a name's [ ] are no markup
    return ""


# ids are positive, and within what either database's BIGINT holds
AlertId = Annotated[
    int, typer.Argument(min=1, max=2**62, help="The alert's id (see `meldingstjener alerts`).")
]


@alerts_app.command("ack")
def alerts_ack(
    ctx: typer.Context,
    alert_id: AlertId,
    by: Annotated[str, typer.Option("--by", help="Who acknowledges it.")] = "operator",
) -> None:
    """Acknowledge an alert: someone is following it up."""
    done = _follow_up(ctx, alert_id, by=by, resolve=False)
    if done.acknowledged_before is not None:
        typer.echo(f"alert {alert_id} was acknowledged by {done.acknowledged_before} already")
    else:
        typer.echo(f"alert {alert_id} acknowledged by {by}")


@alerts_app.command("resolve")
def alerts_resolve(
    ctx: typer.Context,
    alert_id: AlertId,
    by: Annotated[str, typer.Option("--by", help="Who followed it up.")] = "operator",
    note: Annotated[
        str | None,
        typer.Option(
            "--note",
            help="What was done, kept with the alert and shown with it (a few sentences at "
            "most; no patient data).",
            callback=_bounded_note,
        ),
    ] = None,
) -> None:
    """Resolve an alert by hand: it was followed up. It leaves `alerts --open`; a repeat of the
    problem opens it again, as a new incident. Who resolved it is in the audit log
    (`meldingstjener audit`); the note is shown by `alerts` and `status` until then."""
    done = _follow_up(ctx, alert_id, by=by, resolve=True, note=note)
    if done.note_not_kept:  # a script must not take the note for kept
        typer.echo(f"alert {alert_id} was resolved already; the note was not kept", err=True)
        raise typer.Exit(1)
    if done.resolved_before:
        typer.echo(f"alert {alert_id} was resolved already")
        return
    acknowledged = (
        f" (acknowledged by {done.acknowledged_before} before)"
        if done.acknowledged_before not in (None, by)
        else ""
    )
    typer.echo(f"alert {alert_id} resolved by {by}{acknowledged}")


def _bounded_note(note: str | None) -> str | None:
    """The note as it is kept (store.audit.resolution_note: stripped, masked), refused (exit 2)
    when it cannot be kept whole."""
    from meldingstjener.store.audit import NoteRefused, resolution_note

    try:
        return resolution_note(note)
    except NoteRefused as refused:
        raise typer.BadParameter(str(refused)) from None


def _follow_up(
    ctx: typer.Context, alert_id: int, *, by: str, resolve: bool, note: str | None = None
) -> FollowUp:
    """Acknowledge (or resolve, with ``note``) one alert and commit, audited as client
    ``cli``; exit 1 when there is no such alert."""
    from meldingstjener.store.audit import follow_up_alert

    store = store_from(ctx)
    with store.unit_of_work() as uow:
        done = follow_up_alert(
            uow, alert_id, resolve=resolve, client="cli", person=by, by=by, note=note
        )
        if done is None:
            typer.echo(f"no alert {alert_id}", err=True)
            raise typer.Exit(1)
        uow.commit()
    return done


@app.command("status")
def status_command(
    ctx: typer.Context,
    message_id: Annotated[
        str,
        typer.Argument(
            help="Our id (or its first 8 or more characters, as log prints it), the ebXML "
            "MessageId or the MsgId, as show takes it."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print as one JSON object.")] = False,
    texts: ReceiptTexts = False,
) -> None:
    """A message's end-to-end status: transport receipt and AppRec, per receiver (its
    receipts' error codes, their words only with ``--texts``), our answer to a received message
    and what became of it, and the message's alerts. A MsgId several messages have (sent
    again, to several receivers) shows each of them (``--json``: a list); an ebXML MessageId of
    a message refused before its signature verified shows the refusal."""
    store = store_from(ctx)
    # the one builder of a status document: the operator API's timeline answers it too
    from meldingstjener.engine.status_report import status_document

    with store.unit_of_work() as uow:
        messages, refusal = messages_or_refusal(uow, message_id)
        reports = [status_document(uow, message, texts=texts) for message in messages]
    if not messages:
        show_refusal(message_id, refusal, as_json=as_json)
        return
    if as_json:
        documents = [document for document, _ in reports]
        typer.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
        return
    console = wide_console()
    if len(messages) > 1:
        console.print(several_share(message_id, messages), highlight=False)
    for number, (message, (document, alerts)) in enumerate(zip(messages, reports, strict=True)):
        if number:
            console.print()
        _print_status(console, message, document, alerts, texts=texts)


def _print_status(
    console: Console,
    message: MessageRow,
    document: dict[str, Any],
    alerts: list[AlertRow],
    *,
    texts: bool,
) -> None:
    from rich.markup import escape

    from meldingstjener.engine.receipts import last_error_is_history, transport_delivery_words

    console.print(
        f"[bold]{message.id}[/] {message.direction} {message.msg_type} "
        f"{message.from_her_id} → {message.to_her_id}: [bold]{message.status}[/]"
    )
    for receiver in document.get("receivers", []):
        console.print(
            f"  receiver {receiver['receiverHerId']}: transport "
            f"{transport_delivery_words(message.status)} (EDI 2.0: "
            f"{receiver['transportDeliveryState']}), AppRec {receiver['appRecStatus'] or '-'}"
        )
    held = document.get("held")
    if message.last_error_code:
        error = f"{message.last_error_code} {message.last_error_text or ''}"
        if message.direction == "out" and last_error_is_history(message.status):
            # what the error said of a next attempt no longer holds
            console.print(f"  [dim]history, before it was {message.status}: {escape(error)}[/]")
        elif held is not None and held["code"] != message.last_error_code:
            # a failed send before the hold: its next attempt is not the next check
            console.print(f"  [dim]history, before it was held: {escape(error)}[/]")
        elif held is None:
            console.print(f"  last error: {escape(error)}")
    if held is not None:
        console.print(
            f"  held since {_utc(held['since'])}: {held['code']} {escape(held['reason'])}",
            highlight=False,
        )
    if document.get("next_check_at"):
        console.print(f"  next check: {_utc(document['next_check_at'])}", highlight=False)
    # a message sent again (meldingstjener resend) and its copy name each other
    for key, label in (("sent_again_as", "sent again as"), ("copy_of", "a new copy of")):
        if document.get(key):
            console.print(f"  {label}: {document[key]}", highlight=False)
    for receipt in document["receipts"]:
        answer = receipt.get("answer")
        console.print(
            f"  {_utc(receipt['at'])} {receipt['direction']:>3} {receipt['kind']}"
            + (f" status {receipt['apprec_status']}" if receipt["apprec_status"] else "")
            + (f" {_codes(receipt['error_codes'])}" if receipt["error_codes"] else "")
            + (f": sent as {answer['message_id']}, {_answer_fate(answer)}" if answer else "")
            + (f": {_delivery_words(receipt['delivery'])}" if receipt.get("delivery") else "")
        )
        if texts and receipt["description"]:
            console.print(f"    {escape(receipt['description'])}", highlight=False)
    for alert in alerts:
        # a resolved alert is history: not told as if it still needed following up
        if alert.resolved_at is not None:
            console.print(
                f"  [dim]alert {alert.id} {alert.kind} (resolved "
                f"{alert.resolved_at:%Y-%m-%d %H:%M} UTC): {escape(alert.summary)}"
                f"{escape(_note_of(alert))}[/]"
            )
            continue
        acknowledged = (
            f" (acknowledged by {escape(alert.acknowledged_by)})" if alert.acknowledged_by else ""
        )
        console.print(
            f"  [red]alert {alert.id}[/] {alert.kind}{acknowledged}: {escape(alert.summary)}"
        )


def _delivery_words(delivery: dict[str, Any]) -> str:
    """What became of our signal (``SignalDelivery``), in words and markup."""
    from rich.markup import escape

    state = delivery["state"]
    if state == "inline":
        return "sent in the HTTP response (SyncReply)"
    if state == "queued":
        return "queued, not sent yet"
    if state == "delivered":
        return f"delivered {_utc(delivery['at'])}"
    if state == "no-route":
        return "[red]NOT sent[/]: no agreed way back to the sender"
    error = delivery["last_error"] or {}
    last = escape(f"last error {error.get('code')} {error.get('text') or ''}".strip())
    tries = f"{delivery['failed_attempts']} failed attempt(s), {last}"
    if state == "failing":
        return (
            f"[red]NOT delivered yet[/], failing since {_utc(delivery['failing_since'])} "
            f"({tries}; next attempt {_utc(delivery['next_attempt_at'])})"
        )
    return (
        f"[red]NOT delivered, given up[/] (since {_utc(delivery['failing_since'])}: {tries}; "
        "the sender's resend of the message gets it again)"
    )


def _note_of(alert: AlertRow) -> str:
    """The resolution's note, as the end of the alert's line; empty when it has none."""
    return f" [resolved with the note: {alert.resolution_note}]" if alert.resolution_note else ""


def _utc(at: str) -> str:
    """A stored time (ISO 8601, as the status document has it) as the tables print times:
    to the second, in UTC, saying so."""
    from meldingstjener.store.types import as_utc

    return f"{as_utc(datetime.fromisoformat(at)):%Y-%m-%d %H:%M:%S} UTC"


def _answer_fate(answer: dict[str, Any]) -> str:
    """Our answer's status and its open alerts: ``not-delivered (alert 3)``."""
    alerts = ", ".join(str(number) for number in answer["open_alerts"])
    return f"[bold]{answer['status']}[/]" + (f" [red](alert {alerts})[/]" if alerts else "")


def _codes(errors: list[Any]) -> str:
    """A receipt's errors on one line: codes, or with ``--texts`` each code and its words."""
    from rich.markup import escape

    shown = []
    for error in errors:
        if isinstance(error, dict):
            words = error.get("text") or error.get("description")
            shown.append(f"{error.get('code')}" + (f" ({words})" if words else ""))
        else:
            shown.append(str(error))
    return escape(", ".join(shown))


@app.command("instances")
def instances_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per instance.")] = False,
) -> None:
    """The serve processes on this store: running, stopped, or gone (no heartbeat for 15
    minutes, or on PostgreSQL for 3 minutes without its name's lock; their clock-skew and
    mailbox-unreachable alerts are resolved then)."""
    store = store_from(ctx)  # first: a configuration error is said before the imports
    from rich.table import Table

    from meldingstjener.engine.context import utc_now
    from meldingstjener.engine.instances import instance_states, store_now

    with store.unit_of_work() as uow:
        now = store_now(utc_now, uow)
        rows = [
            {
                "name": row.name,
                "state": state,
                "host": row.host,
                "pid": row.pid,
                "version": row.version,
                "started_at": row.started_at.isoformat(),
                "last_seen_at": row.last_seen_at.isoformat(),
                "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
            }
            for row, state in instance_states(uow, now)
        ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        typer.echo("no instance has run serve on this store")
        return
    table = Table("instance", "state", "pid", "version", "started (UTC)", "last seen (UTC)")
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["state"]),
            str(row["pid"]),
            str(row["version"]),
            str(row["started_at"])[:16].replace("T", " "),
            str(row["last_seen_at"])[:16].replace("T", " "),
        )
    wide_console().print(table)
