"""Our XML signatures against xmlsec, both ways: python-xmlsec and the xmlsec1 tool verify what
we sign, we verify what they sign, and a changed byte fails in ours and in theirs.

Our signing and verifying share no code with xmlsec (digests, C14N of SignedInfo and the RSA
operation are ours), so agreement here is agreement between independent implementations.
RSA PKCS#1 v1.5 is deterministic, so for the same template and key xmlsec must produce exactly
our bytes: that checks every digest and the canonical SignedInfo at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree
from xmlsec_tools import (
    DS,
    as_template,
    signature_of,
    xmlsec1_sign,
    xmlsec1_verifies,
    xmlsec_sign,
    xmlsec_verifies,
)

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security import xmldsig
from meldingstjener.security.devpki import DevParty, DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
EB = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"
SOAP_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"
ATTACHMENTS = {
    "payload-1@example.no": bytes(range(256)) * 16,
    "<payload-2@example.no>": b"\x30\x82 the second part",
}

HEADER = f"""<eb:MessageHeader SOAP:mustUnderstand="1" eb:version="2.0">
<eb:From><eb:PartyId eb:type="HER">{SENDER}</eb:PartyId></eb:From>
<eb:To><eb:PartyId eb:type="HER">79768</eb:PartyId></eb:To>
<eb:CPAId>nhn:test</eb:CPAId><eb:ConversationId>c-1</eb:ConversationId>
<eb:Service>Test</eb:Service><eb:Action>Test</eb:Action>
<eb:MessageData><eb:MessageId>m-1@example.no</eb:MessageId>
<eb:Timestamp>2024-01-01T00:00:00Z</eb:Timestamp></eb:MessageData></eb:MessageHeader>
<eb:AckRequested SOAP:actor="urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH" eb:signed="true"
 eb:version="2.0"/>"""
MANIFEST = """<eb:Manifest eb:version="2.0" xmlns:xlink="http://www.w3.org/1999/xlink">
<eb:Reference xlink:href="cid:payload-1@example.no"/></eb:Manifest>"""

ENVELOPES = {
    "plain": f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"><SOAP:Header>{HEADER}
</SOAP:Header><SOAP:Body>{MANIFEST}</SOAP:Body></SOAP:Envelope>""",
    # Inclusive C14N renders every namespace in scope on SignedInfo: unused ones, a default
    # namespace on the root, and one the Header adds.
    "extra namespaces": f"""<SOAP:Envelope xmlns="urn:example:default" xmlns:SOAP="{SOAP}"
 xmlns:eb="{EB}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xmlns:unused="urn:example:unused" xsi:schemaLocation="{SOAP} envelope.xsd">
<SOAP:Header xmlns:hdr="urn:example:header">{HEADER}<Plain>default namespace</Plain>
</SOAP:Header><SOAP:Body>{MANIFEST}</SOAP:Body></SOAP:Envelope>""",
    "indented": f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP:Envelope   xmlns:SOAP="{SOAP}"
                 xmlns:eb="{EB}">
    <SOAP:Header>
        {HEADER.replace(chr(10), chr(10) + "        ")}
    </SOAP:Header>
\t<SOAP:Body>
        {MANIFEST}
    </SOAP:Body>
</SOAP:Envelope>
""",
    # Elements for the next MSH are left out of the digest (ebMS 2.0 section 4.1.3).
    "next MSH elements": f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"><SOAP:Header>
{HEADER}<eb:SyncReply SOAP:actor="{NEXT_MSH}" SOAP:mustUnderstand="1" eb:version="2.0">
<eb:Note>for the next MSH</eb:Note></eb:SyncReply>
<eb:Via SOAP:actor="{SOAP_NEXT}" eb:version="2.0">hop</eb:Via>
</SOAP:Header><SOAP:Body>{MANIFEST}</SOAP:Body></SOAP:Envelope>""",
    # Inclusive C14N copies xml:* attributes of ancestors onto SignedInfo.
    "xml attributes on ancestors": f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"
 xml:lang="nb"><SOAP:Header xml:space="preserve">{HEADER}
</SOAP:Header><SOAP:Body>{MANIFEST}</SOAP:Body></SOAP:Envelope>""",
}


@pytest.fixture(scope="module")
def sender(interop_pki: DevPki) -> DevParty:
    return interop_pki.parties[SENDER]


def _ours_signed(name: str, sender: DevParty, attachments: dict[str, bytes]) -> bytes:
    envelope = parse_xml(ENVELOPES[name].encode())
    xmldsig.sign_ebxml_envelope(
        envelope, attachments, sender.signing.key, sender.signing.certificate
    )
    return etree.tostring(envelope.getroottree())


def _ours_verifies(data: bytes, sender: DevParty, attachments: dict[str, bytes]) -> bool:
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(data), attachments, certificate=sender.signing.certificate
    )
    return check.valid


# --- what we sign verifies in xmlsec ----------------------------------------------------------


@pytest.mark.parametrize("name", ENVELOPES)
@pytest.mark.parametrize("attachments", [ATTACHMENTS, {}], ids=["attachments", "none"])
def test_our_signature_verifies_in_xmlsec1_and_python_xmlsec(
    name: str,
    attachments: dict[str, bytes],
    sender: DevParty,
    interop_pki: DevPki,
    tmp_path: Path,
) -> None:
    signed = _ours_signed(name, sender, attachments)
    ca = interop_pki.directory / "ca.pem"
    assert xmlsec1_verifies(signed, tmp_path, trusted_pem=ca, attachments=attachments)
    assert xmlsec_verifies(signed, sender.signing.certificate, attachments)
    assert _ours_verifies(signed, sender, attachments)


@pytest.mark.parametrize("name", ENVELOPES)
def test_xmlsec_fills_our_template_with_exactly_our_bytes(name: str, sender: DevParty) -> None:
    ours = _ours_signed(name, sender, ATTACHMENTS)
    theirs = as_template(ours)
    xmlsec_sign(theirs, sender.signing.key, ATTACHMENTS)
    assert etree.tostring(theirs.getroottree()) == ours


def test_the_next_msh_elements_are_outside_the_signature_for_both(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    signed = _ours_signed("next MSH elements", sender, ATTACHMENTS)
    changed = signed.replace(b"for the next MSH", b"changed on the way").replace(
        b">hop<", b">another hop<"
    )
    assert changed.count(b"changed on the way") == 1 and b"another hop" in changed
    ca = interop_pki.directory / "ca.pem"
    assert xmlsec1_verifies(changed, tmp_path, trusted_pem=ca, attachments=ATTACHMENTS)
    assert _ours_verifies(changed, sender, ATTACHMENTS)


# --- a changed byte fails in ours and in xmlsec1 ----------------------------------------------


def _swap_char_in(element: str) -> Callable[[bytes], bytes]:
    """Change one base64 character inside the first ds:<element> (still valid base64)."""

    def change(data: bytes) -> bytes:
        start = data.index(f"<ds:{element}>".encode()) + len(element) + 5
        old = data[start : start + 1]
        return data[:start] + (b"A" if old != b"A" else b"B") + data[start + 1 :]

    return change


TAMPERING: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "envelope text": (lambda d: d.replace(b"m-1@example.no", b"m-2@example.no"), "reference"),
    "an attribute": (lambda d: d.replace(b'eb:signed="true"', b'eb:signed="false"'), "reference"),
    "whitespace in SignedInfo": (
        lambda d: d.replace(b"<ds:SignedInfo>", b"<ds:SignedInfo>\n"),
        "signature value",
    ),
    "a DigestValue": (_swap_char_in("DigestValue"), "reference"),
    "the SignatureValue": (_swap_char_in("SignatureValue"), "signature value"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_a_changed_envelope_fails_in_ours_and_in_xmlsec1(
    name: str, sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    change, expected = TAMPERING[name]
    signed = _ours_signed("next MSH elements", sender, ATTACHMENTS)
    tampered = change(signed)
    assert tampered != signed
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(tampered), ATTACHMENTS, certificate=sender.signing.certificate
    )
    assert not check.valid
    assert check.problem is not None and expected in check.problem
    ca = interop_pki.directory / "ca.pem"
    assert not xmlsec1_verifies(tampered, tmp_path, trusted_pem=ca, attachments=ATTACHMENTS)
    assert not xmlsec_verifies(tampered, sender.signing.certificate, ATTACHMENTS)


@pytest.mark.parametrize("position", [0, 2000, -1])
def test_a_changed_attachment_byte_fails_in_ours_and_in_xmlsec1(
    position: int, sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    signed = _ours_signed("plain", sender, ATTACHMENTS)
    changed = bytearray(ATTACHMENTS["payload-1@example.no"])
    changed[position] ^= 0x80
    received = {**ATTACHMENTS, "payload-1@example.no": bytes(changed)}
    check = xmldsig.verify_ebxml_envelope(parse_xml(signed), received)
    assert not check.valid
    assert [r.matched for r in check.references] == [True, False, True]
    ca = interop_pki.directory / "ca.pem"
    assert not xmlsec1_verifies(signed, tmp_path, trusted_pem=ca, attachments=received)
    assert xmlsec1_verifies(signed, tmp_path, trusted_pem=ca, attachments=ATTACHMENTS)


# --- what xmlsec signs verifies here ----------------------------------------------------------

C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
C14N_COMMENTS = C14N + "#WithComments"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
EXC_C14N_COMMENTS = EXC_C14N + "WithComments"
RSA = {
    "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "rsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "rsa-sha512": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
}
NEXT_MSH_FILTER = (
    f'not(ancestor-or-self::node()[@SOAP:actor="{NEXT_MSH}"] | '
    f'ancestor-or-self::node()[@SOAP:actor="{SOAP_NEXT}"])'
)
DIGEST = {
    "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#sha1",
    "rsa-sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
    "rsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "rsa-sha512": "http://www.w3.org/2001/04/xmlenc#sha512",
}


def _template(
    *,
    method: str = "rsa-sha256",
    c14n: str = C14N,
    default_namespace_signature: bool = False,
    prefix_list: str | None = None,
    signed_info_comment: bool = False,
    root_extra: str = "",
) -> bytes:
    """An envelope with a signature template in the shapes other MSHs send."""
    p = "" if default_namespace_signature else "ds:"
    declaration = f'xmlns="{DS}"' if default_namespace_signature else f'xmlns:ds="{DS}"'
    inclusive = (
        f'<ec:InclusiveNamespaces xmlns:ec="{EXC_C14N}" PrefixList="{prefix_list}"/>'
        if prefix_list is not None
        else ""
    )
    comment = "<!-- a comment inside SignedInfo -->" if signed_info_comment else ""
    reference = f"""<{p}Reference URI="">
  <{p}Transforms>
    <{p}Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
    <{p}Transform Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116">
      <{p}XPath>{NEXT_MSH_FILTER}</{p}XPath>
    </{p}Transform>
    <{p}Transform Algorithm="{c14n}">{inclusive}</{p}Transform>
  </{p}Transforms>
  <{p}DigestMethod Algorithm="{DIGEST[method]}"/><{p}DigestValue></{p}DigestValue>
</{p}Reference>"""
    attachment = f"""<{p}Reference URI="cid:payload-1@example.no">
  <{p}DigestMethod Algorithm="{DIGEST[method]}"/><{p}DigestValue/></{p}Reference>"""
    signature = f"""<{p}Signature {declaration}>
<{p}SignedInfo>{comment}
  <{p}CanonicalizationMethod Algorithm="{c14n}">{inclusive}</{p}CanonicalizationMethod>
  <{p}SignatureMethod Algorithm="{RSA[method]}"/>
  {reference}
  {attachment}
</{p}SignedInfo>
<{p}SignatureValue/>
<{p}KeyInfo><{p}X509Data/></{p}KeyInfo>
</{p}Signature>"""
    return f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"{root_extra}><SOAP:Header>
{HEADER}<eb:SyncReply SOAP:actor="{NEXT_MSH}" eb:version="2.0"/>
<!-- a comment: never part of a URI="" reference, whatever its C14N says -->
{signature}</SOAP:Header><SOAP:Body>{MANIFEST}</SOAP:Body></SOAP:Envelope>""".encode()


TEMPLATES = {
    "inclusive C14N, rsa-sha256": _template(),
    ".NET style: Signature in the default namespace": _template(default_namespace_signature=True),
    "inclusive C14N with comments": _template(c14n=C14N_COMMENTS, signed_info_comment=True),
    "exclusive C14N, rsa-sha512": _template(method="rsa-sha512", c14n=EXC_C14N),
    "exclusive C14N with comments, PrefixList with #default, rsa-sha384": _template(
        method="rsa-sha384",
        c14n=EXC_C14N_COMMENTS,
        prefix_list="#default eb",
        signed_info_comment=True,
        root_extra=' xmlns="urn:example:default"',
    ),
    "exclusive C14N, default-namespace Signature, PrefixList SOAP": _template(
        c14n=EXC_C14N, prefix_list="SOAP", default_namespace_signature=True
    ),
    "inclusive C14N, xml:lang inherited": _template(root_extra=' xml:lang="nb"'),
    "rsa-sha1": _template(method="rsa-sha1"),
}
ONE_ATTACHMENT = {"payload-1@example.no": ATTACHMENTS["payload-1@example.no"]}


@pytest.mark.parametrize("name", TEMPLATES)
def test_python_xmlsec_signature_verifies_here(name: str, sender: DevParty) -> None:
    root = etree.fromstring(TEMPLATES[name])
    xmlsec_sign(root, sender.signing.key, ONE_ATTACHMENT)
    signed = etree.tostring(root)
    assert xmlsec_verifies(signed, sender.signing.certificate, ONE_ATTACHMENT)
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(signed), ONE_ATTACHMENT, certificate=sender.signing.certificate
    )
    assert check.valid, check.problem
    assert all(ref.matched for ref in check.references)
    method = etree.fromstring(signed).find(f".//{{{DS}}}SignatureMethod")
    assert method is not None
    assert check.signature_algorithm == next(
        short for short, uri in RSA.items() if uri == method.get("Algorithm")
    )


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_changed_signed_info_fails_here_as_in_python_xmlsec(name: str, sender: DevParty) -> None:
    root = etree.fromstring(TEMPLATES[name])
    xmlsec_sign(root, sender.signing.key, ONE_ATTACHMENT)
    # A changed CanonicalizationMethod attribute would change what is signed: here a new,
    # harmless attribute on SignedInfo does the same without touching any Reference.
    signature_of(root)[0].set("Id", "changed")
    changed = etree.tostring(root)
    assert not xmlsec_verifies(changed, sender.signing.certificate, ONE_ATTACHMENT)
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(changed), ONE_ATTACHMENT, certificate=sender.signing.certificate
    )
    assert not check.valid
    assert check.problem is not None and "signature value" in check.problem


def test_sha1_from_xmlsec_follows_the_policy(sender: DevParty) -> None:
    root = etree.fromstring(TEMPLATES["rsa-sha1"])
    xmlsec_sign(root, sender.signing.key, ONE_ATTACHMENT)
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(etree.tostring(root)),
        ONE_ATTACHMENT,
        certificate=sender.signing.certificate,
        allow_sha1=False,
    )
    assert not check.valid
    assert check.problem == "rsa-sha1 signatures are refused by policy"


def test_xmlsec1_signed_envelope_with_an_attachment_verifies_here(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    d = interop_pki.directory
    signed = xmlsec1_sign(
        TEMPLATES[".NET style: Signature in the default namespace"],
        tmp_path,
        d / f"{SENDER}-sign.key",
        d / f"{SENDER}-sign.pem",
        ONE_ATTACHMENT,
    )
    check = xmldsig.verify_ebxml_envelope(parse_xml(signed), ONE_ATTACHMENT)
    assert check.valid, check.problem
    assert check.signer_certificate == sender.signing.certificate
    changed = {"payload-1@example.no": ONE_ATTACHMENT["payload-1@example.no"][:-1] + b"!"}
    assert not xmldsig.verify_ebxml_envelope(parse_xml(signed), changed).valid


# --- MsgHead: a whole document, processing instructions around the root included --------------

MSGHEAD = b"""<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet type="text/xsl" href="msghead.xsl"?>
<!-- made by an EPJ -->
<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <MsgInfo><Type V="DIALOG_NOTAT" DN="Notat"/><MsgId>1</MsgId></MsgInfo>
  <Document><RefDoc><MsgType V="XML"/><Content>text &amp; more</Content></RefDoc></Document>
</MsgHead>
<?trailing instruction?>"""


def test_our_msghead_signature_with_instructions_verifies_in_xmlsec(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    root = parse_xml(MSGHEAD)
    xmldsig.sign_msghead(root, sender.signing.key, sender.signing.certificate)
    signed = etree.tostring(root.getroottree())
    assert b"<?xml-stylesheet" in signed and b"<?trailing" in signed
    ca = interop_pki.directory / "ca.pem"
    assert xmlsec1_verifies(signed, tmp_path, trusted_pem=ca)
    assert xmlsec_verifies(signed, sender.signing.certificate)
    # The instructions are covered: xmlsec1 and we both notice a changed one.
    changed = signed.replace(b"msghead.xsl", b"other.xsl")
    assert not xmlsec1_verifies(changed, tmp_path, trusted_pem=ca)
    assert not xmldsig.verify_msghead(parse_xml(changed), sender.signing.certificate).valid


def test_xmlsec_msghead_signature_with_instructions_verifies_here(sender: DevParty) -> None:
    root = parse_xml(MSGHEAD)
    xmldsig.sign_msghead(root, sender.signing.key, sender.signing.certificate)
    template = as_template(etree.tostring(root.getroottree()))
    xmlsec_sign(template, sender.signing.key)
    signed = etree.tostring(template.getroottree())
    check = xmldsig.verify_msghead(parse_xml(signed), sender.signing.certificate)
    assert check.valid, check.problem


# --- the layout of ds:Signature: we refuse what xmlsec refuses -------------------------------


def _relaid(signature: etree._Element, change: str) -> None:
    signed_info = signature[0]
    if change == "SignatureMethod before CanonicalizationMethod":
        signed_info.insert(0, signed_info[1])
    elif change == "KeyInfo before SignatureValue":
        signature.insert(1, signature[2])
    elif change == "a second SignedInfo":
        signature.append(etree.fromstring(etree.tostring(signed_info)))
    elif change == "an unknown element in a Reference":
        etree.SubElement(signed_info[2], f"{{{DS}}}Unexpected")
    elif change == "an Object after KeyInfo (allowed)":
        etree.SubElement(signature, f"{{{DS}}}Object").text = "not covered"


@pytest.mark.parametrize(
    "change",
    [
        "SignatureMethod before CanonicalizationMethod",
        "KeyInfo before SignatureValue",
        "a second SignedInfo",
        "an unknown element in a Reference",
        "an Object after KeyInfo (allowed)",
    ],
)
def test_ours_and_python_xmlsec_agree_on_the_signature_layout(
    change: str, sender: DevParty
) -> None:
    root = etree.fromstring(_ours_signed("plain", sender, ATTACHMENTS))
    _relaid(signature_of(root), change)
    data = etree.tostring(root)
    theirs = xmlsec_verifies(data, sender.signing.certificate, ATTACHMENTS)
    assert theirs == change.endswith("(allowed)")
    assert _ours_verifies(data, sender, ATTACHMENTS) == theirs
