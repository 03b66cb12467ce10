"""Dialogmelding 1.0 (Forespørsel, Svar, Notat), 1.1 (Helsefaglig dialog) and Tilbakemelding om
feil i mottatt melding (DIALOG_AVVIK): typed read and build.

A dialog message is a MsgHead whose first document is a ``Dialogmelding`` instance holding
either ``Foresporsel`` (questions) or ``Notat`` (notes, answers, deviations). An answer
(DIALOG_SVAR) is a Notat that carries the question it answers, and its MsgHead ConversationRef
points at the question. DIALOG_AVVIK is a Dialogmelding 1.0 Notat about a received message.
Free text (Sporsmal, TekstNotatInnhold) is read as plain text; markup inside it is flattened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from meldingstjener.formats.codelists import message_type_name
from meldingstjener.formats.errors import InvalidValue, MissingElement, UnsupportedVersion
from meldingstjener.formats.msghead import (
    ConversationRef,
    Document,
    MsgHead,
    MsgInfo,
    OtherReceiver,
    RefDoc,
    answer_conversation_ref,
    build_msghead,
    canonical,
    gen_date_now,
    new_msg_id,
    read_msghead,
)
from meldingstjener.formats.parties import Ident, Party, Person
from meldingstjener.formats.xmlutil import (
    NS_DIALOG_10,
    NS_DIALOG_11,
    NS_FK1,
    Coded,
    add,
    add_coded,
    add_opt,
    all_text,
    child,
    children,
    coded,
    local_name,
    namespace,
    qname,
    text,
    v_of,
)

DIALOG_VERSIONS = {"1.0": NS_DIALOG_10, "1.1": NS_DIALOG_11}
DIALOG_VERSION_BY_NAMESPACE = {ns: name for name, ns in DIALOG_VERSIONS.items()}

FORESPORSEL = "DIALOG_FORESPORSEL"
SVAR = "DIALOG_SVAR"
NOTAT = "DIALOG_NOTAT"
HELSEFAGLIG = "DIALOG_HELSEFAGLIG"
AVVIK = "DIALOG_AVVIK"
# Which Dialogmelding version each message type is defined for.
DIALOG_TYPE_VERSION = {
    FORESPORSEL: "1.0",
    SVAR: "1.0",
    NOTAT: "1.0",
    AVVIK: "1.0",
    HELSEFAGLIG: "1.1",
}

XML_INSTANCE = Coded(v="XML", dn="XML-instans")
ATTACHMENT = Coded(v="A", dn="Vedlegg")
AVVIK_THEME = Coded(dn="Tilbakemelding om feil i mottatt melding")


@dataclass(frozen=True, slots=True)
class RelatedRole:
    """RollerRelatertNotat: a professional (or other person) related to the note, and the role."""

    professional: bool = True
    role_to_patient: Coded | None = None
    rolle_notat: Coded | None = None
    type: Coded | None = None
    family_name: str | None = field(default=None, repr=False)
    given_name: str | None = field(default=None, repr=False)
    idents: tuple[Ident, ...] = field(default=(), repr=False)
    telecoms: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Foresporsel:
    """A question (TypeForesp from e.g. 9152 or 9153, the question text, reason, urgency)."""

    type: Coded
    sporsmal: str | None = field(default=None, repr=False)
    emne: str | None = field(default=None, repr=False)  # EmneSporsmal, Dialogmelding 1.1 only
    formaal: Coded | None = None
    begrunnelse: str | None = field(default=None, repr=False)
    hastegrad: Coded | None = None
    fra_dato: str | None = None
    til_dato: str | None = None
    dok_id: str | None = None
    roles: tuple[RelatedRole, ...] = ()


@dataclass(frozen=True, slots=True)
class Notat:
    """A note: an answer (with the question), a note about a patient, or a deviation."""

    tema_kodet: Coded
    tema: str | None = field(default=None, repr=False)
    tekst: str | None = field(default=None, repr=False)
    merknad: str | None = field(default=None, repr=False)
    dok_id: str | None = None
    dato: str | None = None
    foresporsel: Foresporsel | None = None
    roles: tuple[RelatedRole, ...] = ()


@dataclass(frozen=True, slots=True)
class Dialogmelding:
    version: str
    foresporsler: tuple[Foresporsel, ...] = ()
    notater: tuple[Notat, ...] = ()
    sakstype_kodet: Coded | None = None
    sakstype: str | None = None


@dataclass(frozen=True, slots=True)
class DialogMessage:
    """A dialog MsgHead and the Dialogmelding it carries."""

    head: MsgHead
    dialog: Dialogmelding


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to send base64-encoded inside the MsgHead (MsgType A)."""

    data: bytes = field(repr=False)
    mime_type: str
    description: str | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------- read


def read_dialog(data: bytes) -> DialogMessage:
    """Read a MsgHead carrying a Dialogmelding; FormatError when it carries none."""
    head = read_msghead(data)
    return DialogMessage(head=head, dialog=dialogmelding_of(head))


def dialogmelding_of(head: MsgHead) -> Dialogmelding:
    document = head.main_document
    element = document.content_element() if document is not None else None
    if element is None or local_name(element) != "Dialogmelding":
        raise MissingElement(
            "the message carries no Dialogmelding", path="/MsgHead/Document/RefDoc/Content"
        )
    return dialogmelding_from_element(element)


def dialogmelding_from_element(element: etree._Element) -> Dialogmelding:
    version = DIALOG_VERSION_BY_NAMESPACE.get(namespace(element) or "")
    if version is None:
        raise UnsupportedVersion(
            f"Dialogmelding namespace {namespace(element)!r} is not supported (1.0 or 1.1)",
            path="/MsgHead/Document/RefDoc/Content/Dialogmelding",
        )
    ns = DIALOG_VERSIONS[version]
    return Dialogmelding(
        version=version,
        sakstype_kodet=coded(element, ns, "SakstypeKodet"),
        sakstype=text(element, ns, "Sakstype"),
        foresporsler=tuple(_read_foresporsel(e, ns) for e in children(element, ns, "Foresporsel")),
        notater=tuple(_read_notat(e, ns) for e in children(element, ns, "Notat")),
    )


def _read_foresporsel(element: etree._Element, ns: str) -> Foresporsel:
    kind = coded(element, ns, "TypeForesp")
    if kind is None:
        raise MissingElement("Foresporsel has no TypeForesp", path="Dialogmelding/Foresporsel")
    return Foresporsel(
        type=kind,
        emne=text(element, ns, "EmneSporsmal"),
        sporsmal=all_text(child(element, ns, "Sporsmal")),
        formaal=coded(element, ns, "Formål"),
        begrunnelse=text(element, ns, "Begrunnelse"),
        hastegrad=coded(element, ns, "Hastegrad"),
        fra_dato=text(element, ns, "FraDato"),
        til_dato=text(element, ns, "TilDato"),
        dok_id=text(element, ns, "DokIdForesp"),
        roles=tuple(_read_role(e, ns) for e in children(element, ns, "RollerRelatertNotat")),
    )


def _read_notat(element: etree._Element, ns: str) -> Notat:
    theme = coded(element, ns, "TemaKodet")
    if theme is None:
        raise MissingElement("Notat has no TemaKodet", path="Dialogmelding/Notat/TemaKodet")
    question = child(element, ns, "Foresporsel")
    return Notat(
        tema_kodet=theme,
        tema=text(element, ns, "Tema"),
        tekst=all_text(child(element, ns, "TekstNotatInnhold")),
        merknad=text(element, ns, "Merknad"),
        dok_id=text(element, ns, "DokIdNotat"),
        dato=text(element, ns, "DatoNotat"),
        foresporsel=_read_foresporsel(question, ns) if question is not None else None,
        roles=tuple(_read_role(e, ns) for e in children(element, ns, "RollerRelatertNotat")),
    )


def _read_role(element: etree._Element, ns: str) -> RelatedRole:
    person = child(element, ns, "HealthcareProfessional")
    professional = person is not None
    if person is None:
        person = child(element, ns, "Person")
    idents: list[Ident] = []
    telecoms: list[str] = []
    for ident in children(person, ns, "Ident"):
        type_id = coded(ident, NS_FK1, "TypeId") or Coded()
        idents.append(Ident(id=text(ident, NS_FK1, "Id") or "", type_id=type_id))
    for telecom in children(person, ns, "TeleCom"):
        address = child(telecom, NS_FK1, "TeleAddress")
        if address is not None and (value := v_of(address)) is not None:
            telecoms.append(value)
    return RelatedRole(
        professional=professional,
        rolle_notat=coded(element, ns, "RolleNotat"),
        role_to_patient=coded(element, ns, "RoleToPatient"),
        type=coded(person, ns, "TypeHealthcareProfessional"),
        family_name=text(person, ns, "FamilyName"),
        given_name=text(person, ns, "GivenName"),
        idents=tuple(idents),
        telecoms=tuple(telecoms),
    )


# --------------------------------------------------------------------------------------- build


def dialogmelding_element(dialog: Dialogmelding) -> etree._Element:
    ns = DIALOG_VERSIONS.get(dialog.version)
    if ns is None:
        raise InvalidValue(f"Dialogmelding version {dialog.version!r} is not supported")
    if dialog.foresporsler and dialog.notater:
        raise InvalidValue("a Dialogmelding holds either Foresporsel or Notat, not both")
    root = etree.Element(qname(ns, "Dialogmelding"), nsmap={None: ns, "fk1": NS_FK1})
    add_coded(root, ns, "SakstypeKodet", dialog.sakstype_kodet)
    add_opt(root, ns, "Sakstype", dialog.sakstype)
    for question in dialog.foresporsler:
        _write_foresporsel(root, ns, question)
    for note in dialog.notater:
        _write_notat(root, ns, note)
    return root


def _write_foresporsel(parent: etree._Element, ns: str, question: Foresporsel) -> None:
    element = add(parent, ns, "Foresporsel")
    add_coded(element, ns, "TypeForesp", question.type)
    if ns == NS_DIALOG_11:
        add_opt(element, ns, "EmneSporsmal", question.emne)
    add_opt(element, ns, "Sporsmal", question.sporsmal)
    add_coded(element, ns, "Formål", question.formaal)
    add_opt(element, ns, "Begrunnelse", question.begrunnelse)
    add_coded(element, ns, "Hastegrad", question.hastegrad, with_s=False)
    add_opt(element, ns, "FraDato", question.fra_dato)
    add_opt(element, ns, "TilDato", question.til_dato)
    add_opt(element, ns, "DokIdForesp", question.dok_id)
    for role in question.roles:
        _write_role(element, ns, role)


def _write_notat(parent: etree._Element, ns: str, note: Notat) -> None:
    element = add(parent, ns, "Notat")
    add_coded(element, ns, "TemaKodet", note.tema_kodet)
    add_opt(element, ns, "Tema", note.tema)
    add_opt(element, ns, "TekstNotatInnhold", note.tekst)
    add_opt(element, ns, "Merknad", note.merknad)
    add_opt(element, ns, "DokIdNotat", note.dok_id)
    add_opt(element, ns, "DatoNotat", note.dato)
    if note.foresporsel is not None:
        _write_foresporsel(element, ns, note.foresporsel)
    for role in note.roles:
        _write_role(element, ns, role)


def _write_role(parent: etree._Element, ns: str, role: RelatedRole) -> None:
    element = add(parent, ns, "RollerRelatertNotat")
    add_coded(element, ns, "RolleNotat", role.rolle_notat)
    add_coded(element, ns, "RoleToPatient", role.role_to_patient)
    if role.professional:
        person = add(element, ns, "HealthcareProfessional")
        add_coded(person, ns, "TypeHealthcareProfessional", role.type, with_s=False)
        add_opt(person, ns, "FamilyName", role.family_name)
        add_opt(person, ns, "GivenName", role.given_name)
    else:
        person = add(element, ns, "Person")
        add_opt(person, ns, "GivenName", role.given_name)
        add_opt(person, ns, "FamilyName", role.family_name)
    for ident in role.idents:
        ident_element = add(person, ns, "Ident")
        add(ident_element, NS_FK1, "Id", ident.id)
        add_coded(ident_element, NS_FK1, "TypeId", ident.type_id)
    for telecom in role.telecoms:
        add(add(person, ns, "TeleCom"), NS_FK1, "TeleAddress").set("V", telecom)


def build_dialogmelding(
    *,
    message_type: str,
    sender: Party,
    receiver: Party,
    dialog: Dialogmelding,
    patient: Person | None = None,
    msg_id: str | None = None,
    gen_date: str | None = None,
    conversation_ref: ConversationRef | None = None,
    attachments: Sequence[Attachment] = (),
    other_receivers: Sequence[OtherReceiver] = (),
    ack_requested: bool = True,
) -> bytes:
    """A MsgHead 1.2 carrying ``dialog`` (and attachments) as UTF-8 XML.

    ``message_type`` is DIALOG_FORESPORSEL/SVAR/NOTAT/AVVIK (Dialogmelding 1.0) or
    DIALOG_HELSEFAGLIG (1.1); other 8279 types are accepted with either version.
    """
    return build_msghead(
        dialog_msghead(
            message_type=message_type,
            sender=sender,
            receiver=receiver,
            dialog=dialog,
            patient=patient,
            msg_id=msg_id,
            gen_date=gen_date,
            conversation_ref=conversation_ref,
            attachments=attachments,
            other_receivers=other_receivers,
            ack_requested=ack_requested,
        )
    )


def dialog_msghead(
    *,
    message_type: str,
    sender: Party,
    receiver: Party,
    dialog: Dialogmelding,
    patient: Person | None = None,
    msg_id: str | None = None,
    gen_date: str | None = None,
    conversation_ref: ConversationRef | None = None,
    attachments: Sequence[Attachment] = (),
    other_receivers: Sequence[OtherReceiver] = (),
    ack_requested: bool = True,
) -> MsgHead:
    """The :class:`MsgHead` :func:`build_dialogmelding` writes (useful to inspect or sign)."""
    expected = DIALOG_TYPE_VERSION.get(message_type)
    if expected is not None and expected != dialog.version:
        raise InvalidValue(
            f"{message_type} is sent as Dialogmelding {expected}, not {dialog.version}"
        )
    gen_date = gen_date or gen_date_now()
    documents = [
        Document(
            ref_doc=RefDoc(
                msg_type=XML_INSTANCE,
                issue_date=gen_date,
                content_xml=canonical(dialogmelding_element(dialog)),
            )
        )
    ]
    documents.extend(
        Document(
            ref_doc=RefDoc(
                msg_type=ATTACHMENT,
                issue_date=gen_date,
                mime_type=attachment.mime_type,
                description=attachment.description,
                content_base64=attachment.data,
            )
        )
        for attachment in attachments
    )
    info = MsgInfo(
        type=Coded(v=message_type, dn=message_type_name(message_type)),
        msg_id=msg_id or new_msg_id(),
        gen_date=gen_date,
        ack=Coded(v="J", dn="Ja") if ack_requested else None,
        conversation_ref=conversation_ref,
        sender=sender,
        receiver=receiver,
        other_receivers=tuple(other_receivers),
        patient=patient,
    )
    return MsgHead(msg_info=info, documents=tuple(documents))


def build_dialog_svar(
    question: MsgHead,
    *,
    answer_text: str,
    sender: Party | None = None,
    msg_id: str | None = None,
    gen_date: str | None = None,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """A DIALOG_SVAR answering the DIALOG_FORESPORSEL ``question``.

    The answer goes back to the question's sender, from ``sender`` (default: the question's
    receiver); its ConversationRef points at the question, and its Notat carries the question
    (the Dialogmelding 1.0 guide asks for the question to be sent with the answer).
    """
    asked = dialogmelding_of(question)
    if not asked.foresporsler:
        raise InvalidValue("the message to answer holds no Foresporsel")
    first = asked.foresporsler[0]
    note = Notat(tema_kodet=first.type, tekst=answer_text, foresporsel=first)
    return build_dialogmelding(
        message_type=SVAR,
        sender=sender or question.msg_info.receiver,
        receiver=question.msg_info.sender,
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        patient=question.msg_info.patient,
        msg_id=msg_id,
        gen_date=gen_date,
        conversation_ref=answer_conversation_ref(question),
        attachments=attachments,
    )


def build_dialog_avvik(
    faulty: MsgHead,
    *,
    description: str,
    sender: Party | None = None,
    theme: Coded = AVVIK_THEME,
    include_patient: bool = False,
    msg_id: str | None = None,
    gen_date: str | None = None,
) -> bytes:
    """Tilbakemelding om feil i mottatt melding (DIALOG_AVVIK) about ``faulty``.

    Sent to the faulty message's sender, from ``sender`` (default: its receiver). The Notat
    names the faulty message in DokIdNotat and the MsgHead ConversationRef points at it. The
    patient is left out unless ``include_patient``: a misaddressed message's patient data should
    travel no further than needed.
    """
    note = Notat(tema_kodet=theme, tekst=description, dok_id=faulty.msg_id)
    return build_dialogmelding(
        message_type=AVVIK,
        sender=sender or faulty.msg_info.receiver,
        receiver=faulty.msg_info.sender,
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        patient=faulty.msg_info.patient if include_patient else None,
        msg_id=msg_id,
        gen_date=gen_date,
        conversation_ref=answer_conversation_ref(faulty),
    )
