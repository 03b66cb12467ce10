"""What our own signing and verifying check besides the digests: the layout XMLDSig prescribes,
the key type, and that nothing is shared between concurrent signature operations."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security import xmldsig
from meldingstjener.security.devpki import DevParty, DevPki

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
DS = "http://www.w3.org/2000/09/xmldsig#"
ENVELOPE = f"""<SOAP:Envelope xmlns:SOAP="{SOAP}"><SOAP:Header><MessageHeader>m1</MessageHeader>
</SOAP:Header><SOAP:Body/></SOAP:Envelope>""".encode()
ATTACHMENTS = {"a@example.no": b"first", "b@example.no": b"second"}


@pytest.fixture(scope="module")
def sender(pki: DevPki) -> DevParty:
    return pki.parties["8141253"]


def _signed(sender: DevParty) -> bytes:
    envelope = parse_xml(ENVELOPE)
    xmldsig.sign_ebxml_envelope(
        envelope, ATTACHMENTS, sender.signing.key, sender.signing.certificate
    )
    return etree.tostring(envelope)


def _verify(data: bytes, sender: DevParty) -> xmldsig.SignatureCheck:
    return xmldsig.verify_ebxml_envelope(
        parse_xml(data), ATTACHMENTS, certificate=sender.signing.certificate
    )


def _moved(data: bytes, mover: str) -> bytes:
    root = etree.fromstring(data)
    signature = root.find(f".//{{{DS}}}Signature")
    assert signature is not None
    signed_info = signature[0]
    if mover == "SignatureMethod first":
        signed_info.insert(0, signed_info[1])
    elif mover == "an unknown element in SignedInfo":
        etree.SubElement(signed_info, f"{{{DS}}}Unexpected")
    elif mover == "an element after the DigestValue":
        etree.SubElement(signed_info[2], "{urn:other}Extra")
    elif mover == "KeyInfo before SignatureValue":
        signature.insert(1, signature[2])
    elif mover == "a second SignedInfo":
        signature.append(etree.fromstring(etree.tostring(signed_info)))
    return etree.tostring(root)


@pytest.mark.parametrize(
    "mover",
    [
        "SignatureMethod first",
        "an unknown element in SignedInfo",
        "an element after the DigestValue",
        "KeyInfo before SignatureValue",
        "a second SignedInfo",
    ],
)
def test_a_signature_not_laid_out_as_xmldsig_prescribes_is_refused(
    mover: str, sender: DevParty
) -> None:
    signed = _signed(sender)
    assert _verify(signed, sender).valid
    check = _verify(_moved(signed, mover), sender)
    assert not check.valid
    assert check.problem is not None and "children XMLDSig prescribes" in check.problem


def test_an_object_after_key_info_is_allowed(sender: DevParty) -> None:
    root = etree.fromstring(_signed(sender))
    signature = root.find(f".//{{{DS}}}Signature")
    assert signature is not None
    etree.SubElement(signature, f"{{{DS}}}Object").text = "not covered, allowed by XMLDSig"
    assert _verify(etree.tostring(root), sender).valid


def test_signing_with_a_key_that_is_not_rsa_fails_and_leaves_no_signature(
    sender: DevParty,
) -> None:
    envelope = parse_xml(ENVELOPE)
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(xmldsig.XmlSignatureError) as raised:
        xmldsig.sign_ebxml_envelope(envelope, {}, key, sender.signing.certificate)  # type: ignore[arg-type]
    assert raised.value.code == "xml-signature-error"
    assert envelope.find(f".//{{{DS}}}Signature") is None


def test_content_ids_with_angle_brackets_sign_as_without(sender: DevParty) -> None:
    envelope = parse_xml(ENVELOPE)
    bracketed = {f"<{cid}>": data for cid, data in ATTACHMENTS.items()}
    xmldsig.sign_ebxml_envelope(envelope, bracketed, sender.signing.key, sender.signing.certificate)
    assert etree.tostring(envelope) == _signed(sender)


def test_the_key_info_certificate_is_encoded_once(sender: DevParty) -> None:
    _signed(sender)
    before = xmldsig._certificate_text.cache_info()
    _signed(sender)
    after = xmldsig._certificate_text.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_concurrent_signing_and_verifying_share_nothing(sender: DevParty, pki: DevPki) -> None:
    # Each thread signs its own envelope (its own MessageHeader) and verifies another's.
    other = pki.parties["79768"].signing

    def sign_and_verify(index: int) -> tuple[bool, bool]:
        pair = sender.signing if index % 2 else other
        party_key, party_cert = pair.key, pair.certificate
        envelope = parse_xml(ENVELOPE.replace(b">m1<", f">m{index}<".encode()))
        attachments = {"a@example.no": f"payload {index}".encode()}
        xmldsig.sign_ebxml_envelope(envelope, attachments, party_key, party_cert)
        data = etree.tostring(envelope)
        mine = xmldsig.verify_ebxml_envelope(parse_xml(data), attachments, certificate=party_cert)
        wrong = xmldsig.verify_ebxml_envelope(
            parse_xml(data), {"a@example.no": b"another payload"}, certificate=party_cert
        )
        return mine.valid, wrong.valid

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(sign_and_verify, range(40)))
    assert results == [(True, False)] * 40
