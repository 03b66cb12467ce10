"""Building an unsigned HIS 1037 SOAP:Envelope from :mod:`.values` (the security layer signs it).

Element order follows msg-header-2_0.xsd; prefixes (SOAP, eb, xlink, ds) follow the envelopes
other Norwegian MSHs send, so a person comparing them side by side sees the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from meldingstjener.ebxml.codes import (
    ACTOR_SOAP_NEXT,
    ACTOR_TO_PARTY_MSH,
    DS_NS,
    EB_NS,
    EB_VERSION,
    NSMAP,
    SOAP_NS,
    XLINK_NS,
    XML_NS,
    XSI_NS,
    cut_description,
    wire_location,
)
from meldingstjener.ebxml.description import DESCRIPTION_LANG
from meldingstjener.ebxml.ids import format_timestamp
from meldingstjener.ebxml.values import (
    AcknowledgmentInfo,
    Envelope,
    ErrorList,
    ManifestReference,
    MessageHeader,
    Party,
    SignedReference,
)

# The same schemaLocation the NAV envelopes and the real third-party mail carry.
_SCHEMA_LOCATION = (
    f"{SOAP_NS} http://www.oasis-open.org/committees/ebxml-msg/schema/envelope.xsd {EB_NS} {EB_NS}"
)

# The XPath transform of HIS 1037's URI="" reference: the signature leaves out header blocks
# meant for the next MSH, which an intermediary may change or remove.
HIS1037_XPATH = (
    'not(ancestor-or-self::node()[@SOAP-ENV:actor="urn:oasis:names:tc:ebxml-msg:actor:nextMSH"]'
    ' | ancestor-or-self::node()[@SOAP-ENV:actor="http://schemas.xmlsoap.org/soap/actor/next"])'
)
TRANSFORM_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
TRANSFORM_XPATH = "http://www.w3.org/TR/1999/REC-xpath-19991116"
TRANSFORM_C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"


def _eb(name: str) -> str:
    return f"{{{EB_NS}}}{name}"


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, _eb(name))
    if text is not None:
        child.text = text
    return child


def _header_block(parent: etree._Element, name: str, actor: str | None = None) -> etree._Element:
    block = _sub(parent, name)
    block.set(f"{{{SOAP_NS}}}mustUnderstand", "1")
    block.set(_eb("version"), EB_VERSION)
    if actor is not None:
        block.set(f"{{{SOAP_NS}}}actor", actor)
    return block


def _add_party(parent: etree._Element, name: str, party: Party) -> None:
    element = _sub(parent, name)
    party_id = _sub(element, "PartyId", party.her_id)
    party_id.set(_eb("type"), party.party_type)
    for id_type, value in party.other_ids:
        extra = _sub(element, "PartyId", value)
        if id_type is not None:
            extra.set(_eb("type"), id_type)
    if party.role is not None:
        _sub(element, "Role", party.role)


def _add_message_header(
    header_el: etree._Element, header: MessageHeader, duplicate_elimination: bool
) -> None:
    mh = _header_block(header_el, "MessageHeader")
    _add_party(mh, "From", header.from_party)
    _add_party(mh, "To", header.to_party)
    _sub(mh, "CPAId", header.cpa_id)
    _sub(mh, "ConversationId", header.conversation_id)
    service = _sub(mh, "Service", header.service)
    if header.service_type is not None:
        service.set(_eb("type"), header.service_type)
    _sub(mh, "Action", header.action)
    data = _sub(mh, "MessageData")
    _sub(data, "MessageId", header.message_id)
    _sub(data, "Timestamp", format_timestamp(header.timestamp))
    if header.ref_to_message_id is not None:
        _sub(data, "RefToMessageId", header.ref_to_message_id)
    if header.time_to_live is not None:
        _sub(data, "TimeToLive", format_timestamp(header.time_to_live))
    if duplicate_elimination:
        _sub(mh, "DuplicateElimination")
    if header.description is not None:
        description = _sub(mh, "Description", header.description.to_json())
        description.set(f"{{{XML_NS}}}lang", DESCRIPTION_LANG)


def _add_ds_reference(parent: etree._Element, reference: SignedReference) -> None:
    ds = etree.SubElement(parent, f"{{{DS_NS}}}Reference", nsmap={"ds": DS_NS})
    ds.set("URI", reference.uri)
    if reference.uri == "":
        # The whole-envelope reference is always made with the HIS 1037 transforms; restate
        # them so the receipt says exactly what the digest covers.
        transforms = etree.SubElement(ds, f"{{{DS_NS}}}Transforms")
        for algorithm in (TRANSFORM_ENVELOPED, TRANSFORM_XPATH, TRANSFORM_C14N):
            transform = etree.SubElement(transforms, f"{{{DS_NS}}}Transform")
            transform.set("Algorithm", algorithm)
            if algorithm == TRANSFORM_XPATH:
                xpath = etree.SubElement(
                    transform, f"{{{DS_NS}}}XPath", nsmap={"SOAP-ENV": SOAP_NS}
                )
                xpath.text = HIS1037_XPATH
    method = etree.SubElement(ds, f"{{{DS_NS}}}DigestMethod")
    method.set("Algorithm", reference.digest_method)
    etree.SubElement(ds, f"{{{DS_NS}}}DigestValue").text = reference.digest_value


def _add_acknowledgment(header_el: etree._Element, ack: AcknowledgmentInfo) -> None:
    block = _header_block(header_el, "Acknowledgment", ACTOR_TO_PARTY_MSH)
    _sub(block, "Timestamp", format_timestamp(ack.timestamp))
    _sub(block, "RefToMessageId", ack.ref_to_message_id)
    if ack.from_party is not None:
        _add_party(block, "From", ack.from_party)
    for reference in ack.references:
        _add_ds_reference(block, reference)


def _add_error_list(header_el: etree._Element, error_list: ErrorList) -> None:
    block = _header_block(header_el, "ErrorList")
    block.set(_eb("highestSeverity"), error_list.highest_severity.value)
    for error in error_list.errors:
        element = _sub(block, "Error")
        element.set(_eb("errorCode"), error.reported_code or error.code.value)
        element.set(_eb("severity"), error.severity.value)
        if error.location:
            element.set(_eb("location"), wire_location(error.location))
        if error.description:
            text = _sub(element, "Description", cut_description(error.description))
            text.set(f"{{{XML_NS}}}lang", "en")


def _add_manifest(body: etree._Element, manifest: Sequence[ManifestReference]) -> None:
    element = _sub(body, "Manifest")
    element.set(_eb("version"), EB_VERSION)
    for reference in manifest:
        ref = _sub(element, "Reference")
        ref.set(f"{{{XLINK_NS}}}href", reference.href)
        ref.set(f"{{{XLINK_NS}}}type", "simple")
        if reference.description is not None:
            text = _sub(ref, "Description", cut_description(reference.description))
            text.set(f"{{{XML_NS}}}lang", DESCRIPTION_LANG)


def build_envelope(
    header: MessageHeader,
    *,
    manifest: Sequence[ManifestReference] = (),
    ack_requested: bool = True,
    ack_signed: bool = True,
    sync_reply: bool = False,
    duplicate_elimination: bool = False,
    acknowledgment: AcknowledgmentInfo | None = None,
    error_list: ErrorList | None = None,
) -> etree._Element:
    """An unsigned SOAP:Envelope for ``header``; the caller signs it (security layer).

    Defaults fit a HIS 1037 payload message: a signed Acknowledgment is requested from the
    receiving MSH. Signals (:mod:`meldingstjener.ebxml.signals`) pass ``ack_requested=False``,
    because ebMS forbids acknowledging an Acknowledgment or a MessageError.
    """
    root = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap=NSMAP)
    root.set(f"{{{XSI_NS}}}schemaLocation", _SCHEMA_LOCATION)
    header_el = etree.SubElement(root, f"{{{SOAP_NS}}}Header")
    _add_message_header(header_el, header, duplicate_elimination)
    if sync_reply:
        _header_block(header_el, "SyncReply", ACTOR_SOAP_NEXT)
    if ack_requested:
        ack = _header_block(header_el, "AckRequested", ACTOR_TO_PARTY_MSH)
        ack.set(_eb("signed"), "true" if ack_signed else "false")
    if acknowledgment is not None:
        _add_acknowledgment(header_el, acknowledgment)
    if error_list is not None:
        _add_error_list(header_el, error_list)
    body = etree.SubElement(root, f"{{{SOAP_NS}}}Body")
    if manifest:
        _add_manifest(body, manifest)
    return root


def build_from(envelope: Envelope) -> etree._Element:
    """Build the XML for an :class:`Envelope` value (the inverse of ``parse_envelope``, less
    the signature, which the security layer adds)."""
    return build_envelope(
        envelope.header,
        manifest=envelope.manifest,
        ack_requested=envelope.ack_requested,
        ack_signed=envelope.ack_signed,
        sync_reply=envelope.sync_reply,
        duplicate_elimination=envelope.duplicate_elimination,
        acknowledgment=envelope.acknowledgment,
        error_list=envelope.error_list,
    )


def envelope_bytes(root: etree._Element) -> bytes:
    """The serialised envelope as it goes into the MIME part (UTF-8, with an XML declaration)."""
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
