"""MIME bodies in files: split and decoded exactly as from bytes, without holding the payload."""

from __future__ import annotations

import binascii
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meldingstjener.ebxml import Attachment, EbxmlError, ErrorCode, mime_source, package, unpackage
from meldingstjener.ebxml.mime import MimeMessage, write_package
from meldingstjener.ebxml.mime_source import Base64Decoder, FileSource

ENVELOPE = b"<?xml version='1.0' encoding='UTF-8'?>\n<SOAP:Envelope xmlns:SOAP='s'/>"
P7M = "application/pkcs7-mime; smime-type=enveloped-data"
MiB = 1024 * 1024


@contextmanager
def tiny_reads() -> Iterator[None]:
    """Reads of a few bytes, so every search and decode crosses many read boundaries."""
    with (
        mock.patch.object(mime_source, "CHUNK", 7),
        mock.patch.object(mime_source, "_FIRST_LOOK", 5),
    ):
        yield


def _in_file(data: bytes) -> Path:
    with tempfile.NamedTemporaryFile(delete=False, prefix="mt-mime-", suffix=".bin") as handle:
        handle.write(data)
    return Path(handle.name)


def _outcome(content_type: str, body: bytes | Path) -> MimeMessage | tuple[str, str]:
    try:
        return unpackage(content_type, body)
    except EbxmlError as exc:
        return (str(exc.code), str(exc))


def _package(payloads: list[bytes], encoding: str) -> tuple[bytes, str]:
    attachments = [Attachment(f"p{i}@x.no", P7M, data) for i, data in enumerate(payloads)]
    return package(
        ENVELOPE,
        attachments,
        transfer_encoding=encoding,  # type: ignore[arg-type]
        envelope_content_id="env@x.no",
    )


BOUNDARYISH = st.sampled_from([b"", b"\r\n--", b"\n--", b"--", b"\r\n\r\n", b"=", b"==\r\n"])


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payloads=st.lists(
        st.lists(st.one_of(st.binary(max_size=40), BOUNDARYISH), max_size=6).map(b"".join),
        min_size=1,
        max_size=3,
    ),
    encoding=st.sampled_from(["base64", "binary"]),
    line_ends=st.sampled_from(["crlf", "lf"]),
    cut=st.none() | st.floats(min_value=0, max_value=1),
    flip=st.none() | st.tuples(st.floats(min_value=0, max_value=1), st.integers(0, 255)),
)
def test_a_file_body_gives_what_the_same_bytes_give(
    payloads: list[bytes],
    encoding: str,
    line_ends: str,
    cut: float | None,
    flip: tuple[float, int] | None,
) -> None:
    """Any body, whole or damaged: the same message or the same MimeProblem either way."""
    body, content_type = _package(payloads, encoding)
    if line_ends == "lf":
        body = body.replace(b"\r\n", b"\n")
    if flip is not None:
        at = int(flip[0] * (len(body) - 1))
        body = body[:at] + bytes([flip[1]]) + body[at + 1 :]
    if cut is not None:
        body = body[: int(cut * len(body))]
    path = _in_file(body)
    try:
        with tiny_reads():
            from_file = _outcome(content_type, path)
            expected = _outcome(content_type, body)
            assert from_file == expected
            if isinstance(from_file, MimeMessage):
                for part in from_file.attachments.values():
                    assert part.in_file
                    assert b"".join(part.chunks()) == part.data
    finally:
        path.unlink()


@pytest.mark.parametrize("encoding", ["base64", "binary"])
def test_a_large_part_stays_in_the_file_and_streams(tmp_path: Path, encoding: str) -> None:
    payload = os.urandom(3 * MiB + 123)
    body, content_type = _package([payload], encoding)
    path = tmp_path / "body"
    path.write_bytes(body)
    message = unpackage(content_type, path)
    part = message.attachments["p0@x.no"]
    assert part.in_file and part.size == len(payload)
    pieces = list(part.chunks())
    assert len(pieces) > 2 and max(len(p) for p in pieces) <= MiB
    assert b"".join(pieces) == payload
    with part.open() as reader:
        assert reader.read(10) == payload[:10]
        assert reader.read() == payload[10:]
    assert part.data == payload
    assert message.envelope_xml == ENVELOPE


def test_a_file_body_without_its_end_is_a_mime_problem(tmp_path: Path) -> None:
    body, content_type = _package([os.urandom(2 * MiB)], "binary")
    path = tmp_path / "body"
    path.write_bytes(body[: len(body) // 2])
    with pytest.raises(EbxmlError) as raised:
        unpackage(content_type, path)
    assert raised.value.code is ErrorCode.MIME_PROBLEM
    assert "closing MIME boundary" in str(raised.value)


def test_base64_that_does_not_end_on_a_group_is_a_mime_problem(tmp_path: Path) -> None:
    body, content_type = _package([os.urandom(MiB)], "base64")
    middle = body.index(b"\r\n", len(body) // 2) - 1
    path = tmp_path / "body"
    path.write_bytes(body[:middle] + body[middle + 1 :])  # one base64 character less
    with pytest.raises(EbxmlError) as raised:
        unpackage(content_type, path)
    assert raised.value.code is ErrorCode.MIME_PROBLEM
    assert "not valid base64" in str(raised.value)


ALPHABETISH = st.sampled_from(list(b"AQgw/+9Z=\r\n *-\x00\xff"))


@settings(max_examples=400, deadline=None)
@given(
    text=st.lists(ALPHABETISH, max_size=60).map(bytes),
    cuts=st.lists(st.integers(0, 60), max_size=4),
)
def test_base64_in_pieces_decodes_as_a2b_base64_does(text: bytes, cuts: list[int]) -> None:
    try:
        expected: bytes | None = binascii.a2b_base64(text)
    except binascii.Error:
        expected = None
    decoder = Base64Decoder()
    out = b""
    start = 0
    try:
        for end in [*sorted(c for c in cuts if c <= len(text)), len(text)]:
            out += decoder.feed(text[start:end])
            start = end
        decoder.finish()
        got: bytes | None = out
    except binascii.Error:
        got = None
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=80),
    needle=st.binary(min_size=1, max_size=4),
    start=st.integers(0, 90),
    end=st.none() | st.integers(0, 90),
)
def test_file_find_is_bytes_find(data: bytes, needle: bytes, start: int, end: int | None) -> None:
    path = _in_file(data)
    try:
        with tiny_reads(), FileSource(path) as source:
            if end is None:
                assert source.find(needle, start) == data.find(needle, start)
            else:
                assert source.find(needle, start, end) == data.find(needle, start, end)
            assert source[start : start + 5] == data[start : start + 5]
            assert source.startswith(needle, start) == data.startswith(needle, start)
    finally:
        path.unlink()


@pytest.mark.parametrize("encoding", ["base64", "binary"])
def test_writing_from_a_file_gives_the_bytes_package_gives(tmp_path: Path, encoding: str) -> None:
    payload = os.urandom(2 * MiB + 5)
    source = tmp_path / "payload"
    source.write_bytes(payload)
    expected, expected_type = package(
        ENVELOPE,
        [Attachment("p@x.no", P7M, payload)],
        transfer_encoding=encoding,  # type: ignore[arg-type]
        envelope_content_id="env@x.no",
        boundary="fixed-boundary",
    )
    written = tmp_path / "wire"
    with written.open("wb") as sink:
        content_type = write_package(
            sink,
            ENVELOPE,
            [Attachment.from_file("p@x.no", P7M, source)],
            transfer_encoding=encoding,  # type: ignore[arg-type]
            envelope_content_id="env@x.no",
            boundary="fixed-boundary",
        )
    assert written.read_bytes() == expected and content_type == expected_type


def test_a_boundary_found_across_two_reads_of_a_file_is_replaced(tmp_path: Path) -> None:
    payload = b"x" * 20 + b"--fixed-boundary" + b"y" * 20
    source = tmp_path / "payload"
    source.write_bytes(payload)
    with tiny_reads():
        body, content_type = package(
            ENVELOPE,
            [Attachment.from_file("p@x.no", P7M, source)],
            transfer_encoding="binary",
            boundary="fixed-boundary",
        )
    assert "fixed-boundary" not in content_type
    assert unpackage(content_type, body).attachments["p@x.no"].data == payload
