"""The real ebXML mail from a third-party MSH: its envelope signature verifies with its
certificate, breaks when one attachment byte changes, and the certificate's expiry is plain."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path

import pytest

from meldingstjener.formats.xmlparse import parse_xml
from meldingstjener.security.certs import load_certificate, organisation_number
from meldingstjener.security.devpki import DevPki
from meldingstjener.security.validation import CertificateValidator, Reason
from meldingstjener.security.xmldsig import verify_ebxml_envelope

STEM = "samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328"
SIGNED_AT = datetime(2023, 8, 29, 10, 56, 50, tzinfo=UTC)  # eb:Timestamp of the message


def _split(mail_path: Path) -> tuple[bytes, dict[str, bytes]]:
    mail = email.message_from_bytes(mail_path.read_bytes())
    start = mail.get_param("start")
    assert isinstance(start, str)
    envelope = b""
    attachments: dict[str, bytes] = {}
    for part in mail.walk():
        if part.is_multipart():
            continue
        content_id = str(part["Content-ID"]).strip().strip("<>")
        body = _body(part)
        if content_id == start.strip("<>"):
            envelope = body
        else:
            attachments[content_id] = body
    return envelope, attachments


def _body(part: Message) -> bytes:
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    return body


@pytest.fixture(scope="module")
def mail(reference_dir: Path) -> tuple[bytes, dict[str, bytes]]:
    return _split(reference_dir / f"{STEM}.msg")


def test_real_mail_verifies_with_its_certificate(
    mail: tuple[bytes, dict[str, bytes]], reference_dir: Path
) -> None:
    envelope, attachments = mail
    cert = load_certificate(reference_dir / f"{STEM}.cer")
    check = verify_ebxml_envelope(parse_xml(envelope), attachments, certificate=cert)
    assert check.valid, check.problem
    assert check.signature_algorithm == "rsa-sha256"
    assert [(r.uri, r.matched) for r in check.references] == [
        ("", True),
        ("cid:3CTGI8UKUKU4.ADHEUDMDCY3Q3@speare.no", True),
    ]
    # The certificate in KeyInfo is the same one.
    from_key_info = verify_ebxml_envelope(parse_xml(envelope), attachments)
    assert from_key_info.valid
    assert from_key_info.signer_certificate == cert
    assert organisation_number(cert) == "993954896"


def test_attachment_digest_is_over_the_decoded_part(
    mail: tuple[bytes, dict[str, bytes]], reference_dir: Path
) -> None:
    _, attachments = mail
    assert next(iter(attachments.values())) == (reference_dir / f"{STEM}.p7m").read_bytes()


@pytest.mark.parametrize("position", [0, 1000, -1])
def test_one_changed_attachment_byte_fails(
    mail: tuple[bytes, dict[str, bytes]], position: int
) -> None:
    envelope, attachments = mail
    ((cid, data),) = attachments.items()
    changed = bytearray(data)
    changed[position] ^= 0x01
    check = verify_ebxml_envelope(parse_xml(envelope), {cid: bytes(changed)})
    assert not check.valid
    assert [r.matched for r in check.references] == [True, False]


def test_the_expiry_is_said_plainly(reference_dir: Path, pki: DevPki) -> None:
    cert = load_certificate(reference_dir / f"{STEM}.cer")
    validator = CertificateValidator([pki.ca_certificate], check_revocation=False)
    now = validator.validate(cert, usage="signing", at=datetime(2026, 1, 1, tzinfo=UTC))
    assert Reason.EXPIRED in now.reasons
    assert any("expired on 2025-09-22" in detail for detail in now.details)
    then = validator.validate(cert, usage="signing", at=SIGNED_AT)
    assert Reason.EXPIRED not in then.reasons
    assert Reason.WRONG_USAGE not in then.reasons  # nonRepudiation only: a signing certificate
    # We do not have Buypass's test CA, so it is (correctly) untrusted here.
    assert then.reasons == [Reason.UNTRUSTED]
    assert not then.ok


def test_the_certificate_is_not_for_encryption(reference_dir: Path, pki: DevPki) -> None:
    cert = load_certificate(reference_dir / f"{STEM}.cer")
    validator = CertificateValidator([pki.ca_certificate], check_revocation=False)
    check = validator.validate(cert, usage="encryption", at=SIGNED_AT)
    assert Reason.WRONG_USAGE in check.reasons
