"""Our XML signatures checked by the xmlsec1 command line tool (and its signatures by us)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security import xmldsig
from meldingstjener.security.devpki import DevParty, DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH")
    return path


def run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, check=False)


SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
EB = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
ENVELOPE = f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"><SOAP:Header>
<eb:MessageHeader SOAP:mustUnderstand="1" eb:version="2.0"><eb:CPAId>x</eb:CPAId>
<eb:MessageData><eb:MessageId>m-1</eb:MessageId></eb:MessageData></eb:MessageHeader>
<eb:AckRequested SOAP:actor="urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH" eb:signed="true"/>
</SOAP:Header><SOAP:Body/></SOAP:Envelope>""".encode()
CID = "payload@example.no"
PAYLOAD = bytes(range(256)) * 4


@pytest.fixture(scope="module")
def sender(interop_pki: DevPki) -> DevParty:
    return interop_pki.parties[SENDER]


def _xmlsec1_verify(interop_pki: DevPki, xml: Path, attachment: Path | None) -> int:
    url_map = [f"--url-map:cid:{CID}", str(attachment)] if attachment else []
    done = run(
        [
            tool("xmlsec1"),
            "--verify",
            "--trusted-pem",
            str(interop_pki.directory / "ca.pem"),
            *url_map,
            str(xml),
        ]
    )
    return done.returncode


def test_our_envelope_signature_verifies_in_xmlsec1(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    envelope = parse_xml(ENVELOPE)
    xmldsig.sign_ebxml_envelope(
        envelope, {CID: PAYLOAD}, sender.signing.key, sender.signing.certificate
    )
    (tmp_path / "env.xml").write_bytes(etree.tostring(envelope))
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "changed").write_bytes(PAYLOAD[:-1] + b"!")
    assert _xmlsec1_verify(interop_pki, tmp_path / "env.xml", tmp_path / "payload") == 0
    assert _xmlsec1_verify(interop_pki, tmp_path / "env.xml", tmp_path / "changed") != 0


def test_envelope_without_attachments_verifies_in_xmlsec1(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    envelope = parse_xml(ENVELOPE)
    xmldsig.sign_ebxml_envelope(envelope, {}, sender.signing.key, sender.signing.certificate)
    (tmp_path / "env.xml").write_bytes(etree.tostring(envelope))
    assert _xmlsec1_verify(interop_pki, tmp_path / "env.xml", None) == 0
    tampered = etree.tostring(envelope).replace(b"m-1", b"m-2")
    (tmp_path / "tampered.xml").write_bytes(tampered)
    assert _xmlsec1_verify(interop_pki, tmp_path / "tampered.xml", None) != 0


def test_our_msghead_signature_verifies_in_xmlsec1(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    root = parse_xml(
        b'<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"><MsgInfo/></MsgHead>'
    )
    xmldsig.sign_msghead(root, sender.signing.key, sender.signing.certificate)
    (tmp_path / "msghead.xml").write_bytes(etree.tostring(root))
    assert _xmlsec1_verify(interop_pki, tmp_path / "msghead.xml", None) == 0


def test_xmlsec1_signed_msghead_verifies_here(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    template = b"""<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"><MsgInfo>x</MsgInfo>
<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignedInfo>
<CanonicalizationMethod Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315"/>
<SignatureMethod Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1"/>
<Reference URI=""><Transforms>
<Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/></Transforms>
<DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/><DigestValue/></Reference>
</SignedInfo><SignatureValue/><KeyInfo><X509Data/></KeyInfo></Signature></MsgHead>"""
    (tmp_path / "template.xml").write_bytes(template)
    d = interop_pki.directory
    done = run(
        [
            tool("xmlsec1"),
            "--sign",
            "--privkey-pem",
            f"{d / f'{SENDER}-sign.key'},{d / f'{SENDER}-sign.pem'}",
            "--output",
            str(tmp_path / "signed.xml"),
            str(tmp_path / "template.xml"),
        ]
    )
    assert done.returncode == 0, done.stderr
    signed = parse_xml((tmp_path / "signed.xml").read_bytes())
    check = xmldsig.verify_msghead(signed, sender.signing.certificate)
    assert check.valid, check.problem
    assert check.signature_algorithm == "rsa-sha1"
    assert not xmldsig.verify_msghead(signed, sender.signing.certificate, allow_sha1=False).valid
