"""Parse CPPA 2.0 profiles (CPP) and agreements (CPA) into :mod:`cppa_model` dataclasses.

Namespace ``http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd``; prefixes
differ between producers (``cppa:``, ``tns:``, ``ns1:``) and do not matter. The message type and
version of an action are not attributes of the action: they follow from its ``packageId`` ->
``Packaging`` -> ``Constituent`` -> ``SimplePart`` -> ``NamespaceSupported`` (namespace +
version), which this module resolves for every binding.

:func:`agreement_for` and :func:`terms_from_cpp` turn a parsed document into the
:class:`~meldingstjener.registry.terms.AgreementTerms` the outbound pipeline needs.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import NamedTuple

from lxml import etree

from meldingstjener.formats.xmlparse import XmlError, parse_xml
from meldingstjener.registry.certificates import (
    CertificateUnreadable,
    PartyCertificate,
    certificate_from_base64,
)
from meldingstjener.registry.cppa_model import (
    EBXML_HEADER_NAMESPACE,
    ActionBinding,
    CollaborationProtocol,
    DeliveryChannel,
    Direction,
    DocExchange,
    PartyInfo,
    ReliableMessaging,
    SchemaRef,
    Transport,
)
from meldingstjener.registry.errors import CpaFormatError, PartyNotInAgreement
from meldingstjener.registry.isotime import parse_duration, parse_timestamp
from meldingstjener.registry.terms import (
    AgreedMessage,
    AgreementTerms,
    ChannelTerms,
    TermsSource,
)

CPPA_NS = "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
_ROOTS = {"CollaborationProtocolAgreement": "cpa", "CollaborationProtocolProfile": "cpp"}


def _q(name: str) -> str:
    return f"{{{CPPA_NS}}}{name}"


def _attr(element: etree._Element, name: str) -> str | None:
    """CPPA attributes are namespace-qualified in the schema but not always in the wild."""
    value = element.get(_q(name))
    if value is None:
        value = element.get(name)
    return value.strip() if value is not None else None


def _text(element: etree._Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def parse_cppa(data: bytes) -> CollaborationProtocol:
    """Parse a CPA or a CPP (``kind`` tells which)."""
    try:
        root = parse_xml(data)
    except XmlError as exc:
        raise CpaFormatError(f"CPP/CPA is not usable XML: {exc}") from None
    qname = etree.QName(root)
    kind = _ROOTS.get(qname.localname)
    if qname.namespace != CPPA_NS or kind is None:
        raise CpaFormatError(
            f"not a CPPA 2.0 document: root element is {{{qname.namespace}}}{qname.localname}, "
            "expected CollaborationProtocolAgreement or CollaborationProtocolProfile in "
            f"{CPPA_NS}"
        )
    packages = _packages(root)
    parties = tuple(_party(info, packages) for info in root.findall(_q("PartyInfo")))
    if not parties:
        raise CpaFormatError(f"{kind.upper()} has no PartyInfo")
    status = root.find(_q("Status"))
    document = CollaborationProtocol(
        kind=kind,
        protocol_id=_attr(root, "cpaid" if kind == "cpa" else "cppid"),
        version=_attr(root, "version"),
        status=_attr(status, "value") if status is not None else None,
        start=parse_timestamp(_text(root.find(_q("Start")))),
        end=parse_timestamp(_text(root.find(_q("End")))),
        parties=parties,
    )
    if kind == "cpa" and len(parties) != 2:
        raise CpaFormatError(f"CPA {document.protocol_id} has {len(parties)} parties, expected 2")
    return document


def parse_cpa(data: bytes) -> CollaborationProtocol:
    document = parse_cppa(data)
    if document.kind != "cpa":
        raise CpaFormatError("expected a CPA (CollaborationProtocolAgreement), got a CPP")
    return document


def parse_cpp(data: bytes) -> CollaborationProtocol:
    document = parse_cppa(data)
    if document.kind != "cpp":
        raise CpaFormatError("expected a CPP (CollaborationProtocolProfile), got a CPA")
    return document


# --- packaging: package id -> schemas -------------------------------------------------------


# an Encapsulation of these MIME types gzips what it holds (NAV's packages: the business
# document is gzipped, then encrypted)
_GZIP_TYPES = frozenset({"application/x-gzip", "application/gzip"})


class _Package(NamedTuple):
    schemas: tuple[SchemaRef, ...]
    gzip: bool  # the package gzips the business document (an Encapsulation of a gzip type)


def _packages(root: etree._Element) -> dict[str, _Package]:
    simple_parts: dict[str, tuple[SchemaRef, ...]] = {}
    for part in root.findall(_q("SimplePart")):
        part_id = _attr(part, "id")
        if part_id is None:
            continue
        simple_parts[part_id] = tuple(
            SchemaRef(namespace=ns, version=_attr(el, "version"), location=_attr(el, "location"))
            for el in part.findall(_q("NamespaceSupported"))
            if (ns := _text(el)) is not None
        )
    packages: dict[str, _Package] = {}
    for packaging in root.findall(_q("Packaging")):
        package_id = _attr(packaging, "id")
        if package_id is None:
            continue
        # Composites and encapsulations refer to each other by id inside one package.
        groups: dict[str, list[str]] = {}
        gzip = False
        for group in packaging.iter(_q("Composite"), _q("Encapsulation")):
            group_id = _attr(group, "id") or ""
            groups[group_id] = [
                ref for c in group.findall(_q("Constituent")) if (ref := _attr(c, "idref"))
            ]
            if etree.QName(group).localname == "Encapsulation":
                mimetype = (_attr(group, "mimetype") or "").strip().lower()
                gzip = gzip or mimetype in _GZIP_TYPES
        packages[package_id] = _Package(_resolve_package(groups, simple_parts), gzip)
    return packages


def _resolve_package(
    groups: dict[str, list[str]], simple_parts: dict[str, tuple[SchemaRef, ...]]
) -> tuple[SchemaRef, ...]:
    """Every schema reachable from a package's composites, in document order, once each."""
    schemas: list[SchemaRef] = []
    seen: set[str] = set()
    pending = list(groups)
    while pending:
        ref = pending.pop(0)
        if ref in simple_parts:
            schemas.extend(s for s in simple_parts[ref] if s not in schemas)
        elif ref in groups and ref not in seen:
            seen.add(ref)
            pending[:0] = groups[ref]  # depth first keeps the order the parts are nested in
    return tuple(schemas)


# --- one party -----------------------------------------------------------------------------


def _party(info: etree._Element, packages: dict[str, _Package]) -> PartyInfo:
    party_ids = tuple(
        (_attr(el, "type") or "", value)
        for el in info.findall(_q("PartyId"))
        if (value := _text(el)) is not None
    )
    roles: list[str] = []
    bindings: list[ActionBinding] = []
    encryption_id: str | None = None
    for role_element in info.findall(_q("CollaborationRole")):
        process = role_element.find(_q("ProcessSpecification"))
        role = role_element.find(_q("Role"))
        role_name = _attr(role, "name") if role is not None else None
        if role_name and role_name not in roles:
            roles.append(role_name)
        app_cert = role_element.find(_q("ApplicationCertificateRef"))
        if encryption_id is None and app_cert is not None:
            encryption_id = _attr(app_cert, "certId")
        for service_binding in role_element.findall(_q("ServiceBinding")):
            service = service_binding.find(_q("Service"))
            for tag, direction in (("CanSend", Direction.SEND), ("CanReceive", Direction.RECEIVE)):
                for can in service_binding.findall(_q(tag)):
                    binding = _binding(can, direction, packages, service)
                    if binding is None:
                        continue
                    bindings.append(_with_role(binding, role_name, process))
    certificates = _certificates(info)
    exchanges = {
        x.exchange_id: x for x in (_doc_exchange(el) for el in info.findall(_q("DocExchange")))
    }
    transports = {
        t.transport_id: t for t in (_transport(el) for el in info.findall(_q("Transport")))
    }
    channels = {
        c.channel_id: c
        for c in (_channel(el, transports, exchanges) for el in info.findall(_q("DeliveryChannel")))
    }
    signing_id = next(
        (x.signing_certificate_id for x in exchanges.values() if x.signing_certificate_id), None
    )
    return PartyInfo(
        name=_attr(info, "partyName"),
        party_ids=party_ids,
        roles=tuple(roles),
        bindings=tuple(bindings),
        channels=channels,
        certificates=certificates,
        default_channel_id=_attr(info, "defaultMshChannelId"),
        encryption_certificate_id=encryption_id,
        signing_certificate_id=signing_id,
    )


def _binding(
    can: etree._Element,
    direction: Direction,
    packages: dict[str, _Package],
    service: etree._Element | None,
) -> ActionBinding | None:
    this = can.find(_q("ThisPartyActionBinding"))
    if this is None:
        return None
    action = _attr(this, "action")
    service_name = _text(service)
    if action is None or service_name is None:
        return None
    package_id = _attr(this, "packageId")
    package = packages.get(package_id or "", _Package((), False))
    return ActionBinding(
        direction=direction,
        service=service_name,
        service_type=_attr(service, "type") if service is not None else None,
        action=action,
        binding_id=_attr(this, "id"),
        package_id=package_id,
        channel_ids=tuple(c for el in this.findall(_q("ChannelId")) if (c := _text(el))),
        other_party_binding=_text(can.find(_q("OtherPartyActionBinding"))),
        schemas=package.schemas,
        gzip=package.gzip,
    )


def _with_role(
    binding: ActionBinding, role: str | None, process: etree._Element | None
) -> ActionBinding:
    return replace(
        binding,
        role=role,
        process=_attr(process, "name") if process is not None else None,
        process_version=_attr(process, "version") if process is not None else None,
    )


def _certificates(info: etree._Element) -> dict[str, PartyCertificate]:
    found: dict[str, PartyCertificate] = {}
    for element in info.findall(_q("Certificate")):
        cert_id = _attr(element, "certId")
        value = _text(element.find(f".//{{{DS_NS}}}X509Certificate"))
        if cert_id is None or value is None:
            continue
        try:
            found[cert_id] = certificate_from_base64(value, cert_id=cert_id)
        except CertificateUnreadable as exc:
            raise CpaFormatError(
                f"certificate {cert_id!r} in the CPP/CPA is unusable: {exc}"
            ) from None
    return found


def _duration(element: etree._Element | None, what: str) -> timedelta | None:
    text = _text(element)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CpaFormatError(f"{what}: {exc}") from None


def _reliability(binding: etree._Element | None, what: str) -> ReliableMessaging | None:
    if binding is None:
        return None
    element = binding.find(_q("ReliableMessaging"))
    if element is None:
        return None
    retries_text = _text(element.find(_q("Retries")))
    if retries_text is not None and not re.fullmatch(r"[0-9]+", retries_text):
        raise CpaFormatError(f"{what}: Retries must be a whole number, got {retries_text[:20]!r}")
    return ReliableMessaging(
        retries=int(retries_text) if retries_text is not None else None,
        retry_interval=_duration(element.find(_q("RetryInterval")), f"{what} RetryInterval"),
        message_order=_text(element.find(_q("MessageOrderSemantics"))),
    )


def _doc_exchange(element: etree._Element) -> DocExchange:
    exchange_id = _attr(element, "docExchangeId") or ""
    sender = element.find(_q("ebXMLSenderBinding"))
    receiver = element.find(_q("ebXMLReceiverBinding"))
    non_repudiation = sender.find(_q("SenderNonRepudiation")) if sender is not None else None
    signing_ref = (
        non_repudiation.find(_q("SigningCertificateRef")) if non_repudiation is not None else None
    )
    algorithm = (
        non_repudiation.find(_q("SignatureAlgorithm")) if non_repudiation is not None else None
    )
    where = f"DocExchange {exchange_id}"
    return DocExchange(
        exchange_id=exchange_id,
        sender_reliability=_reliability(sender, f"{where} sender"),
        receiver_reliability=_reliability(receiver, f"{where} receiver"),
        sender_persist_duration=_duration(
            sender.find(_q("PersistDuration")) if sender is not None else None,
            f"{where} sender PersistDuration",
        ),
        receiver_persist_duration=_duration(
            receiver.find(_q("PersistDuration")) if receiver is not None else None,
            f"{where} receiver PersistDuration",
        ),
        signing_certificate_id=_attr(signing_ref, "certId") if signing_ref is not None else None,
        hash_function=_text(non_repudiation.find(_q("HashFunction")))
        if non_repudiation is not None
        else None,
        signature_algorithm=(_attr(algorithm, "w3c") or _text(algorithm))
        if algorithm is not None
        else None,
    )


def _transport(element: etree._Element) -> Transport:
    receiver = element.find(_q("TransportReceiver"))
    sender = element.find(_q("TransportSender"))
    side = receiver if receiver is not None else sender
    protocol = side.find(_q("TransportProtocol")) if side is not None else None
    endpoints = receiver.findall(_q("Endpoint")) if receiver is not None else []
    # allPurpose (the default type) is the endpoint for business messages.
    endpoint = next(
        (e for e in endpoints if (_attr(e, "type") or "allPurpose") == "allPurpose"),
        endpoints[0] if endpoints else None,
    )
    security = element.find(f".//{_q('TransportSecurityProtocol')}")
    return Transport(
        transport_id=_attr(element, "transportId") or "",
        protocol=_text(protocol) or "",
        protocol_version=_attr(protocol, "version") if protocol is not None else None,
        endpoint=_attr(endpoint, "uri") if endpoint is not None else None,
        transport_security=_text(security),
    )


def _channel(
    element: etree._Element,
    transports: dict[str, Transport],
    exchanges: dict[str, DocExchange],
) -> DeliveryChannel:
    characteristics = element.find(_q("MessagingCharacteristics"))

    def characteristic(name: str, default: str) -> str:
        # Defaults are those of cpp-cpa-2_0.xsd; an empty MessagingCharacteristics means them.
        if characteristics is None:
            return default
        return _attr(characteristics, name) or default

    return DeliveryChannel(
        channel_id=_attr(element, "channelId") or "",
        transport=transports.get(_attr(element, "transportId") or ""),
        doc_exchange=exchanges.get(_attr(element, "docExchangeId") or ""),
        sync_reply_mode=characteristic("syncReplyMode", "none"),
        ack_requested=characteristic("ackRequested", "perMessage"),
        ack_signature_requested=characteristic("ackSignatureRequested", "perMessage"),
        duplicate_elimination=characteristic("duplicateElimination", "perMessage"),
    )


# --- summaries ------------------------------------------------------------------------------


def agreement_for(cpa: CollaborationProtocol, our_her_id: str) -> AgreementTerms:
    """What we and the counterparty agreed in ``cpa``, seen from ``our_her_id``.

    Outbound messages are our CanSend bindings that the counterparty can receive (matched by
    OtherPartyActionBinding when the CPA gives it, else by service and action); the versions,
    channel, endpoint and reliability are those of the counterparty's receiving side.
    """
    ours = cpa.party(our_her_id)
    if ours is None:
        named = ", ".join(p.her_id or "?" for p in cpa.parties)
        raise PartyNotInAgreement(
            f"CPA {cpa.protocol_id} does not name HER-id {our_her_id} (it names {named}); "
            "check which of our HER-ids the agreement was made for"
        )
    theirs = cpa.counterparty(our_her_id)
    if theirs is None or theirs.her_id is None:
        raise CpaFormatError(f"CPA {cpa.protocol_id} has no counterparty with a HER-id")
    return AgreementTerms(
        source=TermsSource.CPA,
        our_her_id=str(our_her_id),
        counterparty_her_id=theirs.her_id,
        counterparty_name=theirs.name,
        cpa_id=cpa.protocol_id,
        status=cpa.status,
        valid_from=cpa.start,
        valid_to=cpa.end,
        outbound=_matched(ours.can_send, theirs),
        inbound=_matched(theirs.can_send, ours),
        default_channel=_channel_terms(theirs.default_channel),
        signing_certificate=theirs.signing_certificate,
        encryption_certificate=theirs.encryption_certificate,
    )


def terms_from_cpp(cpp: CollaborationProtocol, our_her_id: str | None = None) -> AgreementTerms:
    """Terms from the counterparty's own profile when no CPA exists: everything it can receive
    is taken as sendable (there is no agreement to narrow it)."""
    theirs = next((p for p in cpp.parties if p.her_id and p.her_id != our_her_id), None)
    if theirs is None or theirs.her_id is None:
        raise CpaFormatError(f"CPP {cpp.protocol_id} names no party with a HER-id")
    outbound = tuple(_agreed(binding, theirs) for binding in theirs.can_receive)
    inbound = tuple(_agreed(binding, theirs) for binding in theirs.can_send)
    return AgreementTerms(
        source=TermsSource.CPP,
        our_her_id=str(our_her_id) if our_her_id else None,
        counterparty_her_id=theirs.her_id,
        counterparty_name=theirs.name,
        cpa_id=None,
        status=cpp.status,
        valid_from=cpp.start,
        valid_to=cpp.end,
        outbound=outbound,
        inbound=inbound,
        default_channel=_channel_terms(theirs.default_channel),
        signing_certificate=theirs.signing_certificate,
        encryption_certificate=theirs.encryption_certificate,
    )


def _matched(sends: tuple[ActionBinding, ...], receiver: PartyInfo) -> tuple[AgreedMessage, ...]:
    receives = receiver.can_receive
    by_id = {b.binding_id: b for b in receives if b.binding_id}
    by_name: dict[tuple[str, str], list[ActionBinding]] = {}
    for binding in receives:
        by_name.setdefault((binding.service, binding.action), []).append(binding)
    agreed: list[AgreedMessage] = []
    for send in sends:
        receive = by_id.get(send.other_party_binding or "") or _counterpart(
            by_name.get((send.service, send.action), []), send
        )
        if receive is None:
            continue  # the other side cannot receive it: not part of the agreement
        message = replace(_agreed(receive, receiver), from_role=send.role)
        if message not in agreed:
            agreed.append(message)
    return tuple(agreed)


def _counterpart(receives: list[ActionBinding], send: ActionBinding) -> ActionBinding | None:
    """The receiving binding of ``send`` when the CPA names none (OtherPartyActionBinding):
    one of the same service and action, in another role than the sender's (a service whose
    parties each play both roles, as Helsenorge's, binds a sender role to a receiver role)."""
    other_role = [b for b in receives if b.role != send.role]
    chosen = other_role or receives
    return chosen[0] if chosen else None


def _agreed(binding: ActionBinding, owner: PartyInfo | None) -> AgreedMessage:
    schema = binding.business_schema
    channel = None
    if owner is not None and binding.channel_ids:
        channel = _channel_terms(owner.channels.get(binding.channel_ids[0]))
    return AgreedMessage(
        message_type=binding.action,
        service=binding.service,
        versions=(binding.message_version,) if binding.message_version else (),
        namespace=schema.namespace if schema else None,
        channel=channel,
        service_type=binding.service_type,
        to_role=binding.role,
        gzip=binding.gzip,
        namespaces=tuple(
            dict.fromkeys(
                s.namespace for s in binding.schemas if s.namespace != EBXML_HEADER_NAMESPACE
            )
        ),
    )


def _channel_terms(channel: DeliveryChannel | None) -> ChannelTerms | None:
    if channel is None:
        return None
    exchange = channel.doc_exchange
    reliability = None
    persist = None
    if exchange is not None:
        reliability = exchange.receiver_reliability or exchange.sender_reliability
        persist = exchange.receiver_persist_duration or exchange.sender_persist_duration
    transport = channel.transport
    return ChannelTerms(
        channel_id=channel.channel_id,
        transport=transport.kind.value if transport else None,
        endpoint=transport.address if transport else None,
        retries=reliability.retries if reliability else None,
        retry_interval=reliability.retry_interval if reliability else None,
        persist_duration=persist,
        ack_requested=channel.ack_requested,
        duplicate_elimination=channel.duplicate_elimination,
        sync_reply_mode=channel.sync_reply_mode,
    )
