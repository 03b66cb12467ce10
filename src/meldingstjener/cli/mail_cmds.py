"""Commands for the mail channel's quarantine: ``mail quarantine`` lists the mails put aside,
``mail reprocess`` takes them in again by the path a collected mail takes
(:meth:`~meldingstjener.engine.mail_channel.MailIntake.reprocess`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meldingstjener.cli.app import app, closed_at_end, settings_from, store_from
from meldingstjener.cli.store_cmds import wide_console

mail_app = typer.Typer(
    help="The mail channel: the mails put aside in <data_dir>/quarantine/, and taking them in.",
    no_args_is_help=True,
)
app.add_typer(mail_app, name="mail")


def _ebxml_message_id(path: Path) -> str | None:
    """The eb:MessageId of a mail file, when it can be read as ebXML (not verified: anybody
    may write it in a mail; for the operator to find the message with)."""
    from meldingstjener.ebxml.mime import unpackage_message
    from meldingstjener.ebxml.parse import parse_envelope
    from meldingstjener.formats.xmlparse import parse_xml

    try:
        mime = unpackage_message(path.read_bytes())
        return parse_envelope(parse_xml(mime.envelope_xml)).header.message_id
    except Exception:  # any bytes: unreadable as ebXML is an answer here, not an error
        return None


@mail_app.command("quarantine")
def quarantine(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per mail.")] = False,
) -> None:
    """List the mails in the quarantine folder, the oldest first: file, size, when it was put
    aside, the code it was put aside with (its mail-quarantined alert), and its eb:MessageId
    where it can be read. `mail reprocess FILE` takes one in again."""
    from rich.table import Table

    from meldingstjener.engine.mail_channel import quarantined_mails

    folder = settings_from(ctx).data_dir / "quarantine"
    mails = quarantined_mails(store_from(ctx), folder)
    rows = [
        {
            "file": mail.path.name,
            "bytes": mail.size,
            "at": mail.at.isoformat(timespec="seconds"),
            "code": mail.code,
            "ebxml_message_id": _ebxml_message_id(mail.path),
        }
        for mail in mails
    ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("file", "bytes", "put aside (UTC)", "code", "eb:MessageId")
    for row in rows:
        table.add_row(
            str(row["file"]),
            f"{row['bytes']:,}",
            str(row["at"])[:19].replace("T", " "),
            str(row["code"] or "?"),
            str(row["ebxml_message_id"] or "(not readable)"),
        )
    wide_console().print(table)
    if not rows:
        typer.echo(f"no mails in {folder}")


@mail_app.command("reprocess")
def reprocess(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Mails in <data_dir>/quarantine/ (a path, or the file's name alone), as "
            "`mail quarantine` lists them."
        ),
    ],
) -> None:
    """Take quarantined mails in again, each exactly as if it were collected from the mailbox
    now: e.g. a mail refused because our copy of its sender's signing certificate was stale,
    once `ar sync` has mended it. Taken in (received, with its Acknowledgment queued for the
    server to mail; a repeat answered again; a bounce recorded): its alert is resolved and its
    file deleted. Refused again: the file stays, the code is said, and the exit code is 1.
    Safe while `serve` runs."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from meldingstjener.bootstrap import build_engine
    from meldingstjener.engine.mail_channel import MailIntake
    from meldingstjener.transport.mailbox import Quarantine

    settings = settings_from(ctx)
    folder = settings.data_dir / "quarantine"
    engine = build_engine(settings)
    closed_at_end(ctx, engine.store)
    intake = MailIntake(engine, folder)
    paths = [file if file.parent != Path() else folder / file for file in files]
    for path in paths:  # all checked before any is taken
        if not intake.in_quarantine(path):
            typer.echo(f"{path} is not a mail in the quarantine folder {folder}", err=True)
            raise typer.Exit(2)
    failed = 0
    for path in paths:
        message_id = _ebxml_message_id(path)
        named = f"{path.name}" + (f" (eb:MessageId {message_id})" if message_id else "")
        try:
            intake.reprocess(path)
        except Quarantine as refused:
            failed += 1
            typer.echo(
                f"{named}: refused again ({refused.reason}); the file stays. "
                "`meldingstjener alerts --open` says why",
                err=True,
            )
            continue
        except FileNotFoundError:
            failed += 1
            typer.echo(f"{named}: gone meanwhile (taken in by another command?)", err=True)
            continue
        except (OperationalError, InterfaceError):
            raise  # the database went away: exit 3 (cli.app.main), the file left as it is
        except Exception as exc:  # e.g. the file cannot be written again; the server's log
            failed += 1
            typer.echo(f"{named}: failed ({type(exc).__name__}); the file stays", err=True)
            continue
        typer.echo(f"{named}: taken in; its alert resolved and its file deleted")
    if failed:
        raise typer.Exit(1)
