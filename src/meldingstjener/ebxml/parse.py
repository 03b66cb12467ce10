"""Reading an ebXML envelope into :class:`~meldingstjener.ebxml.values.Envelope`, or saying
precisely what is wrong with it as an ebMS 2.0 error code.

Which code for which defect (ebMS 2.0 section 4.2.3.4 gives the meanings; the choices are ours
where the spec leaves room, and are kept in this one place):

============================================================  ====================
defect                                                        code
============================================================  ====================
not well-formed, or refused by the hardened parser            OtherXml
root not a SOAP 1.1 Envelope; Header or Body missing           OtherXml
MessageHeader missing or twice; a required element missing     OtherXml
  or empty (From, To, PartyId, CPAId, ConversationId,
  Service, Action, MessageData, MessageId, Timestamp,
  ErrorList/Error, AckRequested/@signed, Reference/@href)
eb:version missing                                             OtherXml
a header value longer than 255 characters; an ebXML block       OtherXml
  (MessageHeader, ...) in another namespace with mustUnderstand
  (a free-text eb:Description is cut to 255 instead)
SOAP 1.2 envelope; eb:version other than 2.0                   NotSupported
a header block we do not implement with mustUnderstand="1"     NotSupported
  (eb:MessageOrder, eb:StatusRequest, WS-Security, ...)
ebMS service action other than Acknowledgment/MessageError     NotSupported
Timestamp/TimeToLive not a date-time; PartyId type HER but     ValueNotRecognized
  not a HER-id; a boolean or severity value we cannot read
PartyId or Service without type whose value is not a URI       Inconsistent
  (ebMS 2.0 3.1.1.1 and 3.1.5 name Inconsistent for this)
an element with SOAP:actor nextMSH or next other than the      SecurityFailure
  header blocks eb:AckRequested and eb:SyncReply (the
  signature leaves such elements out); a comment or markup
  inside a value we read (canonicalisation drops comments)
Acknowledgment signal without eb:Acknowledgment or without     Inconsistent
  RefToMessageId; MessageError without eb:ErrorList;
  eb:Acknowledgment/RefToMessageId != MessageData's
============================================================  ====================

Deliberately tolerated (peers in the field do these and the meaning is still clear):
``mustUnderstand="true"`` (SOAP 1.1 says "1"), timestamps with seven fraction digits or without a
zone, ErrorList highestSeverity that disagrees with its errors or is missing (then the errors
decide), severities in another case ("error"), AckRequested on a signal, an
Acknowledgment piggy-backed on a business message, extra PartyIds of other types, an
eb:Description that is not HITS 1210 JSON, an unknown errorCode in a received ErrorList (kept as
``reported_code`` with code Unknown).

Matching signals to the messages we sent is the engine's job; here a signal only has to be
readable. A NotSupported envelope whose MessageHeader can be read on its own
(:func:`readable_header`) is answered with a MessageError about it by the engine.
"""

from __future__ import annotations

import re
from datetime import datetime

from lxml import etree

from meldingstjener.contentid import is_cid_url
from meldingstjener.ebxml.codes import (
    ACTION_ACKNOWLEDGMENT,
    ACTION_MESSAGE_ERROR,
    ACTOR_NEXT_MSH,
    ACTOR_SOAP_NEXT,
    ACTOR_TO_PARTY_MSH,
    DS_NS,
    EB_NS,
    EB_VERSION,
    ERROR_CODE_CONTEXT,
    PARTY_TYPE_HER,
    SOAP12_NS,
    SOAP_NS,
    XLINK_NS,
    EbxmlError,
    ErrorCode,
    ErrorDetail,
    Severity,
    cut_description,
)
from meldingstjener.ebxml.description import MshDescription
from meldingstjener.ebxml.ids import parse_timestamp
from meldingstjener.ebxml.values import (
    AcknowledgmentInfo,
    Envelope,
    ErrorList,
    ManifestReference,
    MessageHeader,
    Party,
    SignedReference,
    content_id_from_href,
)
from meldingstjener.formats.xmlparse import XmlError, parse_xml
from meldingstjener.formats.xmlutil import plain_text
from meldingstjener.model import HerId, InvalidHerId
from meldingstjener.model.privacy import redact

# the database keeps ids, names and times of the header in columns of 255 characters
MAX_VALUE_CHARS = 255
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S")
# Header blocks addressed to these actors (or to no actor: the ultimate receiver) are ours.
_OUR_ACTORS = frozenset({None, ACTOR_TO_PARTY_MSH, ACTOR_NEXT_MSH, ACTOR_SOAP_NEXT})
_KNOWN_EB_BLOCKS = frozenset(
    {"MessageHeader", "AckRequested", "SyncReply", "Acknowledgment", "ErrorList"}
)
_MH = "//eb:MessageHeader"


def _eb(name: str) -> str:
    return f"{{{EB_NS}}}{name}"


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _short(value: str) -> str:
    """A value quoted for an error text: identifiers only, so a short prefix is enough; anything
    shaped like a national identity number is masked in case a peer put one where it must not."""
    short = value if len(value) <= 60 else value[:57] + "..."
    return repr(redact(short))


def _eb_attr(element: etree._Element, name: str) -> str | None:
    # msg-header-2_0.xsd qualifies attributes (eb:version); some senders leave them bare.
    value = element.get(_eb(name))
    return value if value is not None else element.get(name)


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip() in ("1", "true")


def _soap_actor(element: etree._Element) -> str | None:
    return element.get(f"{{{SOAP_NS}}}actor")


# Header blocks ebMS 2.0 lets each hop change (the signature's XPath filter leaves out every
# element whose SOAP:actor is nextMSH or next, with all it holds): only these, as SOAP:Header's
# own children. Nothing we act on is read from them but their presence.
_HOP_TO_HOP_BLOCKS = frozenset({"AckRequested", "SyncReply"})
_HOP_ACTORS = frozenset({ACTOR_NEXT_MSH, ACTOR_SOAP_NEXT})


def _refuse_hop_to_hop_elements(root: etree._Element, header: etree._Element) -> None:
    """Refuse an element the envelope's signature does not cover where we read what is signed.

    The signature leaves out any element with SOAP:actor nextMSH or next, anywhere. One put
    before a signed element of the same name (an eb:MessageId, a RefToMessageId, a PartyId)
    would be the one read, and a signed envelope of any partner could be made to say another
    message id (a replay past duplicate elimination, or an Acknowledgment of a message that
    never arrived) with its signature intact."""
    for element in root.iter(etree.Element):
        if _soap_actor(element) not in _HOP_ACTORS:
            continue
        qname = etree.QName(element)
        hop_block = qname.namespace == EB_NS and qname.localname in _HOP_TO_HOP_BLOCKS
        if hop_block and element.getparent() is header:
            continue
        raise EbxmlError(
            ErrorCode.SECURITY_FAILURE,
            f"{qname.localname} has SOAP:actor {_soap_actor(element)}: the signature does not "
            "cover it, and only eb:AckRequested and eb:SyncReply may be so",
            f"//{qname.localname}",
        )


def _check_version(element: etree._Element, location: str) -> None:
    version = _eb_attr(element, "version")
    if version is None:
        raise EbxmlError(ErrorCode.OTHER_XML, "the eb:version attribute is missing", location)
    if version.strip() != EB_VERSION:
        raise EbxmlError(
            ErrorCode.NOT_SUPPORTED,
            f"ebMS version {_short(version)} is not supported; only 2.0 is",
            f"{location}/@eb:version",
        )


def _child(parent: etree._Element, name: str, location: str) -> etree._Element:
    element = parent.find(_eb(name))
    if element is None:
        raise EbxmlError(
            ErrorCode.OTHER_XML, f"the required element eb:{name} is missing", location
        )
    return element


def _text(parent: etree._Element, name: str, location: str) -> str:
    where = f"{location}/eb:{name}"
    text = _value(_child(parent, name, where), f"eb:{name}", where).strip()
    if not text:
        raise EbxmlError(ErrorCode.OTHER_XML, f"eb:{name} is empty", where)
    return _bounded(text, f"eb:{name}", where)


def _optional_text(parent: etree._Element, name: str) -> str | None:
    element = parent.find(_eb(name))
    if element is None:
        return None
    text = _value(element, f"eb:{name}", f"eb:{name}").strip() or None
    return None if text is None else _bounded(text, f"eb:{name}", f"eb:{name}")


def _free_text(parent: etree._Element, name: str) -> str | None:
    """An optional eb:Description: free text, cut to ``codes.MAX_DESCRIPTION_CHARS`` rather than
    refused (refusing a MessageError for its text would lose the refusal it carries)."""
    element = parent.find(_eb(name))
    if element is None:
        return None
    text = _value(element, f"eb:{name}", f"eb:{name}").strip()
    return cut_description(text) if text else None


def _value(element: etree._Element, what: str, where: str) -> str:
    """The text of a value element, which holds text only. A comment or processing instruction
    in it is no part of what the signature digests (canonicalisation drops comments), and cut
    the text we read: "abc<!---->xyz" would be read as "abc", a value nobody signed. The rule
    is the business messages' too (:func:`~meldingstjener.formats.xmlutil.plain_text`)."""
    text = plain_text(element)
    if text is None:
        raise EbxmlError(
            ErrorCode.SECURITY_FAILURE,
            f"{what} holds a comment or markup: its signed value is not what would be read",
            where,
        )
    return text


def _bounded(text: str, what: str, where: str) -> str:
    """Ids, names and times in the header are short; a longer one is not a value we keep."""
    if len(text) > MAX_VALUE_CHARS:
        raise EbxmlError(
            ErrorCode.OTHER_XML, f"{what} is longer than {MAX_VALUE_CHARS} characters", where
        )
    return text


def _timestamp(text: str, location: str) -> datetime:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise EbxmlError(
            ErrorCode.VALUE_NOT_RECOGNIZED,
            f"{_short(text)} is not an ISO 8601 date-time",
            location,
        ) from None


def _party(parent: etree._Element, name: str, location: str) -> Party:
    where = f"{location}/eb:{name}"
    element = _child(parent, name, where)
    ids: list[tuple[str | None, str]] = []
    for index, party_id in enumerate(element.findall(_eb("PartyId")), start=1):
        id_where = f"{where}/eb:PartyId[{index}]"
        value = _bounded(_value(party_id, "eb:PartyId", id_where).strip(), "eb:PartyId", id_where)
        if not value:
            raise EbxmlError(ErrorCode.OTHER_XML, "eb:PartyId is empty", id_where)
        id_type = (_eb_attr(party_id, "type") or "").strip() or None
        if id_type is not None and id_type.upper() == PARTY_TYPE_HER:
            id_type = PARTY_TYPE_HER  # "her" and " HER " are checked as HER-ids too
        if id_type is None and not _URI.match(value):
            raise EbxmlError(
                ErrorCode.INCONSISTENT,
                "an eb:PartyId without a type must be a URI",
                id_where,
            )
        if id_type == PARTY_TYPE_HER:
            try:
                value = str(HerId(value))
            except InvalidHerId:
                raise EbxmlError(
                    ErrorCode.VALUE_NOT_RECOGNIZED,
                    f"PartyId of type HER is not a HER-id: {_short(value)}",
                    id_where,
                ) from None
        ids.append((id_type, value))
    if not ids:
        raise EbxmlError(ErrorCode.OTHER_XML, "the required element eb:PartyId is missing", where)
    her = [entry for entry in ids if entry[0] == PARTY_TYPE_HER]
    main = her[0] if her else ids[0]
    others = tuple(entry for entry in ids if entry is not main)
    role = _optional_text(element, "Role")
    return Party(main[1], role, main[0] or "", others)


def _message_header(
    element: etree._Element, *, check_version: bool = True
) -> tuple[MessageHeader, bool]:
    if check_version:
        _check_version(element, _MH)
    service_el = _child(element, "Service", f"{_MH}/eb:Service")
    service = _text(element, "Service", _MH)
    service_type = _eb_attr(service_el, "type")
    if service_type is None and not _URI.match(service):
        raise EbxmlError(
            ErrorCode.INCONSISTENT,
            f"eb:Service {_short(service)} has no type, so it must be a URI",
            f"{_MH}/eb:Service",
        )
    data_where = f"{_MH}/eb:MessageData"
    data = _child(element, "MessageData", data_where)
    timestamp = _timestamp(_text(data, "Timestamp", data_where), f"{data_where}/eb:Timestamp")
    ttl_text = _optional_text(data, "TimeToLive")
    ttl = None if ttl_text is None else _timestamp(ttl_text, f"{data_where}/eb:TimeToLive")
    description = None
    for text_el in element.findall(_eb("Description")):
        description = MshDescription.from_text(text_el.text)
        if description is not None:
            break
    header = MessageHeader(
        from_party=_party(element, "From", _MH),
        to_party=_party(element, "To", _MH),
        cpa_id=_text(element, "CPAId", _MH),
        conversation_id=_text(element, "ConversationId", _MH),
        service=service,
        service_type=service_type,
        action=_text(element, "Action", _MH),
        message_id=_text(data, "MessageId", data_where),
        timestamp=timestamp,
        ref_to_message_id=_optional_text(data, "RefToMessageId"),
        time_to_live=ttl,
        description=description,
    )
    duplicate_elimination = element.find(_eb("DuplicateElimination")) is not None
    return header, duplicate_elimination


def ds_references(parent: etree._Element) -> tuple[SignedReference, ...]:
    """(URI, digest method, digest value) of each ds:Reference child of ``parent``."""
    references = []
    for reference in parent.findall(f"{{{DS_NS}}}Reference"):
        method = reference.find(f"{{{DS_NS}}}DigestMethod")
        value = reference.find(f"{{{DS_NS}}}DigestValue")
        references.append(
            SignedReference(
                reference.get("URI", ""),
                "" if method is None else method.get("Algorithm", ""),
                "" if value is None else "".join((value.text or "").split()),
            )
        )
    return tuple(references)


def _acknowledgment(element: etree._Element) -> AcknowledgmentInfo:
    where = "//eb:Acknowledgment"
    _check_version(element, where)
    from_party = None
    if element.find(_eb("From")) is not None:
        from_party = _party(element, "From", where)
    timestamp = _timestamp(_text(element, "Timestamp", where), f"{where}/eb:Timestamp")
    return AcknowledgmentInfo(
        timestamp=timestamp,
        ref_to_message_id=_text(element, "RefToMessageId", where),
        references=ds_references(element),
        from_party=from_party,
    )


def _severity(value: str | None, location: str) -> Severity:
    if value is None:
        raise EbxmlError(ErrorCode.OTHER_XML, "the severity attribute is missing", location)
    wanted = value.strip().lower()
    try:
        return next(s for s in Severity if s.value.lower() == wanted)  # "error" is Error
    except StopIteration:
        raise EbxmlError(
            ErrorCode.VALUE_NOT_RECOGNIZED,
            f"severity {_short(value)} is neither Warning nor Error",
            location,
        ) from None


def _error_list(element: etree._Element) -> ErrorList:
    where = "//eb:ErrorList"
    _check_version(element, where)
    stated = _eb_attr(element, "highestSeverity")
    errors = []
    for index, error in enumerate(element.findall(_eb("Error")), start=1):
        error_where = f"{where}/eb:Error[{index}]"
        reported = _eb_attr(error, "errorCode")
        if not reported or not reported.strip():
            raise EbxmlError(ErrorCode.OTHER_XML, "eb:Error has no errorCode", error_where)
        reported = reported.strip()
        context = _eb_attr(error, "codeContext")
        code = ErrorCode.UNKNOWN
        if context is None or context.strip() == ERROR_CODE_CONTEXT:
            code = next((c for c in ErrorCode if c.value == reported), ErrorCode.UNKNOWN)
        errors.append(
            ErrorDetail(
                code=code,
                severity=_severity(_eb_attr(error, "severity"), f"{error_where}/@eb:severity"),
                location=_eb_attr(error, "location"),
                description=_free_text(error, "Description"),
                reported_code=None if code.value == reported else reported,
            )
        )
    if not errors:
        raise EbxmlError(ErrorCode.OTHER_XML, "eb:ErrorList holds no eb:Error", where)
    if stated is None:  # required, but the errors say it: better read than refused whole
        error = any(e.severity is Severity.ERROR for e in errors)
        return ErrorList(Severity.ERROR if error else Severity.WARNING, tuple(errors))
    return ErrorList(_severity(stated, f"{where}/@eb:highestSeverity"), tuple(errors))


def _manifest(body: etree._Element) -> tuple[ManifestReference, ...]:
    element = body.find(_eb("Manifest"))
    if element is None:
        return ()
    where = "//eb:Manifest"
    _check_version(element, where)
    references = []
    for index, reference in enumerate(element.findall(_eb("Reference")), start=1):
        href = reference.get(f"{{{XLINK_NS}}}href")
        if not href or not href.strip():
            raise EbxmlError(
                ErrorCode.OTHER_XML,
                "eb:Reference has no xlink:href",
                f"{where}/eb:Reference[{index}]",
            )
        href = href.strip()
        references.append(
            ManifestReference(
                href, content_id_from_href(href), _free_text(reference, "Description")
            )
        )
    return tuple(references)


def _root(source: etree._Element | bytes) -> etree._Element:
    if not isinstance(source, bytes | bytearray):
        return source
    try:
        return parse_xml(bytes(source))
    except XmlError as exc:
        raise EbxmlError(ErrorCode.OTHER_XML, f"the envelope cannot be read: {exc}") from None


def _check_root(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    qname = etree.QName(root)
    if qname.namespace == SOAP12_NS:
        raise EbxmlError(
            ErrorCode.NOT_SUPPORTED, "SOAP 1.2 is not supported; ebMS 2.0 uses SOAP 1.1", "/"
        )
    if qname.namespace != SOAP_NS or qname.localname != "Envelope":
        raise EbxmlError(ErrorCode.OTHER_XML, "the document is not a SOAP 1.1 Envelope", "/")
    header = root.find(f"{{{SOAP_NS}}}Header")
    if header is None:
        raise EbxmlError(ErrorCode.OTHER_XML, "SOAP:Header is missing", "/SOAP:Envelope")
    body = root.find(f"{{{SOAP_NS}}}Body")
    if body is None:
        raise EbxmlError(ErrorCode.OTHER_XML, "SOAP:Body is missing", "/SOAP:Envelope")
    return header, body


def _check_signal(header: MessageHeader, envelope_parts: dict[str, etree._Element]) -> None:
    if not header.is_signal:
        return
    where = f"{_MH}/eb:Action"
    if header.action == ACTION_ACKNOWLEDGMENT:
        if "Acknowledgment" not in envelope_parts:
            raise EbxmlError(
                ErrorCode.INCONSISTENT,
                "an Acknowledgment message has no eb:Acknowledgment element",
                where,
            )
        if header.ref_to_message_id is None:
            raise EbxmlError(
                ErrorCode.INCONSISTENT,
                "an Acknowledgment message must name the acknowledged message in RefToMessageId",
                f"{_MH}/eb:MessageData",
            )
    elif header.action == ACTION_MESSAGE_ERROR:
        if "ErrorList" not in envelope_parts:
            raise EbxmlError(
                ErrorCode.INCONSISTENT, "a MessageError message has no eb:ErrorList", where
            )
    else:
        raise EbxmlError(
            ErrorCode.NOT_SUPPORTED,
            f"the ebMS service action {_short(header.action)} is not supported",
            where,
        )


def parse_envelope(source: etree._Element | bytes) -> Envelope:
    """Read a SOAP:Envelope (element or bytes); raise :class:`EbxmlError` when it is defective."""
    root = _root(source)
    header_el, body = _check_root(root)
    _refuse_hop_to_hop_elements(root, header_el)
    parts: dict[str, etree._Element] = {}
    ack_requests: list[etree._Element] = []
    extra: list[str] = []
    signature_present = False
    for child in header_el:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        qname = etree.QName(child)
        must_understand = _truthy(child.get(f"{{{SOAP_NS}}}mustUnderstand"))
        if qname.namespace == DS_NS and qname.localname == "Signature":
            signature_present = True
        elif qname.namespace == EB_NS and qname.localname == "AckRequested":
            ack_requests.append(child)
        elif qname.namespace == EB_NS and qname.localname in _KNOWN_EB_BLOCKS:
            if qname.localname in parts:
                raise EbxmlError(
                    ErrorCode.OTHER_XML,
                    f"eb:{qname.localname} occurs more than once",
                    f"//eb:{qname.localname}",
                )
            parts[qname.localname] = child
        elif (
            must_understand
            and _soap_actor(child) in _OUR_ACTORS
            and qname.localname in _KNOWN_EB_BLOCKS
        ):
            # an ebXML block in another namespace (a typo, another ebMS version): the block is
            # there but not ebMS 2.0's, which says more than "not supported"
            raise EbxmlError(
                ErrorCode.OTHER_XML,
                f"{qname.localname} is in the namespace {_short(str(qname.namespace))}, not "
                f"ebMS 2.0's {EB_NS}",
                f"//{qname.localname}",
            )
        elif must_understand and _soap_actor(child) in _OUR_ACTORS:
            raise EbxmlError(
                ErrorCode.NOT_SUPPORTED,
                f"the header element {qname.localname} (mustUnderstand) is not supported",
                f"/SOAP:Envelope/SOAP:Header/{qname.localname}",
            )
        else:
            extra.append(qname.localname)
    if "MessageHeader" not in parts:
        raise EbxmlError(
            ErrorCode.OTHER_XML, "eb:MessageHeader is missing", "/SOAP:Envelope/SOAP:Header"
        )
    header, duplicate_elimination = _message_header(parts["MessageHeader"])
    _check_signal(header, parts)

    acknowledgment = None
    if "Acknowledgment" in parts:
        acknowledgment = _acknowledgment(parts["Acknowledgment"])
        if (
            header.ref_to_message_id is not None
            and acknowledgment.ref_to_message_id != header.ref_to_message_id
        ):
            raise EbxmlError(
                ErrorCode.INCONSISTENT,
                "eb:Acknowledgment/RefToMessageId differs from MessageData/RefToMessageId",
                "//eb:Acknowledgment/eb:RefToMessageId",
            )
    error_list = _error_list(parts["ErrorList"]) if "ErrorList" in parts else None
    if "SyncReply" in parts:
        _check_version(parts["SyncReply"], "//eb:SyncReply")

    ack_signed = False
    if ack_requests:
        # Prefer the block addressed to the receiving MSH (ebMS allows one per actor).
        chosen = next(
            (a for a in ack_requests if _soap_actor(a) == ACTOR_TO_PARTY_MSH), ack_requests[0]
        )
        _check_version(chosen, "//eb:AckRequested")
        signed = _eb_attr(chosen, "signed")
        if signed is None:
            raise EbxmlError(
                ErrorCode.OTHER_XML,
                "eb:AckRequested has no signed attribute",
                "//eb:AckRequested",
            )
        if signed.strip() not in ("true", "false", "1", "0"):
            raise EbxmlError(
                ErrorCode.VALUE_NOT_RECOGNIZED,
                f"eb:AckRequested/@signed is not a boolean: {_short(signed)}",
                "//eb:AckRequested/@eb:signed",
            )
        ack_signed = _truthy(signed)

    return Envelope(
        header=header,
        ack_requested=bool(ack_requests),
        ack_signed=ack_signed,
        sync_reply="SyncReply" in parts,
        duplicate_elimination=duplicate_elimination,
        manifest=_manifest(body),
        acknowledgment=acknowledgment,
        error_list=error_list,
        signature_present=signature_present,
        extra_header_elements=tuple(extra),
    )


def readable_header(root: etree._Element) -> MessageHeader | None:
    """The eb:MessageHeader of an envelope :func:`parse_envelope` refused, when it can be read
    on its own (its eb:version not checked): who sent it, to whom, its MessageId, for a
    MessageError about what this server does not support (another ebMS version, a header block
    it must understand, an ebMS service action other than Acknowledgment and MessageError).
    None when the envelope is no SOAP 1.1 one or its one MessageHeader cannot be read."""
    try:
        header_el, _ = _check_root(root)
    except EbxmlError:
        return None
    found = header_el.findall(_eb("MessageHeader"))
    if len(found) != 1:
        return None
    try:
        return _message_header(found[0], check_version=False)[0]
    except EbxmlError:
        return None


def check_manifest(envelope: Envelope, content_ids: set[str] | frozenset[str]) -> None:
    """Raise MimeProblem when a manifest ``cid:`` reference names no MIME part or no content-id
    at all (``cid:``, ``cid:<<x>>``), NotSupported when a reference is not a ``cid:`` URL
    (HIS 1037 carries every payload in the message)."""
    for index, reference in enumerate(envelope.manifest, start=1):
        where = f"//eb:Manifest/eb:Reference[{index}]"
        if reference.content_id is None and is_cid_url(reference.href):
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM,
                f"payload reference {_short(reference.href)} names no content-id",
                where,
            )
        if reference.content_id is None:
            raise EbxmlError(
                ErrorCode.NOT_SUPPORTED,
                f"payload reference {_short(reference.href)} is not a cid: URL",
                where,
            )
        if reference.content_id not in content_ids:
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM,
                f"no MIME part has the content-id {_short(reference.content_id)}",
                where,
            )
