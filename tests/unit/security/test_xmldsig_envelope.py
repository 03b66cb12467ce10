"""XML signatures on our own ebXML envelopes and MsgHeads (sign, serialise, re-parse, verify)."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security import xmldsig, xmldsig_refs
from meldingstjener.security.devpki import DevParty, DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
EB = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"

ENVELOPE = f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"
 xmlns:xlink="http://www.w3.org/1999/xlink"><SOAP:Header>
  <eb:MessageHeader SOAP:mustUnderstand="1" eb:version="2.0">
   <eb:From><eb:PartyId eb:type="HER">{SENDER}</eb:PartyId></eb:From>
   <eb:To><eb:PartyId eb:type="HER">{RECEIVER}</eb:PartyId></eb:To>
   <eb:CPAId>test:1</eb:CPAId><eb:ConversationId>c1</eb:ConversationId>
   <eb:Service>Test</eb:Service><eb:Action>Test</eb:Action>
   <eb:MessageData><eb:MessageId>m1</eb:MessageId>
   <eb:Timestamp>2024-01-01T00:00:00Z</eb:Timestamp></eb:MessageData>
  </eb:MessageHeader>
  <eb:SyncReply SOAP:actor="{NEXT_MSH}" SOAP:mustUnderstand="1" eb:version="2.0"/>
 </SOAP:Header><SOAP:Body><eb:Manifest eb:version="2.0">
  <eb:Reference xlink:href="cid:payload-1@example.no"/></eb:Manifest></SOAP:Body>
</SOAP:Envelope>""".encode()

ATTACHMENTS = {"payload-1@example.no": b"\x30\x82 encrypted payload bytes"}


@pytest.fixture(scope="module")
def sender(pki: DevPki) -> DevParty:
    return pki.parties[SENDER]


def _signed(sender: DevParty, attachments: dict[str, bytes] = ATTACHMENTS) -> bytes:
    envelope = parse_xml(ENVELOPE)
    xmldsig.sign_ebxml_envelope(
        envelope, attachments, sender.signing.key, sender.signing.certificate
    )
    return etree.tostring(envelope)


def test_signature_shape(sender: DevParty) -> None:
    envelope = parse_xml(_signed(sender))
    header = envelope.find(f"{{{SOAP}}}Header")
    assert header is not None
    assert header[-1].tag == f"{{{DS}}}Signature"
    uris = [ref.get("URI") for ref in envelope.iter(f"{{{DS}}}Reference")]
    assert uris == ["", "cid:payload-1@example.no"]
    method = envelope.find(f".//{{{DS}}}SignatureMethod")
    assert method is not None and method.get("Algorithm", "").endswith("rsa-sha256")
    transforms = [t.get("Algorithm") for t in envelope.iter(f"{{{DS}}}Transform")]
    assert transforms == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    ]
    assert envelope.find(f".//{{{DS}}}X509Certificate") is not None


def test_signed_envelope_survives_serialisation_and_verifies(sender: DevParty) -> None:
    check = xmldsig.verify_ebxml_envelope(parse_xml(_signed(sender)), ATTACHMENTS)
    assert check.valid, check.problem
    assert check.signature_algorithm == "rsa-sha256"
    assert check.signer_certificate == sender.signing.certificate
    assert [(r.uri, r.digest_algorithm, r.matched) for r in check.references] == [
        ("", "sha256", True),
        ("cid:payload-1@example.no", "sha256", True),
    ]


def test_changed_attachment_is_reported_on_its_reference(sender: DevParty) -> None:
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(_signed(sender)), {"payload-1@example.no": b"\x30\x82 encrypted payload byteZ"}
    )
    assert not check.valid
    assert [r.matched for r in check.references] == [True, False]


def test_changed_header_is_reported_on_the_envelope_reference(sender: DevParty) -> None:
    tampered = _signed(sender).replace(b">m1<", b">m2<")
    check = xmldsig.verify_ebxml_envelope(parse_xml(tampered), ATTACHMENTS)
    assert not check.valid
    assert [r.matched for r in check.references] == [False, True]


def test_element_for_the_next_msh_is_not_covered(sender: DevParty) -> None:
    # ebMS: intermediaries may change what is addressed to nextMSH without breaking the signature.
    changed = _signed(sender).replace(b'eb:version="2.0"/>', b'eb:version="2.0" extra="1"/>', 1)
    assert changed != _signed(sender)
    assert xmldsig.verify_ebxml_envelope(parse_xml(changed), ATTACHMENTS).valid


def test_signature_by_another_key(sender: DevParty, pki: DevPki) -> None:
    other = pki.parties[RECEIVER].signing.certificate
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(_signed(sender)), ATTACHMENTS, certificate=other
    )
    assert not check.valid
    assert check.problem is not None and "signature value" in check.problem


def test_attachment_not_covered_by_the_signature(sender: DevParty) -> None:
    extra = {**ATTACHMENTS, "sneaked-in@example.no": b"more"}
    check = xmldsig.verify_ebxml_envelope(parse_xml(_signed(sender)), extra)
    assert not check.valid
    assert check.problem is not None and "sneaked-in@example.no" in check.problem


def test_missing_attachment(sender: DevParty) -> None:
    check = xmldsig.verify_ebxml_envelope(parse_xml(_signed(sender)), {})
    assert not check.valid
    assert check.references[1].problem == "the referenced attachment is not in the message"


def test_unsigned_envelope() -> None:
    check = xmldsig.verify_ebxml_envelope(parse_xml(ENVELOPE), ATTACHMENTS)
    assert not check.valid and check.problem is not None and "no ds:Signature" in check.problem


def test_hostile_xpath_is_refused(sender: DevParty) -> None:
    signed = _signed(sender)
    start = signed.index(b"<ds:XPath")
    end = signed.index(b"</ds:XPath>")
    hostile = signed[:start] + b"<ds:XPath>false()" + signed[end:]
    check = xmldsig.verify_ebxml_envelope(parse_xml(hostile), ATTACHMENTS)
    assert not check.valid
    assert check.references[0].problem == "only the ebXML nextMSH XPath filter is accepted"


def test_reference_to_a_local_file_is_refused(sender: DevParty) -> None:
    hostile = _signed(sender).replace(
        b'URI="cid:payload-1@example.no"', b'URI="file:///etc/hostname"'
    )
    check = xmldsig.verify_ebxml_envelope(parse_xml(hostile), {})
    assert not check.valid
    assert check.references[1].problem is not None
    assert "cid:" in check.references[1].problem


def test_sha1_follows_the_policy(sender: DevParty, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xmldsig, "RSA_SHA256", "http://www.w3.org/2000/09/xmldsig#rsa-sha1")
    monkeypatch.setattr(xmldsig, "SHA256", "http://www.w3.org/2000/09/xmldsig#sha1")
    signed = _signed(sender)
    allowed = xmldsig.verify_ebxml_envelope(parse_xml(signed), ATTACHMENTS)
    assert allowed.valid, allowed.problem
    assert allowed.signature_algorithm == "rsa-sha1"
    assert [r.digest_algorithm for r in allowed.references] == ["sha1", "sha1"]
    refused = xmldsig.verify_ebxml_envelope(parse_xml(signed), ATTACHMENTS, allow_sha1=False)
    assert not refused.valid
    assert refused.problem is not None and "refused by policy" in refused.problem


MSGHEAD = b"""<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24">
<MsgInfo><Type V="DIALOG_NOTAT"/><MsgId>1</MsgId></MsgInfo>
<Document><RefDoc><MsgType V="XML"/><Content>text</Content></RefDoc></Document></MsgHead>"""


def test_msghead_signature_round_trip(sender: DevParty) -> None:
    root = parse_xml(MSGHEAD)
    xmldsig.sign_msghead(root, sender.signing.key, sender.signing.certificate)
    assert root[-1].tag == f"{{{DS}}}Signature"
    signed = etree.tostring(root)
    check = xmldsig.verify_msghead(parse_xml(signed), sender.signing.certificate)
    assert check.valid, check.problem
    tampered = xmldsig.verify_msghead(parse_xml(signed.replace(b">text<", b">texT<")))
    assert not tampered.valid
    assert tampered.references[0].matched is False


def test_msghead_without_signature() -> None:
    assert not xmldsig.verify_msghead(parse_xml(MSGHEAD)).valid


def _with_copies(signed: bytes, uri: str, spelling: str, copies: int) -> bytes:
    root = etree.fromstring(signed)
    signed_info = root.find(f".//{{{DS}}}SignedInfo")
    assert signed_info is not None
    reference = next(ref for ref in signed_info if ref.get("URI") == uri)
    for _ in range(copies):
        copy = etree.fromstring(etree.tostring(reference))
        copy.set("URI", spelling)
        signed_info.append(copy)
    return etree.tostring(root)


@pytest.mark.parametrize(
    ("uri", "spelling"),
    [
        ("cid:payload-1@example.no", "cid:payload-1@example.no"),
        ("cid:payload-1@example.no", "cid:<<payload-1@example.no>>"),
        ("", ""),
    ],
)
def test_repeated_references_are_refused_before_any_digest(
    sender: DevParty, monkeypatch: pytest.MonkeyPatch, uri: str, spelling: str
) -> None:
    """Each digest hashes a whole attachment or copies and canonicalises the whole document:
    50 copies of one Reference must not cost 50 of them (no key is needed to send them)."""
    forged = _with_copies(_signed(sender), uri, spelling, 50)

    calls: list[str] = []
    real = xmldsig_refs.reference_digest

    def counted(reference: etree._Element, *args: Any, **kwargs: Any) -> bytes:
        calls.append(reference.get("URI", ""))
        return real(reference, *args, **kwargs)

    monkeypatch.setattr(xmldsig_refs, "reference_digest", counted)
    check = xmldsig.verify_ebxml_envelope(parse_xml(forged), ATTACHMENTS)
    assert not check.valid
    assert check.problem is not None and "one Reference" in check.problem
    assert len(calls) <= 1


def test_a_document_c14n_cannot_render_is_an_invalid_signature(sender: DevParty) -> None:
    """A relative namespace URI makes libxml2's C14N fail: the check answers invalid (so the
    sender gets a MessageError) instead of raising."""
    relative = _signed(sender).replace(b"<eb:CPAId>", b'<eb:CPAId xmlns:x="relative/uri">', 1)
    check = xmldsig.verify_ebxml_envelope(parse_xml(relative), ATTACHMENTS)
    assert check.valid is False
    assert check.problem is not None and "canonicalised" in check.problem


@pytest.mark.parametrize(
    "spelling",
    ["cid:payload-1%40example.no", "CID:payload-1@example.no", "cid:%3Cpayload-1@example.no%3E"],
)
def test_a_cid_url_is_read_as_rfc_2392_writes_it(sender: DevParty, spelling: str) -> None:
    """Percent-encoded, the scheme in any case, one pair of brackets: as the manifest reads it."""
    root = parse_xml(_signed(sender))
    reference = next(r for r in root.iter(f"{{{DS}}}Reference") if r.get("URI"))
    reference.set("URI", spelling)
    signature = next(root.iter(f"{{{DS}}}Signature"))
    xmldsig._compute(signature, ATTACHMENTS, sender.signing.key)  # signed with that spelling
    check = xmldsig.verify_ebxml_envelope(parse_xml(etree.tostring(root)), ATTACHMENTS)
    assert check.valid, check.problem


@pytest.mark.parametrize("twin", ["<payload-1@example.no>", "<<payload-1@example.no>>"])
def test_two_attachment_keys_naming_one_content_id_are_refused(sender: DevParty, twin: str) -> None:
    """Two parts the MIME reader holds apart must not become one for the signature check (the
    last one's bytes checked, the other's read as the payload)."""
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(_signed(sender)), {twin: b"attacker's bytes", **ATTACHMENTS}
    )
    assert not check.valid
    assert check.problem is not None and "content-id" in check.problem


def test_an_attachment_key_in_brackets_is_its_content_id(sender: DevParty) -> None:
    check = xmldsig.verify_ebxml_envelope(
        parse_xml(_signed(sender)), {f"<{cid}>": data for cid, data in ATTACHMENTS.items()}
    )
    assert check.valid, check.problem


def test_a_cid_reference_naming_no_content_id_is_refused(sender: DevParty) -> None:
    root = parse_xml(_signed(sender))
    reference = next(r for r in root.iter(f"{{{DS}}}Reference") if r.get("URI"))
    reference.set("URI", "cid:<<payload-1@example.no>>")
    check = xmldsig.verify_ebxml_envelope(parse_xml(etree.tostring(root)), ATTACHMENTS)
    assert not check.valid
    assert check.references[1].problem == "the cid: reference names no content-id"


def test_a_part_s_cid_url_is_one_in_the_signature_the_manifest_and_an_error_location(
    sender: DevParty,
) -> None:
    # three encodings: an error location said cid:part%281%29/a@x of the part the manifest and
    # the signature name cid:part(1)%2Fa@x. Our signature's form stays (messages in flight).
    from meldingstjener.contentid import content_id_of_url
    from meldingstjener.ebxml.codes import cid_location
    from meldingstjener.ebxml.values import ManifestReference

    cid = "part(1)/a@x"
    signed = parse_xml(_signed(sender, {cid: b"payload"}))
    [signed_uri] = [r.get("URI") for r in signed.iter(f"{{{DS}}}Reference") if r.get("URI")]
    assert signed_uri == "cid:part(1)%2Fa@x"
    assert ManifestReference.for_content_id(cid).href == signed_uri
    assert cid_location(cid) == signed_uri
    assert content_id_of_url(signed_uri) == cid
