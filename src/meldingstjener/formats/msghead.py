"""MsgHead 1.2 (hodemelding): typed read and build.

``read_msghead(data)`` parses the bytes with the hardened parser and returns a :class:`MsgHead`;
``build_msghead(head)`` writes one back as UTF-8 XML. Reading is strict about what a receiver
needs to process the message (namespace, MIGversion, type, id, sender, receiver) and lenient
about the rest; the full list of problems comes from :func:`meldingstjener.formats.validate`.
What is not modelled (e.g. PatientReport, Address/TeleCom on professionals) is not written back.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from meldingstjener.formats.codelists import message_type_name
from meldingstjener.formats.errors import (
    InvalidValue,
    MissingElement,
    UnknownMessageFormat,
    UnsupportedVersion,
)
from meldingstjener.formats.parties import (
    Address,
    HealthcareProfessional,
    Ident,
    Organisation,
    Party,
    Person,
)
from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.formats.xmlutil import (
    NS_BASE64,
    NS_DSIG,
    NS_MSGHEAD,
    Coded,
    add,
    add_coded,
    add_opt,
    child,
    children,
    coded,
    coded_of,
    is_base64_text,
    local_name,
    namespace,
    own_text,
    path_of,
    qname,
    text,
    to_bytes,
    v_of,
)
from meldingstjener.model import PartyRef

MSGHEAD_VERSION = "v1.2 2006-05-24"
MH = NS_MSGHEAD


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """Where a message sits in a conversation: its parent message and the conversation's first."""

    ref_to_parent: str
    ref_to_conversation: str


@dataclass(frozen=True, slots=True)
class OtherReceiver:
    """A copy recipient (kopimottaker): an organisation, a professional or a person."""

    role: Coded
    organisation: Organisation | None = None
    healthcare_professional: HealthcareProfessional | None = None
    person: Person | None = None
    patient: Person | None = None
    com_method: Coded | None = None


@dataclass(frozen=True, slots=True)
class RefDoc:
    """A document reference: an XML instance (MsgType XML), or an attachment (MsgType A).

    ``content_xml`` is the XML instance in exclusive canonical form; ``content_base64`` the
    decoded bytes of a Base64Container attachment; ``file_reference`` a link to a large file.
    """

    msg_type: Coded
    issue_date: str | None = None
    id: str | None = None
    mime_type: str | None = None
    # free text and a link an EPJ may make of the patient's name: never in a repr (a log)
    description: str | None = field(default=None, repr=False)
    compression: Coded | None = None
    file_reference: str | None = field(default=None, repr=False)
    content_xml: bytes | None = field(default=None, repr=False)
    content_base64: bytes | None = field(default=None, repr=False)

    @property
    def is_attachment(self) -> bool:
        return self.msg_type.v == "A"

    def content_element(self) -> etree._Element | None:
        """The XML instance as an element (parsed again with the hardened parser)."""
        return None if self.content_xml is None else parse_xml(self.content_xml)


@dataclass(frozen=True, slots=True)
class Document:
    ref_doc: RefDoc
    content_description: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class MsgInfo:
    type: Coded
    msg_id: str
    gen_date: str
    sender: Party
    receiver: Party
    mig_version: str = MSGHEAD_VERSION
    processing_status: Coded | None = None
    requested_priority: Coded | None = None
    ack: Coded | None = None
    conversation_ref: ConversationRef | None = None
    other_receivers: tuple[OtherReceiver, ...] = ()
    patient: Person | None = None


def copy_receiver(info: MsgInfo, her_id: str) -> Party | None:
    """The copy receiver (OtherReceiver) whose organisation or service has ``her_id``, as the
    party that answers its copy; None when no OtherReceiver organisation has it (the primary
    receiver, or a copy to a person without an organisation, which has no HER-id to answer
    from)."""
    for other in info.other_receivers:
        organisation = other.organisation
        if organisation is None:
            continue
        levels = (organisation, organisation.organisation)
        if any(level is not None and level.her_id == her_id for level in levels):
            return Party(organisation=organisation, com_method=other.com_method)
    return None


# What a message type code looks like: code list 8279's (DIALOG_NOTAT, EPIKRISE, APPREC, 26
# characters at most) and the like. MsgInfo/Type V is the sender's text; read as it is, any
# text went on as the message's type, into webhook bodies, alerts, the log and the inbox.
MESSAGE_TYPE_SHAPE = re.compile(r"[A-Z0-9_]{1,40}")
NOT_A_TYPE = "?"


def message_type_code(value: str | None) -> str | None:
    """A message type as sent, or :data:`NOT_A_TYPE` when it does not look like a code (see
    :data:`MESSAGE_TYPE_SHAPE`); None when there is none."""
    if not value:
        return value
    return value if MESSAGE_TYPE_SHAPE.fullmatch(value) else NOT_A_TYPE


def _read_type(element: etree._Element | None) -> Coded | None:
    """MsgInfo/Type, its V as :func:`message_type_code` reads it; a V that is no code loses
    its DN and OT too (the validator reports it)."""
    found = coded_of(element) if element is not None else None
    if found is None or not found.v:
        return found
    code = message_type_code(found.v)
    return found if code == found.v else Coded(v=code, s=found.s)


@dataclass(frozen=True, slots=True)
class MsgHead:
    msg_info: MsgInfo
    documents: tuple[Document, ...] = ()
    signature_present: bool = False

    @property
    def message_type(self) -> str | None:
        """The code from 8279, e.g. ``DIALOG_SVAR``."""
        return self.msg_info.type.v

    @property
    def message_type_name(self) -> str | None:
        """The display name as sent, or from code list 8279 when the sender left it out."""
        return self.msg_info.type.dn or message_type_name(self.message_type)

    @property
    def mig_version(self) -> str:
        return self.msg_info.mig_version

    @property
    def msg_id(self) -> str:
        return self.msg_info.msg_id

    @property
    def sender_her_ids(self) -> PartyRef:
        return self.msg_info.sender.her_ids

    @property
    def receiver_her_ids(self) -> PartyRef:
        return self.msg_info.receiver.her_ids

    @property
    def conversation_ref(self) -> ConversationRef | None:
        return self.msg_info.conversation_ref

    @property
    def patient_present(self) -> bool:
        return self.msg_info.patient is not None

    @property
    def main_document(self) -> RefDoc | None:
        """The first XML instance (the business content), if any."""
        for document in self.documents:
            if document.ref_doc.content_xml is not None and not document.ref_doc.is_attachment:
                return document.ref_doc
        return None

    @property
    def attachments(self) -> tuple[RefDoc, ...]:
        return tuple(d.ref_doc for d in self.documents if d.ref_doc.is_attachment)


def new_msg_id() -> str:
    return str(uuid.uuid4())


def gen_date_now() -> str:
    """The current local time as xs:dateTime with offset, to the second."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def answer_conversation_ref(question: MsgHead) -> ConversationRef:
    """The ConversationRef for an answer to ``question``: parent = the question, conversation =
    the question's conversation (or the question itself when it started the conversation)."""
    started = question.conversation_ref
    return ConversationRef(
        ref_to_parent=question.msg_id,
        ref_to_conversation=started.ref_to_conversation if started else question.msg_id,
    )


# ---------------------------------------------------------------------------------------- read


def read_msghead(data: bytes) -> MsgHead:
    """Parse and read a MsgHead 1.2 document; raise a FormatError (or XmlError) if it cannot."""
    return msghead_from_element(parse_xml(data))


def msghead_from_element(root: etree._Element, *, decode_attachments: bool = True) -> MsgHead:
    """The read model of a parsed MsgHead. With ``decode_attachments=False`` base64
    attachments are checked but not decoded (``content_base64`` stays None): what a validator
    needs, without a second copy of a large attachment."""
    if namespace(root) != MH or local_name(root) != "MsgHead":
        raise UnknownMessageFormat(
            f"not a MsgHead 1.2 document: root element is {local_name(root)!r} in namespace "
            f"{namespace(root)!r}"
        )
    info = child(root, MH, "MsgInfo")
    if info is None:
        raise MissingElement("MsgHead has no MsgInfo", path="/MsgHead/MsgInfo")
    mig = text(info, MH, "MIGversion")
    if not mig:
        raise UnsupportedVersion("MsgHead has no MIGversion", path="/MsgHead/MsgInfo/MIGversion")
    if mig != MSGHEAD_VERSION:
        raise UnsupportedVersion(
            f"MsgHead MIGversion {mig!r} is not supported (expected {MSGHEAD_VERSION!r})",
            path="/MsgHead/MsgInfo/MIGversion",
        )
    msg_type = _read_type(child(info, MH, "Type"))
    if msg_type is None or not msg_type.v:
        raise MissingElement("MsgHead has no message type", path="/MsgHead/MsgInfo/Type")
    msg_id = _required_text(info, "MsgId")
    gen_date = _required_text(info, "GenDate")
    msg_info = MsgInfo(
        type=msg_type,
        mig_version=mig,
        gen_date=gen_date,
        msg_id=msg_id,
        processing_status=coded(info, MH, "ProcessingStatus"),
        requested_priority=coded(info, MH, "RequestedPriority"),
        ack=coded(info, MH, "Ack"),
        conversation_ref=_read_conversation_ref(child(info, MH, "ConversationRef")),
        sender=_read_party(info, "Sender"),
        receiver=_read_party(info, "Receiver"),
        other_receivers=tuple(_read_other(e) for e in children(info, MH, "OtherReceiver")),
        patient=_read_person(child(info, MH, "Patient")),
    )
    return MsgHead(
        msg_info=msg_info,
        documents=tuple(
            _read_document(e, decode_attachments) for e in children(root, MH, "Document")
        ),
        signature_present=child(root, NS_DSIG, "Signature") is not None,
    )


def _required_text(info: etree._Element, local: str) -> str:
    value = text(info, MH, local)
    if not value:
        raise MissingElement(f"MsgHead has no {local}", path=f"/MsgHead/MsgInfo/{local}")
    return value


def _read_conversation_ref(element: etree._Element | None) -> ConversationRef | None:
    if element is None:
        return None
    return ConversationRef(
        ref_to_parent=text(element, MH, "RefToParent") or "",
        ref_to_conversation=text(element, MH, "RefToConversation") or "",
    )


def _read_party(info: etree._Element, local: str) -> Party:
    element = child(info, MH, local)
    organisation = organisation_from_element(child(element, MH, "Organisation"))
    if element is None or organisation is None:
        raise MissingElement(
            f"MsgHead has no {local} organisation", path=f"/MsgHead/MsgInfo/{local}/Organisation"
        )
    return Party(organisation=organisation, com_method=coded(element, MH, "ComMethod"))


def _read_idents(element: etree._Element) -> tuple[Ident, ...]:
    return tuple(
        Ident(id=text(e, MH, "Id") or "", type_id=coded(e, MH, "TypeId") or Coded())
        for e in children(element, MH, "Ident")
    )


def _read_telecoms(element: etree._Element) -> tuple[str, ...]:
    found: list[str] = []
    for telecom in children(element, MH, "TeleCom"):
        address = child(telecom, MH, "TeleAddress")
        if address is not None and (value := v_of(address)) is not None:
            found.append(value)
    return tuple(found)


def _read_address(element: etree._Element | None) -> Address | None:
    if element is None:
        return None
    return Address(
        type=coded(element, MH, "Type"),
        street=text(element, MH, "StreetAdr"),
        postal_code=text(element, MH, "PostalCode"),
        city=text(element, MH, "City"),
        postbox=text(element, MH, "Postbox"),
    )


def organisation_from_element(element: etree._Element | None) -> Organisation | None:
    """Read an Organisation subtree leniently (missing parts become None/empty)."""
    if element is None:
        return None
    return Organisation(
        name=text(element, MH, "OrganisationName"),
        type=coded(element, MH, "TypeOrganisation"),
        idents=_read_idents(element),
        address=_read_address(child(element, MH, "Address")),
        telecoms=_read_telecoms(element),
        organisation=organisation_from_element(child(element, MH, "Organisation")),
        healthcare_professional=_read_hcp(child(element, MH, "HealthcareProfessional")),
    )


def _read_hcp(element: etree._Element | None) -> HealthcareProfessional | None:
    if element is None:
        return None
    return HealthcareProfessional(
        type=coded(element, MH, "TypeHealthcareProfessional"),
        role_to_patient=coded(element, MH, "RoleToPatient"),
        family_name=text(element, MH, "FamilyName"),
        middle_name=text(element, MH, "MiddleName"),
        given_name=text(element, MH, "GivenName"),
        idents=_read_idents(element),
        telecoms=_read_telecoms(element),
    )


def _read_person(element: etree._Element | None) -> Person | None:
    if element is None:
        return None
    return Person(
        family_name=text(element, MH, "FamilyName"),
        middle_name=text(element, MH, "MiddleName"),
        given_name=text(element, MH, "GivenName"),
        date_of_birth=text(element, MH, "DateOfBirth"),
        sex=coded(element, MH, "Sex"),
        idents=_read_idents(element),
        address=_read_address(child(element, MH, "Address")),
        telecoms=_read_telecoms(element),
    )


def _read_other(element: etree._Element) -> OtherReceiver:
    return OtherReceiver(
        role=coded(element, MH, "RoleReceiver") or Coded(),
        com_method=coded(element, MH, "ComMethod"),
        organisation=organisation_from_element(child(element, MH, "Organisation")),
        healthcare_professional=_read_hcp(child(element, MH, "HealthcareProfessional")),
        person=_read_person(child(element, MH, "Person")),
        patient=_read_person(child(element, MH, "Patient")),
    )


def _read_document(element: etree._Element, decode: bool = True) -> Document:
    ref = child(element, MH, "RefDoc")
    if ref is None:
        raise MissingElement("Document has no RefDoc", path=path_of(element) + "/RefDoc")
    msg_type = coded(ref, MH, "MsgType")
    if msg_type is None:
        raise MissingElement("RefDoc has no MsgType", path=path_of(ref) + "/MsgType")
    issue = child(ref, MH, "IssueDate")
    content_xml, content_b64 = _read_content(child(ref, MH, "Content"), decode)
    return Document(
        content_description=text(element, MH, "ContentDescription"),
        ref_doc=RefDoc(
            msg_type=msg_type,
            issue_date=v_of(issue) if issue is not None else None,
            id=text(ref, MH, "Id"),
            mime_type=text(ref, MH, "MimeType"),
            description=text(ref, MH, "Description"),
            compression=coded(ref, MH, "Compression"),
            file_reference=text(ref, MH, "FileReference"),
            content_xml=content_xml,
            content_base64=content_b64,
        ),
    )


def _read_content(
    content: etree._Element | None, decode: bool = True
) -> tuple[bytes | None, bytes | None]:
    if content is None:
        return None, None
    instances = [e for e in content if isinstance(e.tag, str)]
    if not instances:
        return None, None
    first = instances[0]
    if namespace(first) == NS_BASE64 and local_name(first) == "Base64Container":
        if not decode:  # checked as the decoder would, but neither joined nor decoded
            if not is_base64_text(own_text(first)):
                raise InvalidValue("attachment is not valid base64", path=path_of(first))
            return None, None
        # Only the element's own text nodes: comments inside the container are not payload.
        encoded = "".join(first.xpath("text()"))
        try:
            return None, base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidValue("attachment is not valid base64", path=path_of(first)) from None
    return canonical(first), None


def canonical(element: etree._Element) -> bytes:
    """Exclusive canonical XML of ``element``: stable bytes for a subtree, wherever it sits."""
    return bytes(etree.tostring(element, method="c14n", exclusive=True, with_comments=False))


# --------------------------------------------------------------------------------------- build


def build_msghead(head: MsgHead) -> bytes:
    """Write ``head`` as MsgHead 1.2 XML (UTF-8, with declaration). No signature is added."""
    return to_bytes(msghead_element(head))


def msghead_element(head: MsgHead) -> etree._Element:
    root = etree.Element(qname(MH, "MsgHead"), nsmap={None: MH})
    info = add(root, MH, "MsgInfo")
    mi = head.msg_info
    add_coded(info, MH, "Type", mi.type, with_s=False)
    add(info, MH, "MIGversion", mi.mig_version)
    add(info, MH, "GenDate", mi.gen_date)
    add(info, MH, "MsgId", mi.msg_id)
    add_coded(info, MH, "ProcessingStatus", mi.processing_status, with_s=False)
    add_coded(info, MH, "RequestedPriority", mi.requested_priority, with_s=False)
    add_coded(info, MH, "Ack", mi.ack, with_s=False)
    if mi.conversation_ref is not None:
        ref = add(info, MH, "ConversationRef")
        add(ref, MH, "RefToParent", mi.conversation_ref.ref_to_parent)
        add(ref, MH, "RefToConversation", mi.conversation_ref.ref_to_conversation)
    for local, party in (("Sender", mi.sender), ("Receiver", mi.receiver)):
        element = add(info, MH, local)
        add_coded(element, MH, "ComMethod", party.com_method, with_s=False)
        _write_organisation(element, party.organisation)
    for other in mi.other_receivers:
        _write_other(info, other)
    if mi.patient is not None:
        _write_person(info, "Patient", mi.patient)
    for document in head.documents:
        _write_document(root, document)
    return root


def _write_idents(parent: etree._Element, idents: tuple[Ident, ...]) -> None:
    for ident in idents:
        element = add(parent, MH, "Ident")
        add(element, MH, "Id", ident.id)
        add_coded(element, MH, "TypeId", ident.type_id)


def _write_telecoms(parent: etree._Element, telecoms: tuple[str, ...]) -> None:
    for value in telecoms:
        add(add(parent, MH, "TeleCom"), MH, "TeleAddress").set("V", value)


def _write_address(parent: etree._Element, address: Address | None) -> None:
    if address is None:
        return
    element = add(parent, MH, "Address")
    add_coded(element, MH, "Type", address.type, with_s=False)
    add_opt(element, MH, "StreetAdr", address.street)
    add_opt(element, MH, "PostalCode", address.postal_code)
    add_opt(element, MH, "City", address.city)
    add_opt(element, MH, "Postbox", address.postbox)


def _write_organisation(parent: etree._Element, organisation: Organisation) -> None:
    element = add(parent, MH, "Organisation")
    add(element, MH, "OrganisationName", organisation.name or "")
    add_coded(element, MH, "TypeOrganisation", organisation.type)
    _write_idents(element, organisation.idents)
    _write_address(element, organisation.address)
    _write_telecoms(element, organisation.telecoms)
    if organisation.organisation is not None:
        _write_organisation(element, organisation.organisation)
    if organisation.healthcare_professional is not None:
        _write_hcp(element, organisation.healthcare_professional)


def _write_hcp(parent: etree._Element, hcp: HealthcareProfessional) -> None:
    element = add(parent, MH, "HealthcareProfessional")
    add_coded(element, MH, "TypeHealthcareProfessional", hcp.type, with_s=False)
    add_coded(element, MH, "RoleToPatient", hcp.role_to_patient)
    add_opt(element, MH, "FamilyName", hcp.family_name)
    add_opt(element, MH, "MiddleName", hcp.middle_name)
    add_opt(element, MH, "GivenName", hcp.given_name)
    _write_idents(element, hcp.idents)
    _write_telecoms(element, hcp.telecoms)


def _write_person(parent: etree._Element, local: str, person: Person) -> None:
    element = add(parent, MH, local)
    add_opt(element, MH, "FamilyName", person.family_name)
    add_opt(element, MH, "MiddleName", person.middle_name)
    add_opt(element, MH, "GivenName", person.given_name)
    add_opt(element, MH, "DateOfBirth", person.date_of_birth)
    add_coded(element, MH, "Sex", person.sex, with_s=False)
    _write_idents(element, person.idents)
    _write_address(element, person.address)
    _write_telecoms(element, person.telecoms)


def _write_other(parent: etree._Element, other: OtherReceiver) -> None:
    element = add(parent, MH, "OtherReceiver")
    add_coded(element, MH, "ComMethod", other.com_method, with_s=False)
    add_coded(element, MH, "RoleReceiver", other.role, with_s=False)
    if other.organisation is not None:
        _write_organisation(element, other.organisation)
    elif other.patient is not None:
        _write_person(element, "Patient", other.patient)
    elif other.person is not None:
        _write_person(element, "Person", other.person)
    elif other.healthcare_professional is not None:
        _write_hcp(element, other.healthcare_professional)


def _write_document(parent: etree._Element, document: Document) -> None:
    element = add(parent, MH, "Document")
    add_opt(element, MH, "ContentDescription", document.content_description)
    ref = document.ref_doc
    ref_element = add(element, MH, "RefDoc")
    if ref.issue_date is not None:
        add(ref_element, MH, "IssueDate").set("V", ref.issue_date)
    add_coded(ref_element, MH, "MsgType", ref.msg_type, with_s=False)
    add_opt(ref_element, MH, "Id", ref.id)
    add_opt(ref_element, MH, "MimeType", ref.mime_type)
    add_opt(ref_element, MH, "Description", ref.description)
    add_coded(ref_element, MH, "Compression", ref.compression, with_s=False)
    if ref.file_reference is not None:
        add(ref_element, MH, "FileReference", ref.file_reference)
    elif ref.content_base64 is not None:
        container = etree.SubElement(
            add(ref_element, MH, "Content"),
            qname(NS_BASE64, "Base64Container"),
            nsmap={None: NS_BASE64},
        )
        container.text = base64.b64encode(ref.content_base64).decode("ascii")
    elif ref.content_xml is not None:
        add(ref_element, MH, "Content").append(parse_xml(ref.content_xml))
