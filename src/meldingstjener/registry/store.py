"""Keeping the register locally: communication parties and partner agreements in the store.

Maps :class:`CommunicationParty` to ``PartyRow`` and :class:`PartnerAgreement` to
``AgreementRow`` and back, and imports register files. Saving is an upsert that never wipes:
nothing here deletes a row, and a record that only names a certificate's thumbprint keeps the
certificate bytes we already hold for that thumbprint (the register's party record carries
metadata, the bytes come from its certificate endpoint). So the server keeps working from its
local copy while the national register is unreachable.

``AgreementRow.message_types`` is a JSON list of ``{"type": ..., "versions": [...]}`` objects,
newest version first; an empty list means "any message type" (configured partners and terms
from the address register).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import Row, select

from meldingstjener.registry.agreements import AgreementState, Contact, PartnerAgreement
from meldingstjener.registry.ar_json import parse_parties_json, read_parties_json
from meldingstjener.registry.ar_soap import parse_ar_soap_all, read_ar_soap_all
from meldingstjener.registry.certificates import (
    CertificateUnreadable,
    PartyCertificate,
    certificate_from_der,
    register_thumbprint,
)
from meldingstjener.registry.errors import ArFormatError, ArRecordRefused, RegistryError
from meldingstjener.registry.isotime import parse_timestamp
from meldingstjener.registry.parties import CodedValue, CommunicationParty, PartyType
from meldingstjener.registry.search import PartyIndex
from meldingstjener.registry.terms import AgreedMessage, ChannelTerms, TermsSource
from meldingstjener.registry.versions import sort_versions
from meldingstjener.security.certs import organisation_number
from meldingstjener.store.tables import AgreementRow, PartyRow
from meldingstjener.store.uow import UnitOfWork

__all__ = [
    "ImportReport",
    "agreement_from_row",
    "agreement_to_row",
    "bindings_from_json",
    "bindings_to_json",
    "import_files",
    "load_index",
    "load_parties",
    "message_types_from_json",
    "message_types_to_json",
    "parse_register_file",
    "party_from_row",
    "party_to_row",
    "read_register_file",
    "save_agreement",
    "save_parties",
]


_BATCH = 500  # parties per lookup query when saving

# --- communication parties -------------------------------------------------------------------


def party_to_row(party: CommunicationParty, *, source: str = "ar") -> PartyRow:
    """A new (detached) row for ``party``; :func:`save_parties` merges it with what is stored."""
    return PartyRow(
        her_id=party.her_id,
        parent_her_id=party.parent_her_id,
        party_type=party.party_type.value,
        organisation_number=party.organisation_number,
        name=party.name[:512],
        display_name=_clip(party.display_name, 512),
        parent_name=_clip(party.parent_name, 512),
        business_types=[_coded_to_json(c) for c in party.business_types],
        edi_address=_clip(party.edi_address, 255),
        amqp_queues=dict(party.amqp_queues),
        signing_certificate=_der_b64(party.signing_certificate),
        signing_cert_not_after=_not_after(party.signing_certificate),
        encryption_certificate=_der_b64(party.encryption_certificate),
        encryption_cert_not_after=_not_after(party.encryption_certificate),
        active=party.active,
        valid_from=party.valid_from,
        valid_to=party.valid_to,
        source=source,
        details=_details(party),
    )


def party_from_row(row: PartyRow | Row[Any]) -> CommunicationParty:
    """The party of an ORM row or of a plain result row with the same columns."""
    details: dict[str, Any] = dict(row.details or {})
    return CommunicationParty(
        her_id=row.her_id,
        party_type=PartyType(row.party_type),
        name=row.name,
        display_name=row.display_name,
        parent_her_id=row.parent_her_id,
        parent_name=row.parent_name,
        organisation_number=row.organisation_number,
        parent_organisation_number=details.get("parent_organisation_number"),
        business_types=tuple(_coded_from_json(c) for c in row.business_types or ()),
        service_types=tuple(_coded_from_json(c) for c in details.get("service_types", ())),
        edi_address=row.edi_address,
        amqp_queues={str(k): str(v) for k, v in (row.amqp_queues or {}).items()},
        signing_certificate=_certificate_from_row(
            row.signing_certificate, details.get("signing_certificate")
        ),
        encryption_certificate=_certificate_from_row(
            row.encryption_certificate, details.get("encryption_certificate")
        ),
        certificate_ldap_url=details.get("certificate_ldap_url"),
        active=row.active,
        valid=bool(details.get("valid", True)),
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        municipality=details.get("municipality"),
        last_changed=parse_timestamp(details.get("last_changed")),
    )


def save_parties(
    uow: UnitOfWork,
    parties: Iterable[CommunicationParty],
    *,
    source: str = "ar",
    at: datetime | None = None,
    names_all_certificates: bool = False,
    refused: dict[str, str] | None = None,
) -> int:
    """Insert or update each party (the caller commits). Returns how many were written.

    Stored rows are read a batch at a time with one query, so a full export of 100,000 parties
    does not cost two round trips per party. ``at`` is when a changed signing certificate was
    replaced (default: now).

    ``names_all_certificates``: the records name every certificate their party has (the
    register's, at a sync), so a role one names none for has none any more, and its stored
    certificate is cleared (a signing one is kept as the previous one, accepted for the grace
    period of a rollover). Without it (files, which may be SOAP answers or exports that never
    name certificates) a record that names none keeps the stored one.

    A party with a certificate of another organisation (see :func:`_foreign_certificate`) is
    not written: its stored copy stays, and it is put in ``refused`` with the reason (without
    ``refused``, :class:`ArRecordRefused` is raised).
    """
    count = 0
    pending = list(parties)
    for start in range(0, len(pending), _BATCH):
        batch = pending[start : start + _BATCH]
        wanted = {p.her_id for p in batch}
        known = {
            row.her_id: row
            for row in uow.session.scalars(select(PartyRow).where(PartyRow.her_id.in_(wanted)))
        }
        for party in batch:
            old = known.get(party.her_id)
            problem = _foreign_certificate(uow, party, old, known)
            if problem is not None:
                if refused is None:
                    raise ArRecordRefused(party.her_id, problem)
                refused[party.her_id] = problem
                continue
            new = party_to_row(party, source=source)
            if old is None:
                uow.session.add(new)
                known[party.her_id] = new
            else:
                _keep_known_certificates(old, new, keep_unnamed=not names_all_certificates)
                # merge() finds the old row in the session (loaded above): no extra query.
                known[party.her_id] = uow.parties.upsert(new, at=at)
            count += 1
        uow.session.flush()
    return count


def _foreign_certificate(
    uow: UnitOfWork,
    party: CommunicationParty,
    old: PartyRow | None,
    known: dict[str, PartyRow],
) -> str | None:
    """Why a certificate the record brings (its bytes) cannot be the party's, or None.

    Norwegian enterprise certificates carry their organisation's number in the subject
    (organizationIdentifier ``NTRNO-<number>``, or serialNumber); one the party may use carries
    its own number, its parent organisation's (in the record, or of its parent's stored row),
    or the number the certificate we hold for it now carries. That last one is the register's
    earlier word, and it is needed: a party may be registered under a subunit's number and use
    its main unit's certificate (NAV IKT, 990983291, has the certificate of Arbeids- og
    velferdsetaten, 889640782), a relation the record does not name. So a party we hold no
    certificate for has its first one taken as the register gives it, and a certificate that
    names no number is not checked. A party without a number of its own (a service, a person)
    is held to its parent organisation's and that of the certificates we hold for it, as any
    other: that the party has no number does not let a certificate of any organisation in.
    """
    own = party.organisation_number
    allowed = {own} if own is not None else set()
    looked_further = False
    for role, certificate in (
        ("signing", party.signing_certificate),
        ("encryption", party.encryption_certificate),
    ):
        if certificate is None or certificate.der is None:
            continue  # named by thumbprint only: the bytes we hold for it stay as they were
        number = _organisation_number(certificate.der)
        if number is None or number in allowed:
            continue
        if not looked_further:
            looked_further = True
            allowed |= _parent_organisation(uow, party, known)
            held = _held_organisations(old)
            if not held:
                return None  # nothing to hold it to: the register's first word is taken
            allowed |= held
        if number not in allowed:
            others = ", ".join(sorted(allowed - {own}))
            if own is None:
                return (
                    f"its {role} certificate belongs to organisation {number}, not to its "
                    f"parent organisation or that of the certificates held for it ({others}); "
                    "the stored copy is kept"
                )
            return (
                f"its {role} certificate belongs to organisation {number}, not to the party's "
                f"own ({own})" + (f" or {others}" if others else "") + "; the stored copy is "
                "kept"
            )
    return None


def _parent_organisation(
    uow: UnitOfWork, party: CommunicationParty, known: dict[str, PartyRow]
) -> set[str]:
    if party.parent_organisation_number:
        return {party.parent_organisation_number}
    if party.parent_her_id is None:
        return set()
    parent = known.get(party.parent_her_id) or uow.parties.get(party.parent_her_id)
    return {parent.organisation_number} if parent and parent.organisation_number else set()


def _held_organisations(old: PartyRow | None) -> set[str]:
    """The organisation numbers of the certificates stored for the party (its current ones and
    the signing one they replaced)."""
    if old is None:
        return set()
    numbers = set()
    for value in (
        old.signing_certificate,
        old.encryption_certificate,
        old.previous_signing_certificate,
    ):
        try:
            der = base64.b64decode(value, validate=True) if value else None
        except ValueError:
            continue
        number = _organisation_number(der) if der else None
        if number is not None:
            numbers.add(number)
    return numbers


def _organisation_number(der: bytes) -> str | None:
    try:
        return organisation_number(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


def held_certificates(uow: UnitOfWork, her_ids: Iterable[str]) -> set[tuple[str, str, str]]:
    """``(her_id, role, thumbprint)`` of each certificate whose bytes we hold for these parties
    (role ``signing`` or ``encryption``; the thumbprint is the SHA-1 of the bytes, upper-case
    hex, as the register writes it). A sync need not fetch those again."""
    wanted = list(her_ids)
    held: set[tuple[str, str, str]] = set()
    for start in range(0, len(wanted), _BATCH):
        rows = uow.session.execute(
            select(
                PartyRow.her_id, PartyRow.signing_certificate, PartyRow.encryption_certificate
            ).where(PartyRow.her_id.in_(wanted[start : start + _BATCH]))
        )
        for her_id, signing, encryption in rows:
            for role, value in (("signing", signing), ("encryption", encryption)):
                thumbprint = _stored_thumbprint(value)
                if thumbprint is not None:  # unreadable bytes are fetched again
                    held.add((her_id, role, thumbprint))
    return held


def _stored_thumbprint(value: str | None) -> str | None:
    """The register thumbprint of stored base64 DER; None when there is none or it is not
    base64 (a row damaged outside the server must not stop a sync)."""
    if not value:
        return None
    try:
        return register_thumbprint(base64.b64decode(value, validate=True))
    except ValueError:  # binascii.Error is one
        return None


def load_parties(uow: UnitOfWork) -> list[CommunicationParty]:
    """Every stored party; a row that cannot be read is skipped rather than failing the lot."""
    parties = []
    # Plain rows, not ORM objects: building 100,000 tracked objects would double the load time.
    columns = select(*PartyRow.__table__.columns).order_by(PartyRow.her_id)
    for row in uow.session.execute(columns):
        try:
            parties.append(party_from_row(row))
        except (ValueError, RegistryError):
            continue
    return parties


def load_index(uow: UnitOfWork) -> PartyIndex:
    """A search index over the local copy of the register."""
    return PartyIndex(load_parties(uow))


def _details(party: CommunicationParty) -> dict[str, Any]:
    details: dict[str, Any] = {"valid": party.valid}
    if party.parent_organisation_number:
        details["parent_organisation_number"] = party.parent_organisation_number
    if party.service_types:
        details["service_types"] = [_coded_to_json(c) for c in party.service_types]
    if party.certificate_ldap_url:
        details["certificate_ldap_url"] = party.certificate_ldap_url
    if party.municipality:
        details["municipality"] = party.municipality
    if party.last_changed:
        details["last_changed"] = party.last_changed.isoformat()
    for role, certificate in (
        ("signing_certificate", party.signing_certificate),
        ("encryption_certificate", party.encryption_certificate),
    ):
        if certificate is not None:
            details[role] = _certificate_metadata(certificate)
    return details


def _certificate_metadata(certificate: PartyCertificate) -> dict[str, Any]:
    return {
        "thumbprint": certificate.thumbprint,
        "not_before": certificate.not_before.isoformat() if certificate.not_before else None,
        "not_after": certificate.not_after.isoformat() if certificate.not_after else None,
    }


def _certificate_from_row(
    der_b64: str | None, metadata: dict[str, Any] | None
) -> PartyCertificate | None:
    if der_b64:
        try:
            return certificate_from_der(base64.b64decode(der_b64))
        except (CertificateUnreadable, ValueError):
            pass  # fall back to the metadata; the validator will refuse a missing certificate
    if not metadata or not metadata.get("thumbprint"):
        return None
    return PartyCertificate(
        der=None,
        thumbprint=str(metadata["thumbprint"]),
        not_before=parse_timestamp(metadata.get("not_before")),
        not_after=parse_timestamp(metadata.get("not_after")),
    )


def _keep_known_certificates(old: PartyRow, new: PartyRow, *, keep_unnamed: bool) -> None:
    """A record with only a thumbprint must not wipe the bytes we hold for that certificate;
    with ``keep_unnamed``, neither must a record that names no certificate for the role (a file
    that does not say). Without it such a role has no certificate any more."""
    old_details = old.details or {}
    new_details = new.details or {}
    for column, limit, role in (
        ("signing_certificate", "signing_cert_not_after", "signing_certificate"),
        ("encryption_certificate", "encryption_cert_not_after", "encryption_certificate"),
    ):
        if getattr(new, column) or not getattr(old, column):
            continue
        # the bytes' own thumbprint: what a sync judged by when it did not fetch them again
        old_thumb = _stored_thumbprint(getattr(old, column))
        new_thumb = (new_details.get(role) or {}).get("thumbprint")
        if new_thumb is None and not keep_unnamed:
            continue  # withdrawn by the register
        if new_thumb is None or (old_thumb is not None and new_thumb == old_thumb):
            setattr(new, column, getattr(old, column))
            setattr(new, limit, getattr(old, limit))
            if new_thumb is None and role in old_details:
                new_details[role] = old_details[role]
    new.details = new_details


def _clip(text: str | None, length: int) -> str | None:
    """Cut to the column's width (PostgreSQL refuses longer text; SQLite would keep it)."""
    return text[:length] if text is not None else None


def _der_b64(certificate: PartyCertificate | None) -> str | None:
    if certificate is None or certificate.der is None:
        return None
    return base64.b64encode(certificate.der).decode("ascii")


def _not_after(certificate: PartyCertificate | None) -> datetime | None:
    return certificate.not_after if certificate is not None else None


def _coded_to_json(value: CodedValue) -> dict[str, Any]:
    return {"code": value.code, "text": value.text, "code_list": value.code_list}


def _coded_from_json(value: Any) -> CodedValue:
    if not isinstance(value, dict):
        return CodedValue(code=str(value))
    return CodedValue(
        code=str(value.get("code", "")), text=value.get("text"), code_list=value.get("code_list")
    )


# --- importing register files ---------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did: parties written per file, files refused with the reason, and per
    file the parties refused (by HER-id, with the reason) while the others went in."""

    imported: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    her_ids: list[str] = field(default_factory=list)
    refused_parties: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.imported.values())


def parse_register_file(path: Path) -> list[CommunicationParty]:
    """Parties from one register file: REST JSON (one party or an export) or a SOAP response."""
    data = path.read_bytes()
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"<":
        return list(parse_ar_soap_all(data))
    if head in {b"{", b"["}:
        return parse_parties_json(data)
    raise ArFormatError(f"{path.name} is neither register JSON nor a SOAP response")


def read_register_file(path: Path) -> tuple[list[CommunicationParty], dict[str, str]]:
    """As :func:`parse_register_file`, each party read on its own: the parties, and why each
    record that cannot be used is not (by HER-id). A file that is not one raises."""
    data = path.read_bytes()
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"<":
        return read_ar_soap_all(data)
    if head in {b"{", b"["}:
        return read_parties_json(data)
    raise ArFormatError(f"{path.name} is neither register JSON nor a SOAP response")


def import_files(
    uow: UnitOfWork, paths: Sequence[Path], *, source: str = "ar-file"
) -> ImportReport:
    """Import every file; a bad file is reported and skipped, the others still go in. So is a
    party of a file whose record cannot be used (or whose certificate is another
    organisation's): its stored copy stays, and the file's other parties go in."""
    report = ImportReport()
    for path in paths:
        try:
            parties, refused = read_register_file(path)
        except (OSError, RegistryError) as exc:
            report.refused[str(path)] = str(exc)
            continue
        report.imported[str(path)] = save_parties(uow, parties, source=source, refused=refused)
        report.her_ids.extend(p.her_id for p in parties if p.her_id not in refused)
        if refused:
            report.refused_parties[str(path)] = refused
    return report


# --- partner agreements ------------------------------------------------------------------------


def message_types_to_json(message_types: dict[str, tuple[str, ...]]) -> list[dict[str, Any]]:
    return [
        {"type": name, "versions": list(sort_versions(versions))}
        for name, versions in sorted(message_types.items())
    ]


def message_types_from_json(value: Any) -> dict[str, tuple[str, ...]]:
    """The stored list back to ``{type: versions}``; unknown entries are ignored."""
    found: dict[str, tuple[str, ...]] = {}
    for item in value or ():
        if isinstance(item, dict) and item.get("type"):
            versions = item.get("versions") or ()
            found[str(item["type"])] = sort_versions(str(v) for v in versions)
        elif isinstance(item, str):
            found.setdefault(item, ())
    return found


def agreement_to_row(agreement: PartnerAgreement, row: AgreementRow | None = None) -> AgreementRow:
    """Write ``agreement`` into ``row`` (a new row when None); settings the agreement leaves
    open keep the row's values (or the table defaults)."""
    if row is None:
        row = AgreementRow(
            our_her_id=agreement.our_her_id, counterparty_her_id=agreement.counterparty_her_id
        )
    row.state = agreement.state.value
    row.source = agreement.source.value
    row.cpa_id = agreement.cpa_id or row.cpa_id
    row.channel = agreement.channel or row.channel or "http"
    row.endpoint = agreement.endpoint if agreement.endpoint is not None else row.endpoint
    row.message_types = (
        [] if agreement.any_message_type else message_types_to_json(agreement.message_types)
    ) + bindings_to_json(agreement)
    if agreement.retries is not None:
        row.retries = agreement.retries
    if agreement.retry_interval is not None:
        row.retry_interval_seconds = int(agreement.retry_interval.total_seconds())
    if agreement.persist_duration is not None:
        row.persist_duration_seconds = int(agreement.persist_duration.total_seconds())
    if agreement.ack_requested is not None:
        row.ack_requested = agreement.ack_requested != "never"
    if agreement.duplicate_elimination is not None:
        row.duplicate_elimination = agreement.duplicate_elimination != "never"
    if agreement.sync_reply_mode is not None:
        row.sync_reply_mode = agreement.sync_reply_mode
    row.contacts = [_contact_to_json(c) for c in agreement.contacts]
    if agreement.activation_date is not None:
        row.activation_date = datetime.combine(agreement.activation_date, time(), tzinfo=UTC)
    # A CPA's (or CPP's) end is the agreement's. Register terms keep none: the party's own
    # validity, which each sync keeps current, is what the engine checks for them.
    row.valid_to = None if agreement.source is TermsSource.AR else agreement.valid_to
    return row


def agreement_from_row(row: AgreementRow) -> PartnerAgreement:
    message_types = message_types_from_json(row.message_types)
    bindings, channel = bindings_from_json(row.message_types)
    return PartnerAgreement(
        our_her_id=row.our_her_id,
        counterparty_her_id=row.counterparty_her_id,
        state=AgreementState(row.state),
        source=_terms_source(row.source),
        cpa_id=row.cpa_id,
        channel=row.channel,
        endpoint=row.endpoint,
        message_types=message_types,
        retries=row.retries,
        retry_interval=timedelta(seconds=row.retry_interval_seconds),
        persist_duration=timedelta(seconds=row.persist_duration_seconds),
        ack_requested=channel.get("ack_requested") or ("always" if row.ack_requested else "never"),
        duplicate_elimination=channel.get("duplicate_elimination")
        or ("always" if row.duplicate_elimination else "never"),
        sync_reply_mode=row.sync_reply_mode,
        contacts=tuple(_contact_from_json(c) for c in row.contacts or ()),
        any_message_type=not message_types,
        activation_date=_date(row.activation_date),
        valid_to=row.valid_to,
        bindings=bindings,
    )


# The bindings of a CPA or CPP are kept in ``message_types`` (one ``{"binding": {...}}`` per
# binding, beside the ``{"type": ...}`` entries, which readers of types skip), and so is the
# CPPA wording of the default channel's ackRequested and duplicateElimination
# (``{"channel": {...}}``: the boolean columns cannot say perMessage).
_CHANNEL_TEXT = ("ack_requested", "duplicate_elimination")


def bindings_to_json(agreement: PartnerAgreement) -> list[dict[str, Any]]:
    """The ``message_types`` entries that keep the agreement's bindings and channel wording."""
    entries: list[dict[str, Any]] = [{"binding": _binding_to_json(b)} for b in agreement.bindings]
    wording = {
        name: value
        for name in _CHANNEL_TEXT
        if isinstance(value := getattr(agreement, name), str) and value not in {"always", "never"}
    }
    if wording:
        entries.append({"channel": wording})
    return entries


def bindings_from_json(value: Any) -> tuple[tuple[AgreedMessage, ...], dict[str, str]]:
    """The bindings kept in ``message_types``, and the default channel's CPPA wording."""
    bindings: list[AgreedMessage] = []
    wording: dict[str, str] = {}
    for item in value or ():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("binding"), dict):
            binding = _binding_from_json(item["binding"])
            if binding is not None:
                bindings.append(binding)
        elif isinstance(item.get("channel"), dict):
            wording = {k: str(v) for k, v in item["channel"].items() if k in _CHANNEL_TEXT and v}
    return tuple(bindings), wording


def _binding_to_json(binding: AgreedMessage) -> dict[str, Any]:
    return {
        "service": binding.service,
        "service_type": binding.service_type,
        "action": binding.message_type,
        "from_role": binding.from_role,
        "to_role": binding.to_role,
        "versions": list(binding.versions),
        "namespace": binding.namespace,
        "namespaces": list(binding.namespaces),
        "channel": _channel_to_json(binding.channel) if binding.channel else None,
        "gzip": binding.gzip,
    }


def _binding_from_json(value: dict[str, Any]) -> AgreedMessage | None:
    action = value.get("action")
    if not action:
        return None
    channel = value.get("channel")
    return AgreedMessage(
        message_type=str(action),
        service=_text_or_none(value.get("service")),
        versions=tuple(str(v) for v in value.get("versions") or ()),
        namespace=_text_or_none(value.get("namespace")),
        channel=_channel_from_json(channel) if isinstance(channel, dict) else None,
        service_type=_text_or_none(value.get("service_type")),
        from_role=_text_or_none(value.get("from_role")),
        to_role=_text_or_none(value.get("to_role")),
        namespaces=tuple(str(n) for n in value.get("namespaces") or ()),
        gzip=value.get("gzip") is True,  # absent in a row stored before it was kept
    )


def _channel_to_json(channel: ChannelTerms) -> dict[str, Any]:
    def seconds(value: timedelta | None) -> int | None:
        return int(value.total_seconds()) if value is not None else None

    return {
        "channel_id": channel.channel_id,
        "transport": channel.transport,
        "endpoint": channel.endpoint,
        "retries": channel.retries,
        "retry_interval_seconds": seconds(channel.retry_interval),
        "persist_duration_seconds": seconds(channel.persist_duration),
        "ack_requested": channel.ack_requested,
        "duplicate_elimination": channel.duplicate_elimination,
        "sync_reply_mode": channel.sync_reply_mode,
    }


def _channel_from_json(value: dict[str, Any]) -> ChannelTerms:
    def duration(key: str) -> timedelta | None:
        seconds = value.get(key)
        return timedelta(seconds=int(seconds)) if isinstance(seconds, int) else None

    retries = value.get("retries")
    return ChannelTerms(
        channel_id=_text_or_none(value.get("channel_id")),
        transport=_text_or_none(value.get("transport")),
        endpoint=_text_or_none(value.get("endpoint")),
        retries=retries if isinstance(retries, int) else None,
        retry_interval=duration("retry_interval_seconds"),
        persist_duration=duration("persist_duration_seconds"),
        ack_requested=_text_or_none(value.get("ack_requested")),
        duplicate_elimination=_text_or_none(value.get("duplicate_elimination")),
        sync_reply_mode=_text_or_none(value.get("sync_reply_mode")),
    )


def _text_or_none(value: Any) -> str | None:
    return str(value) if value is not None and value != "" else None


def save_agreement(uow: UnitOfWork, agreement: PartnerAgreement) -> AgreementRow:
    """Insert or update the agreement for its (our, their) pair (the caller commits)."""
    row = uow.agreements.for_pair(agreement.our_her_id, agreement.counterparty_her_id)
    if row is None:
        return uow.agreements.add(agreement_to_row(agreement))
    return agreement_to_row(agreement, row)


def _terms_source(value: str | None) -> TermsSource:
    try:
        return TermsSource(value or "manual")
    except ValueError:
        return TermsSource.MANUAL  # origins we did not derive from terms


def _date(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def _contact_to_json(contact: Contact) -> dict[str, Any]:
    return {
        "name": contact.name,
        "role": contact.role,
        "email": contact.email,
        "phone": contact.phone,
    }


def _contact_from_json(value: Any) -> Contact:
    if not isinstance(value, dict):
        return Contact(name=str(value))
    return Contact(
        name=str(value.get("name", "")),
        role=value.get("role"),
        email=value.get("email"),
        phone=value.get("phone"),
    )
