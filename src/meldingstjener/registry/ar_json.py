"""Read address-register JSON into :class:`CommunicationParty`.

Two shapes exist in the wild and both are accepted:

* the CommunicationDetails REST shape (Helsenorge): ``{"herId", "type", "communicationParty":
  {"HerId", "Name", "ElectronicAddresses": [...], ...}}`` with PascalCase fields, the same
  structure as the older SOAP service (``ar_soap`` reuses :func:`party_from_record`);
* the newer register REST shape (camelCase: ``herId``, ``ediAddress``, ``organizationDetails``,
  ``currentSigningCertificate``, ``amqpTransportStatus``).

Field names are matched case-insensitively, so both shapes go through one mapper. Missing or
unknown fields become None; a record without a HER-id is refused with :class:`ArFormatError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from meldingstjener.registry.certificates import (
    CertificateUnreadable,
    PartyCertificate,
    certificate_from_base64,
)
from meldingstjener.registry.errors import ArFormatError, ArRecordRefused
from meldingstjener.registry.isotime import parse_timestamp
from meldingstjener.registry.parties import (
    CodedValue,
    CommunicationParty,
    PartyType,
    complete_queues,
    queues_for_her_id,
)

_PARTY_TYPES = {
    "organization": PartyType.ORGANISATION,
    "organisation": PartyType.ORGANISATION,
    "department": PartyType.ORGANISATION,
    "service": PartyType.SERVICE,
    "person": PartyType.PERSON,
    "organizationperson": PartyType.PERSON,
}

# Register address types (code list 9044) and the queue kind each one names.
_QUEUE_ADDRESS_TYPES = {
    "E_SB_ASYNC": "async",
    "E_SB_SYNC": "sync",
    "E_SB_ERROR": "error",
    "E_SB_SYNCREPLY": "syncreply",
    "E_SB_DL": "dl",
}
# The REST API's amqpAddress object and the queue kind each field names.
_AMQP_ADDRESS_FIELDS = {
    "amqpAsyncQueue": "async",
    "amqpSyncQueue": "sync",
    "amqpErrorQueue": "error",
    "amqpSyncReplyQueue": "syncreply",
}
_EDI_ADDRESS_TYPE = "E_EDI"
_CERTIFICATE_ADDRESS_TYPE = "E_DS"
_NO_VALUE = {"", "-1", "0"}
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() takes "²" and Arabic-Indic digits


class _Record:
    """Case-insensitive read access to one JSON object (PascalCase and camelCase alike)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = {str(key).lower(): value for key, value in data.items()}

    def get(self, *names: str) -> Any:
        for name in names:
            value = self._data.get(name.lower())
            if value is not None:
                return value
        return None

    def text(self, *names: str) -> str | None:
        value = self.get(*names)
        if value is None or isinstance(value, Mapping | list):
            return None
        text = str(value).strip()
        return text or None

    def child(self, *names: str) -> _Record | None:
        value = self.get(*names)
        return _Record(value) if isinstance(value, Mapping) else None

    def children(self, *names: str) -> list[_Record]:
        value = self.get(*names)
        if isinstance(value, Mapping):
            value = [value]
        if not isinstance(value, list):
            return []
        return [_Record(item) for item in value if isinstance(item, Mapping)]

    def flag(self, *names: str, default: bool) -> bool:
        value = self.get(*names)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
            return value.strip().lower() == "true"
        return default


def load_json(data: bytes | str | Mapping[str, Any] | Sequence[Any]) -> Any:
    """Decode JSON bytes/text (a BOM is tolerated); mappings and lists pass through."""
    if isinstance(data, bytes | str):
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.lstrip("\ufeff")
        try:
            return json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArFormatError(f"address-register JSON is not valid JSON: {exc}") from None
        except RecursionError:
            # arrays or objects nested thousands deep: no register record is, and the
            # interpreter's limit must not stop a sync or an import as an unexpected error
            raise ArFormatError("address-register JSON is nested too deeply to read") from None
    return data


def parse_party_json(data: bytes | str | Mapping[str, Any]) -> CommunicationParty:
    """One communication party from a register JSON document (either shape)."""
    document = load_json(data)
    if not isinstance(document, Mapping):
        raise ArFormatError(
            "address-register JSON is not a communication party: expected an object, "
            f"got {type(document).__name__}"
        )
    return party_from_record(document)


def parse_parties_json(
    data: bytes | str | Sequence[Any] | Mapping[str, Any],
) -> list[CommunicationParty]:
    """A list of parties (a full export): a JSON array, or an object holding one under
    ``communicationParties``/``items``/``parties``. A single party object gives a list of one."""
    parties = []
    for position, item in enumerate(_export_entries(data)[0]):
        if not isinstance(item, Mapping):
            raise ArFormatError(f"entry {position} of the export is not a JSON object")
        parties.append(party_from_record(item))
    return parties


def read_parties_json(
    data: bytes | str | Sequence[Any] | Mapping[str, Any],
) -> tuple[list[CommunicationParty], dict[str, str]]:
    """As :func:`parse_parties_json`, each entry of an export read on its own: the parties, and
    for each entry that cannot be used why not, by HER-id (``entry N`` when it has none). A
    document that is not JSON, not an export, or a single object that is not a party (a
    certificate document, say) still raises :class:`ArFormatError`."""
    entries, single = _export_entries(data)
    if single:
        return [parse_party_json(entries[0])], {}
    return read_records(entries)


def read_records(records: Iterable[Any]) -> tuple[list[CommunicationParty], dict[str, str]]:
    """Map each record on its own: one the mapper refuses (an unknown party type, an unusable
    certificate) is left out and named with the reason, and the others are read all the same."""
    parties: list[CommunicationParty] = []
    refused: dict[str, str] = {}
    for position, item in enumerate(records):
        try:
            if not isinstance(item, Mapping):
                raise ArFormatError("the entry is not a JSON object")
            parties.append(read_record(item))
        except ArFormatError as exc:
            refused[record_her_id(item) or f"entry {position}"] = str(exc)
    return parties, refused


def read_record(data: Mapping[str, Any]) -> CommunicationParty:
    """As :func:`party_from_record`, and any other error the mapping of this one record raises
    (a value no check foresaw) is :class:`ArFormatError` too: one record must not stop a sync
    or an import, every later run again, as an unexpected error."""
    try:
        return party_from_record(data)
    except ArFormatError:
        raise
    except (ValueError, OverflowError, TypeError) as exc:
        raise ArFormatError(
            f"the record cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def record_her_id(data: Any) -> str | None:
    """The HER-id of a raw record (either shape), None when it has no usable one."""
    if not isinstance(data, Mapping):
        return None
    outer = _Record(data)
    inner = outer.child("communicationParty")
    return _identifier((inner or outer).text("HerId") or outer.text("herId"))


def _export_entries(
    data: bytes | str | Sequence[Any] | Mapping[str, Any],
) -> tuple[list[Any], bool]:
    """The export's entries, and whether the document was one object rather than an export."""
    document = load_json(data)
    if isinstance(document, Mapping):
        wrapper = _Record(document)
        inner = wrapper.get("communicationParties", "items", "parties")
        if not isinstance(inner, list):
            return [document], True
        document = inner
    if not isinstance(document, list):
        raise ArFormatError("address-register export is neither a JSON array nor an object")
    return document, False


def party_from_record(data: Mapping[str, Any]) -> CommunicationParty:
    """Map one record (already decoded; either JSON shape or the SOAP shape as dicts)."""
    outer = _Record(data)
    inner = outer.child("communicationParty")
    record = inner if inner is not None else outer
    her_id = _identifier(record.text("HerId") or outer.text("herId"))
    if her_id is None:
        keys = ", ".join(sorted(str(k) for k in data)[:8]) or "none"
        raise ArFormatError(
            "not a communication party record: it has no HER-id (HerId/herId); "
            f"top-level fields: {keys}"
        )
    party_type = _party_type(record.text("Type") or outer.text("type"), her_id)
    addresses = _addresses(record)
    business = _coded(record.child("BusinessType"))
    details = record.child("organizationDetails")
    if details is not None:
        business = business or _coded(details.child("businessType"))
    if business is None:
        business = _coded(record.child("ParentBusinessType"))
    service_code = _coded(record.child("Code")) or _coded(
        (record.child("serviceDetails") or record).child("serviceType", "serviceCode")
    )
    municipality = record.child("Municipality")
    return CommunicationParty(
        her_id=her_id,
        party_type=party_type,
        name=_name(record) or "",
        display_name=record.text("DisplayName"),
        parent_her_id=_identifier(record.text("ParentHerId") or outer.text("parentHerId")),
        parent_name=record.text("ParentName"),
        organisation_number=_identifier(
            record.text("OrganizationNumber")
            or (details.text("organizationNumber") if details else None)
        ),
        parent_organisation_number=_identifier(record.text("ParentOrganizationNumber")),
        business_types=(business,) if business else (),
        service_types=(service_code,) if service_code and party_type is PartyType.SERVICE else (),
        edi_address=addresses.get(_EDI_ADDRESS_TYPE) or record.text("ediAddress"),
        amqp_queues=_queues(record, addresses, her_id),
        signing_certificate=_certificate(record.child("currentSigningCertificate")),
        encryption_certificate=_certificate(record.child("currentEncryptionCertificate")),
        certificate_ldap_url=addresses.get(_CERTIFICATE_ADDRESS_TYPE),
        active=record.flag("Active", "isActive", default=True),
        # Type == Service || Type == Person in NHN's model: false for every organisation,
        # not an inactive mark (Active and the validity period are what decide sending)
        valid=record.flag("IsValidCommunicationParty", "isValid", default=True),
        valid_from=_timestamp(_validity(record, "From"), "its validFrom"),
        valid_to=_timestamp(_validity(record, "To"), "its validTo"),
        municipality=municipality.text("CodeText") if municipality else None,
        last_changed=_timestamp(record.text("LastChanged", "lastChanged"), "its lastChanged"),
    )


def parse_certificate_json(data: bytes | str | Mapping[str, Any]) -> PartyCertificate:
    """The register's certificate document (``thumbprint``, ``validFrom``, ``validTo``,
    ``certificateValue`` as base64 DER). The thumbprint must match the bytes."""
    document = load_json(data)
    if not isinstance(document, Mapping):
        raise ArFormatError("certificate JSON is not an object")
    certificate = _certificate(_Record(document))
    if certificate is None or certificate.der is None:
        raise ArFormatError("certificate JSON has no certificateValue (base64 DER)")
    return certificate


def _certificate(record: _Record | None) -> PartyCertificate | None:
    if record is None:
        return None
    thumbprint = record.text("thumbprint")
    value = record.text("certificateValue", "certificate")
    if value is not None:
        try:
            return certificate_from_base64(value, thumbprint=thumbprint)
        except CertificateUnreadable as exc:
            raise ArFormatError(f"certificate in register record is unusable: {exc}") from None
    if thumbprint is None:
        return None
    return PartyCertificate(
        der=None,
        thumbprint=thumbprint.upper(),
        not_before=_timestamp(record.text("validFrom"), "its certificate's validFrom"),
        not_after=_timestamp(record.text("validTo"), "its certificate's validTo"),
    )


def _timestamp(text: str | None, what: str) -> datetime | None:
    """:func:`parse_timestamp`, refusing a time that has no UTC equivalent (the end of year
    9999 west of Greenwich, the start of year 1 east of it): the store keeps UTC, and the
    conversion would fail there instead, for every later sync."""
    parsed = parse_timestamp(text)
    if parsed is not None:
        try:
            parsed.astimezone(UTC)
        except OverflowError:
            raise ArFormatError(
                f"{what} {str(text)[:40]!r} is out of range once converted to UTC"
            ) from None
    return parsed


def _identifier(value: str | None) -> str | None:
    """HER-ids and organisation numbers: digits only; the register writes -1 for "none"."""
    if value is None or value in _NO_VALUE:
        return None
    text = value.strip()
    return text if _DIGITS.fullmatch(text) and int(text) > 0 else None


def _party_type(value: str | None, her_id: str) -> PartyType:
    if value is None:
        raise ArFormatError(
            f"communication party {her_id} has no type (Organization/Service/Person)"
        )
    try:
        return _PARTY_TYPES[value.strip().lower()]
    except KeyError:
        raise ArFormatError(
            f"communication party {her_id} has an unknown type {value[:40]!r} "
            "(expected Organization, Service, Person or Department)"
        ) from None


def _name(record: _Record) -> str | None:
    name = record.text("Name")
    if name:
        return name
    person = record.child("Person")
    if person is None:
        return None
    parts = [person.text(k) for k in ("FirstName", "MiddleName", "LastName")]
    return " ".join(p for p in parts if p) or None


def _addresses(record: _Record) -> dict[str, str]:
    """The current electronic addresses by type code (first of each type wins)."""
    found: dict[str, str] = {}
    for address in record.children("ElectronicAddresses"):
        code = address.text("TypeCodeValue")
        if code is None:
            kind = address.child("Type")
            code = kind.text("CodeValue") if kind else None
        value = address.text("Address")
        if code and value:
            found.setdefault(code.upper(), value)
    return found


def _queues(record: _Record, addresses: Mapping[str, str], her_id: str) -> dict[str, str]:
    queues = {
        kind: addresses[code] for code, kind in _QUEUE_ADDRESS_TYPES.items() if code in addresses
    }
    if queues:
        return complete_queues(queues)
    published = record.child("amqpAddress")
    if published is not None:
        # The REST API's amqpAddress names the queues outright (amqpAsyncQueue, ...).
        named = {kind: published.text(field) for field, kind in _AMQP_ADDRESS_FIELDS.items()}
        found = {kind: value for kind, value in named.items() if value}
        if found:
            return complete_queues(found)
    status = record.text("amqpTransportStatus")
    if status is not None and status.lower() in {"enabled", "active"}:
        # The newer register only says AMQP is on; the names follow the {herId}_{kind} rule.
        return queues_for_her_id(her_id)
    return {}


def _coded(record: _Record | None) -> CodedValue | None:
    if record is None:
        return None
    code = record.text("CodeValue", "value", "code")
    if code is None:
        return None
    return CodedValue(
        code=code,
        text=record.text("CodeText", "name", "text"),
        code_list=record.text("OID", "codeListId"),
    )


def _validity(record: _Record, bound: str) -> str | None:
    valid = record.child("Valid")
    if valid is not None and valid.text(bound):
        return valid.text(bound)
    return record.text(f"valid{bound}")


def with_certificates(
    party: CommunicationParty,
    *,
    signing: PartyCertificate | None = None,
    encryption: PartyCertificate | None = None,
) -> CommunicationParty:
    """The party with certificate bytes fetched separately (the register's certificate endpoint).

    A certificate whose thumbprint differs from the one the party record names is refused
    (:class:`ArRecordRefused`, that party only): it belongs to another party or an older key,
    and encrypting to it would make the message unreadable for the receiver.
    """
    for role, new, known in (
        ("signing", signing, party.signing_certificate),
        ("encryption", encryption, party.encryption_certificate),
    ):
        if new is not None and known is not None and known.thumbprint not in {None, new.thumbprint}:
            raise ArRecordRefused(
                party.her_id,
                f"{role} certificate {new.thumbprint} does not match the one the register "
                f"names for it ({known.thumbprint})",
            )
    return replace(
        party,
        signing_certificate=signing or party.signing_certificate,
        encryption_certificate=encryption or party.encryption_certificate,
    )
