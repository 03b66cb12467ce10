"""Validation of business messages in layers, as a help desk would check them.

1. ``structure``: built-in rules on the element tree (mandatory elements, supported versions,
   known status codes), each with the path of the offending element.
2. ``xsd``: the official KITH schemas, when a schema directory is given.
3. ``business``: HER-ids present at the right levels, service-based addressing where it is
   mandatory (Henvisning 1.1, Epikrise 1.2, PLO 1.5/1.6), a sane GenDate, a MsgId, codes that
   exist in their code lists.

:func:`validate` never raises for bad input: every finding is a :class:`Problem` (an OSError or
MemoryError of the server's own goes to the caller, see :func:`_guarded`). The report
says whether a patient is present, never who the patient is. Each layer lists at most
:data:`MAX_PROBLEMS_PER_LAYER` problems and then one saying more were cut: a hostile document
of 16,000 faulty siblings is not worth 16,000 lines, nor the time to locate each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lxml import etree

from meldingstjener.formats.apprec import (
    AppRec,
    AppRecStatus,
    apprec_from_element,
    apprec_party_from_element,
    apprec_version_of,
)
from meldingstjener.formats.codelists import (
    APPREC_ERRORS,
    APPREC_STATUS,
    MESSAGE_TYPES,
    code_list,
    oid_of,
)
from meldingstjener.formats.dialog import (
    DIALOG_TYPE_VERSION,
    DIALOG_VERSION_BY_NAMESPACE,
    SVAR,
    dialogmelding_from_element,
)
from meldingstjener.formats.errors import FormatError
from meldingstjener.formats.msghead import (
    MSGHEAD_VERSION,
    NOT_A_TYPE,
    MsgHead,
    message_type_code,
    msghead_from_element,
    organisation_from_element,
)
from meldingstjener.formats.parties import Ident, Organisation, Party
from meldingstjener.formats.repeats import APPREC_ONCE, MSGHEAD_ONCE, repeats
from meldingstjener.formats.xmlparse import DEFAULT_MAX_BYTES, XmlError, parse_xml, parse_xml_file
from meldingstjener.formats.xmlutil import (
    NS_APPREC_10,
    NS_APPREC_11,
    NS_BASE64,
    NS_DIALOG_10,
    NS_DIALOG_11,
    NS_FK1,
    NS_MSGHEAD,
    ElementPaths,
    child,
    children,
    elements,
    is_base64_text,
    local_name,
    namespace,
    own_text,
    path_of,
    plain_text,
    qname,
    text,
    v_of,
)
from meldingstjener.formats.xsd import SchemaError, schema_set
from meldingstjener.model import HerId, InvalidHerId, PartyRef
from meldingstjener.model.privacy import passed_through

ERROR = "error"
WARNING = "warning"
log = logging.getLogger(__name__)

MAX_PROBLEMS_PER_LAYER = 100
TOO_MANY_PROBLEMS = "too-many-problems"
INTERNAL_ERROR = "internal-error"

# Content namespaces of the message versions where service-based addressing is mandatory.
_SERVICE_ADDRESSING_REQUIRED = (
    ("Henvisning 1.1", "http://www.kith.no/xmlstds/henvisning/2012-02-15"),
    ("Epikrise 1.2", "http://www.kith.no/xmlstds/epikrise/2012-02-15"),
)
_PLO_PREFIX = "http://www.kith.no/xmlstds/po/"
_PLO_VERSIONS = {"2009-06-30": "PLO 1.5", "2012-04-01": "PLO 1.6"}
_FUTURE_SLACK = timedelta(days=1)
_EARLIEST_GEN_DATE = datetime(1990, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: which layer found it, a stable code, where, what, and how bad."""

    layer: str
    code: str
    path: str
    message: str
    severity: str = ERROR

    def as_dict(self) -> dict[str, str]:
        return {
            "layer": self.layer,
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


@dataclass(frozen=True, slots=True)
class ElementPath:
    """Where a problem is, as an element and a suffix (``/@V``, ``/Ident``): its readable path
    is worked out only for a problem the report keeps."""

    element: etree._Element
    suffix: str = ""


def at(element: etree._Element, suffix: str = "") -> ElementPath:
    return ElementPath(element, suffix)


@dataclass
class ValidationReport:
    """What was found in one document. ``well_formed`` is False when it is not XML at all."""

    format: str | None = None
    type: str | None = None
    type_name: str | None = None
    version: str | None = None
    content: str | None = None
    # the namespaces of the document's root and of each XML business document it carries (a
    # MsgHead's Document/RefDoc/Content), which tell the agreed binding it goes by
    namespaces: tuple[str, ...] = ()
    sender: PartyRef = field(default_factory=PartyRef)
    receiver: PartyRef = field(default_factory=PartyRef)
    patient_present: bool = False
    problems: list[Problem] = field(default_factory=list)
    well_formed: bool = True
    # The read model, when the document could be read: callers that route the message use it
    # instead of parsing (and decoding attachments) a second time. Not part of ``as_dict``.
    msghead: MsgHead | None = field(default=None, repr=False, compare=False)
    apprec: AppRec | None = field(default=None, repr=False, compare=False)
    # problems found per layer (kept or not), the index of each layer's "more were cut"
    # problem, and the paths of the document's elements, numbered once per parent
    _found: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _cut_at: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _paths: ElementPaths = field(default_factory=ElementPaths, repr=False, compare=False)

    @property
    def valid(self) -> bool:
        return self.well_formed and not any(p.severity == ERROR for p in self.problems)

    def add(
        self,
        layer: str,
        code: str,
        path: str | ElementPath,
        message: str,
        severity: str = ERROR,
    ) -> None:
        """Keep a problem, unless its layer has :data:`MAX_PROBLEMS_PER_LAYER` already."""
        found = self._found.get(layer, 0) + 1
        self._found[layer] = found
        if found > MAX_PROBLEMS_PER_LAYER:
            self._cut(layer, severity)
            return
        if isinstance(path, ElementPath):
            path = self._paths.of(path.element) + path.suffix
        self.problems.append(Problem(layer, code, path, message, severity))

    def _cut(self, layer: str, severity: str) -> None:
        """One problem says the layer's list was cut; an error among those cut makes it an
        error, so the report is no more valid for the cut than it was for the problems."""
        index = self._cut_at.get(layer)
        if index is None:
            self._cut_at[layer] = len(self.problems)
            self.problems.append(
                Problem(
                    layer,
                    TOO_MANY_PROBLEMS,
                    "/",
                    f"more than {MAX_PROBLEMS_PER_LAYER} problems in the {layer} layer: "
                    "the rest are not listed",
                    severity,
                )
            )
        elif severity == ERROR and self.problems[index].severity != ERROR:
            self.problems[index] = dataclasses.replace(self.problems[index], severity=ERROR)

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "format": self.format,
            "type": self.type,
            "type_name": self.type_name,
            "version": self.version,
            "content": self.content,
            "sender": self.sender.as_dict(),
            "receiver": self.receiver.as_dict(),
            "patient_present": self.patient_present,
            "problems": [p.as_dict() for p in self.problems],
        }


def validate(
    data: bytes | os.PathLike[str],
    schema_dir: Path | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ValidationReport:
    """Validate one document (bytes, or a file read by the parser in pieces) in all layers;
    see the module docstring."""
    report = ValidationReport()
    try:
        if isinstance(data, os.PathLike):
            root = parse_xml_file(data, max_bytes=max_bytes)
        else:
            root = parse_xml(data, max_bytes=max_bytes)
    except XmlError as exc:
        report.well_formed = False
        report.add("xml", exc.code, "/", str(exc))
        return report
    try:
        _validate_layers(root, data, schema_dir, report)
    finally:
        # the numbered paths hold elements, and so the tree: not for as long as the report
        report._paths = ElementPaths()
    return report


# The namespaces a problem's text may name: any other is the sender's own text, as the root
# element's name is (<PATIENTNAME-Nordmann xmlns="urn:kari"/>), which no text names.
_TOLD_NAMESPACES = frozenset(
    (NS_MSGHEAD, NS_APPREC_10, NS_APPREC_11, NS_DIALOG_10, NS_DIALOG_11, NS_FK1, NS_BASE64)
)


def _namespace_told(uri: str | None) -> str:
    if uri is None:
        return "no namespace"
    return f"namespace {uri!r}" if uri in _TOLD_NAMESPACES else "an unknown namespace"


def _validate_layers(
    root: etree._Element,
    data: bytes | os.PathLike[str],
    schema_dir: Path | None,
    report: ValidationReport,
) -> None:
    if namespace(root) == NS_MSGHEAD and local_name(root) == "MsgHead":
        report.namespaces = _namespaces(root)
        _guarded("structure", report, _validate_msghead, root, report)
    elif namespace(root) in (NS_APPREC_10, NS_APPREC_11) and local_name(root) == "AppRec":
        report.namespaces = (namespace(root) or "",)
        _guarded("structure", report, _validate_apprec, root, report)
    else:
        report.add(
            "structure",
            "unknown-format",
            at(root),
            f"not a business message this server reads: its root element is in "
            f"{_namespace_told(namespace(root))} (expected MsgHead 1.2 or AppRec 1.0/1.1)",
        )
        return
    if schema_dir is not None:
        _guarded("xsd", report, _validate_xsd, root, data, schema_dir, report)


def _guarded(layer: str, report: ValidationReport, check: Callable[..., None], *args: Any) -> None:
    """Run one layer's ``check``; an error nobody foresaw in it (a fault of ours, or of a
    library, on a document nobody thought of) is that layer's ``internal-error`` problem,
    naming the error's class only: its text may quote the document (lxml's "Invalid tag name"
    quotes an element name the sender made up). So the document does not fail its receipt every
    time it is resent. It is logged, at error level, by its class and the lines it passed
    through, never its text. An ``internal-error`` is ours, not the sender's fault: the server
    does not reject the message for it (see ``receipts.judge``).

    An OSError (a spooled payload the XSD layer re-reads, too many open files) or a
    MemoryError says nothing of the document: it goes to the caller, which answers as for any
    failure of its own (a 503 the sender retries), instead of a permanent rejection."""
    try:
        check(*args)
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        log.error(
            "the %s checks failed with an unexpected %s; the finding is internal-error\n%s",
            layer,
            type(exc).__name__,
            passed_through(exc),
        )
        report.add(
            layer,
            INTERNAL_ERROR,
            "/",
            f"the {layer} checks failed with an unexpected {type(exc).__name__}",
        )


# ------------------------------------------------------------------------------------- MsgHead


def _validate_msghead(root: etree._Element, report: ValidationReport) -> None:
    report.format = "MsgHead"
    info = child(root, NS_MSGHEAD, "MsgInfo")
    type_element = child(info, NS_MSGHEAD, "Type")
    sent_type = v_of(type_element) if type_element is not None else None
    report.type = message_type_code(sent_type)
    report.type_name = (
        type_element.get("DN") if type_element is not None and report.type == sent_type else None
    ) or code_list(MESSAGE_TYPES).text(report.type)
    report.version = _lenient_text(info, NS_MSGHEAD, "MIGversion")
    report.sender = _lenient_party(info, "Sender")
    report.receiver = _lenient_party(info, "Receiver")
    report.patient_present = child(info, NS_MSGHEAD, "Patient") is not None

    _msghead_structure(root, info, report)
    _report_repeats(report, root, NS_MSGHEAD, MSGHEAD_ONCE)
    try:
        head = msghead_from_element(root, decode_attachments=False)
    except FormatError as exc:
        _report_read_error(report, exc, "/MsgHead")
        return
    report.msghead = head
    content = _content_root(root)
    if content is not None:
        report.content = _describe_content(content)
        if local_name(content) == "Dialogmelding":
            _dialog_structure(content, head, report)
    _msghead_business(head, content, report)


def _lenient_text(parent: etree._Element | None, ns: str, local: str) -> str | None:
    """The report's summary fields are read before the layers run and must not raise: a value
    holding markup reads as absent here, and the reader reports it as a structure problem."""
    try:
        return text(parent, ns, local)
    except FormatError:
        return None


def _lenient_party(info: etree._Element | None, local: str) -> PartyRef:
    """The party's HER-ids for the report, or none when its tree holds a value with markup:
    a HER-id read one way of two is not one to route or check by (the reader reports it)."""
    try:
        organisation = organisation_from_element(
            child(child(info, NS_MSGHEAD, local), NS_MSGHEAD, "Organisation")
        )
    except FormatError:
        return PartyRef()
    return Party(organisation=organisation).her_ids if organisation is not None else PartyRef()


def _require(
    report: ValidationReport, parent: etree._Element, local: str, what: str
) -> etree._Element | None:
    found = child(parent, NS_MSGHEAD, local)
    if found is None or (len(found) == 0 and not (found.text or "").strip() and not found.attrib):
        report.add(
            "structure",
            "missing-element",
            at(parent, f"/{local}"),
            f"{what} is missing ({local} is mandatory)",
        )
        return None
    return found


def _msghead_structure(
    root: etree._Element, info: etree._Element | None, report: ValidationReport
) -> None:
    if info is None:
        report.add("structure", "missing-element", "/MsgHead/MsgInfo", "MsgInfo is missing")
        return
    mig = _require(report, info, "MIGversion", "the MsgHead version")
    mig_text = plain_text(mig) if mig is not None else None
    if mig is not None and mig_text is None:
        report.add(
            "structure",
            "markup-in-value",
            at(mig),
            "MIGversion holds a comment or markup where only text is allowed",
        )
    elif mig is not None and (mig_text or "").strip() != MSGHEAD_VERSION:
        report.add(
            "structure",
            "unsupported-version",
            at(mig),
            f"MIGversion {(mig_text or '').strip()!r} is not supported "
            f"(expected {MSGHEAD_VERSION!r})",
        )
    type_element = _require(report, info, "Type", "the message type")
    if type_element is not None and not v_of(type_element):
        report.add(
            "structure",
            "missing-element",
            at(type_element, "/@V"),
            "the message type has no code (attribute V)",
        )
    elif type_element is not None and message_type_code(v_of(type_element)) == NOT_A_TYPE:
        report.add(
            "structure",
            "invalid-code",
            at(type_element, "/@V"),
            "the message type (attribute V) is no code: capital letters, digits and _ only, "
            "at most 40",
        )
    _require(report, info, "GenDate", "the generation time")
    _require(report, info, "MsgId", "the message id")
    for local in ("Sender", "Receiver"):
        party = _require(report, info, local, local.lower())
        if party is not None:
            organisation = _require(
                report, party, "Organisation", f"the {local.lower()}'s organisation"
            )
            if organisation is not None:
                _organisation_structure(organisation, report)
    documents = children(root, NS_MSGHEAD, "Document")
    if not documents:
        report.add(
            "structure",
            "missing-element",
            "/MsgHead/Document",
            "the message has no Document (at least one is mandatory)",
        )
    for document in documents:
        _document_structure(document, report)


def _organisation_structure(organisation: etree._Element, report: ValidationReport) -> None:
    _require(report, organisation, "OrganisationName", "the organisation name")
    idents = children(organisation, NS_MSGHEAD, "Ident")
    if not idents:
        report.add(
            "structure",
            "missing-element",
            at(organisation, "/Ident"),
            "the organisation has no Ident (Id and TypeId)",
        )
    for ident in idents:
        _require(report, ident, "Id", "the identifier")
        _require(report, ident, "TypeId", "the identifier type")
    nested = child(organisation, NS_MSGHEAD, "Organisation")
    if nested is not None:
        _organisation_structure(nested, report)
    hcp = child(organisation, NS_MSGHEAD, "HealthcareProfessional")
    if hcp is not None and not children(hcp, NS_MSGHEAD, "Ident"):
        report.add(
            "structure",
            "missing-element",
            at(hcp, "/Ident"),
            "the health professional has no Ident",
        )


def _document_structure(document: etree._Element, report: ValidationReport) -> None:
    ref = _require(report, document, "RefDoc", "the document reference")
    if ref is None:
        return
    msg_type = _require(report, ref, "MsgType", "the document type (XML or A)")
    if msg_type is not None and v_of(msg_type) not in ("XML", "A"):
        report.add(
            "structure",
            "invalid-value",
            at(msg_type),
            f"document MsgType {v_of(msg_type)!r} is neither XML nor A (attachment)",
        )
    content = child(ref, NS_MSGHEAD, "Content")
    file_reference = child(ref, NS_MSGHEAD, "FileReference")
    if content is None and file_reference is None:
        report.add(
            "structure",
            "missing-element",
            at(ref, "/Content"),
            "the document has neither Content nor FileReference",
            WARNING,
        )
    if content is not None:
        container = child(content, NS_BASE64, "Base64Container")
        is_attachment = msg_type is not None and v_of(msg_type) == "A"
        if is_attachment and container is not None and not is_base64_text(own_text(container)):
            report.add(
                "structure",
                "invalid-value",
                at(container),
                "the attachment is not valid base64",
            )


def _report_repeats(
    report: ValidationReport, root: etree._Element, ns: str, once: dict[str, tuple[str, ...]]
) -> None:
    """What the readers take the first of, given twice; a second HER-id at one level."""
    for found in repeats(root, ns, once):
        severity = ERROR if found.error else WARNING
        report.add("structure", found.code, at(found.element), found.message, severity)


def _content_root(root: etree._Element) -> etree._Element | None:
    for document in children(root, NS_MSGHEAD, "Document"):
        ref = child(document, NS_MSGHEAD, "RefDoc")
        msg_type = child(ref, NS_MSGHEAD, "MsgType")
        if msg_type is None or v_of(msg_type) != "XML":
            continue
        content = child(ref, NS_MSGHEAD, "Content")
        for element in content if content is not None else ():
            if isinstance(element.tag, str):
                return element
    return None


def _content_documents(root: etree._Element) -> Iterator[etree._Element]:
    """The elements in a MsgHead's Document/RefDoc/Content, in document order."""
    for document in children(root, NS_MSGHEAD, "Document"):
        content = child(child(document, NS_MSGHEAD, "RefDoc"), NS_MSGHEAD, "Content")
        for element in content if content is not None else ():
            if isinstance(element.tag, str):
                yield element


def _namespaces(root: etree._Element) -> tuple[str, ...]:
    """The MsgHead's namespace and those of the XML documents in its RefDoc/Content, once
    each, in document order."""
    found = [namespace(root) or ""]
    found.extend(namespace(e) or "" for e in _content_documents(root) if namespace(e))
    return tuple(dict.fromkeys(found))


def _describe_content(content: etree._Element) -> str:
    version = DIALOG_VERSION_BY_NAMESPACE.get(namespace(content) or "")
    if local_name(content) == "Dialogmelding" and version:
        return f"Dialogmelding {version}"
    return f"{local_name(content)} ({namespace(content)})"


def _dialog_structure(content: etree._Element, head: MsgHead, report: ValidationReport) -> None:
    try:
        dialog = dialogmelding_from_element(content)
    except FormatError as exc:
        _report_read_error(report, exc, path_of(content))
        return
    path = path_of(content)
    if dialog.foresporsler and dialog.notater:
        report.add(
            "structure",
            "invalid-value",
            path,
            "a Dialogmelding holds either Foresporsel or Notat, not both",
        )
    if not dialog.foresporsler and not dialog.notater:
        report.add(
            "structure",
            "missing-element",
            path,
            "the Dialogmelding holds neither Foresporsel nor Notat",
        )
    expected = DIALOG_TYPE_VERSION.get(head.message_type or "")
    if expected is not None and expected != dialog.version:
        report.add(
            "business",
            "version-mismatch",
            path,
            f"{head.message_type} is sent as Dialogmelding {expected}, "
            f"but the content is Dialogmelding {dialog.version}",
        )


def _msghead_business(
    head: MsgHead, content: etree._Element | None, report: ValidationReport
) -> None:
    info = head.msg_info
    if head.message_type not in code_list(MESSAGE_TYPES) and head.message_type != NOT_A_TYPE:
        report.add(
            "business",
            "unknown-code",
            "/MsgHead/MsgInfo/Type",
            f"message type {head.message_type!r} is not in code list 8279",
            WARNING,
        )
    _gen_date_rule(info.gen_date, "/MsgHead/MsgInfo/GenDate", report)
    for local, party in (("Sender", info.sender), ("Receiver", info.receiver)):
        _her_rules(party.organisation, f"/MsgHead/MsgInfo/{local}/Organisation", report)
        refs = party.her_ids
        if refs.organisation is None and refs.service is None:
            report.add(
                "business",
                "missing-her-id",
                f"/MsgHead/MsgInfo/{local}/Organisation",
                f"the {local.lower()} has no HER-id at organisation or service level "
                "(Ident with TypeId V=HER)",
            )
        elif refs.organisation is None:
            # Seen in practice (e.g. Helsenorge: the organisation by ENH, the service by HER).
            report.add(
                "business",
                "missing-her-id",
                f"/MsgHead/MsgInfo/{local}/Organisation",
                f"the {local.lower()} organisation has no HER-id (only its service has one)",
                WARNING,
            )
    required_by = _service_addressing_required_by(content)
    if head.receiver_her_ids.service is None:
        if required_by:
            report.add(
                "business",
                "service-addressing-required",
                "/MsgHead/MsgInfo/Receiver/Organisation/Organisation",
                f"service-based addressing is mandatory for {required_by}: the receiver "
                "needs a service (nested Organisation) with a HER-id",
            )
        else:
            report.add(
                "business",
                "service-addressing-recommended",
                "/MsgHead/MsgInfo/Receiver/Organisation/Organisation",
                "the receiver is not addressed to a service (recommended for all messages)",
                WARNING,
            )
    if head.message_type == SVAR and head.conversation_ref is None:
        report.add(
            "business",
            "missing-conversation-ref",
            "/MsgHead/MsgInfo/ConversationRef",
            "an answer (DIALOG_SVAR) should point at the question in ConversationRef",
            WARNING,
        )


def _her_rules(organisation: Organisation, path: str, report: ValidationReport) -> None:
    idents: list[tuple[Ident, str]] = [(i, path) for i in organisation.idents]
    if organisation.organisation is not None:
        _her_rules(organisation.organisation, path + "/Organisation", report)
    if organisation.healthcare_professional is not None:
        hcp_path = path + "/HealthcareProfessional"
        idents.extend((i, hcp_path) for i in organisation.healthcare_professional.idents)
    for ident, where in idents:
        if ident.is_her:
            try:
                HerId(ident.id)
            except InvalidHerId:
                report.add(
                    "business",
                    "invalid-her-id",
                    where + "/Ident",
                    "a HER-id must be 1 to 12 digits and not zero",
                )


def _service_addressing_required_by(content: etree._Element | None) -> str | None:
    if content is None:
        return None
    ns = namespace(content) or ""
    for name, required_ns in _SERVICE_ADDRESSING_REQUIRED:
        if ns == required_ns:
            return name
    if ns.startswith(_PLO_PREFIX):
        return _PLO_VERSIONS.get(ns.rsplit("/", 1)[-1])
    return None


def _gen_date_rule(value: str, path: str, report: ValidationReport) -> None:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if when.tzinfo is None:
            # no offset: the sender's local time, taken as ours (year 1 has no local time
            # before it: ValueError)
            when = when.astimezone()
    except (ValueError, OverflowError):
        report.add(
            "business",
            "invalid-gen-date",
            path,
            "GenDate is not a date and time (xs:dateTime, e.g. 2025-05-13T11:51:01)",
        )
        return
    now = datetime.now(UTC)
    if when > now + _FUTURE_SLACK:
        report.add(
            "business",
            "gen-date-in-future",
            path,
            "GenDate is more than a day in the future (is the sender's clock wrong?)",
        )
    elif when < _EARLIEST_GEN_DATE:
        report.add("business", "gen-date-too-old", path, "GenDate is before 1990")


def _report_read_error(report: ValidationReport, exc: FormatError, default_path: str) -> None:
    message = str(exc)
    if exc.path and message.endswith(f" (at {exc.path})"):
        message = message[: -len(f" (at {exc.path})")]
    # The structure layer usually found the same fault already; do not report it twice.
    path = exc.path or default_path
    if any(p.path == path and p.code == exc.code for p in report.problems):
        return
    report.add("structure", exc.code, path, message)


# -------------------------------------------------------------------------------------- AppRec


def _validate_apprec(root: etree._Element, report: ValidationReport) -> None:
    report.format = "AppRec"
    ns = namespace(root) or ""
    msg_type = child(root, ns, "MsgType")
    report.type = message_type_code(v_of(msg_type) if msg_type is not None else None) or "APPREC"
    if report.type == NOT_A_TYPE and msg_type is not None:
        report.add(
            "structure",
            "invalid-code",
            at(msg_type, "/@V"),
            "the message type (attribute V) is no code: capital letters, digits and _ only, "
            "at most 40",
        )
    report.type_name = code_list(MESSAGE_TYPES).text("APPREC")
    report.version = _lenient_text(root, ns, "MIGversion")
    try:
        apprec_version_of(root)
    except FormatError as exc:
        _report_read_error(report, exc, "/AppRec")
        return
    _apprec_structure(root, ns, report)
    _report_repeats(report, root, ns, APPREC_ONCE)
    for local in ("Sender", "Receiver"):
        try:
            refs = apprec_party_from_element(root, ns, local).her_ids
        except FormatError:
            continue  # already reported by the structure layer
        if local == "Sender":
            report.sender = refs
        else:
            report.receiver = refs
    try:
        apprec = apprec_from_element(root)
        report.apprec = apprec
    except FormatError as exc:
        _report_read_error(report, exc, "/AppRec")
        return
    report.content = f"AppRec {apprec.version}"
    report.sender = apprec.sender.her_ids
    report.receiver = apprec.receiver.her_ids
    _apprec_business(apprec, report)


def _apprec_structure(root: etree._Element, ns: str, report: ValidationReport) -> None:
    for local in ("MsgType", "GenDate", "Id", "Sender", "Receiver", "Status", "OriginalMsgId"):
        if child(root, ns, local) is None:
            report.add(
                "structure",
                "missing-element",
                f"/AppRec/{local}",
                f"{local} is missing (mandatory in AppRec)",
            )
    status = child(root, ns, "Status")
    if status is not None and v_of(status) not in code_list(APPREC_STATUS):
        report.add(
            "structure",
            "unknown-status",
            at(status),
            f"Status {v_of(status)!r} is not in code list 8258 (1 OK, 2 Avvist, "
            "3 OK, feil i delmelding)",
        )
    for local in ("Sender", "Receiver"):
        party = child(root, ns, local)
        if party is not None and child(child(party, ns, "HCP"), ns, "Inst") is None:
            report.add(
                "structure",
                "missing-element",
                f"/AppRec/{local}/HCP/Inst",
                f"the {local.lower()} has no HCP/Inst",
            )
    original = child(root, ns, "OriginalMsgId")
    for local in ("MsgType", "IssueDate", "Id"):
        if original is not None and child(original, ns, local) is None:
            report.add(
                "structure",
                "missing-element",
                f"/AppRec/OriginalMsgId/{local}",
                f"OriginalMsgId has no {local}",
            )
    for element in elements(root):
        if element.tag == qname(ns, "Error") and not v_of(element):
            report.add(
                "structure",
                "missing-element",
                at(element, "/@V"),
                "an Error has no code (attribute V)",
            )


def _apprec_business(apprec: AppRec, report: ValidationReport) -> None:
    _gen_date_rule(apprec.gen_date, "/AppRec/GenDate", report)
    if apprec.status is not AppRecStatus.OK and not apprec.errors:
        report.add(
            "business",
            "missing-error",
            "/AppRec/Error",
            f"status {apprec.status.value} ({apprec.status.text}) needs at least one "
            "Error saying what was wrong",
        )
    if apprec.status is AppRecStatus.OK and apprec.errors:
        report.add(
            "business",
            "unexpected-error",
            "/AppRec/Error",
            "status 1 (OK) with Error elements: did the sender mean status 3?",
            WARNING,
        )
    errors_oid = oid_of(APPREC_ERRORS)
    for index, error in enumerate(apprec.errors, start=1):
        if error.code_list == errors_oid and error.code not in code_list(APPREC_ERRORS):
            report.add(
                "business",
                "unknown-code",
                f"/AppRec/Error[{index}]",
                f"error code {error.code!r} is not in code list 8221",
                WARNING,
            )
    for local, party in (("Sender", apprec.sender), ("Receiver", apprec.receiver)):
        if party.her_ids.organisation is None:
            report.add(
                "business",
                "missing-her-id",
                f"/AppRec/{local}/HCP/Inst",
                f"the {local.lower()} institution has no HER-id (TypeId V=HER); "
                "matching the receipt to a party relies on it",
                WARNING,
            )
    if not apprec.original_msg_id.issue_date:
        return
    try:
        datetime.fromisoformat(apprec.original_msg_id.issue_date.replace("Z", "+00:00"))
    except ValueError:
        report.add(
            "business",
            "invalid-value",
            "/AppRec/OriginalMsgId/IssueDate",
            "OriginalMsgId IssueDate is not a date and time",
        )


# ----------------------------------------------------------------------------------------- XSD


def _validate_xsd(
    root: etree._Element,
    source: bytes | os.PathLike[str],
    schema_dir: Path,
    report: ValidationReport,
) -> None:
    try:
        schemas = schema_set(schema_dir)
    except SchemaError as exc:
        report.add("xsd", exc.code, "/", str(exc))
        return
    # One rule for a document with no schema in the directory, the message's own or a business
    # document in its RefDoc/Content: not validated, a warning, never the sender's fault. A
    # business document whose namespace has a schema is held to it as MsgHead's strict
    # wildcard holds it: its root element must be declared there (the wildcard is compiled lax
    # for the others, see xsd._with_lax_content), and it is validated.
    if not schemas.covers(namespace(root)):
        _no_schema(report, root, schema_dir)
        return
    for document in _content_documents(root):
        if not schemas.covers(namespace(document)):
            _no_schema(report, document, schema_dir)
        elif not schemas.declares(document.tag):
            report.add(
                "xsd",
                "xsd-invalid",
                at(document),
                "the schema of the business document's namespace declares no such element, "
                "which the strict wildcard of RefDoc/Content demands",
            )
    # one more than the report keeps: the report then says that more were cut
    for issue in schemas.validate(root, source=source, limit=MAX_PROBLEMS_PER_LAYER + 1):
        where = issue.path or (f"line {issue.line}" if issue.line else "/")
        report.add("xsd", "xsd-invalid", where, issue.message)


def _no_schema(report: ValidationReport, element: etree._Element, schema_dir: Path) -> None:
    report.add(
        "xsd",
        "no-schema",
        at(element),
        f"no schema for {_namespace_told(namespace(element))} in {schema_dir}: not validated",
        WARNING,
    )
