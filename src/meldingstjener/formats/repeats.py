"""Elements given twice where the standard allows one, and a second HER-id at one level.

The readers take the first of an element (``xmlutil.child``, ``parties.her_id_of``); a receiver
whose software takes the last sees another sender, receiver or message id. Two ``<Sender>`` are
invalid by the schema, which is not configured by default; two HER Idents on one organisation
are valid by the schema and say nothing sensible. So the structure layer reports both, with
or without an XSD (see :func:`repeats`).

The tables follow MsgHead-v1_2.xsd and apprec-v1.0/v1.1.xsd: for each parent, the children it
may hold once (maxOccurs 1). What the schemas let repeat is not listed: Ident, TeleCom,
OtherReceiver, Document, PatientReport, Error, Dept, HCPerson, AdditionalId, TeleAddress, and
the content of RefDoc/Content. An organisation's Idents may be of several types (HER beside
ENH or RSH is usual); only a second Ident of type HER is reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

from meldingstjener.formats.parties import HER
from meldingstjener.formats.xmlutil import NS_MSGHEAD, child, local_name, plain_text, qname, v_of

_PERSON = ("FamilyName", "MiddleName", "GivenName", "DateOfBirth", "Sex", "Nationality", "Address")
_PARTY = ("ComMethod", "Organisation")

MSGHEAD_ONCE: dict[str, tuple[str, ...]] = {
    "MsgHead": ("MsgInfo",),
    "MsgInfo": (
        "Type",
        "MIGversion",
        "GenDate",
        "MsgId",
        "ProcessingStatus",
        "RequestedPriority",
        "Ack",
        "ConversationRef",
        "Sender",
        "Receiver",
        "Patient",
    ),
    "ConversationRef": ("RefToParent", "RefToConversation"),
    "Sender": _PARTY,
    "Receiver": _PARTY,
    "OtherReceiver": (
        "ComMethod",
        "RoleReceiver",
        "Organisation",
        "Patient",
        "Person",
        "HealthcareProfessional",
    ),
    "Organisation": (
        "OrganisationName",
        "TypeOrganisation",
        "Address",
        "Organisation",
        "HealthcareProfessional",
    ),
    "HealthcareProfessional": ("TypeHealthcareProfessional", "RoleToPatient", *_PERSON),
    "Patient": _PERSON,
    "Person": _PERSON,
    "Ident": ("Id", "TypeId"),
    "Address": ("Type", "StreetAdr", "PostalCode", "City", "Postbox", "County", "Country"),
    "PatientReport": ("DocumentConnection", "CaseNo", "Patient"),
    "Document": (
        "DocumentConnection",
        "ContentType",
        "ContentDescription",
        "ContentCategory",
        "Consent",
        "Annotation",
        "FromDate",
        "ToDate",
        "OidRef",
        "EnquiryRefId",
        "RefDoc",
    ),
    "RefDoc": (
        "IssueDate",
        "MsgType",
        "Id",
        "MimeType",
        "Description",
        "Compression",
        "FileReference",
        "Content",
    ),
}

_APPREC_UNIT = ("Type", "Name", "Id", "TypeId")
APPREC_ONCE: dict[str, tuple[str, ...]] = {
    "AppRec": (
        "MsgType",
        "MIGversion",
        "SoftwareName",
        "SoftwareVersion",
        "GenDate",
        "Id",
        "Sender",
        "Receiver",
        "Status",
        "OriginalMsgId",
    ),
    "Sender": ("Role", "HCP"),
    "Receiver": ("Role", "HCP"),
    "HCP": ("Inst", "HCProf", "MedSpeciality", "Address"),
    "Inst": ("Name", "Id", "TypeId"),
    "Dept": _APPREC_UNIT,
    "HCPerson": ("Name", "Id", "TypeId"),
    "HCProf": _APPREC_UNIT,
    "AdditionalId": ("Id", "Type"),
    "Address": ("Type", "StreetAdr", "PostalCode", "City", "County", "Country", "CityDistr"),
    "OriginalMsgId": ("MsgType", "IssueDate", "Id"),
}

# MsgHead levels whose Idents name a party: organisation, service, health professional
_HER_LEVELS = ("Organisation", "HealthcareProfessional")


@dataclass(frozen=True, slots=True)
class Repeat:
    """A finding: ``element`` is the second occurrence, ``code`` ``repeated-element`` or
    ``repeated-her-id``; ``error`` False for a HER-id given twice with the same value."""

    code: str
    element: etree._Element
    message: str
    error: bool = True


# per (namespace, table): {parent's tag: {tag of a child it may hold once: its local name}}
_QUALIFIED: dict[tuple[str, int], dict[str, dict[str, str]]] = {}


def _qualified(ns: str, once: dict[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """``once`` with its names as the tags lxml gives (made once per table: comparing tags is
    a string compare, where reading each element's name anew cost a third of a validation)."""
    key = (ns, id(once))
    found = _QUALIFIED.get(key)
    if found is None:
        found = {
            qname(ns, parent): {qname(ns, local): local for local in children}
            for parent, children in once.items()
        }
        _QUALIFIED[key] = found
    return found


def repeats(root: etree._Element, ns: str, once: dict[str, tuple[str, ...]]) -> Iterator[Repeat]:
    """Walk the elements of namespace ``ns`` that ``once`` names as parents, from ``root``
    down, and yield every child given more than once and (MsgHead) every second HER-id at one
    level. Each element is looked at once."""
    tables = _qualified(ns, once)
    her_levels = {qname(NS_MSGHEAD, level) for level in _HER_LEVELS} if ns == NS_MSGHEAD else set()
    pending = [root]
    while pending:
        parent = pending.pop()
        wanted = tables.get(parent.tag, {})
        counts: dict[str, int] = {}
        second: dict[str, etree._Element] = {}
        for element in parent:
            tag = element.tag
            if not isinstance(tag, str):
                continue
            local = wanted.get(tag)
            if local is not None:
                counts[local] = counts.get(local, 0) + 1
                if counts[local] == 2:
                    second[local] = element
            # RefDoc/Content is no parent in the tables: the business document is not entered
            if tag in tables:
                pending.append(element)
        for local, count in counts.items():
            if count > 1:
                yield Repeat(
                    "repeated-element",
                    second[local],
                    f"{local} appears {count} times where the standard allows it once: "
                    "which one is meant is not clear",
                )
        if parent.tag in her_levels:
            yield from _her_repeats(parent)


def _her_repeats(parent: etree._Element) -> Iterator[Repeat]:
    her = [
        ident
        for ident in parent.iterchildren(qname(NS_MSGHEAD, "Ident"))
        if (type_id := child(ident, NS_MSGHEAD, "TypeId")) is not None and v_of(type_id) == HER
    ]
    if len(her) < 2:
        return
    values: set[str] = set()
    for ident in her:
        id_element = child(ident, NS_MSGHEAD, "Id")
        text = plain_text(id_element) if id_element is not None else ""
        values.add((text or "").strip())
    same = len(values) == 1
    yield Repeat(
        "repeated-her-id",
        her[1],
        f"{local_name(parent)} has {len(her)} HER-ids (Ident with TypeId V=HER)"
        + (
            ", all the same"
            if same
            else ": which one names the party is not clear (one level has one HER-id)"
        ),
        error=not same,
    )
