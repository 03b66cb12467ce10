"""AppRec (applikasjonskvittering) 1.0 and 1.1: typed read and build.

An AppRec answers one business message: Status from code list 8258 (1 OK, 2 rejected, 3 OK
with errors in a sub-message), zero or more Error (code list 8221 for general errors; other
lists such as 8223 are allowed and read as they are), and OriginalMsgId naming the message it
answers. Sender and receiver are the original's receiver and sender.

The two versions differ only in namespace and MIGversion; both are read and built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from lxml import etree

from meldingstjener.formats.codelists import APPREC_ERRORS, APPREC_STATUS, code_list, oid_of
from meldingstjener.formats.errors import (
    InvalidValue,
    MissingElement,
    UnknownAppRecStatus,
    UnknownMessageFormat,
    UnsupportedVersion,
)
from meldingstjener.formats.msghead import MsgHead, gen_date_now, new_msg_id
from meldingstjener.formats.parties import HER, Ident, Organisation, Party, her_id_of
from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.formats.xmlutil import (
    NS_APPREC_10,
    NS_APPREC_11,
    Coded,
    add,
    add_coded,
    add_opt,
    child,
    children,
    coded,
    coded_of,
    is_xs_date_time,
    local_name,
    namespace,
    qname,
    text,
    to_bytes,
    v_of,
)
from meldingstjener.model import HerId, InvalidHerId, PartyRef
from meldingstjener.model.privacy import partner_code


@dataclass(frozen=True, slots=True)
class AppRecVersion:
    """One AppRec version: its namespace, the MIGversion we write and those we accept."""

    name: str
    namespace: str
    mig_version: str
    accepted_mig_versions: frozenset[str]


# "1.0 2008-11-21" is not the schema's default but is sent in the wild (a KITH example uses it)
# with the 2004-11-21 namespace and schema; receivers accept it, so we do too.
APPREC_10 = AppRecVersion(
    "1.0", NS_APPREC_10, "1.0 2004-11-21", frozenset({"1.0 2004-11-21", "1.0 2008-11-21"})
)
APPREC_11 = AppRecVersion("1.1", NS_APPREC_11, "v1.1 2012-02-15", frozenset({"v1.1 2012-02-15"}))
APPREC_VERSIONS = {v.name: v for v in (APPREC_10, APPREC_11)}
_BY_NAMESPACE = {v.namespace: v for v in (APPREC_10, APPREC_11)}


APPREC_TYPE = Coded(v="APPREC", dn="Applikasjonskvittering")


class AppRecStatus(IntEnum):
    """Code list 8258."""

    OK = 1
    REJECTED = 2
    OK_WITH_ERRORS = 3

    @property
    def text(self) -> str:
        return code_list(APPREC_STATUS).codes[str(self.value)]


@dataclass(frozen=True, slots=True)
class AppRecError:
    """One Error: ``code`` (V), ``text`` (DN), code list OID (S, 8221 by default), ``ot``."""

    code: str
    text: str | None = field(default=None, repr=False)  # free text: never in a repr
    code_list: str | None = oid_of(APPREC_ERRORS)
    ot: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, code: str, detail: str | None = None) -> AppRecError:
        """An 8221 error with its standard text and an optional explaining text in OT."""
        return cls(code=code, text=code_list(APPREC_ERRORS).text(code), ot=detail)


@dataclass(frozen=True, slots=True)
class OriginalMsgId:
    msg_type: Coded
    issue_date: str
    id: str


@dataclass(frozen=True, slots=True)
class AppRecUnit:
    """A named, identified unit (Inst, Dept, HCPerson): Id with its TypeId."""

    name: str | None
    id: str | None
    type_id: Coded | None = None

    @property
    def her_id(self) -> HerId | None:
        if self.type_id is None or self.type_id.v != HER or self.id is None:
            return None
        try:
            return HerId(self.id)
        except InvalidHerId:
            return None


@dataclass(frozen=True, slots=True)
class AppRecParty:
    """HCP/Inst with its departments (services) and persons; optional Role."""

    inst: AppRecUnit
    depts: tuple[AppRecUnit, ...] = ()
    persons: tuple[AppRecUnit, ...] = ()
    role: Coded | None = None

    @property
    def her_ids(self) -> PartyRef:
        return PartyRef(
            organisation=self.inst.her_id,
            service=next((d.her_id for d in self.depts if d.her_id), None),
            person=next((p.her_id for p in self.persons if p.her_id), None),
        )


@dataclass(frozen=True, slots=True)
class AppRec:
    version: str
    id: str
    gen_date: str
    sender: AppRecParty
    receiver: AppRecParty
    status: AppRecStatus
    original_msg_id: OriginalMsgId
    errors: tuple[AppRecError, ...] = ()
    msg_type: Coded = APPREC_TYPE
    mig_version: str | None = None
    software_name: str | None = None
    software_version: str | None = None

    @property
    def status_text(self) -> str:
        return self.status.text


# ---------------------------------------------------------------------------------------- read


def read_apprec(data: bytes) -> AppRec:
    """Parse and read an AppRec 1.0 or 1.1; raise a FormatError (or XmlError) if it cannot."""
    return apprec_from_element(parse_xml(data))


def apprec_version_of(root: etree._Element) -> AppRecVersion:
    """The AppRec version of ``root`` from namespace and MIGversion, or a FormatError."""
    if local_name(root) != "AppRec":
        raise UnknownMessageFormat(f"not an AppRec: root element is {local_name(root)!r}")
    version = _BY_NAMESPACE.get(namespace(root) or "")
    if version is None:
        raise UnsupportedVersion(f"AppRec namespace {namespace(root)!r} is not supported")
    mig = text(root, version.namespace, "MIGversion")
    if not mig:
        raise UnsupportedVersion("AppRec has no MIGversion", path="/AppRec/MIGversion")
    if mig not in version.accepted_mig_versions:
        raise UnsupportedVersion(
            f"AppRec MIGversion {mig!r} is not supported in namespace {version.namespace} "
            f"(expected {version.mig_version!r})",
            path="/AppRec/MIGversion",
        )
    return version


def apprec_from_element(root: etree._Element) -> AppRec:
    version = apprec_version_of(root)
    ns = version.namespace
    status_element = child(root, ns, "Status")
    if status_element is None:
        raise MissingElement("AppRec has no Status", path="/AppRec/Status")
    status_code = v_of(status_element)
    try:
        status = AppRecStatus(int(status_code or ""))
    except ValueError:
        raise UnknownAppRecStatus(
            f"AppRec Status {status_code!r} is not in code list 8258 (1, 2 or 3)",
            path="/AppRec/Status",
        ) from None
    original = child(root, ns, "OriginalMsgId")
    if original is None:
        raise MissingElement("AppRec has no OriginalMsgId", path="/AppRec/OriginalMsgId")
    original_type = coded(original, ns, "MsgType")
    original_id = text(original, ns, "Id")
    if original_type is None or not original_id:
        raise MissingElement("OriginalMsgId needs MsgType and Id", path="/AppRec/OriginalMsgId")
    return AppRec(
        version=version.name,
        msg_type=coded(root, ns, "MsgType") or Coded(),
        mig_version=text(root, ns, "MIGversion"),
        software_name=text(root, ns, "SoftwareName"),
        software_version=text(root, ns, "SoftwareVersion"),
        gen_date=_required(root, ns, "GenDate"),
        id=_required(root, ns, "Id"),
        sender=apprec_party_from_element(root, ns, "Sender"),
        receiver=apprec_party_from_element(root, ns, "Receiver"),
        status=status,
        errors=tuple(_read_error(e) for e in children(root, ns, "Error")),
        original_msg_id=OriginalMsgId(
            msg_type=original_type,
            issue_date=text(original, ns, "IssueDate") or "",
            id=original_id,
        ),
    )


def _required(root: etree._Element, ns: str, local: str) -> str:
    value = text(root, ns, local)
    if not value:
        raise MissingElement(f"AppRec has no {local}", path=f"/AppRec/{local}")
    return value


def _read_unit(element: etree._Element, ns: str) -> AppRecUnit:
    return AppRecUnit(
        name=text(element, ns, "Name"),
        id=text(element, ns, "Id"),
        type_id=coded(element, ns, "TypeId"),
    )


def apprec_party_from_element(root: etree._Element, ns: str, local: str) -> AppRecParty:
    """Read the Sender or Receiver (``local``) of an AppRec root in namespace ``ns``."""
    element = child(root, ns, local)
    inst = child(child(element, ns, "HCP"), ns, "Inst")
    if element is None or inst is None:
        raise MissingElement(f"AppRec {local} has no HCP/Inst", path=f"/AppRec/{local}/HCP/Inst")
    return AppRecParty(
        role=coded(element, ns, "Role"),
        inst=_read_unit(inst, ns),
        depts=tuple(_read_unit(d, ns) for d in children(inst, ns, "Dept")),
        persons=tuple(_read_unit(p, ns) for p in children(inst, ns, "HCPerson")),
    )


def _read_error(element: etree._Element) -> AppRecError:
    value = coded_of(element)
    if not value.v:
        raise InvalidValue("AppRec Error has no code (V)", path="/AppRec/Error")
    return AppRecError(code=value.v, text=value.dn, code_list=value.s, ot=value.ot)


# --------------------------------------------------------------------------------------- build


def build_apprec(
    original: MsgHead,
    *,
    status: AppRecStatus | int,
    errors: Sequence[AppRecError] = (),
    version: str = "1.1",
    msg_id: str | None = None,
    gen_date: str | None = None,
    software_name: str | None = None,
    software_version: str | None = None,
    answer_as: Party | None = None,
    received_at: str | None = None,
) -> bytes:
    """An AppRec answering ``original``: sender and receiver swapped, OriginalMsgId set.

    ``errors`` are required for status 2 (rejected) and 3 (OK with errors); use
    :meth:`AppRecError.of` for 8221 codes (e.g. ``AppRecError.of("E21", "Legen har sluttet")``).
    ``answer_as`` is the party the AppRec comes from: the original's receiver by default, a
    copy receiver (``msghead.copy_receiver``) when it answers the copy it got.

    OriginalMsgId/IssueDate is the original's GenDate. When that is no xs:dateTime (a message
    rejected for it, say), the AppRec could not carry it and would be refused itself; it
    carries ``received_at`` (when the original was received, an xs:dateTime; else the AppRec's
    own GenDate), and the first Error's OT quotes the GenDate sent, if it looks like a date.
    """
    status = AppRecStatus(status)
    if status is not AppRecStatus.OK and not errors:
        raise InvalidValue(f"an AppRec with status {status.value} ({status.text}) needs an Error")
    if version not in APPREC_VERSIONS:
        raise InvalidValue(f"AppRec version {version!r} is not supported (1.0 or 1.1)")
    info = original.msg_info
    gen_date = gen_date or gen_date_now()
    issue_date, errors = info.gen_date, tuple(errors)
    if not is_xs_date_time(issue_date):
        issue_date = received_at if received_at and is_xs_date_time(received_at) else gen_date
        errors = _with_gen_date_quoted(errors, info.gen_date)
    apprec = AppRec(
        version=version,
        id=msg_id or new_msg_id(),
        gen_date=gen_date,
        sender=apprec_party_from(answer_as or info.receiver),
        receiver=apprec_party_from(info.sender),
        status=status,
        errors=errors,
        original_msg_id=OriginalMsgId(
            msg_type=Coded(v=info.type.v, dn=original.message_type_name),
            issue_date=issue_date,
            id=info.msg_id,
        ),
        software_name=software_name,
        software_version=software_version,
    )
    return serialize_apprec(apprec)


# What of a bad GenDate an Error's OT may quote: characters of dates and times, no longer
# than a date-time with fractions and zone. Anything else (a GenDate may hold any text, and
# text where a value belongs may quote the message) is shown as "?".
_DATE_LIKE = re.compile(r"[0-9 .,:/+TZtz-]{1,35}")


def _with_gen_date_quoted(
    errors: tuple[AppRecError, ...], gen_date: str
) -> tuple[AppRecError, ...]:
    if not errors:
        return errors  # an OK without Errors: nowhere to say it, and nothing to dispute
    shown = partner_code(gen_date, _DATE_LIKE, limit=35)
    note = f"GenDate {shown!r} is not an xs:dateTime; IssueDate is when it was received"
    first = errors[0]
    ot = f"{first.ot}; {note}" if first.ot else note
    return (dataclasses.replace(first, ot=ot), *errors[1:])


def apprec_party_from(party: Party) -> AppRecParty:
    """MsgHead party -> AppRec HCP/Inst (organisation), Dept (service), HCPerson (person)."""

    def unit(organisation: Organisation) -> AppRecUnit:
        return _unit_with_ids(organisation.name, organisation.idents)

    organisation = party.organisation
    service = organisation.organisation
    person = party.person
    persons: tuple[AppRecUnit, ...] = ()
    if person is not None:
        name = " ".join(n for n in (person.given_name, person.family_name) if n) or None
        persons = (_unit_with_ids(name, person.idents),)
    return AppRecParty(
        inst=unit(organisation),
        depts=(unit(service),) if service is not None else (),
        persons=persons,
    )


def _unit_with_ids(name: str | None, idents: Sequence[Ident]) -> AppRecUnit:
    # AppRec has one Id per unit: the HER-id when there is one, else the first identifier.
    her = her_id_of(idents)
    if her is not None:
        return AppRecUnit(name=name, id=str(her), type_id=Coded(v=HER, dn="HER-id"))
    first = idents[0] if idents else None
    if first is None:
        return AppRecUnit(name=name, id=None)
    return AppRecUnit(name=name, id=first.id, type_id=Coded(v=first.type_id.v, dn=first.type_id.dn))


def serialize_apprec(apprec: AppRec) -> bytes:
    """Write ``apprec`` as AppRec XML of its version (UTF-8, with declaration)."""
    version = APPREC_VERSIONS.get(apprec.version)
    if version is None:
        raise InvalidValue(f"AppRec version {apprec.version!r} is not supported (1.0 or 1.1)")
    ns = version.namespace
    root = etree.Element(qname(ns, "AppRec"), nsmap={None: ns})
    add_coded(root, ns, "MsgType", apprec.msg_type, with_s=False)
    mig_version = apprec.mig_version or version.mig_version
    if mig_version not in version.accepted_mig_versions:
        raise InvalidValue(f"AppRec {version.name} cannot carry MIGversion {mig_version!r}")
    add(root, ns, "MIGversion", mig_version)
    add_opt(root, ns, "SoftwareName", apprec.software_name)
    add_opt(root, ns, "SoftwareVersion", apprec.software_version)
    add(root, ns, "GenDate", apprec.gen_date)
    add(root, ns, "Id", apprec.id)
    _write_party(root, ns, "Sender", apprec.sender)
    _write_party(root, ns, "Receiver", apprec.receiver)
    add(root, ns, "Status").attrib.update({"V": str(apprec.status.value), "DN": apprec.status.text})
    for error in apprec.errors:
        add_coded(
            root, ns, "Error", Coded(v=error.code, dn=error.text, s=error.code_list, ot=error.ot)
        )
    original = add(root, ns, "OriginalMsgId")
    add_coded(original, ns, "MsgType", apprec.original_msg_id.msg_type, with_s=False)
    add(original, ns, "IssueDate", apprec.original_msg_id.issue_date)
    add(original, ns, "Id", apprec.original_msg_id.id)
    return to_bytes(root)


def _write_unit(parent: etree._Element, ns: str, local: str, unit: AppRecUnit) -> etree._Element:
    element = add(parent, ns, local)
    add_opt(element, ns, "Name", unit.name)
    add_opt(element, ns, "Id", unit.id)
    add_coded(element, ns, "TypeId", unit.type_id, with_s=False)
    return element


def _write_party(root: etree._Element, ns: str, local: str, party: AppRecParty) -> None:
    element = add(root, ns, local)
    add_coded(element, ns, "Role", party.role, with_s=False)
    inst = _write_unit(add(element, ns, "HCP"), ns, "Inst", party.inst)
    for dept in party.depts:
        _write_unit(inst, ns, "Dept", dept)
    for person in party.persons:
        _write_unit(inst, ns, "HCPerson", person)
