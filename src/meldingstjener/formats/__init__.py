"""Business messages (fagmeldinger): MsgHead, AppRec, Dialogmelding, DIALOG_AVVIK; code lists;
validation; the hardened XML parser used for everything read from outside.

Read: :func:`read_msghead`, :func:`read_apprec`, :func:`read_dialog`. Build:
:func:`build_msghead`, :func:`build_apprec`, :func:`build_dialogmelding`,
:func:`build_dialog_svar`, :func:`build_dialog_avvik`. Check: :func:`validate`. Every read
error is a :class:`FormatError` (or :class:`XmlError`) with a stable ``code`` and the 8221 code
a receiver would put in a negative AppRec (``apprec_code``).
"""

from meldingstjener.formats.apprec import (
    AppRec,
    AppRecError,
    AppRecParty,
    AppRecStatus,
    AppRecUnit,
    OriginalMsgId,
    apprec_party_from,
    build_apprec,
    read_apprec,
    serialize_apprec,
)
from meldingstjener.formats.codelists import CodeList, code_list, message_type_name
from meldingstjener.formats.dialog import (
    Attachment,
    Dialogmelding,
    DialogMessage,
    Foresporsel,
    Notat,
    RelatedRole,
    build_dialog_avvik,
    build_dialog_svar,
    build_dialogmelding,
    dialog_msghead,
    dialogmelding_of,
    read_dialog,
)
from meldingstjener.formats.errors import (
    FormatError,
    InvalidValue,
    MarkupInValue,
    MissingElement,
    UnknownAppRecStatus,
    UnknownMessageFormat,
    UnsupportedVersion,
)
from meldingstjener.formats.msghead import (
    ConversationRef,
    Document,
    MsgHead,
    MsgInfo,
    OtherReceiver,
    RefDoc,
    answer_conversation_ref,
    build_msghead,
    copy_receiver,
    read_msghead,
)
from meldingstjener.formats.parties import (
    Address,
    HealthcareProfessional,
    Ident,
    Organisation,
    Party,
    Patient,
    Person,
)
from meldingstjener.formats.validation import Problem, ValidationReport, validate
from meldingstjener.formats.xmlparse import XmlError, XmlMalformed, XmlRefused, parse_xml
from meldingstjener.formats.xmlutil import Coded

__all__ = [
    "Address",
    "AppRec",
    "AppRecError",
    "AppRecParty",
    "AppRecStatus",
    "AppRecUnit",
    "Attachment",
    "CodeList",
    "Coded",
    "ConversationRef",
    "DialogMessage",
    "Dialogmelding",
    "Document",
    "Foresporsel",
    "FormatError",
    "HealthcareProfessional",
    "Ident",
    "InvalidValue",
    "MarkupInValue",
    "MissingElement",
    "MsgHead",
    "MsgInfo",
    "Notat",
    "Organisation",
    "OriginalMsgId",
    "OtherReceiver",
    "Party",
    "Patient",
    "Person",
    "Problem",
    "RefDoc",
    "RelatedRole",
    "UnknownAppRecStatus",
    "UnknownMessageFormat",
    "UnsupportedVersion",
    "ValidationReport",
    "XmlError",
    "XmlMalformed",
    "XmlRefused",
    "answer_conversation_ref",
    "apprec_party_from",
    "build_apprec",
    "build_dialog_avvik",
    "build_dialog_svar",
    "build_dialogmelding",
    "build_msghead",
    "code_list",
    "copy_receiver",
    "dialog_msghead",
    "dialogmelding_of",
    "message_type_name",
    "parse_xml",
    "read_apprec",
    "read_dialog",
    "read_msghead",
    "serialize_apprec",
    "validate",
]
