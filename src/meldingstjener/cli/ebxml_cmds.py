"""Commands for ebXML mails as received: ``ebxml show`` and ``ebxml verify``.

``show`` answers the help desk's first questions about a mail (who to whom, which agreement,
which message, what was attached, is it signed) without printing any payload. ``verify``
checks the envelope signature and every attachment digest with the security layer, then the
signer's certificate at the signing time, and says plainly when a certificate that has expired
since was valid when the message was signed. Exit code 0 only when everything verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meldingstjener.cli.app import app

# The ebXML and formats packages (lxml) are imported by the functions that use them: importing
# the command line, for --help or another command, costs none of it.
if TYPE_CHECKING:
    from cryptography import x509
    from lxml import etree

    from meldingstjener.ebxml.mime import MimeMessage
    from meldingstjener.ebxml.values import Envelope, Party

ebxml_app = typer.Typer(
    help="ebXML mails as received: show what a mail says, verify its signature.",
    no_args_is_help=True,
)
app.add_typer(ebxml_app, name="ebxml")

MailFile = Annotated[
    Path,
    typer.Argument(
        help="The mail file as received (MIME with the envelope and its attachments).",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _fail(message: str, as_json: bool) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"ok": False, "problem": message}, indent=2))
    else:
        typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _read_mail(path: Path, as_json: bool) -> MimeMessage:
    from meldingstjener.ebxml.codes import EbxmlError
    from meldingstjener.ebxml.mime import unpackage_message

    try:
        return unpackage_message(path.read_bytes())
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}", as_json) from None
    except EbxmlError as exc:
        raise _fail(f"{path} is not a readable ebXML message: {exc}", as_json) from None


def _party(party: Party) -> dict[str, Any]:
    return {
        "her_id": party.her_id,
        "party_type": party.party_type,
        "role": party.role,
        "other_ids": [{"type": t, "value": v} for t, v in party.other_ids],
    }


def _envelope_summary(envelope: Envelope, message: MimeMessage) -> dict[str, Any]:
    from meldingstjener.ebxml.ids import format_timestamp

    header = envelope.header
    summary: dict[str, Any] = {
        "mime_message_id": message.message_id,
        "from": _party(header.from_party),
        "to": _party(header.to_party),
        "cpa_id": header.cpa_id,
        "conversation_id": header.conversation_id,
        "service": header.service,
        "service_type": header.service_type,
        "action": header.action,
        "message_id": header.message_id,
        "timestamp": format_timestamp(header.timestamp),
        "ref_to_message_id": header.ref_to_message_id,
        "time_to_live": format_timestamp(header.time_to_live) if header.time_to_live else None,
        "description": None,
        "ack_requested": envelope.ack_requested,
        "ack_signed": envelope.ack_signed,
        "sync_reply": envelope.sync_reply,
        "duplicate_elimination": envelope.duplicate_elimination,
        "signature_present": envelope.signature_present,
        "envelope_bytes": len(message.envelope_xml),
        "manifest": [],
        "attachments": [
            {"content_id": a.content_id, "content_type": a.content_type, "bytes": len(a.data)}
            for a in message.attachments.values()
        ],
    }
    if header.description is not None:
        d = header.description
        summary["description"] = {
            "msh_system": d.msh_system,
            "msh_version": d.msh_version,
            "application": d.application,
            "application_version": d.application_version,
        }
    for reference in envelope.manifest:
        part = message.attachments.get(reference.content_id or "")
        summary["manifest"].append(
            {
                "href": reference.href,
                "found": part is not None,
                "bytes": None if part is None else len(part.data),
            }
        )
    if envelope.acknowledgment is not None:
        ack = envelope.acknowledgment
        summary["acknowledgment"] = {
            "timestamp": format_timestamp(ack.timestamp),
            "ref_to_message_id": ack.ref_to_message_id,
            "references": [r._asdict() for r in ack.references],
        }
    if envelope.error_list is not None:
        summary["error_list"] = {
            "highest_severity": envelope.error_list.highest_severity.value,
            "errors": [
                {
                    "code": e.reported_code or e.code.value,
                    "severity": e.severity.value,
                    "location": e.location,
                    "description": e.description,
                }
                for e in envelope.error_list.errors
            ],
        }
    return summary


def _party_text(party: dict[str, Any]) -> str:
    role = f" ({party['role']})" if party["role"] else ""
    return f"{party['party_type']} {party['her_id']}{role}"


def _print_summary(summary: dict[str, Any]) -> None:
    lines = [
        f"From:              {_party_text(summary['from'])}",
        f"To:                {_party_text(summary['to'])}",
        f"CPAId:             {summary['cpa_id']}",
        f"ConversationId:    {summary['conversation_id']}",
        f"Service / Action:  {summary['service']} / {summary['action']}",
        f"MessageId:         {summary['message_id']}",
        f"Timestamp:         {summary['timestamp']}",
    ]
    if summary["ref_to_message_id"]:
        lines.append(f"RefToMessageId:    {summary['ref_to_message_id']}")
    if summary["mime_message_id"]:
        lines.append(f"MIME Message-Id:   {summary['mime_message_id']}")
    if summary["description"]:
        d = summary["description"]
        lines.append(
            f"Sent by:           MSH {d['msh_system']} {d['msh_version'] or ''}".rstrip()
            + (f", application {d['application']} {d['application_version'] or ''}".rstrip())
            * bool(d["application"])
        )
    lines.append(
        f"AckRequested:      {'yes' if summary['ack_requested'] else 'no'}"
        + (" (signed)" if summary["ack_signed"] else "")
        + f"; SyncReply {'yes' if summary['sync_reply'] else 'no'}"
        + f"; DuplicateElimination {'yes' if summary['duplicate_elimination'] else 'no'}"
    )
    lines.append(f"Signature:         {'present' if summary['signature_present'] else 'absent'}")
    lines.append(f"Envelope:          {summary['envelope_bytes']} bytes")
    for ref in summary["manifest"]:
        found = f"{ref['bytes']} bytes" if ref["found"] else "MISSING from the mail"
        lines.append(f"Manifest:          {ref['href']} ({found})")
    for part in summary["attachments"]:
        lines.append(
            f"Attachment:        {part['content_id']} {part['content_type']}, {part['bytes']} bytes"
        )
    if "acknowledgment" in summary:
        ack = summary["acknowledgment"]
        lines.append(f"Acknowledges:      {ack['ref_to_message_id']} (received {ack['timestamp']})")
        for r in ack["references"]:
            lines.append(f"  receipt digest:  {r['uri'] or '(envelope)'} {r['digest_value']}")
    if "error_list" in summary:
        for e in summary["error_list"]["errors"]:
            where = f" at {e['location']}" if e["location"] else ""
            lines.append(f"Error:             {e['severity']} {e['code']}{where}")
            if e["description"]:
                lines.append(f"                   {e['description']}")
    typer.echo("\n".join(lines))


@ebxml_app.command("show")
def show(mailfile: MailFile, as_json: JsonOption = False) -> None:
    """Show the envelope fields, manifest and attachment sizes of a received ebXML mail (never
    the payload)."""
    from meldingstjener.ebxml.codes import EbxmlError
    from meldingstjener.ebxml.parse import parse_envelope

    message = _read_mail(mailfile, as_json)
    try:
        envelope = parse_envelope(message.envelope_xml)
    except EbxmlError as exc:
        raise _fail(f"the envelope is not valid ebXML: {exc}", as_json) from None
    summary = _envelope_summary(envelope, message)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_summary(summary)


# --- verify ----------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """Everything ``verify`` found, in the order a person reads it."""

    ok: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    message_id: str | None = None
    signature_valid: bool = False
    signature_algorithm: str | None = None
    references: list[dict[str, Any]] = field(default_factory=list)
    signer: str | None = None
    certificate_not_after: str | None = None
    checked_at: str | None = None
    valid_at_checked_time: bool | None = None
    valid_now: bool | None = None
    trust: str | None = None


def _parse_at(text: str | None) -> datetime | None:
    from meldingstjener.ebxml.ids import parse_timestamp

    if text is None:
        return None
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        return parse_timestamp(text)
    except ValueError:
        pass
    try:
        # Friendlier forms for a person typing: a date, or a time without seconds.
        moment = datetime.fromisoformat(text.strip())
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except ValueError:
        raise typer.BadParameter(
            "give an ISO 8601 time such as 2023-08-29T10:56:50Z, or 'now'", param_hint="--at"
        ) from None


def _load_cert(path: Path) -> x509.Certificate:
    from meldingstjener.security.certs import CertificateLoadError, load_certificate

    try:
        return load_certificate(path)
    except CertificateLoadError as exc:
        raise typer.BadParameter(exc.message, param_hint="--cert/--ca") from None


def _check_signature(
    report: VerifyReport,
    root: etree._Element,
    message: MimeMessage,
    certificate: x509.Certificate | None,
    allow_sha1: bool,
) -> x509.Certificate | None:
    from meldingstjener.ebxml.signals import signature_references
    from meldingstjener.security.xmldsig import verify_ebxml_envelope

    check = verify_ebxml_envelope(
        root, message.attachment_bytes(), certificate=certificate, allow_sha1=allow_sha1
    )
    report.signature_valid = check.valid
    report.signature_algorithm = check.signature_algorithm
    report.references = [
        {"uri": r.uri, "digest_algorithm": r.digest_algorithm, "matched": r.matched}
        for r in check.references
    ]
    if not check.valid:
        report.problems.append(f"signature not valid: {check.problem or 'no reason given'}")
    elif check.problem:
        report.problems.append(check.problem)
    if not check.references and signature_references(root):
        report.problems.append("the signature's references could not be checked")
    return check.signer_certificate


def _check_certificate(
    report: VerifyReport,
    signer: x509.Certificate,
    *,
    at: datetime,
    at_is_signing_time: bool,
    anchors: list[x509.Certificate],
    pinned: x509.Certificate | None,
    check_revocation: bool,
) -> None:
    from meldingstjener.ebxml.ids import format_timestamp
    from meldingstjener.security.certs import describe
    from meldingstjener.security.validation import CertificateValidator, Reason

    report.signer = describe(signer)
    report.certificate_not_after = format_timestamp(signer.not_valid_after_utc)
    report.checked_at = format_timestamp(at)
    # A certificate given with --cert is trusted as itself: the operator vouches for it.
    trusted = anchors + ([pinned] if pinned is not None else [])
    validator = CertificateValidator(trusted, check_revocation=check_revocation)
    at_check = validator.validate(signer, usage="signing", at=at)
    now_check = validator.validate(signer, usage="signing", at=datetime.now(UTC))
    report.valid_at_checked_time = at_check.ok
    report.valid_now = now_check.ok
    when = "the signing time (envelope Timestamp)" if at_is_signing_time else "the given time"
    if not trusted:
        report.trust = "NOT established"
        report.problems.append(
            "the signer is not trusted: its certificate came from the message itself; "
            "give the sender's certificate with --cert or trust anchors with --ca"
        )
    elif Reason.UNTRUSTED in at_check.reasons:
        report.trust = "NOT established"
    elif pinned is not None and not anchors:
        report.trust = "signer pinned by --cert (no chain check: no --ca given)"
    else:
        report.trust = "chain checked against the given trust anchors"
    # Without any trust anchor UNTRUSTED is already reported above; list the other reasons.
    shown = [
        (reason, detail)
        for reason, detail in _reasons_with_details(at_check.reasons, at_check.details)
        if trusted or reason is not Reason.UNTRUSTED
    ]
    fatal = [item for item in shown if item[0] is not Reason.REVOCATION_UNKNOWN]
    if fatal:
        report.problems.append(
            f"the signer's certificate was NOT acceptable at {when} {report.checked_at}: "
            + "; ".join(detail for _, detail in fatal)
        )
    elif Reason.EXPIRED in now_check.reasons:
        report.notes.append(
            f"the signer's certificate expired on {report.certificate_not_after}: it is expired "
            f"now, but it was valid at {when} {report.checked_at}"
        )
    if Reason.REVOCATION_UNKNOWN in at_check.reasons:
        report.notes.append("revocation status unknown (CRL/OCSP not reachable); not fatal")


def _reasons_with_details(reasons: list[Any], details: list[str]) -> list[tuple[Any, str]]:
    """Pair each reason with the validator's detail text that starts with its message."""
    pairs = []
    for reason in reasons:
        text = next((d for d in details if d.startswith(reason.message)), reason.message)
        pairs.append((reason, text))
    return pairs


def _print_report(report: VerifyReport) -> None:
    lines = []
    if report.message_id:
        lines.append(f"MessageId:     {report.message_id}")
    lines.append(
        f"Signature:     {'valid' if report.signature_valid else 'NOT valid'}"
        + (f" ({report.signature_algorithm})" if report.signature_algorithm else "")
    )
    for ref in report.references:
        state = "matched " if ref["matched"] else "MISMATCH"
        uri = ref["uri"] or '(envelope, URI="")'
        lines.append(f"  {state}  {uri}  {ref['digest_algorithm']}")
    if report.signer:
        lines.append(f"Signer:        {report.signer}, valid until {report.certificate_not_after}")
    if report.checked_at:
        verdict = "valid" if report.valid_at_checked_time else "NOT valid"
        lines.append(f"Certificate:   {verdict} at {report.checked_at}")
    if report.trust:
        lines.append(f"Trust:         {report.trust}")
    lines += [f"Note:          {note}" for note in report.notes]
    lines += [f"Problem:       {problem}" for problem in report.problems]
    lines.append("Result:        VERIFIED" if report.ok else "Result:        NOT VERIFIED")
    typer.echo("\n".join(lines))


@ebxml_app.command("verify")
def verify(
    mailfile: MailFile,
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert",
            help="The sender's signing certificate (PEM or DER). Without it the certificate "
            "inside the message is used, which proves integrity but not who signed.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Check the certificate's validity at this time (ISO 8601, or 'now'); "
            "default: the envelope Timestamp, i.e. the signing time the sender states.",
        ),
    ] = None,
    ca: Annotated[
        list[Path] | None,
        typer.Option(
            "--ca",
            help="A trust anchor (CA certificate, PEM or DER) to check the signer's chain "
            "against; repeat for several.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    no_revocation: Annotated[
        bool,
        typer.Option(
            "--no-revocation", help="Skip the CRL/OCSP revocation check (for offline use)."
        ),
    ] = False,
    refuse_sha1: Annotated[
        bool, typer.Option("--refuse-sha1", help="Treat rsa-sha1/sha1 signatures as invalid.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Verify the signature of a received ebXML mail and print which references matched.

    Exit code 0 only when the envelope is valid, every reference matched, every attachment is
    signed, and the signer's certificate was valid at the signing time (or --at).
    """
    from meldingstjener.ebxml.codes import EbxmlError
    from meldingstjener.ebxml.parse import check_manifest, parse_envelope
    from meldingstjener.formats.xmlparse import XmlError, parse_xml

    at_time = _parse_at(at)
    certificate = _load_cert(cert) if cert is not None else None
    anchors = [_load_cert(path) for path in ca or []]
    message = _read_mail(mailfile, as_json)
    report = VerifyReport()
    try:
        root = parse_xml(message.envelope_xml)
    except XmlError as exc:
        raise _fail(f"the envelope is not readable XML: {exc}", as_json) from None
    signing_time: datetime | None = None
    try:
        envelope = parse_envelope(root)
        report.message_id = envelope.header.message_id
        signing_time = envelope.header.timestamp
        check_manifest(envelope, frozenset(message.attachments))
    except EbxmlError as exc:
        report.problems.append(f"envelope: {exc}")

    signer = _check_signature(report, root, message, certificate, not refuse_sha1)
    if signer is not None:
        check_time = at_time or signing_time
        if check_time is None:
            check_time = datetime.now(UTC)
            report.notes.append("no readable envelope Timestamp: certificate checked for now")
        _check_certificate(
            report,
            signer,
            at=check_time,
            at_is_signing_time=at_time is None and signing_time is not None,
            anchors=anchors,
            pinned=certificate,
            check_revocation=not no_revocation,
        )
    else:
        report.problems.append("no signer certificate: neither --cert nor one in the message")
    report.ok = report.signature_valid and not report.problems
    if as_json:
        typer.echo(json.dumps(report.__dict__, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)
