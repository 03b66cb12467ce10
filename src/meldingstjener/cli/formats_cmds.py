"""Commands for business messages: validate, apprec build, dialog build.

``validate`` exits 0 when every file is valid, 1 when any is invalid and 2 when a file cannot
be read or is not XML at all. It prints HER-ids and whether a patient is present, never who
the patient is.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meldingstjener.cli.app import app

# The formats package (lxml, the XSDs) is imported by the functions that use it: importing
# the command line, for --help or another command, costs none of it.
if TYPE_CHECKING:
    from meldingstjener.formats import MsgHead, Party, ValidationReport

apprec_app = typer.Typer(help="Application receipts (AppRec 1.0/1.1).", no_args_is_help=True)
dialog_app = typer.Typer(
    help="Dialog messages (Dialogmelding 1.0/1.1, DIALOG_AVVIK).", no_args_is_help=True
)
app.add_typer(apprec_app, name="apprec")
app.add_typer(dialog_app, name="dialog")

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


# ------------------------------------------------------------------------------------ validate


@app.command("validate")
def validate_command(
    files: Annotated[list[Path], typer.Argument(help="MsgHead or AppRec XML files to validate.")],
    schemas: Annotated[
        Path | None,
        typer.Option(
            "--schemas",
            help="Directory with the official KITH XSDs; without it the XSD layer is skipped.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per file (one per line).")
    ] = False,
) -> None:
    """Validate business messages: structure, XSD (with --schemas) and help-desk rules."""
    exit_code = EXIT_VALID
    for path in files:
        report, unreadable = _validate_file(path, schemas)
        if unreadable:
            exit_code = EXIT_UNREADABLE
        elif not report.valid and exit_code == EXIT_VALID:
            exit_code = EXIT_INVALID
        if as_json:
            typer.echo(json.dumps({"file": str(path), **report.as_dict()}, ensure_ascii=False))
        else:
            _print_report(path, report)
    raise typer.Exit(exit_code)


def _validate_file(path: Path, schemas: Path | None) -> tuple[ValidationReport, bool]:
    from meldingstjener.formats import ValidationReport, validate
    from meldingstjener.formats.xmlparse import DEFAULT_MAX_BYTES

    report = ValidationReport()
    try:
        size = path.stat().st_size
        if size > DEFAULT_MAX_BYTES:
            # Refused before the file is opened: a huge file must not be read into memory.
            report.well_formed = False
            report.add("xml", "xml-refused", "/", f"file of {size} bytes exceeds the limit")
            return report, True
        data = path.read_bytes()
    except OSError as exc:
        report.well_formed = False
        report.add("file", "unreadable", "", f"cannot read the file: {exc.strerror or exc}")
        return report, True
    report = validate(data, schemas)
    return report, not report.well_formed


def _print_report(path: Path, report: ValidationReport) -> None:
    verdict = "valid" if report.valid else "INVALID"
    typer.echo(f"{path}: {verdict}")
    if report.well_formed:
        type_text = f"{report.type} ({report.type_name})" if report.type_name else report.type
        typer.echo(f"  format:   {report.format or '-'}  type: {type_text or '-'}")
        typer.echo(f"  version:  {report.version or '-'}  content: {report.content or '-'}")
        for label, ref in (("sender", report.sender), ("receiver", report.receiver)):
            typer.echo(
                f"  {label + ':':9} organisation={ref.organisation or '-'} "
                f"service={ref.service or '-'} person={ref.person or '-'}"
            )
        typer.echo(f"  patient:  {'present' if report.patient_present else 'absent'}")
    for problem in report.problems:
        typer.echo(
            f"  {problem.severity} [{problem.layer}] {problem.code} at {problem.path or '-'}: "
            f"{problem.message}"
        )


# -------------------------------------------------------------------------------------- shared


def _read_original(path: Path) -> MsgHead:
    from meldingstjener.formats import FormatError, XmlError, read_msghead

    try:
        return read_msghead(path.read_bytes())
    except OSError as exc:
        typer.echo(f"cannot read {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
    except (FormatError, XmlError) as exc:
        typer.echo(f"{path}: not a readable MsgHead: {exc}", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from None


def _write_output(data: bytes, out: Path | None) -> None:
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        out.write_bytes(data)
        typer.echo(f"wrote {out}", err=True)


def _party_option(value: str, option: str) -> tuple[str, str]:
    name, sep, her_id = value.rpartition(":")
    if not sep or not name or not her_id:
        raise typer.BadParameter(f"expected NAME:HER-ID, got {value!r}", param_hint=option)
    return name, her_id


def _party(org: str | None, service: str | None, option: str) -> Party | None:
    from meldingstjener.formats import Party

    if org is None:
        return None
    org_name, org_her = _party_option(org, option)
    service_name, service_her = _party_option(service, option) if service else (None, None)
    try:
        return Party.of(org_name, org_her, service_name=service_name, service_her_id=service_her)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


# -------------------------------------------------------------------------------- apprec build


@apprec_app.command("build")
def apprec_build(
    original: Annotated[
        Path, typer.Option("--original", help="The MsgHead XML file this AppRec answers.")
    ],
    status: Annotated[
        int,
        typer.Option(
            "--status", min=1, max=3, help="8258 status: 1 OK, 2 rejected, 3 OK with errors."
        ),
    ] = 1,
    errors: Annotated[
        list[str] | None,
        typer.Option(
            "--error",
            help="An 8221 error as CODE or CODE:explaining text (e.g. 'E21:Legen har sluttet'); "
            "repeat for several.",
        ),
    ] = None,
    version: Annotated[str, typer.Option("--version", help="AppRec version: 1.0 or 1.1.")] = "1.1",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of standard output.")
    ] = None,
) -> None:
    """Build an AppRec answering a MsgHead (sender and receiver swapped)."""
    from meldingstjener.formats import AppRecError, FormatError, build_apprec, code_list
    from meldingstjener.formats.apprec import APPREC_VERSIONS

    if version not in APPREC_VERSIONS:
        raise typer.BadParameter(f"{version!r} is not 1.0 or 1.1", param_hint="--version")
    head = _read_original(original)
    parsed: list[AppRecError] = []
    for item in errors or []:
        code, _, detail = item.partition(":")
        if code not in code_list("8221"):
            raise typer.BadParameter(f"{code!r} is not in code list 8221", param_hint="--error")
        parsed.append(AppRecError.of(code, detail or None))
    try:
        data = build_apprec(head, status=status, errors=parsed, version=version)
    except (FormatError, ValueError) as exc:
        typer.echo(f"cannot build the AppRec: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    _write_output(data, out)


# -------------------------------------------------------------------------------- dialog build


class DialogKind(StrEnum):
    FORESPORSEL = "foresporsel"
    SVAR = "svar"
    NOTAT = "notat"
    HELSEFAGLIG = "helsefaglig"
    AVVIK = "avvik"


@dialog_app.command("build")
def dialog_build(
    kind: Annotated[
        DialogKind,
        typer.Option("--kind", help="foresporsel, svar, notat, helsefaglig or avvik."),
    ],
    text: Annotated[
        str, typer.Option("--text", help="The question, answer, note or deviation text.")
    ],
    from_org: Annotated[
        str | None, typer.Option("--from-org", help="Sender organisation as NAME:HER-ID.")
    ] = None,
    from_service: Annotated[
        str | None, typer.Option("--from-service", help="Sender service as NAME:HER-ID.")
    ] = None,
    to_org: Annotated[
        str | None, typer.Option("--to-org", help="Receiver organisation as NAME:HER-ID.")
    ] = None,
    to_service: Annotated[
        str | None, typer.Option("--to-service", help="Receiver service as NAME:HER-ID.")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="For svar: the question (MsgHead file) answered; for avvik: the received "
            "message the deviation is about. Sender and receiver then default to its receiver "
            "and sender.",
        ),
    ] = None,
    theme: Annotated[
        str,
        typer.Option("--theme", help="TypeForesp/TemaKodet code (9152/9153 for 1.0 messages)."),
    ] = "99",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of standard output.")
    ] = None,
) -> None:
    """Build a dialog message (Forespørsel, Svar, Notat, Helsefaglig dialog, DIALOG_AVVIK)."""
    from meldingstjener.formats import FormatError

    sender = _party(from_org, from_service, "--from-org")
    receiver = _party(to_org, to_service, "--to-org")
    try:
        data = _build_dialog(kind, text, sender, receiver, reference, theme)
    except (FormatError, ValueError) as exc:
        typer.echo(f"cannot build the dialog message: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    _write_output(data, out)


def _build_dialog(
    kind: DialogKind,
    text: str,
    sender: Party | None,
    receiver: Party | None,
    reference: Path | None,
    theme: str,
) -> bytes:
    from meldingstjener.formats import (
        Dialogmelding,
        Foresporsel,
        Notat,
        build_dialog_avvik,
        build_dialog_svar,
        build_dialogmelding,
        code_list,
    )
    from meldingstjener.formats.xmlutil import Coded

    if kind in (DialogKind.SVAR, DialogKind.AVVIK):
        if reference is None:
            raise typer.BadParameter(f"--kind {kind} needs --reference", param_hint="--reference")
        referenced = _read_original(reference)
        if kind is DialogKind.SVAR:
            return build_dialog_svar(referenced, answer_text=text, sender=sender)
        return build_dialog_avvik(referenced, description=text, sender=sender)
    if sender is None or receiver is None:
        raise typer.BadParameter(f"--kind {kind} needs --from-org and --to-org")
    code = Coded(v=theme, dn=code_list("9152").text(theme), s=code_list("9152").oid)
    if kind is DialogKind.FORESPORSEL:
        dialog = Dialogmelding(version="1.0", foresporsler=(Foresporsel(type=code, sporsmal=text),))
        message_type = "DIALOG_FORESPORSEL"
    elif kind is DialogKind.NOTAT:
        dialog = Dialogmelding(version="1.0", notater=(Notat(tema_kodet=code, tekst=text),))
        message_type = "DIALOG_NOTAT"
    else:
        note = Notat(tema_kodet=Coded(v=theme), tekst=text)
        dialog = Dialogmelding(version="1.1", notater=(note,))
        message_type = "DIALOG_HELSEFAGLIG"
    return build_dialogmelding(
        message_type=message_type, sender=sender, receiver=receiver, dialog=dialog
    )
