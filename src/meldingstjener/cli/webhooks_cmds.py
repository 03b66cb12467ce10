"""Webhook commands: ``webhooks list|remove``, every client's webhooks for the operator.

A client manages its own webhooks through the API; these let the operator see them all and
remove one (a JWT client its issuer withdrew, an EPJ that moved away).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from meldingstjener.cli.app import app, settings_from, store_from
from meldingstjener.cli.store_cmds import wide_console

webhooks_app = typer.Typer(help="Every API client's webhooks: list them, remove one.")
app.add_typer(webhooks_app, name="webhooks", no_args_is_help=True)


@webhooks_app.command("list")
def webhooks_list(
    ctx: typer.Context,
    client: Annotated[
        str | None, typer.Option("--client", help="Only the webhooks of this client system.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List every client's webhooks (never their secrets), and whether each is called."""
    # store_from: where there is no store, it says so (exit 3) instead of making an empty one;
    # first: a configuration error is said before the imports
    store = store_from(ctx)
    from rich.table import Table

    from meldingstjener.integration.webhook_admin import list_webhooks

    hooks = list_webhooks(store, jwt_issuer=settings_from(ctx).api.jwt_issuer, client=client)
    if as_json:
        for hook in hooks:
            typer.echo(
                json.dumps(
                    {
                        "id": hook.id,
                        "client": hook.client,
                        "credential": hook.credential,
                        "url": hook.url,
                        "events": list(hook.events),
                        "herIds": list(hook.her_ids),
                        "state": hook.state,
                        "consecutiveFailures": hook.consecutive_failures,
                        "pending": hook.pending,
                        "createdAt": hook.created_at.isoformat(),
                        "disabledAt": hook.disabled_at.isoformat() if hook.disabled_at else None,
                    }
                )
            )
        return
    table = Table("id", "client", "url", "events", "state", "failures", "owed", "created (UTC)")
    for hook in hooks:
        table.add_row(
            str(hook.id),
            f"{hook.client} ({hook.credential})",
            hook.url,
            ", ".join(hook.events),
            hook.state,
            str(hook.consecutive_failures),
            str(hook.pending),
            hook.created_at.isoformat()[:19],
        )
    wide_console().print(table)


@webhooks_app.command("remove")
def webhooks_remove(
    ctx: typer.Context,
    webhook_id: Annotated[int, typer.Argument(help="The webhook's id (see 'webhooks list').")],
) -> None:
    """Remove any client's webhook, and what is owed to it: no further call is made."""
    from meldingstjener.integration.webhook_admin import WebhookNotFound, remove_webhook

    try:
        hook = remove_webhook(store_from(ctx), webhook_id)
    except WebhookNotFound as exc:
        typer.echo(f"error ({exc.code}): {exc}", err=True)
        raise typer.Exit(1) from None  # the command's own failure (2 is a usage error)
    typer.echo(
        f"webhook {hook.id} of client {hook.client} ({hook.url}) removed, "
        f"with {hook.pending} call(s) owed to it"
    )
