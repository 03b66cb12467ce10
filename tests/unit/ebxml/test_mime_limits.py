"""What a partner's MIME costs us before it is refused: a Content-Type or a header block that no
real sender writes is a MimeProblem at a size limit, a header block is read once (not a read
per line from a file), and an envelope too large to parse is refused before it is decoded.

The costs are counted (reads of the file, bytes read, bytes allocated), never timed;
``benchmarks/mime_limits.py`` prints the times."""

from __future__ import annotations

import base64
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from meldingstjener.ebxml import EbxmlError, ErrorCode, mime_source, unpackage, unpackage_message
from meldingstjener.ebxml.mime import MAX_ENVELOPE_BYTES
from meldingstjener.ebxml.mime_headers import (
    MAX_CONTENT_TYPE,
    MAX_PART_HEADER_BLOCK,
    parse_content_type,
    split_header_block,
)
from meldingstjener.ebxml.mime_source import FileSource

CONTENT_TYPE = 'multipart/related; type="text/xml"; boundary="BOUND"; start="<env@x>"'


def _body(*parts: bytes) -> bytes:
    return b"".join(b"--BOUND\r\n" + part + b"\r\n" for part in parts) + b"--BOUND--\r\n"


ENV_PART = b"Content-Type: text/xml\r\nContent-ID: <env@x>\r\n\r\n<e/>"


class _Reads:
    calls = 0
    size = 0


@contextmanager
def _counted_reads() -> Iterator[_Reads]:
    """Count the ``pread`` calls of the MIME reader and the bytes they return."""
    real = os.pread
    reads = _Reads()

    def counted(fd: int, length: int, offset: int) -> bytes:
        data = real(fd, length, offset)
        reads.calls += 1
        reads.size += len(data)
        return data

    with mock.patch.object(mime_source.os, "pread", counted):
        yield reads


# --- Content-Type ---------------------------------------------------------------------------


def test_stray_tokens_in_a_content_type_are_skipped() -> None:
    # every '; a' used to make the parser look for '=' to the end of the value: quadratic
    value = "multipart/related" + "; a" * 2000 + '; boundary="BOUND"; start="<env@x>"'
    assert len(value) < MAX_CONTENT_TYPE
    assert parse_content_type(value) == (
        "multipart/related",
        {"boundary": "BOUND", "start": "<env@x>"},
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('a/b; x="1;2=3"; y=4', {"x": "1;2=3", "y": "4"}),
        ('a/b; lone; x = "v;w" ; z', {"x": "v;w"}),
        ("a/b; lone;; =v; y=", {"": "v", "y": ""}),
        ('a/b; x="a\\";b"; y="=;"', {"x": 'a";b', "y": "=;"}),
        ("a/b; lone", {}),
        ("a/b; n=1; N=2", {"n": "1"}),
    ],
)
def test_quoted_values_and_stray_tokens_keep_their_meaning(
    value: str, expected: dict[str, str]
) -> None:
    assert parse_content_type(value) == ("a/b", expected)


def test_a_content_type_longer_than_any_real_one_is_a_mime_problem() -> None:
    value = CONTENT_TYPE + "; a" * (MAX_CONTENT_TYPE // 3)
    with pytest.raises(EbxmlError) as caught:
        unpackage(value, _body(ENV_PART))
    assert caught.value.code is ErrorCode.MIME_PROBLEM
    assert "Content-Type" in str(caught.value)
    assert unpackage(CONTENT_TYPE + "; a" * 100, _body(ENV_PART)).envelope_xml == b"<e/>"


# --- header blocks --------------------------------------------------------------------------


def test_folded_headers_unfold_as_before() -> None:
    block = (
        b"X-A:\r\n\tfoo\r\n \r\n  bar  \r\nX-B: b\n c\nX-A: second\r\n"
        b"Content-Type: application/pkcs7-mime;\r\n\tsmime-type=enveloped-data\r\n\r\nbody"
    )
    headers, body_start = split_header_block(block, 0, len(block), "test")
    assert headers.items == [
        ("X-A", "foo bar"),
        ("X-B", "b c"),
        ("X-A", "second"),
        ("Content-Type", "application/pkcs7-mime; smime-type=enveloped-data"),
    ]
    assert block[body_start:] == b"body"


def test_a_folded_header_block_in_a_file_is_read_once(tmp_path: Path) -> None:
    # a continuation line per 4 bytes: each line used to cost an 8 kB read of the file
    part = b"Content-ID: <p@x>\r\nX-Long: a\r\n" + b" a\r\n" * 10_000 + b"\r\npayload"
    assert len(part) < MAX_PART_HEADER_BLOCK
    (tmp_path / "part").write_bytes(part)
    with FileSource(tmp_path / "part") as source, _counted_reads() as reads:
        headers, body_start = split_header_block(source, 0, len(source), "part")
    assert reads.calls == 1
    assert headers.get("X-Long") == " ".join(["a"] * 10_001)
    assert part[body_start:] == b"payload"
    path = tmp_path / "body"
    path.write_bytes(_body(ENV_PART, part))
    with _counted_reads() as reads:
        message = unpackage(CONTENT_TYPE, path)
    assert message.attachments["p@x"].data == b"payload"
    assert reads.calls < 50  # the parts are found and their headers read, not a read a line


def test_a_part_header_block_over_its_limit_is_a_mime_problem() -> None:
    long_part = b"Content-ID: <p@x>\r\nX-Long: a\r\n" + b" a\r\n" * (MAX_PART_HEADER_BLOCK // 4)
    with pytest.raises(EbxmlError) as caught:
        unpackage(CONTENT_TYPE, _body(ENV_PART, long_part + b"\r\npayload"))
    assert caught.value.code is ErrorCode.MIME_PROBLEM
    assert "MIME part 2 headers are implausibly long" in str(caught.value)


def test_a_mail_header_block_keeps_the_larger_limit() -> None:
    # a mail's own headers (Received lines of every hop) may be longer than a part's
    received = b"Received: from relay.example by mx.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    top = received * (2 * MAX_PART_HEADER_BLOCK // len(received))
    raw = top + f"Content-Type: {CONTENT_TYPE}\r\n\r\n".encode() + _body(ENV_PART)
    assert unpackage_message(raw).envelope_xml == b"<e/>"


# --- the envelope's size, before it is decoded ------------------------------------------------


def test_a_text_xml_body_in_a_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(b"<e>" + b" " * (3 * MAX_ENVELOPE_BYTES) + b"</e>")
    with _counted_reads() as reads, pytest.raises(EbxmlError) as caught:
        unpackage("text/xml", path)
    assert caught.value.code is ErrorCode.OTHER_XML
    assert reads.size < MAX_ENVELOPE_BYTES


def test_a_base64_envelope_part_is_refused_before_it_is_decoded() -> None:
    envelope = b"<e>" + b" " * (6 * MAX_ENVELOPE_BYTES) + b"</e>"
    env_part = (
        b"Content-Type: text/xml\r\nContent-ID: <env@x>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(envelope)
    )
    body = _body(env_part)
    del envelope
    tracemalloc.start()
    try:
        with pytest.raises(EbxmlError) as caught:
            unpackage(CONTENT_TYPE, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code is ErrorCode.OTHER_XML
    assert peak < MAX_ENVELOPE_BYTES  # the 6 MiB envelope was never decoded


def test_an_encoded_envelope_under_the_limit_once_decoded_is_accepted() -> None:
    # its base64 text is over 1 MiB, but the envelope is not
    envelope = b"<e>" + b"x" * (MAX_ENVELOPE_BYTES - 100) + b"</e>"
    text = base64.encodebytes(envelope)
    assert len(text) > MAX_ENVELOPE_BYTES
    env_part = b"Content-ID: <env@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n" + text
    assert unpackage(CONTENT_TYPE, _body(env_part)).envelope_xml == envelope
