"""Read the address register's older SOAP responses (GetCommunicationPartyDetails).

The SOAP result has the same fields as the REST CommunicationDetails JSON, so the XML is turned
into plain dicts and mapped by :func:`meldingstjener.registry.ar_json.party_from_record`. A SOAP
fault (e.g. ``InvalidHerIdSupplied``) becomes :class:`ArPartyNotFound` or :class:`ArFormatError`.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from meldingstjener.formats.xmlparse import XmlError, parse_xml
from meldingstjener.registry.ar_json import party_from_record, read_records
from meldingstjener.registry.errors import ArFormatError, ArPartyNotFound
from meldingstjener.registry.parties import CommunicationParty

_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_RESULT = "GetCommunicationPartyDetailsResult"
# Elements that hold a list of records even when only one (or none) is present.
_LIST_CONTAINERS = frozenset(
    {
        "ElectronicAddresses",
        "FutureElectronicAddresses",
        "PhysicalAddresses",
        "Services",
        "People",
        "Organizations",
        "Departments",
        "IndustryCodes",
        "CoverageAreas",
        "Properties",
        "Authorizations",
        "SpecialCompetences",
        "Specialities",
    }
)
_NESTED_PARTIES = ("Services", "People", "Organizations", "Departments")
_NOT_FOUND_CODES = frozenset({"InvalidHerIdSupplied", "CommunicationPartyNotFound"})


def parse_ar_soap(data: bytes) -> CommunicationParty:
    """The communication party a GetCommunicationPartyDetails response describes."""
    return party_from_record(_result_record(data))


def parse_ar_soap_all(data: bytes) -> list[CommunicationParty]:
    """The party and every party nested in it (an organisation's services and people, a
    person's organisations), the main party first."""
    record = _result_record(data)
    parties = [party_from_record(record)]
    for container in _NESTED_PARTIES:
        for nested in record.get(container) or []:
            if isinstance(nested, dict) and nested.get("HerId"):
                parties.append(party_from_record(nested))
    return parties


def read_ar_soap_all(data: bytes) -> tuple[list[CommunicationParty], dict[str, str]]:
    """As :func:`parse_ar_soap_all`, each party read on its own: the parties, and why each one
    that cannot be used is not, by HER-id. A response that is not one raises."""
    record = _result_record(data)
    nested = [
        item
        for container in _NESTED_PARTIES
        for item in record.get(container) or []
        if isinstance(item, dict) and item.get("HerId")
    ]
    return read_records([record, *nested])


def _result_record(data: bytes) -> dict[str, Any]:
    try:
        root = parse_xml(data)
    except XmlError as exc:
        raise ArFormatError(f"address-register SOAP response is not usable XML: {exc}") from None
    fault = _first(root, "Fault")
    if fault is not None:
        _raise_fault(fault)
    result = _first(root, _RESULT)
    if result is None:
        raise ArFormatError(
            f"not a communication party response: no {_RESULT} element "
            f"(root element is {etree.QName(root).localname})"
        )
    record = _to_record(result)
    if not isinstance(record, dict):
        raise ArFormatError(f"{_RESULT} is empty")
    xsi_type = result.get(_XSI_TYPE)
    if "Type" not in record and xsi_type:
        record["Type"] = xsi_type.rsplit(":", 1)[-1]
    return record


def _raise_fault(fault: etree._Element) -> None:
    code_element = _first(fault, "ErrorCode")
    message_element = _first(fault, "Message")
    if message_element is None:
        message_element = _first(fault, "Text")
    code = (code_element.text or "").strip() if code_element is not None else ""
    message = (message_element.text or "").strip() if message_element is not None else ""
    detail = f"{code}: {message}" if code else message or "no reason given"
    if code in _NOT_FOUND_CODES:
        raise ArPartyNotFound(f"the address register has no such communication party ({detail})")
    raise ArFormatError(f"the address register answered with a SOAP fault ({detail})")


def _first(root: etree._Element, local_name: str) -> etree._Element | None:
    for element in root.iter(etree.Element):
        if etree.QName(element).localname == local_name:
            return element
    return None


def _to_record(element: etree._Element) -> Any:
    """Element -> str | None | dict | list, dropping namespaces (the JSON shape has none)."""
    if element.get(_XSI_NIL) == "true":
        return None
    name = etree.QName(element).localname
    children = [child for child in element if isinstance(child.tag, str)]
    if name in _LIST_CONTAINERS:
        return [_to_record(child) for child in children]
    if not children:
        text = (element.text or "").strip()
        return text or None
    record: dict[str, Any] = {}
    for child in children:
        record.setdefault(etree.QName(child).localname, _to_record(child))
    return record
