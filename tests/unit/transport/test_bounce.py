"""Reading bounces: codes and addresses only, each of its shape, and our eb:MessageId from the
returned original."""

from __future__ import annotations

import base64

import pytest

from meldingstjener.ebxml.mime_headers import Headers
from meldingstjener.transport.bounce import HeaderTooLong, is_bounce, read_bounce


def _dsn(recipient_fields: str, returned: str = "") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour mail about Ola Nordmann failed.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example\r\n\r\n"
        + recipient_fields
        + "\r\n"
        + returned
        + "--b--\r\n"
    ).encode()


def test_a_dsn_gives_the_recipient_its_action_and_status_and_our_message() -> None:
    returned = (
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "From: 8100001@testedi.nhn.no\r\nTo: 8200001@TestEDI.nhn.no\r\n"
        "Subject: ebXML 1b2c@meldingstjener\r\n\r\n"
    )
    fields = (
        "Final-Recipient: rfc822; 8200001@testedi.nhn.no\r\nAction: failed\r\n"
        "Status: 5.1.1 (unknown user Ola)\r\nDiagnostic-Code: smtp; 550 Ola Nordmann\r\n"
    )
    bounce = read_bounce(_dsn(fields, returned))
    assert bounce.dsn and bounce.failed
    assert bounce.ebxml_message_id == "1b2c@meldingstjener"
    assert (bounce.refused_by, bounce.codes) == ("8200001@testedi.nhn.no", "5.1.1 failed")
    assert bounce.returned_to == "8200001@testedi.nhn.no"


def test_what_is_not_of_its_shape_is_not_repeated() -> None:
    fields = (
        "Final-Recipient: rfc822; 01017012345@testedi.nhn.no\r\nAction: bounced by Ola\r\n"
        "Status: five\r\n"
    )
    bounce = read_bounce(_dsn(fields))
    assert bounce.refused_by == "?" and bounce.codes == "? ?"
    assert bounce.ebxml_message_id is None


def test_a_delayed_delivery_is_no_failure() -> None:
    fields = "Final-Recipient: rfc822; a@testedi.nhn.no\r\nAction: delayed\r\nStatus: 4.4.1\r\n"
    bounce = read_bounce(_dsn(fields))
    assert not bounce.failed and bounce.codes == "4.4.1 delayed"


def test_what_is_a_bounce() -> None:
    dsn = Headers([("Content-Type", "multipart/report; report-type=delivery-status; boundary=b")])
    daemon = Headers([("From", "Mail Delivery System <MAILER-DAEMON@x>"), ("Return-Path", "<>")])
    ebxml = Headers([("From", "postmaster@x"), ("Content-Type", "multipart/related; boundary=b")])
    person = Headers([("From", "someone@x"), ("Content-Type", "text/plain")])
    other_report = Headers([("Content-Type", "multipart/report; report-type=disposition")])
    assert is_bounce(dsn) and is_bounce(daemon)
    assert not is_bounce(ebxml) and not is_bounce(person) and not is_bounce(other_report)


def test_eight_bit_bytes_in_its_headers_are_read_as_text() -> None:
    # The email package gives such a header as a Header object, not a str: a bounce with
    # them was retried every round and then quarantined as unreadable, with no alert.
    returned = (
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "To: 8200001@testedi.nhn.no (Sykehus \u00c5s)\r\n"
        "Subject: ebXML 1b2c@meldingstjener\r\n\r\n"
    )
    fields = (
        "Final-Recipient: rfc822; 8200001@testedi.nhn.no (\u00c5s)\r\n"
        "Action: failed \u00e6\r\nStatus: 5.1.1 \u00f8\r\n"
    )
    bounce = read_bounce(_dsn(fields, returned).decode().encode("utf-8"))
    assert bounce.ebxml_message_id == "1b2c@meldingstjener"
    assert bounce.refused_by == "8200001@testedi.nhn.no"
    assert bounce.returned_to == "8200001@testedi.nhn.no"
    assert bounce.codes == "5.1.1 ?"  # "failed æ" is no action of the list


def test_the_codes_of_a_report_on_many_recipients_are_cut_short() -> None:
    fields = "".join(
        f"Final-Recipient: rfc822; r{n}@testedi.nhn.no\r\nAction: failed\r\n"
        f"Status: 5.{n // 100}.{n % 100}\r\n\r\n"
        for n in range(1000)
    )
    codes = read_bounce(_dsn(fields)).codes
    assert codes.startswith("5.0.0 failed, 5.0.1 failed") and codes.endswith(" and 990 more")


# The email package reads a Content-Type's parameters in time that grows with the square of its
# length: ``a="`` and then many ``;`` took it about 150 s for 512 kB. The inputs below would
# take it well over ten minutes; the timeouts only guard against that coming back.
CRAFTED = 1_500_000


@pytest.mark.timeout(60)
def test_a_crafted_content_type_is_no_report_and_costs_no_time() -> None:
    crafted = Headers([("Content-Type", 'multipart/report; a="' + ";" * CRAFTED)])
    assert not is_bounce(crafted)
    # the project's parser reads the report type as the email package did
    quoted = Headers([("Content-Type", 'multipart/report; report-type="Delivery-Status"')])
    assert is_bounce(quoted)


def _with_part(part_head: bytes) -> bytes:
    return (
        b"From: MAILER-DAEMON@relay\r\nContent-Type: multipart/report; "
        b"report-type=delivery-status; boundary=XX\r\n\r\n--XX\r\n"
        + part_head
        + b"\r\n\r\nhello\r\n--XX--\r\n"
    )


@pytest.mark.timeout(60)
def test_a_nested_part_with_a_header_longer_than_any_server_writes_is_not_read() -> None:
    crafted = b'Content-Type: multipart/mixed; boundary="' + b";" * CRAFTED
    with pytest.raises(HeaderTooLong) as refused:
        read_bounce(_with_part(crafted))
    assert "a header line of more than 8,192 bytes" in refused.value.reason
    # folded over many lines, it is as long
    folded = b"Content-Type: multipart/mixed;\r\n" + b'\t boundary="' + b";" * 9000
    with pytest.raises(HeaderTooLong):
        read_bounce(_with_part(folded))


@pytest.mark.timeout(60)
def test_many_long_content_types_together_are_not_read() -> None:
    # each under the limit (40 ms each), but a megabyte of them would cost seconds
    part = b'Content-Type: multipart/mixed; boundary="' + b";" * 8000
    parts = b"".join(b"--XX\r\n" + part + b"\r\n\r\nx\r\n" for _ in range(150))
    mail = (
        b"From: MAILER-DAEMON@relay\r\nContent-Type: multipart/report; "
        b"report-type=delivery-status; boundary=XX\r\n\r\n" + parts + b"--XX--\r\n"
    )
    with pytest.raises(HeaderTooLong) as refused:
        read_bounce(mail)
    assert "Content-Type headers that together are too long" in refused.value.reason


@pytest.mark.timeout(60)
def test_returned_headers_in_base64_are_checked_once_decoded() -> None:
    hidden = b'Content-Type: multipart/mixed; boundary="' + b";" * CRAFTED + b"\r\n\r\n"
    returned = base64.encodebytes(hidden).replace(b"\n", b"\r\n")
    mail = _dsn("Final-Recipient: rfc822; a@testedi.nhn.no\r\nAction: failed\r\n").replace(
        b"--b--\r\n",
        b"--b\r\nContent-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: base64"
        b"\r\n\r\n" + returned + b"--b--\r\n",
    )
    with pytest.raises(HeaderTooLong):
        read_bounce(mail)


def test_a_real_bounces_headers_are_read() -> None:
    # a line of the body that only looks like a header, and headers of a few hundred bytes
    fields = "Final-Recipient: rfc822; a@testedi.nhn.no\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    returned = (
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "To: a@testedi.nhn.no\r\nReceived: " + "from relay by mx; " * 40 + "\r\n"
        "Subject: ebXML 1b2c@meldingstjener\r\n\r\n"
    )
    bounce = read_bounce(_dsn(fields, returned))
    assert bounce.ebxml_message_id == "1b2c@meldingstjener" and bounce.codes == "5.1.1 failed"
