"""MIME packaging: round trips with random attachments, the forms senders use, and defects."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meldingstjener.ebxml import (
    Attachment,
    EbxmlError,
    ErrorCode,
    package,
    unpackage,
    unpackage_message,
)
from meldingstjener.ebxml.mime import http_headers, mail_headers, new_content_id, render_message
from meldingstjener.ebxml.mime_headers import bare_content_id, parse_content_type

ENVELOPE = b"<?xml version='1.0' encoding='UTF-8'?>\n<SOAP:Envelope xmlns:SOAP='s'/>"
P7M = "application/pkcs7-mime; smime-type=enveloped-data"
CIDS = st.from_regex(r"[A-Za-z0-9.\-_]{1,20}@[a-z]{1,10}\.no", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    envelope=st.binary(max_size=300),
    payloads=st.lists(st.binary(max_size=3000), max_size=3),
    cids=st.lists(CIDS, min_size=4, max_size=4, unique=True),
    encoding=st.sampled_from(["base64", "binary"]),
)
def test_package_unpackage_round_trip(
    envelope: bytes, payloads: list[bytes], cids: list[str], encoding: str
) -> None:
    attachments = [
        Attachment(cid, P7M, data) for cid, data in zip(cids[1:], payloads, strict=False)
    ]
    body, content_type = package(
        envelope,
        attachments,
        transfer_encoding=encoding,  # type: ignore[arg-type]
        envelope_content_id=cids[0],
    )
    message = unpackage(content_type, body)
    assert message.envelope_xml == envelope
    assert message.start == cids[0]
    assert list(message.attachments.values()) == attachments


@settings(max_examples=25, deadline=None)
@given(payload=st.binary(max_size=2000), line_end=st.sampled_from([b"\r\n", b"\n"]))
def test_whole_mail_round_trip_with_either_line_end(payload: bytes, line_end: bytes) -> None:
    body, content_type = package(ENVELOPE, [Attachment("p@x.no", P7M, payload)])
    headers = mail_headers(
        content_type=content_type,
        from_address="a@edi.nhn.no",
        to_address="b@edi.nhn.no",
        message_id="mail-1@x.no",
        date=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    raw = render_message(headers, body)
    if line_end == b"\n":
        raw = raw.replace(b"\r\n", b"\n")  # base64 text survives; a mailbox may store LF
    message = unpackage_message(raw)
    assert message.envelope_xml.replace(b"\r\n", b"\n") == ENVELOPE
    assert message.attachments["p@x.no"].data == payload
    assert message.message_id == "mail-1@x.no"
    assert message.headers["soapaction"] == '"ebXML"'
    assert message.headers["mime-version"] == "1.0"


def test_mail_headers_shape() -> None:
    body, content_type = package(ENVELOPE, [], envelope_content_id="env@x.no", boundary="b1")
    assert content_type == 'multipart/related; type="text/xml"; boundary="b1"; start="<env@x.no>"'
    names = [
        name
        for name, _ in mail_headers(content_type=content_type, from_address="a@x", to_address="b@x")
    ]
    assert names == [
        "From", "To", "Date", "Subject", "Message-Id", "MIME-Version", "SOAPAction",
        "Content-Type", "Content-Transfer-Encoding",
    ]  # fmt: skip
    assert http_headers(content_type)["SOAPAction"] == '"ebXML"'
    raw = render_message(
        mail_headers(content_type=content_type, from_address="a@x", to_address="b@x"), body
    )
    # The long Content-Type header is folded, and still read back.
    assert b'multipart/related;\r\n\ttype="text/xml"' in raw
    assert unpackage_message(raw).start == "env@x.no"


def _mail(parts: list[bytes], *, top: bytes | None = None, boundary: bytes = b"BOUND") -> bytes:
    head = top or (
        b'Content-Type: multipart/related; type="text/xml"; boundary="'
        + boundary
        + b'";\n start="<env@x>"\nMIME-Version: 1.0\n\n'
    )
    body = b"preamble text\n"
    for part in parts:
        body += b"--" + boundary + b"\n" + part + b"\n"
    return head + body + b"--" + boundary + b"--\nepilogue\n"


ENV_PART = b"Content-Type: text/xml\nContent-ID: <env@x>\n\n<e/>"


def test_quoted_printable_7bit_and_bare_content_ids() -> None:
    raw = _mail(
        [
            ENV_PART,
            b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n"
            b"Content-Id: qp@x\n\nl=C3=A6ge =\nfortsatt",
            b"content-type: application/octet-stream\ncontent-transfer-encoding: 7BIT\n"
            b"CONTENT-ID:   < seven@x >\n\nplain",
        ]
    )
    message = unpackage_message(raw)
    assert message.envelope_xml == b"<e/>"
    assert message.attachments["qp@x"].data == "læge fortsatt".encode()
    assert message.attachments["seven@x"].data == b"plain"


def test_folded_part_headers_and_transport_padding() -> None:
    raw = _mail(
        [
            ENV_PART,
            b"Content-Type: application/pkcs7-mime;\n\tsmime-type=enveloped-data\n"
            b"Content-ID:\n <p@x>\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(b"\x00\x01payload\xff"),
        ]
    ).replace(b"--BOUND\nContent-Type: app", b"--BOUND  \t\nContent-Type: app")
    part = unpackage_message(raw).attachments["p@x"]
    assert part.data == b"\x00\x01payload\xff"
    assert part.content_type == "application/pkcs7-mime; smime-type=enveloped-data"


def test_without_start_the_first_part_is_the_envelope() -> None:
    top = b'Content-Type: multipart/related; boundary=BOUND; type="text/xml"\n\n'
    raw = _mail([b"Content-Type: text/xml\n\n<first/>", b"Content-ID: <a@x>\n\ndata"], top=top)
    message = unpackage_message(raw)
    assert message.envelope_xml == b"<first/>"
    assert message.start == ""
    assert list(message.attachments) == ["a@x"]


def test_boundary_text_inside_a_line_is_not_a_delimiter() -> None:
    raw = _mail([ENV_PART, b"Content-ID: <a@x>\n\nline one\n--BOUNDARY-like line\nend"])
    assert unpackage_message(raw).attachments["a@x"].data == b"line one\n--BOUNDARY-like line\nend"


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize(
    "after",
    [b"--BOUND\nContent-ID: <c@x>\n\nc\n--BOUND--\n", b"--BOUND--\n", b"--BOUND--",
     b"--BOUND--  \n", b"--BOUND--\t \nepilogue\n"],
    ids=["next-part", "closing", "closing-at-eof", "closing-padded", "closing-padded-epilogue"],
)  # fmt: skip
def test_a_binary_part_ending_in_cr_keeps_it_where_lines_end_in_lf(
    after: bytes, line_end: bytes
) -> None:
    """With LF line ends the CR before a delimiter is the part's last byte (a CMS structure
    ends in any byte), however the closing delimiter line ends (or does not); with CRLF line
    ends the CRLF before a delimiter is the delimiter's."""
    binary = b"Content-ID: <b@x>\nContent-Transfer-Encoding: binary\n\n\x30\x82\x00\r"
    head = _mail([])[: -len(b"--BOUND--\nepilogue\n")]
    raw = head + b"--BOUND\n" + ENV_PART + b"\n--BOUND\n" + binary + b"\n" + after
    raw = raw.replace(b"\n", line_end)
    assert unpackage_message(raw).attachments["b@x"].data == b"\x30\x82\x00\r"


def test_plain_text_xml_message_without_attachments() -> None:
    message = unpackage("text/xml; charset=utf-8", b"<e/>")
    assert (message.envelope_xml, message.attachments, message.start) == (b"<e/>", {}, "")


def test_http_request_line_is_skipped() -> None:
    body, content_type = package(ENVELOPE, [Attachment("a@x", P7M, b"123")])
    raw = b"POST /ebms HTTP/1.1\r\nHost: msh\r\n" + render_message(
        list(http_headers(content_type).items()), body
    )
    assert unpackage_message(raw).attachments["a@x"].data == b"123"


def test_large_binary_payload_is_found_by_offsets() -> None:
    payload = bytes(range(256)) * 40_000  # 10 MB with every byte value
    body, content_type = package(ENVELOPE, [Attachment("big@x", P7M, payload)],
                                 transfer_encoding="binary")  # fmt: skip
    assert unpackage(content_type, body).attachments["big@x"].data == payload


MIME_DEFECTS: list[tuple[str, bytes]] = [
    ("no content type", b"MIME-Version: 1.0\n\nbody"),
    ("no header end", b"Content-Type: multipart/related; boundary=B"),
    ("not multipart related", b"Content-Type: multipart/mixed; boundary=B\n\n--B\n\nx\n--B--\n"),
    ("no boundary parameter", b"Content-Type: multipart/related\n\n--B\n\nx\n--B--\n"),
    ("boundary never appears", b"Content-Type: multipart/related; boundary=B\n\nnothing here\n"),
    ("truncated", _mail([ENV_PART, b"Content-ID: <a@x>\n\ndata"])[:-20]),
    ("no parts", b"Content-Type: multipart/related; boundary=B\n\n--B--\n"),
    ("start not found", _mail([b"Content-ID: <other@x>\n\n<e/>"])),
    ("attachment without cid", _mail([ENV_PART, b"Content-Type: text/plain\n\nx"])),
    ("duplicate cid", _mail([ENV_PART, b"Content-ID: <a@x>\n\n1", b"Content-ID: <a@x>\n\n2"])),
    # two parts for a reader that takes off one pair of brackets, one for a reader taking all
    (
        "cid in two pairs of brackets",
        _mail([ENV_PART, b"Content-ID: <a@x>\n\n1", b"Content-ID: <<a@x>>\n\n2"]),
    ),
    ("cid with a stray bracket", _mail([ENV_PART, b"Content-ID: <<a@x>\n\n1"])),
    ("cid of brackets only", _mail([ENV_PART, b"Content-ID: <>\n\n1"])),
    (
        "bad base64",
        _mail([ENV_PART, b"Content-ID: <a@x>\nContent-Transfer-Encoding: base64\n\nQUJDR"]),
    ),
    (
        "unknown transfer encoding",
        _mail([ENV_PART, b"Content-ID: <a@x>\nContent-Transfer-Encoding: x-uuencode\n\nx"]),
    ),
    ("garbage header line", _mail([ENV_PART, b"Content-ID <a@x>\n\nx"])),
    ("unclosed quote", b'Content-Type: multipart/related; boundary="B\n\n--B\n\nx\n--B--\n'),
    ("not a media type", b"Content-Type: related\n\nx"),
    ("boundary outside ASCII", _mail([ENV_PART], boundary="\u20ac".encode())),
    (
        "more parts than a message has",
        _mail([ENV_PART] + [b"Content-ID: <p%d@x>\n\nx" % n for n in range(100)]),
    ),
    ("two parts with the start content-id", _mail([ENV_PART, ENV_PART])),
]


@pytest.mark.parametrize("raw", [d[1] for d in MIME_DEFECTS], ids=[d[0] for d in MIME_DEFECTS])
def test_mime_defects_are_mime_problems(raw: bytes) -> None:
    with pytest.raises(EbxmlError) as caught:
        unpackage_message(raw)
    assert caught.value.code is ErrorCode.MIME_PROBLEM


def test_package_refuses_duplicate_content_ids() -> None:
    with pytest.raises(ValueError):
        package(ENVELOPE, [Attachment("a@x", P7M, b"1"), Attachment("<a@x>", P7M, b"2")])
    with pytest.raises(ValueError):
        package(ENVELOPE, [Attachment("env@x", P7M, b"1")], envelope_content_id="env@x")


def test_binary_boundary_never_collides_with_the_payload() -> None:
    # A payload holding the boundary we would otherwise pick forces a fresh one.
    payload = b"\r\n--fixed\r\n"
    body, content_type = package(
        ENVELOPE, [Attachment("a@x", P7M, payload)], transfer_encoding="binary", boundary="fixed"
    )
    assert 'boundary="fixed"' not in content_type
    assert unpackage(content_type, body).attachments["a@x"].data == payload


def test_base64_lines_are_76_characters_with_crlf() -> None:
    body, _ = package(ENVELOPE, [Attachment("a@x", P7M, bytes(1000))])
    lines = body.split(b"\r\n")
    encoded = [line for line in lines if len(line) == 76]
    assert encoded and all(binascii.a2b_base64(line) for line in encoded)
    assert b"\n" not in body.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'multipart/related;boundary="----=_Part_1";start="<a@b>"; type="text/xml"',
            (
                "multipart/related",
                {"boundary": "----=_Part_1", "start": "<a@b>", "type": "text/xml"},
            ),
        ),
        ("Text/XML ; Charset=UTF-8", ("text/xml", {"charset": "UTF-8"})),
        ('a/b; x="q\\"uote"; lone; y=2', ("a/b", {"x": 'q"uote', "y": "2"})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


def test_an_envelope_larger_than_any_real_one_is_not_parsed() -> None:
    # an envelope is a few kilobytes; parsing costs some 35 times its size in memory
    from meldingstjener.ebxml.mime import MAX_ENVELOPE_BYTES

    big = b"<e>" + b"<a/>" * (MAX_ENVELOPE_BYTES // 4) + b"</e>"
    with pytest.raises(EbxmlError) as caught:
        unpackage_message(_mail([b"Content-Type: text/xml\nContent-ID: <env@x>\n\n" + big]))
    assert caught.value.code is ErrorCode.OTHER_XML
    assert unpackage_message(_mail([ENV_PART])).envelope_xml == b"<e/>"  # the usual size


@pytest.mark.parametrize("bad", ["x<y", "<a", "a>", "<<a>>", "<>", " ", "a\r\nX-Injected: 1"])
def test_a_content_id_our_reader_would_refuse_is_not_written(bad: str) -> None:
    """The writer reads a content-id as the reader, the manifest and the signature do: a part
    it cannot name is refused, never written for our own reader (or a partner's) to refuse."""
    with pytest.raises(ValueError, match="not a content-id"):
        package(ENVELOPE, [Attachment(bad, P7M, b"x")])
    with pytest.raises(ValueError, match="not a content-id"):
        package(ENVELOPE, [], envelope_content_id=bad)
    with pytest.raises(ValueError, match="not a content-id"):
        mail_headers(content_type="text/xml", from_address="a@x", to_address="b@x", message_id=bad)


def test_generated_and_bracketed_content_ids_round_trip_unchanged() -> None:
    generated = [new_content_id(), new_content_id("msh.example.no")]
    attachments = [Attachment(generated[1], P7M, b"1"), Attachment("<given@x>", P7M, b"2")]
    body, content_type = package(ENVELOPE, attachments, envelope_content_id=generated[0])
    message = unpackage(content_type, body)
    assert message.start == generated[0]
    assert list(message.attachments) == [generated[1], "given@x"]
    with pytest.raises(ValueError, match="unique"):
        package(ENVELOPE, [Attachment("a@x", P7M, b""), Attachment("<a@x>", P7M, b"")])
    headers = dict(mail_headers(content_type="t", from_address="a", to_address="b"))
    assert bare_content_id(headers["Message-Id"]) == headers["Message-Id"][1:-1]


@pytest.mark.parametrize(
    ("received", "read"),
    [("<m@x>", "m@x"), (" m@x ", "m@x"), ("<a", "a"), ("x<y", "x<y"), ("<<m>>", "<m>")],
)
def test_a_received_message_id_is_read_without_refusal(received: str, read: str) -> None:
    """A mail's Message-Id only names the mail (in the log, the quarantine): one that is no
    content-id is read as it is, not refused, so the mail never fails on it."""
    assert bare_content_id(received) == read
