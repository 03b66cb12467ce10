"""API commands: ``audit`` (the audit log) and ``clients add|list|rotate|revoke`` (API client
systems)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from meldingstjener.cli.app import app, settings_from, store_from
from meldingstjener.cli.store_cmds import SINCE_HELP, parse_since, wide_console

if TYPE_CHECKING:
    from meldingstjener.api.clients import ClientError

clients_app = typer.Typer(help="API client systems (EPJs): keys, scopes, HER-ids.")
app.add_typer(clients_app, name="clients", no_args_is_help=True)


@app.command("audit")
def audit_command(
    ctx: typer.Context,
    message: Annotated[
        str | None, typer.Option("--message", help="Only entries about this message id.")
    ] = None,
    client: Annotated[
        str | None, typer.Option("--client", help="Only entries of this client system.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help=f"Only entries from this time: {SINCE_HELP}.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many entries.")] = 1000,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per entry (JSON lines).")
    ] = False,
) -> None:
    """The audit log: who read or changed which message, when, with what outcome; oldest
    first, the last --limit entries (from --since: the first ones after it). Once retention
    has deleted older entries ([retention] audit_days), says from when the log is whole."""
    store = store_from(ctx)  # first: a configuration error is said before the imports
    from rich.table import Table

    from meldingstjener.store.audit import AuditQuery, kept_from, query

    start = parse_since(since)
    # without a start, the newest entries: the oldest ones of a year are not what is asked
    asked = AuditQuery(message, client, start, limit, newest_first=start is None)
    rows = query(store, asked)
    if asked.newest_first:
        rows.reverse()
    whole_from = kept_from(store)
    if whole_from is not None:  # on stderr: --json's lines stay entries only
        typer.echo(
            f"the audit log reaches back to {whole_from.isoformat(timespec='seconds')}: "
            "older entries were deleted by retention ([retention] audit_days)",
            err=True,
        )
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("time (UTC)", "client", "person", "action", "message", "HER-id", "outcome")
    for row in rows:
        table.add_row(
            str(row["at"])[:19],
            row["client"],
            row["person"] or "",
            row["action"],
            row["messageId"] or "",
            row["herId"] or "",
            row["outcome"],
        )
    wide_console().print(table)


@clients_app.command("add")
def clients_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the client system, e.g. 'dips-prod'.")],
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="send, receive, admin or metrics; repeat for several."),
    ],
    her_id: Annotated[
        list[str] | None,
        typer.Option("--her-id", help="An own HER-id the client may act for; repeat for several."),
    ] = None,
) -> None:
    """Make a client and print its API key once (only a hash is stored)."""
    from meldingstjener.api.clients import ClientError, add_client

    own = settings_from(ctx).identity.her_ids
    store = store_from(ctx, create=True)
    try:
        client, key = add_client(store, name, scope, her_id or [], own_her_ids=own, actor="cli")
    except ClientError as exc:
        _refused(exc)
    typer.echo(
        f"client {client.name}: scopes {', '.join(client.scopes)}; "
        f"HER-ids {', '.join(client.her_ids) or 'none'}",
        err=True,
    )
    typer.echo("the key below is shown only now; store it in the client system:", err=True)
    typer.echo(key)


@clients_app.command("list")
def clients_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List client systems (never their keys)."""
    store = store_from(ctx)  # first: a configuration error is said before the imports
    from rich.table import Table

    from meldingstjener.api.clients import list_clients

    clients = list_clients(store)
    if as_json:
        for c in clients:
            typer.echo(
                json.dumps(
                    {
                        "name": c.name,
                        "scopes": list(c.scopes),
                        "herIds": list(c.her_ids),
                        "createdAt": c.created_at.isoformat(),
                        "revokedAt": c.revoked_at.isoformat() if c.revoked_at else None,
                        # a key being replaced: accepted until then (null: none)
                        "oldKeyUntil": c.old_key_until.isoformat() if c.old_key_until else None,
                        # when a request last came with it (null: none since the rotation)
                        "oldKeyLastUsed": (
                            c.old_key_last_used.isoformat() if c.old_key_last_used else None
                        ),
                    }
                )
            )
        return
    table = Table(
        "name",
        "scopes",
        "HER-ids",
        "created (UTC)",
        "revoked (UTC)",
        "old key until (UTC)",
        "old key last used (UTC)",
    )
    for c in clients:
        table.add_row(
            c.name,
            ", ".join(c.scopes),
            ", ".join(c.her_ids),
            c.created_at.isoformat()[:19],
            c.revoked_at.isoformat()[:19] if c.revoked_at else "",
            c.old_key_until.isoformat()[:19] if c.old_key_until else "",
            c.old_key_last_used.isoformat()[:19] if c.old_key_last_used else "",
        )
    wide_console().print(table)


@clients_app.command("rotate")
def clients_rotate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The client system whose key to replace.")],
    overlap_hours: Annotated[
        float | None,
        typer.Option(
            "--overlap-hours",
            help="Hours the old key still works (default 24; 0: it stops at once, for a "
            "leaked key).",
        ),
    ] = None,
) -> None:
    """Give a client a new key and print it once; the old key works until the overlap ends,
    then is refused as a revoked one."""
    store = store_from(ctx)  # first: a configuration error is said before the imports
    from meldingstjener.api.clients import (
        DEFAULT_OVERLAP_HOURS,
        ClientError,
        overlap_of,
        rotate_client,
    )

    hours = DEFAULT_OVERLAP_HOURS if overlap_hours is None else overlap_hours
    try:
        client, key = rotate_client(store, name, overlap=overlap_of(hours), actor="cli")
    except ClientError as exc:
        _refused(exc)
    if client.old_key_until is None:
        typer.echo(f"client {client.name}: new key; the old key stops now", err=True)
    else:
        typer.echo(
            f"client {client.name}: new key; the old key works until "
            f"{client.old_key_until.isoformat(timespec='seconds')}",
            err=True,
        )
    typer.echo("the key below is shown only now; store it in the client system:", err=True)
    typer.echo(key)


@clients_app.command("revoke")
def clients_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The client system to revoke.")],
) -> None:
    """Revoke a client's key at once (and an old key still in its overlap); its audit history
    stays."""
    from meldingstjener.api.clients import ClientError, revoke_client

    try:
        client = revoke_client(store_from(ctx), name, actor="cli")
    except ClientError as exc:
        _refused(exc)
    typer.echo(f"client {client.name} revoked")


def _refused(exc: ClientError) -> NoReturn:
    """A change of a client refused: its code and words, exit 2."""
    typer.echo(f"error ({exc.code}): {exc}", err=True)
    raise typer.Exit(2) from None
