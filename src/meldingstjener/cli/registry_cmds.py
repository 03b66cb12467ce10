"""Register commands: ``ar`` (address register), ``partners`` (partner agreements), ``cpa``.

``ar import`` and ``ar sync`` fill the local copy of the address register, ``ar search`` and
``ar show`` read it the way an EPJ's recipient field does; ``partners`` keeps what we agreed with
each counterparty; ``cpa show`` reads a CPP/CPA file without storing it. Output is a table for
people or JSON (``--json``) for scripts.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meldingstjener.cli.app import app, closed_at_end, settings_from, store_from
from meldingstjener.cli.helseid_options import (
    AudienceOption,
    ClientIdOption,
    DpopOption,
    KeyFileOption,
    TokenUrlOption,
    helseid_tokens,
)

if TYPE_CHECKING:
    from meldingstjener.registry.agreements import PartnerAgreement
    from meldingstjener.registry.auth import TokenProvider
    from meldingstjener.registry.cppa_model import CollaborationProtocol
    from meldingstjener.registry.parties import CommunicationParty
    from meldingstjener.registry.sync import SyncReport
    from meldingstjener.registry.terms import AgreedMessage, AgreementTerms
    from meldingstjener.store.uow import Store

ar_app = typer.Typer(help="The local copy of the address register (Adresseregisteret).")
partners_app = typer.Typer(help="Partner agreements: what we have agreed with each counterparty.")
cpa_app = typer.Typer(help="CPP/CPA 2.0 documents (collaboration profiles and agreements).")
app.add_typer(ar_app, name="ar", no_args_is_help=True)
app.add_typer(partners_app, name="partners", no_args_is_help=True)
app.add_typer(cpa_app, name="cpa", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _her_id(value: str | None) -> str | None:
    """A HER-id given on the command line, checked and normalised: a mistyped one is a usage
    error (exit 2), not a party or agreement reported missing."""
    from meldingstjener.model.herid import HerId, InvalidHerId

    if value is None:
        return None
    try:
        return str(HerId(value))
    except InvalidHerId as exc:
        raise typer.BadParameter(str(exc)) from None


OurOption = Annotated[
    str | None, typer.Option(help="Our HER-id (default: our organisation).", callback=_her_id)
]


def _store(ctx: typer.Context, *, create: bool = False) -> Store:
    """The store; only the commands that may begin one (``ar import``, ``ar sync``,
    ``partners add``) pass ``create`` (see :func:`meldingstjener.cli.app.store_from`)."""
    return store_from(ctx, create=create)


def _fail(code: str, message: str, exit_code: int = 1) -> typer.Exit:
    """A refusal, on stderr as ``code: message``: every refusal of these commands carries a
    short stable code (kebab-case) a script can match, the words being for people."""
    typer.echo(f"{code}: {message}", err=True)
    return typer.Exit(exit_code)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, bytes):
        return None  # certificate bytes are not shown; the thumbprint identifies them
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return value


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(_jsonable(value), ensure_ascii=False, indent=2))


def party_summary(party: CommunicationParty) -> dict[str, Any]:
    """What ``ar show``/``ar search --json`` print: addressing data, never certificate bytes.
    Not the register's IsValidCommunicationParty: shown as "valid" it was read as "may be sent
    to", which it does not mean (it is false for every organisation; ``party_type`` says it)."""
    data = asdict(party)
    del data["valid"]
    for role in ("signing_certificate", "encryption_certificate"):
        certificate = getattr(party, role)
        data[role] = (
            None
            if certificate is None
            else {
                "thumbprint": certificate.thumbprint,
                "subject": certificate.subject,
                "not_before": certificate.not_before,
                "not_after": certificate.not_after,
                "has_der": certificate.der is not None,
            }
        )
    return data


# --- ar ------------------------------------------------------------------------------------


@ar_app.command("import")
def ar_import(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Register files: REST JSON (one party or an export array) or SOAP responses.",
            exists=True,
            dir_okay=False,
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    """Import address-register records into the local copy (upsert; nothing is deleted)."""
    from meldingstjener.registry.store import import_files

    store = _store(ctx, create=True)
    with store.unit_of_work() as uow:
        report = import_files(uow, files)
        uow.commit()
    if as_json:
        _echo_json(
            {
                "imported": report.imported,
                "refused": report.refused,
                "refused_parties": report.refused_parties,
            }
        )
    else:
        for path, count in report.imported.items():
            typer.echo(f"imported {count} part{'y' if count == 1 else 'ies'} from {path}")
        for path, reason in report.refused.items():
            typer.echo(f"refused {path}: {reason}", err=True)
        for path, parties in report.refused_parties.items():
            for her_id, reason in parties.items():
                typer.echo(f"refused HER-id {her_id} in {path}: {reason}", err=True)
    if report.refused or report.refused_parties:
        raise typer.Exit(1)


@ar_app.command("sync")
def ar_sync(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="MELDINGSTJENER_AR_URL",
            help="Base URL of the CommunicationParty API (default: [address_register] url).",
        ),
    ] = None,
    token_url: TokenUrlOption = None,
    client_id: ClientIdOption = None,
    scope: Annotated[
        str | None,
        typer.Option(
            envvar="MELDINGSTJENER_HELSEID_SCOPE",
            help="Scope to ask HelseID for (default: [address_register] scope).",
        ),
    ] = None,
    key_file: KeyFileOption = None,
    audience: AudienceOption = None,
    dpop: DpopOption = True,
    full: Annotated[
        bool, typer.Option("--full", help="Read the whole export again, not only new events.")
    ] = False,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Parties committed per transaction (resume granularity).")
    ] = 50,
) -> None:
    """Sync the local copy from the register: the export first, then events; resumable.

    HelseID: with --key-file the client signs in with private_key_jwt and DPoP-bound tokens;
    else with MELDINGSTJENER_HELSEID_CLIENT_SECRET. Without --token-url the configuration's
    [helseid] client is used, and without that a fixed token from MELDINGSTJENER_AR_TOKEN.
    (serve syncs by itself when [address_register] url is set.)"""
    from meldingstjener.bootstrap import register_tokens
    from meldingstjener.config import ConfigError
    from meldingstjener.engine.register_sync import SyncBusy, sync_turn
    from meldingstjener.registry.ar_client import ArClient
    from meldingstjener.registry.sync import SyncInterrupted, sync_register

    settings = settings_from(ctx)
    url = url or settings.address_register.url
    if url is None:
        raise _fail(
            "no-register-url",
            "give --url (or MELDINGSTJENER_AR_URL), or set [address_register] url",
            2,
        )
    tokens: TokenProvider
    if token_url is None and client_id is None and key_file is None:
        try:
            # --no-dpop and --audience apply to the configured client too
            tokens = register_tokens(
                settings, scope=scope, audience=audience, dpop=None if dpop else False
            )
        except ConfigError as exc:
            raise _fail("config-error", str(exc), 2) from None
    else:
        tokens = helseid_tokens(
            token_url=token_url,
            client_id=client_id,
            scope=scope or settings.address_register.scope,
            key_file=key_file,
            audience=audience,
            dpop=dpop,
            static_token_variable="MELDINGSTJENER_AR_TOKEN",
        )
    store = _store(ctx, create=True)
    client = ArClient(
        url, tokens, max_answer_bytes=settings.address_register.max_answer_mb * 1024 * 1024
    )
    holder = f"ar-sync:{socket.gethostname()}:{os.getpid()}"
    try:
        every = timedelta(minutes=settings.address_register.sync_minutes)
        with sync_turn(store, holder, every=every):
            report = sync_register(store, client, full=full, chunk_size=chunk_size)
    except SyncBusy as exc:
        raise _fail(exc.code, f"not synced: {exc}") from None
    except SyncInterrupted as exc:
        _note_refused(store, exc.report)
        raise _fail(exc.code, f"sync interrupted: {exc}") from None
    finally:
        client.close()
    _note_refused(store, report)
    typer.echo(
        f"sync ({report.mode}) wrote {report.parties_written} parties, applied "
        f"{report.events_applied} events; last event {report.last_sequence_number}"
        + (
            f"; {len(report.not_found)} no longer in the register (kept, inactive)"
            if report.not_found
            else ""
        )
        + (f"; {len(report.refused)} records refused" if report.refused else "")
    )


@ar_app.command("status")
def ar_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Where the register sync stands: when it last caught up, the event reached, a whole
    export under way and how far, the parties refused, and the sync job's next turn."""
    from meldingstjener.engine.register_sync import job_state
    from meldingstjener.registry.sync import sync_progress

    store = _store(ctx)
    with store.unit_of_work() as uow:
        status = {**sync_progress(uow), "job": job_state(uow)}
    if as_json:
        _echo_json(status)
        return
    job = status["job"]
    refused = status["refused"]
    assert isinstance(refused, dict)
    lines = [
        ("last synced", status["last_synced_at"] or "never"),
        ("last event", status["last_sequence_number"] or "none yet"),
        (
            "whole export",
            f"in progress (of event {status['export_sequence_number']}), done through "
            f"HER-id {status['export_done_through_her_id'] or '(none yet)'}"
            if status["export_in_progress"]
            else "not in progress",
        ),
        ("refused parties", len(refused)),
    ]
    if isinstance(job, dict):
        lines.append(("sync job next due", _jsonable(job["next_due_at"])))
        failures = job["failures"]
        lines.append(
            (
                "sync job failures",
                f"{failures} in a row since {job['failing_since']}" if failures else 0,
            )
        )
        if job["held_by"]:
            lines.append(("sync job held by", job["held_by"]))
    else:
        lines.append(("sync job", "not scheduled (no serve with [address_register] url)"))
    for key, value in lines:
        typer.echo(f"{key:<20} {value}")
    for her_id, reason in sorted(refused.items()):
        typer.echo(f"  refused {her_id}: {reason}")


def _note_refused(store: Store, report: SyncReport) -> None:
    """The parties whose records the sync refused, on stderr and in the alert the servers raise."""
    from meldingstjener.engine.register_sync import note_refused_parties
    from meldingstjener.store.types import utcnow

    for her_id, reason in report.refused.items():
        typer.echo(f"refused HER-id {her_id}: {reason} (its stored copy is kept)", err=True)
    with store.unit_of_work() as uow:
        note_refused_parties(uow, report, at=utcnow())
        uow.commit()


@ar_app.command("search")
def ar_search(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="HER-id, organisation number or name words.")],
    party_type: Annotated[
        str | None,
        typer.Option("--type", help="Only parties of this type: organisation, service, person."),
    ] = None,
    service_type: Annotated[
        str | None, typer.Option(help="Only services of this service code or name.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Most hits to show.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Search the local register as a recipient field does (typos and æøå forgiven)."""
    from meldingstjener.registry.parties import PartyType
    from meldingstjener.registry.store import load_index

    if party_type is not None and party_type not in {t.value for t in PartyType}:
        raise typer.BadParameter(
            f"{party_type!r} is not a party type (organisation, service, person)",
            param_hint="--type",
        )
    store = _store(ctx)
    with store.unit_of_work() as uow:
        index = load_index(uow)
    hits = index.search(text, party_type=party_type, service_type=service_type, limit=limit)
    if as_json:
        _echo_json(
            [{"score": h.score, "matched": h.matched, **party_summary(h.party)} for h in hits]
        )
        return
    if not hits:
        typer.echo("no parties match")
        return
    for hit in hits:
        party = hit.party
        flag = "" if party.active else "  [inactive]"
        typer.echo(f"{party.her_id:>9}  {party.party_type.value:<12}  {party.label}{flag}")


@ar_app.command("show")
def ar_show(
    ctx: typer.Context,
    her_id: Annotated[str, typer.Argument(help="HER-id of the party.", callback=_her_id)],
    as_json: JsonOption = False,
) -> None:
    """Show one party from the local register: addresses, queues, certificates, validity."""
    from meldingstjener.registry.store import party_from_row

    store = _store(ctx)
    with store.unit_of_work() as uow:
        row = uow.parties.get(her_id)
        party = party_from_row(row) if row is not None else None
        previous = _previous_signing(row) if row is not None else None
    if party is None:
        raise _fail(
            "party-unknown",
            f"HER-id {her_id} is not in the local register; import or sync it first",
        )
    summary = party_summary(party)
    if previous is not None:
        summary["previous_signing_certificate"] = previous
    if as_json:
        _echo_json(summary)
        return
    for key, value in _jsonable(summary).items():
        if value not in (None, [], {}, ""):
            typer.echo(f"{key:<28} {json.dumps(value, ensure_ascii=False)}")


def _previous_signing(row: Any) -> dict[str, Any] | None:
    """The signing certificate the current one replaced, as ``ar show`` prints it."""
    from meldingstjener.registry.certificates import certificate_from_der

    if not row.previous_signing_certificate:
        return None
    certificate = certificate_from_der(base64.b64decode(row.previous_signing_certificate))
    return {
        "thumbprint": certificate.thumbprint,
        "not_after": certificate.not_after,
        "replaced_at": row.signing_cert_replaced_at,
    }


@ar_app.command("forget-previous-certificate")
def ar_forget_previous_certificate(
    ctx: typer.Context,
    her_id: Annotated[str, typer.Argument(help="HER-id of the party.", callback=_her_id)],
) -> None:
    """Stop accepting a party's replaced signing certificate now, before its grace period
    (security.previous_signing_certificate_days) ends: for an old key that must not be trusted
    any more and that no revocation list names. Running servers see it within
    database.partner_cache_seconds."""
    store = _store(ctx)
    with store.unit_of_work() as uow:
        row = uow.parties.get(her_id)
        if row is None:
            raise _fail("party-unknown", f"HER-id {her_id} is not in the local register")
        if not row.previous_signing_certificate:
            typer.echo(f"{her_id} has no previous signing certificate; nothing to do")
            return
        row.previous_signing_certificate = None
        row.signing_cert_replaced_at = None
        uow.commit()
    typer.echo(f"{her_id}: its previous signing certificate is no longer accepted")


# --- partners --------------------------------------------------------------------------------


def _our_her_id(ctx: typer.Context, given: str | None) -> str:
    if given:
        return given
    identity = settings_from(ctx).identity
    if identity.her_ids:
        return identity.her_ids[0]
    raise _fail("no-our-her-id", "give --our (our HER-id) or set identity.organisation_her_id", 2)


def _parse_message_types(values: list[str] | None) -> dict[str, tuple[str, ...]]:
    """``DIALOG_FORESPORSEL=1.0,1.1`` -> {"DIALOG_FORESPORSEL": ("1.1", "1.0")}."""
    from meldingstjener.registry.versions import sort_versions

    found: dict[str, tuple[str, ...]] = {}
    for value in values or []:
        name, sep, versions = value.partition("=")
        if not sep or not name.strip() or not versions.strip():
            raise typer.BadParameter(
                f"{value!r}: write TYPE=VERSION[,VERSION...], e.g. DIALOG_NOTAT=1.0,1.1",
                param_hint="--message-type",
            )
        found[name.strip()] = sort_versions(v.strip() for v in versions.split(","))
    return found


def _parse_contact(value: str) -> Any:
    from meldingstjener.registry.agreements import Contact

    parts = [p.strip() or None for p in value.split(";")] + [None] * 4
    if not parts[0]:
        raise typer.BadParameter(
            "write NAME;ROLE;EMAIL;PHONE (only the name is required)", param_hint="--contact"
        )
    return Contact(name=str(parts[0]), role=parts[1], email=parts[2], phone=parts[3])


def agreement_summary(agreement: PartnerAgreement) -> dict[str, Any]:
    data = asdict(agreement)
    data["message_types"] = {k: list(v) for k, v in agreement.message_types.items()}
    return data


def _print_agreement(agreement: PartnerAgreement) -> None:
    for key, value in _jsonable(agreement_summary(agreement)).items():
        if value not in (None, [], {}, ""):
            typer.echo(f"{key:<24} {json.dumps(value, ensure_ascii=False)}")


@partners_app.command("list")
def partners_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every partner agreement."""
    store = _store(ctx)  # first: a configuration error is said before the imports
    from meldingstjener.registry.store import agreement_from_row

    with store.unit_of_work() as uow:
        agreements = [agreement_from_row(row) for row in uow.agreements.all()]
    if as_json:
        _echo_json([agreement_summary(a) for a in agreements])
        return
    if not agreements:
        typer.echo("no partner agreements")
    for a in agreements:
        types = ", ".join(a.message_types) or "any message type"
        typer.echo(
            f"{a.counterparty_her_id:>9}  {a.state.value:<17}  {a.channel or '-':<5}  "
            f"{a.source.value:<6}  {types}"
        )


@partners_app.command("show")
def partners_show(
    ctx: typer.Context,
    her_id: Annotated[str, typer.Argument(help="HER-id of the counterparty.", callback=_her_id)],
    our: OurOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the agreement with one counterparty."""
    from meldingstjener.registry.store import agreement_from_row

    store = _store(ctx)
    ours = _our_her_id(ctx, our)
    with store.unit_of_work() as uow:
        row = uow.agreements.for_pair(ours, her_id)
        agreement = agreement_from_row(row) if row is not None else None
    if agreement is None:
        raise _fail("no-agreement", f"no partner agreement between {ours} and {her_id}")
    if as_json:
        _echo_json(agreement_summary(agreement))
    else:
        _print_agreement(agreement)


@partners_app.command("add")
def partners_add(
    ctx: typer.Context,
    her_id: Annotated[str, typer.Argument(help="HER-id of the counterparty.", callback=_her_id)],
    our: OurOption = None,
    cpa: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Take the terms from this CPA file."),
    ] = None,
    cpp: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Take the terms from the partner's CPP."),
    ] = None,
    message_type: Annotated[
        list[str] | None,
        typer.Option(help="Agreed TYPE=VERSION[,VERSION]; repeat for several types."),
    ] = None,
    channel: Annotated[str | None, typer.Option(help="smtp, http or amqp.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="E-mail address, URL or queue.")] = None,
    contact: Annotated[
        list[str] | None, typer.Option(help="NAME;ROLE;EMAIL;PHONE of a contact at the partner.")
    ] = None,
    cppa_url: Annotated[
        str | None,
        typer.Option(
            envvar="MELDINGSTJENER_CPPA_URL",
            help="Without --cpa/--cpp: ask NHN's CPPA service for our CPA with the partner, "
            "then its CPP, before the local address register.",
        ),
    ] = None,
    token_url: TokenUrlOption = None,
    client_id: ClientIdOption = None,
    cppa_scope: Annotated[
        str | None,
        typer.Option(
            envvar="MELDINGSTJENER_HELSEID_CPPA_SCOPE",
            help="Scope to ask HelseID for (default: nhn:cppa/access-with-dpop with DPoP, "
            "else nhn:cppa/access).",
        ),
    ] = None,
    key_file: KeyFileOption = None,
    audience: AudienceOption = None,
    dpop: DpopOption = True,
    as_json: JsonOption = False,
) -> None:
    """Add a partner agreement (state: ordered). Terms come from a CPA, a CPP, the local
    address register or the options, in that order; the source used is recorded.

    With --cppa-url the CPA and CPP are asked for at NHN's CPPA service (HelseID as for
    'ar sync'; without --token-url a fixed token from MELDINGSTJENER_CPPA_TOKEN)."""
    from meldingstjener.model.herid import HerId, InvalidHerId
    from meldingstjener.registry.agreements import AgreementState, PartnerAgreement
    from meldingstjener.registry.store import party_from_row, save_agreement
    from meldingstjener.registry.terms import TermsSource

    try:
        her_id = str(HerId(her_id))
    except InvalidHerId as exc:
        raise typer.BadParameter(str(exc), param_hint="HER_ID") from None
    ours = _our_her_id(ctx, our)
    contacts = tuple(_parse_contact(c) for c in contact or [])
    types = _parse_message_types(message_type)
    tokens = _cppa_tokens(
        cppa_url, cpa, cpp, token_url, client_id, cppa_scope, key_file, audience, dpop
    )
    store = _store(ctx, create=True)
    # A short look first: no transaction is held open while the CPPA service is asked.
    with store.unit_of_work() as uow:
        if uow.agreements.for_pair(ours, her_id) is not None:
            raise _fail(
                "agreement-exists",
                f"an agreement with {her_id} exists; change it with 'partners set' "
                "(--cpa, --cpp or --cppa-url to take new terms)",
            )
        row = uow.parties.get(her_id)
        local = party_from_row(row) if row is not None else None
    terms, document = _take_terms(ours, her_id, local, cpa, cpp, cppa_url, tokens)
    _note_certificates(ctx, document, ours, her_id, local)
    if terms is not None:
        agreement = PartnerAgreement.from_terms(terms, our_her_id=ours, contacts=contacts)
    else:
        agreement = PartnerAgreement(
            our_her_id=ours,
            counterparty_her_id=her_id,
            state=AgreementState.ORDERED,
            source=TermsSource.MANUAL,
            contacts=contacts,
            any_message_type=not types,
        )
    agreement = _with_overrides(agreement, types, channel, endpoint)
    with store.unit_of_work() as uow:
        if uow.agreements.for_pair(ours, her_id) is not None:
            raise _fail(
                "agreement-exists",
                f"an agreement with {her_id} was added meanwhile; see 'partners show'",
            )
        save_agreement(uow, agreement)
        uow.commit()
    if as_json:
        _echo_json(agreement_summary(agreement))
    else:
        typer.echo(f"added agreement with {her_id} (source {agreement.source.value}, ordered)")


def _cppa_tokens(
    cppa_url: str | None,
    cpa: Path | None,
    cpp: Path | None,
    token_url: str | None,
    client_id: str | None,
    cppa_scope: str | None,
    key_file: Path | None,
    audience: str | None,
    dpop: bool,
) -> TokenProvider | None:
    """HelseID tokens for NHN's CPPA service, when the terms are to be asked for there."""
    if cppa_url is None or cpa is not None or cpp is not None:
        return None
    from meldingstjener.registry.cppa_client import CPPA_SCOPE_BEARER, CPPA_SCOPE_DPOP

    bound = key_file is not None and dpop  # a client secret gets no DPoP-bound token
    return helseid_tokens(
        token_url=token_url,
        client_id=client_id,
        scope=cppa_scope or (CPPA_SCOPE_DPOP if bound else CPPA_SCOPE_BEARER),
        key_file=key_file,
        audience=audience,
        dpop=dpop,
        static_token_variable="MELDINGSTJENER_CPPA_TOKEN",
    )


def _take_terms(
    ours: str,
    her_id: str,
    local: CommunicationParty | None,
    cpa: Path | None,
    cpp: Path | None,
    cppa_url: str | None,
    tokens: TokenProvider | None,
) -> tuple[AgreementTerms | None, CollaborationProtocol | None]:
    """The terms with ``her_id`` and the CPA or CPP they came from: from the CPA file, else the
    CPP file, else NHN's CPPA service, else the local register entry ``local`` (None: no source,
    the options' terms). The one path ``partners add`` and ``partners set`` take terms by: a
    document not in force, one that cannot be read or one about another party stops the
    command."""
    from meldingstjener.registry.agreements import NotAgreed
    from meldingstjener.registry.cpa import agreement_for, parse_cpa, parse_cpp, terms_from_cpp
    from meldingstjener.registry.errors import RegistryError
    from meldingstjener.registry.terms import terms_from_ar

    terms: AgreementTerms | None
    document: CollaborationProtocol | None = None
    try:
        if cpa is not None:
            document = _in_force(parse_cpa(cpa.read_bytes()))
            terms = agreement_for(document, ours)
        elif cpp is not None:
            document = _in_force(parse_cpp(cpp.read_bytes()))
            terms = terms_from_cpp(document, ours)
        elif cppa_url is not None and tokens is not None:
            terms, document = _terms_from_cppa(cppa_url, tokens, ours, her_id, local)
        else:
            terms = terms_from_ar(local, ours) if local is not None else None
    except (RegistryError, NotAgreed) as exc:
        code = getattr(exc, "code", "registry-error")
        raise _fail(code, f"cannot take terms: {exc}") from None
    if terms is not None and terms.counterparty_her_id != her_id:
        raise _fail(
            "wrong-counterparty",
            f"the document is about HER-id {terms.counterparty_her_id}, not {her_id}",
        )
    return terms, document


def _note_certificates(
    ctx: typer.Context,
    document: CollaborationProtocol | None,
    ours: str | None,
    her_id: str | None,
    local: CommunicationParty | None,
) -> None:
    """A ``note:`` per certificate a CPA/CPP names that is not the one in use: the partner's
    against its local register entry (which the engine encrypts to and verifies by), ours
    against our own keys. Told, not refused: which side is stale is for the operator to find
    out (a register not yet synced, a CPA from before a rollover)."""
    from meldingstjener.registry.certificates import register_thumbprint

    if document is None:
        return
    sides: list[tuple[str, Any, dict[str, str | None]]] = []
    theirs = document.party(her_id) if her_id else None
    if theirs is not None and local is not None:
        in_use = {
            role: getattr(getattr(local, f"{role}_certificate"), "thumbprint", None)
            for role in ("signing", "encryption")
        }
        sides.append((f"HER-id {her_id}'s", theirs, in_use))
    own = document.party(ours) if ours else None
    keys = _own_keys(ctx) if own is not None else None
    if own is not None and keys is not None:
        from cryptography.hazmat.primitives.serialization import Encoding

        in_use = {
            role: register_thumbprint(
                getattr(keys, f"{role}_certificate").public_bytes(Encoding.DER)
            )
            for role in ("signing", "encryption")
        }
        sides.append(("our", own, in_use))
    kind = document.kind.upper()
    for whose, party, in_use in sides:
        where = "the local register's" if whose != "our" else "our own key's"
        for role, thumbprint in in_use.items():
            named = getattr(party, f"{role}_certificate")
            if named is None or named.thumbprint is None or thumbprint is None:
                continue
            if named.thumbprint.upper() != thumbprint.upper():
                typer.echo(
                    f"note: {kind} {document.protocol_id} names {whose} {role} certificate "
                    f"{named.thumbprint}, {where} is {thumbprint}",
                    err=True,
                )


def _own_keys(ctx: typer.Context) -> Any:
    """Our keys if they are configured or the development keys exist; None otherwise (the
    comparison is then left out: it must not make keys, nor stop the command)."""
    from meldingstjener.bootstrap import load_own_keys
    from meldingstjener.config import ConfigError
    from meldingstjener.store.opening import StoreUnavailable

    settings = settings_from(ctx)
    keys = settings.keys
    if not (keys.signing_pkcs12 or keys.signing_cert or settings.dev_pki_dir.exists()):
        return None
    try:
        return load_own_keys(settings)
    except (ConfigError, StoreUnavailable, OSError):
        return None


def _in_force(document: CollaborationProtocol) -> CollaborationProtocol:
    """``document`` if it is in force now; else the command stops: nothing could be sent under
    an agreement that has ended, and one that has not begun is added when it begins."""
    now = datetime.now(UTC)
    kind, name = document.kind.upper(), document.protocol_id or "without an id"
    if document.end is not None and now > document.end:
        raise _fail(
            f"{document.kind}-ended",
            f"{kind} {name} ended {document.end.isoformat()}; nothing could be sent under it. "
            f"Ask the partner (or NHN's CPPA service) for the {kind} that replaced it",
        )
    if document.start is not None and now < document.start:
        raise _fail(
            f"{document.kind}-not-yet-in-force",
            f"{kind} {name} is in force only from {document.start.isoformat()}; add it then",
        )
    return document


def _terms_from_cppa(
    url: str, tokens: TokenProvider, ours: str, her_id: str, local: CommunicationParty | None
) -> tuple[AgreementTerms | None, CollaborationProtocol | None]:
    """Terms by the CPPA service's CPA with the partner, else the partner's CPP, else the local
    register entry ``local`` (None if there is none: the terms are then the options'), with the
    CPA or CPP they came from. A
    service that fails, refuses us or answers about another party stops the command instead:
    an agreement is not made on a guess. Why a better source was passed over goes to stderr."""
    from meldingstjener.registry.agreements import NotAgreed, resolve_terms
    from meldingstjener.registry.cppa_client import CppaClient
    from meldingstjener.registry.errors import RegistryError
    from meldingstjener.registry.terms import TermsSource

    client = CppaClient(url, tokens)
    try:
        cpa = client.agreement_between(ours, her_id)
        for party in (her_id, ours):
            if cpa is not None and cpa.party(party) is None:
                raise RegistryError(
                    f"the CPPA service's CPA {cpa.protocol_id} does not name HER-id {party}",
                    code="cppa-wrong-party",
                )
        cpp = client.profile(her_id) if cpa is None else None
        if cpp is not None and cpp.party(her_id) is None:
            raise RegistryError(
                f"the CPPA service's CPP {cpp.protocol_id} is not the profile of HER-id {her_id}",
                code="cppa-wrong-party",
            )
    finally:
        client.close()
    try:
        # a CPA not in force is passed over (with a note), as a missing one is
        terms, _ = resolve_terms(cpa, cpp, local, our_her_id=ours, now=datetime.now(UTC))
    except NotAgreed as exc:
        typer.echo(f"note: {exc}", err=True)
        return None, None
    for note in terms.notes:
        typer.echo(f"note: {note}", err=True)
    return terms, {TermsSource.CPA: cpa, TermsSource.CPP: cpp}.get(terms.source)


def _with_overrides(
    agreement: PartnerAgreement,
    types: dict[str, tuple[str, ...]],
    channel: str | None,
    endpoint: str | None,
) -> PartnerAgreement:
    from dataclasses import replace

    from meldingstjener.registry.terms import TermsSource

    if channel is not None and channel not in {"smtp", "http", "amqp"}:
        raise typer.BadParameter(f"{channel!r} is not smtp, http or amqp", param_hint="--channel")
    changes: dict[str, Any] = {}
    if types:
        changes["message_types"] = types
        changes["any_message_type"] = False
        if agreement.bindings:
            # A CPA's or CPP's agreement sends by its bindings (a document's namespace picks
            # one), not by message_types: narrowing is done on the bindings, or it is shown but
            # not kept. A type no binding has cannot be added here: it needs a new CPA.
            changes["bindings"] = _bindings_of(agreement, types)
    if channel is not None:
        changes["channel"] = channel
    if endpoint is not None:
        changes["endpoint"] = endpoint
    if (channel is not None or endpoint is not None) and agreement.bindings:
        # the operator's channel is every message's now, not only the unbound ones' (of the
        # bindings kept: a narrowing in the same call stays)
        kept = changes.get("bindings", agreement.bindings)
        changes["bindings"] = tuple(replace(b, channel=None) for b in kept)
    if (channel is not None or endpoint is not None) and agreement.source is TermsSource.AR:
        # the engine follows the register's address for register terms; one the operator
        # names is the agreement's own from now on
        changes["source"] = TermsSource.MANUAL
    return replace(agreement, **changes) if changes else agreement


def _bindings_of(
    agreement: PartnerAgreement, types: dict[str, tuple[str, ...]]
) -> tuple[AgreedMessage, ...]:
    """The agreement's bindings of the named ``types`` in one of their versions (a binding
    naming no version takes any); exit 2 (``type-not-in-cpa``) for a type none has."""
    from meldingstjener.registry.versions import normalise_version

    kept: list[AgreedMessage] = []
    for name, versions in types.items():
        wanted = {normalise_version(v) for v in versions}
        found = [
            b
            for b in agreement.bindings
            if b.message_type.casefold() == name.casefold()
            and (not b.versions or wanted & {normalise_version(v) for v in b.versions})
        ]
        if not found:
            agreed = sorted(
                {f"{b.message_type}={','.join(b.versions)}" for b in agreement.bindings}
            )
            raise _fail(
                "type-not-in-cpa",
                f"{name} {', '.join(versions)} is in no binding of the agreement with HER-id "
                f"{agreement.counterparty_her_id} (source {agreement.source.value}, "
                f"{agreement.cpa_id or 'no CPA id'}; it has {', '.join(agreed)}): a new type "
                "needs a new CPA from the partner, applied with 'partners set --cpa'",
                2,
            )
        kept.extend(b for b in found if b not in kept)
    return tuple(kept)


@partners_app.command("set")
def partners_set(
    ctx: typer.Context,
    her_id: Annotated[str, typer.Argument(help="HER-id of the counterparty.", callback=_her_id)],
    our: OurOption = None,
    state: Annotated[
        str | None,
        typer.Option(
            help="New state: ordered, testing, verified-inactive, active, suspended, ended."
        ),
    ] = None,
    force: Annotated[
        str | None,
        typer.Option(
            help="Leave testing without a verified test exchange, or set an ended agreement "
            "ordered again; REASON, in the operator's words, is kept in the message log.",
            metavar="REASON",
        ),
    ] = None,
    message_type: Annotated[
        list[str] | None,
        typer.Option(help="Replace the agreed types: TYPE=VERSION[,VERSION]; repeatable."),
    ] = None,
    any_message_type: Annotated[
        bool, typer.Option("--any-message-type", help="Allow every message type.")
    ] = False,
    channel: Annotated[str | None, typer.Option(help="smtp, http or amqp.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="E-mail address, URL or queue.")] = None,
    contact: Annotated[
        list[str] | None, typer.Option(help="Replace contacts: NAME;ROLE;EMAIL;PHONE; repeatable.")
    ] = None,
    activation_date: Annotated[
        str | None, typer.Option(help="Date the agreement goes live (YYYY-MM-DD).")
    ] = None,
    cpa: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Take the terms anew from this CPA (a renewed one)."
        ),
    ] = None,
    cpp: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="Take the terms anew from the partner's CPP."
        ),
    ] = None,
    cppa_url: Annotated[
        str | None,
        typer.Option(help="Take the terms anew from NHN's CPPA service (as 'partners add')."),
    ] = None,
    token_url: TokenUrlOption = None,
    client_id: ClientIdOption = None,
    cppa_scope: Annotated[
        str | None,
        typer.Option(envvar="MELDINGSTJENER_HELSEID_CPPA_SCOPE", help="Scope to ask HelseID for."),
    ] = None,
    key_file: KeyFileOption = None,
    audience: AudienceOption = None,
    dpop: DpopOption = True,
    as_json: JsonOption = False,
) -> None:
    """Change an agreement: its state (following the onboarding routine), types or contacts;
    with --cpa, --cpp or --cppa-url its terms anew (a renewed CPA, a changed CPP), taken as
    'partners add' takes them, its state, contacts and activation date kept."""
    from dataclasses import replace

    from meldingstjener.engine.certificates import judge_agreement_end
    from meldingstjener.registry.agreements import (
        AgreementState,
        NotAgreed,
        PartnerAgreement,
        check_state_change,
        log_state_change,
        verified_test_exchange,
    )
    from meldingstjener.registry.store import agreement_from_row, party_from_row, save_agreement
    from meldingstjener.registry.terms import TermsSource
    from meldingstjener.store.types import utcnow

    ours = _our_her_id(ctx, our)
    store = _store(ctx)
    renewing = cpa is not None or cpp is not None or cppa_url is not None
    terms: AgreementTerms | None = None
    if renewing:
        # the terms first, with no transaction open while the CPPA service is asked
        with store.unit_of_work() as uow:
            party = uow.parties.get(her_id)
            local = party_from_row(party) if party is not None else None
        tokens = _cppa_tokens(
            cppa_url, cpa, cpp, token_url, client_id, cppa_scope, key_file, audience, dpop
        )
        terms, document = _take_terms(ours, her_id, local, cpa, cpp, cppa_url, tokens)
        if terms is None:
            raise _fail(
                "no-agreement-source", f"no CPA, CPP or register entry gives terms with {her_id}"
            )
        _note_certificates(ctx, document, ours, her_id, local)
    with store.unit_of_work() as uow:
        row = uow.agreements.for_pair(ours, her_id)
        if row is None:
            raise _fail(
                "no-agreement", f"no partner agreement between {ours} and {her_id}; add it first"
            )
        agreement = agreement_from_row(row)
        before = agreement
        if terms is not None:
            agreement = PartnerAgreement.from_terms(
                terms,
                our_her_id=ours,
                state=agreement.state,
                contacts=agreement.contacts,
                activation_date=agreement.activation_date,
            )
        if state is not None:
            try:
                new_state = AgreementState(state)
            except ValueError:
                raise typer.BadParameter(
                    f"{state!r} is not a state", param_hint="--state"
                ) from None
            # leaving testing asks for a test message that got its Acknowledgment and a
            # positive AppRec, leaving ended the operator's words (--force), kept in the log
            evidence = verified_test_exchange(uow, ours, her_id)
            try:
                changed = check_state_change(
                    agreement.state, new_state, verified_test=evidence, forced=force
                )
            except NotAgreed as exc:
                reopen = (
                    f"; an agreement ended by mistake starts the routine again with "
                    f"'partners set {her_id} --state ordered --force REASON'"
                    if agreement.state is AgreementState.ENDED
                    and new_state is not AgreementState.ORDERED
                    else ""
                )
                raise _fail(exc.code, f"{exc}{reopen}") from None
            log_state_change(
                uow,
                ours,
                her_id,
                agreement.state,
                changed,
                actor="cli:partners",
                verified_test=evidence,
                forced=force,
            )
            agreement = replace(agreement, state=changed)
        agreement = _with_overrides(
            agreement, _parse_message_types(message_type), channel, endpoint
        )
        if any_message_type:
            agreement = replace(agreement, message_types={}, any_message_type=True)
        if contact is not None:
            agreement = replace(agreement, contacts=tuple(_parse_contact(c) for c in contact))
        if activation_date is not None:
            try:
                agreement = replace(agreement, activation_date=date.fromisoformat(activation_date))
            except ValueError:
                raise typer.BadParameter("use YYYY-MM-DD", param_hint="--activation-date") from None
        saved = save_agreement(uow, agreement)
        if terms is not None:
            judge_agreement_end(uow, saved, utcnow())  # a renewed CPA's cpa-expiring resolved
        uow.commit()
    if terms is not None:
        for line in _terms_changes(before, agreement):
            typer.echo(line)
    if agreement.source is TermsSource.CONFIG and (channel is not None or endpoint is not None):
        # the file is the agreement's terms: each start writes them again
        typer.echo(
            f"note: {her_id} is one of [[partners]] in the configuration; the next start "
            "(send, serve) takes its channel and endpoint from there again: change them there",
            err=True,
        )
    if as_json:
        _echo_json(agreement_summary(agreement))
    else:
        typer.echo(f"agreement with {her_id} is {agreement.state.value}")


def _terms_changes(before: PartnerAgreement, after: PartnerAgreement) -> list[str]:
    """What taking new terms changed: CPA id, end, source, channel, endpoint, bindings added
    and gone, and each setting made by hand that the new terms replace (``--any-message-type``,
    a ``--message-type`` narrowing, whose bindings come back as added, a ``--channel`` or
    ``--endpoint`` for every binding): the new terms rule, and the operator is told so."""

    def named(agreement: PartnerAgreement) -> set[str]:
        return {
            f"{b.service}/{b.message_type} {','.join(b.versions)}".rstrip()
            for b in agreement.bindings
        }

    lines = [
        f"{label}: {_jsonable(getattr(before, field))} -> {_jsonable(getattr(after, field))}"
        for label, field in (
            ("CPA id", "cpa_id"),
            ("valid to", "valid_to"),
            ("source", "source"),
            ("channel", "channel"),
            ("endpoint", "endpoint"),
        )
        if getattr(before, field) != getattr(after, field)
    ]
    if before.any_message_type and not after.any_message_type:
        lines.append("any message type: no longer (the new terms' bindings decide)")
    own = [b for b in after.bindings if b.channel is not None]
    if before.bindings and all(b.channel is None for b in before.bindings) and own:
        # an operator's --channel/--endpoint went for every binding (see _with_overrides)
        lines.append(
            "binding channels: each binding's own again, no longer the agreement's channel "
            "for every binding"
        )
    old, new = named(before), named(after)
    lines += [f"binding added: {b}" for b in sorted(new - old)]
    lines += [f"binding gone: {b}" for b in sorted(old - new)]
    return lines or ["the terms are the same as before"]


# --- cpa ---------------------------------------------------------------------------------------


@cpa_app.command("show")
def cpa_show(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A CPA or CPP (XML).", exists=True, dir_okay=False)],
    our: Annotated[
        str | None, typer.Option(help="Our HER-id: also show the terms seen from our side.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show a CPP/CPA: parties, validity, message types and versions, channels."""
    from meldingstjener.registry.cpa import agreement_for, parse_cppa, terms_from_cpp
    from meldingstjener.registry.errors import RegistryError

    try:
        document = parse_cppa(file.read_bytes())
        terms = None
        if our is not None:
            terms = (
                agreement_for(document, our)
                if document.kind == "cpa"
                else terms_from_cpp(document, our)
            )
    except RegistryError as exc:
        raise _fail(exc.code, f"{file}: {exc}") from None
    summary: dict[str, Any] = {
        "kind": document.kind,
        "id": document.protocol_id,
        "status": document.status,
        "start": document.start,
        "end": document.end,
        "parties": [
            {
                "her_id": p.her_id,
                "name": p.name,
                "can_send": _actions(p.can_send),
                "can_receive": _actions(p.can_receive),
            }
            for p in document.parties
        ],
    }
    if terms is not None:
        summary["outbound"] = {k: list(v) for k, v in terms.message_types().items()}
        channel = terms.default_channel
        summary["channel"] = asdict(channel) if channel is not None else None
    if terms is not None:
        _note_certificates(
            ctx,
            document,
            our,
            terms.counterparty_her_id,
            _local_party(ctx, terms.counterparty_her_id),
        )
    if as_json:
        _echo_json(summary)
        return
    typer.echo(f"{document.kind.upper()} {document.protocol_id}  status {document.status}")
    typer.echo(f"valid {_jsonable(document.start)} .. {_jsonable(document.end)}")
    for party in summary["parties"]:
        typer.echo(f"party {party['her_id']} {party['name'] or ''}")
        typer.echo(f"  sends     {len(party['can_send'])} actions")
        typer.echo(f"  receives  {len(party['can_receive'])} actions")
    if terms is not None:
        for name, versions in summary["outbound"].items():
            typer.echo(f"we may send {name} {', '.join(versions)}")


def _local_party(ctx: typer.Context, her_id: str) -> CommunicationParty | None:
    """``her_id``'s local register entry when there is a store (``cpa show`` needs none)."""
    from meldingstjener.bootstrap import open_store
    from meldingstjener.registry.store import party_from_row
    from meldingstjener.store.opening import StoreUnavailable

    try:
        store = closed_at_end(ctx, open_store(settings_from(ctx), create=False, migrate=False))
    except StoreUnavailable:
        return None
    with store.unit_of_work() as uow:
        row = uow.parties.get(her_id)
        return party_from_row(row) if row is not None else None


def _actions(bindings: Any) -> list[str]:
    """``"Dialogmelding/DIALOG_FORESPORSEL 1.1"`` per binding, sorted and distinct."""
    named = {
        f"{b.service}/{b.action}" + (f" {b.message_version}" if b.message_version else "")
        for b in bindings
    }
    return sorted(named)
