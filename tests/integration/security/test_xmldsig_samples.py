"""The ebXML samples from other MSHs (shared/reference/samples/ebxml): ours and xmlsec agree.

The real mail from a third-party MSH carries a real signature: both verify it, and both refuse
it after one changed byte. The NAV samples carry placeholders ("digestValue"): both refuse them
as they are, and once xmlsec has signed them (they are the shapes other MSHs send: a
default-namespace Signature, an XPath whose prefix is declared on ds:XPath) we verify them.
"""

from __future__ import annotations

import email
import re
from pathlib import Path

import pytest
from lxml import etree
from xmlsec_tools import (
    DS,
    signature_of,
    xmlsec,
    xmlsec1_verifies,
    xmlsec_sign,
    xmlsec_verifies,
)

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security import xmldsig
from meldingstjener.security.certs import load_certificate
from meldingstjener.security.devpki import DevParty, DevPki

REAL = "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"


def _split(mail_bytes: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The envelope part and the attachments (content-id -> decoded bytes) of an ebXML mail."""
    mail = email.message_from_bytes(mail_bytes)
    start = str(mail.get_param("start")).strip("<>")
    envelope, attachments = b"", {}
    for part in mail.walk():
        if part.is_multipart():
            continue
        content_id = str(part["Content-ID"]).strip().strip("<>")
        body = part.get_payload(decode=True)
        assert isinstance(body, bytes)
        if content_id == start:
            envelope = body
        else:
            attachments[content_id] = body
    return envelope, attachments


@pytest.fixture(scope="module")
def real_mail(reference_dir: Path) -> tuple[bytes, dict[str, bytes]]:
    return _split((reference_dir / f"{REAL}.msg").read_bytes())


def test_the_real_signature_verifies_in_ours_and_in_xmlsec(
    real_mail: tuple[bytes, dict[str, bytes]], reference_dir: Path, tmp_path: Path
) -> None:
    envelope, attachments = real_mail
    certificate = load_certificate(reference_dir / f"{REAL}.cer")
    check = xmldsig.verify_ebxml_envelope(parse_xml(envelope), attachments, certificate=certificate)
    assert check.valid, check.problem
    assert xmlsec1_verifies(envelope, tmp_path, attachments=attachments)
    assert xmlsec_verifies(envelope, certificate, attachments)


def _flip_signature_value(data: bytes) -> bytes:
    match = re.search(rb"<ds:SignatureValue>(.)", data)
    assert match is not None
    new = b"A" if match.group(1) != b"A" else b"B"
    return data[: match.start(1)] + new + data[match.end(1) :]


TAMPERING = {
    "envelope text": lambda d: d.replace(b"OppgjorsMelding", b"OppgjorsMeldinG"),
    "SignedInfo": lambda d: d.replace(b"<ds:SignedInfo>", b"<ds:SignedInfo> "),
    "SignatureValue": _flip_signature_value,
}


@pytest.mark.parametrize("name", TAMPERING)
def test_a_changed_real_envelope_fails_in_ours_and_in_xmlsec1(
    name: str, real_mail: tuple[bytes, dict[str, bytes]], reference_dir: Path, tmp_path: Path
) -> None:
    envelope, attachments = real_mail
    tampered = TAMPERING[name](envelope)
    assert tampered != envelope
    certificate = load_certificate(reference_dir / f"{REAL}.cer")
    check = xmldsig.verify_ebxml_envelope(parse_xml(tampered), attachments, certificate=certificate)
    assert not check.valid
    assert not xmlsec1_verifies(tampered, tmp_path, attachments=attachments)


def test_a_changed_real_attachment_fails_in_ours_and_in_xmlsec1(
    real_mail: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    envelope, attachments = real_mail
    ((cid, data),) = attachments.items()
    changed = {cid: data[:100] + bytes([data[100] ^ 1]) + data[101:]}
    assert not xmldsig.verify_ebxml_envelope(parse_xml(envelope), changed).valid
    assert not xmlsec1_verifies(envelope, tmp_path, attachments=changed)


# --- the NAV samples ------------------------------------------------------------------------

NAV = {
    "nav-payloadmessage.xml": {"ref1": b"the payload the Manifest points to"},
    "nav-acknowledgment.xml": {},
}


@pytest.fixture(scope="module")
def sender(interop_pki: DevPki) -> DevParty:
    return interop_pki.parties["8141253"]


@pytest.mark.parametrize("name", NAV)
def test_placeholder_signatures_are_refused_by_ours_and_by_xmlsec(
    name: str, reference_dir: Path, sender: DevParty, tmp_path: Path
) -> None:
    data = (reference_dir / "samples/ebxml" / name).read_bytes()
    assert b"digestValue" in data  # a placeholder, not a digest
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(data), NAV[name], certificate=sender.signing.certificate
    )
    assert not check.valid
    assert not xmlsec_verifies(data, sender.signing.certificate, NAV[name])
    assert not xmlsec1_verifies(data, tmp_path, attachments=NAV[name])


def _as_template(data: bytes) -> etree._Element:
    """The sample with its placeholders emptied and its placeholder KeyInfo left out (we give
    the certificate instead), ready for xmlsec to sign."""
    root = etree.fromstring(data)
    signature = signature_of(root)
    for name in ("DigestValue", "SignatureValue"):
        for node in signature.iter(f"{{{DS}}}{name}"):
            node.text = None
    key_info = signature.find(f"{{{DS}}}KeyInfo")
    if key_info is not None:
        signature.remove(key_info)
    return root


def test_the_nav_acknowledgment_signed_by_xmlsec_verifies_here(
    reference_dir: Path, sender: DevParty
) -> None:
    # A .NET-style signature: <Signature xmlns="...xmldsig#">, so SignedInfo inherits a
    # default namespace from above it, and the root declares eb, xsi and SOAP.
    root = _as_template((reference_dir / "samples/ebxml/nav-acknowledgment.xml").read_bytes())
    assert signature_of(root).prefix is None
    xmlsec_sign(root, sender.signing.key)
    signed = etree.tostring(root)
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(signed), {}, certificate=sender.signing.certificate
    )
    assert check.valid, check.problem
    tampered = signed.replace(b"<eb:Role>Utleverer</eb:Role>", b"<eb:Role>Utleverel</eb:Role>")
    assert tampered != signed
    assert not xmlsec_verifies(tampered, sender.signing.certificate)
    assert not xmldsig.verify_ebxml_envelope(
        parse_xml(tampered), {}, certificate=sender.signing.certificate
    ).valid


def test_the_nav_payload_message_signed_by_xmlsec_verifies_here(
    reference_dir: Path, sender: DevParty
) -> None:
    data = (reference_dir / "samples/ebxml/nav-payloadmessage.xml").read_bytes()
    # Its XPath uses the prefix SOAP-ENV, which the sample never declares: xmlsec cannot
    # evaluate it and we refuse it. Declared on ds:XPath, as the real MSH above does, it works.
    attachments = NAV["nav-payloadmessage.xml"]
    with pytest.raises(xmlsec.Error):
        xmlsec_sign(_as_template(data), sender.signing.key, attachments)
    unsigned = etree.tostring(_as_template(data))
    refused = xmldsig.verify_ebxml_envelope(parse_xml(unsigned), attachments)
    assert refused.references[0].problem == "only the ebXML nextMSH XPath filter is accepted"
    declared = data.replace(b"<ds:XPath>", f'<ds:XPath xmlns:SOAP-ENV="{SOAP}">'.encode())
    root = _as_template(declared)
    xmlsec_sign(root, sender.signing.key, attachments)
    signed = etree.tostring(root)
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(signed), attachments, certificate=sender.signing.certificate
    )
    assert check.valid, check.problem
    assert [ref.uri for ref in check.references] == ["", "cid:ref1"]
    assert not xmldsig.verify_ebxml_envelope(
        parse_xml(signed), {"ref1": b"changed"}, certificate=sender.signing.certificate
    ).valid
