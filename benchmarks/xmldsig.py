"""Per-operation cost of the ebXML envelope signature: ours against python-xmlsec.

Every message costs four XML signature operations (the sender signs the envelope, the receiver
verifies it, signs its Acknowledgment, the sender verifies that), so each millisecond here is
paid four times per message.

Run: ``python benchmarks/xmldsig.py [--rounds N]``. The envelope is a typical HIS 1037 payload
message (MessageHeader, AckRequested, a nextMSH SyncReply, a Manifest) with one 4 KB
attachment, signed with an RSA-2048 key from a throw-away development PKI. Prints the median
and p90 milliseconds per operation for:

- ours: ``xmldsig.sign_ebxml_envelope`` and ``xmldsig.verify_ebxml_envelope`` (the public API
  the engine calls, including our per-Reference checks);
- python-xmlsec: the same signature template signed and verified by xmlsec itself (attachments
  served through its I/O callbacks), i.e. what the signature operation costs in libxmlsec.

Parsing the envelope is not timed: both sides get an already parsed tree.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xmlsec
from cryptography.hazmat.primitives import serialization
from lxml import etree

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security import xmldsig
from meldingstjener.security.devpki import DevParty, init_pki

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
EB = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
CID = "payload-1@meldingstjener.example"
ENVELOPE = f"""<SOAP:Envelope xmlns:SOAP="{SOAP}" xmlns:eb="{EB}"
 xmlns:xlink="http://www.w3.org/1999/xlink"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xsi:schemaLocation="{SOAP} http://www.oasis-open.org/committees/ebxml-msg/schema/envelope.xsd">
<SOAP:Header>
<eb:MessageHeader SOAP:mustUnderstand="1" eb:version="2.0">
<eb:From><eb:PartyId eb:type="HER">8141253</eb:PartyId><eb:Role>Behandler</eb:Role></eb:From>
<eb:To><eb:PartyId eb:type="HER">79768</eb:PartyId><eb:Role>Fastlege</eb:Role></eb:To>
<eb:CPAId>nhn:cpa:35065</eb:CPAId>
<eb:ConversationId>be192d3a-34b5-448a-a374-5eab0524c74d</eb:ConversationId>
<eb:Service eb:type="string">urn:oid:2.16.578.1.12.4.1.1.8254</eb:Service>
<eb:Action>DIALOG_NOTAT</eb:Action>
<eb:MessageData><eb:MessageId>7104acf8-21e9-4ee7-b894-d413a00a8881@meldingstjener.example</eb:MessageId>
<eb:Timestamp>2024-08-29T10:56:50Z</eb:Timestamp></eb:MessageData>
</eb:MessageHeader>
<eb:SyncReply SOAP:actor="http://schemas.xmlsoap.org/soap/actor/next" SOAP:mustUnderstand="1"
 eb:version="2.0"/>
<eb:AckRequested SOAP:actor="urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
 SOAP:mustUnderstand="1" eb:signed="true" eb:version="2.0"/>
</SOAP:Header>
<SOAP:Body><eb:Manifest eb:version="2.0">
<eb:Reference xlink:href="cid:{CID}" xlink:type="simple"/></eb:Manifest></SOAP:Body>
</SOAP:Envelope>""".encode()


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    """Milliseconds per call; one untimed warm-up call first (parsed keys, imports)."""
    action()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def fresh_trees(data: bytes, count: int) -> list[etree._Element]:
    return [parse_xml(data) for _ in range(count)]


def bench_ours(
    party: DevParty, attachments: dict[str, bytes], rounds: int
) -> dict[str, list[float]]:
    unsigned = fresh_trees(ENVELOPE, rounds + 1)
    key, cert = party.signing.key, party.signing.certificate
    sign = timed(
        lambda: xmldsig.sign_ebxml_envelope(unsigned.pop(), attachments, key, cert), rounds
    )
    signed = parse_xml(ENVELOPE)
    xmldsig.sign_ebxml_envelope(signed, attachments, key, cert)
    received = fresh_trees(etree.tostring(signed), rounds + 1)

    def verify() -> None:
        check = xmldsig.verify_ebxml_envelope(received.pop(), attachments, certificate=cert)
        assert check.valid, check.problem

    return {"sign": sign, "verify": timed(verify, rounds)}


class XmlsecAttachments:
    """Serves ``cid:`` URIs to libxmlsec from memory (its I/O callbacks are process-global)."""

    def __init__(self, attachments: dict[str, bytes]) -> None:
        self.attachments = attachments
        xmlsec.cleanup_callbacks()
        xmlsec.register_callbacks(lambda _name: True, self.open, self.read, self.close)

    def open(self, name: bytes) -> io.BytesIO | None:
        text = name.decode("utf-8", "replace")
        data = self.attachments.get(text.removeprefix("cid:"))
        return io.BytesIO(data) if data is not None else None

    @staticmethod
    def read(context: io.BytesIO, buffer: memoryview) -> int:
        return context.readinto(buffer)

    @staticmethod
    def close(context: io.BytesIO) -> None:
        context.close()


def template_bytes(party: DevParty, attachments: dict[str, bytes]) -> bytes:
    """Our signed envelope with DigestValue and SignatureValue emptied: an xmlsec template of
    exactly the same shape, so both sides do the same work."""
    root = parse_xml(ENVELOPE)
    xmldsig.sign_ebxml_envelope(root, attachments, party.signing.key, party.signing.certificate)
    for name in ("DigestValue", "SignatureValue"):
        for node in root.iter(f"{{{DS}}}{name}"):
            node.text = None
    return etree.tostring(root)


def bench_xmlsec(
    party: DevParty, attachments: dict[str, bytes], rounds: int
) -> dict[str, list[float]]:
    templates = fresh_trees(template_bytes(party, attachments), rounds + 2)
    XmlsecAttachments(attachments)
    key_pem = party.signing.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = party.signing.certificate.public_bytes(serialization.Encoding.PEM)
    private = xmlsec.Key.from_memory(key_pem, xmlsec.constants.KeyDataFormatPem)
    public = xmlsec.Key.from_memory(cert_pem, xmlsec.constants.KeyDataFormatCertPem)

    def signature_of(root: etree._Element) -> etree._Element:
        node = root.find(f".//{{{DS}}}Signature")
        assert node is not None
        return node

    def sign() -> None:
        context = xmlsec.SignatureContext()
        context.key = private
        context.sign(signature_of(templates.pop()))

    signing = timed(sign, rounds)
    signed = templates.pop()
    sign_context = xmlsec.SignatureContext()
    sign_context.key = private
    sign_context.sign(signature_of(signed))
    received = fresh_trees(etree.tostring(signed), rounds + 1)

    def verify() -> None:
        context = xmlsec.SignatureContext()
        context.key = public
        context.verify(signature_of(received.pop()))

    return {"sign": signing, "verify": timed(verify, rounds)}


def report(name: str, results: dict[str, list[float]]) -> None:
    for operation, samples in results.items():
        ordered = sorted(samples)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        print(
            f"{name:<14} {operation:<7} median {statistics.median(samples):6.3f} ms"
            f"   p90 {p90:6.3f} ms   ({len(samples)} rounds)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    attachments = {CID: os.urandom(4096)}
    with tempfile.TemporaryDirectory() as directory:
        party = init_pki(Path(directory), ["8141253"]).parties["8141253"]
        print(f"envelope {len(ENVELOPE)} bytes, one attachment of {len(attachments[CID])} bytes")
        report("ours", bench_ours(party, attachments, args.rounds))
        report("python-xmlsec", bench_xmlsec(party, attachments, args.rounds))


if __name__ == "__main__":
    main()
