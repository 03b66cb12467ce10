"""ebXML MIME packaging: the multipart/related message around the envelope and its payloads.

An ebXML message (ebMS 2.0 section 2.1, HIS 1037) is ``multipart/related; type="text/xml";
start="<cid of the envelope>"``: the SOAP envelope first, then one part per payload, each with a
``Content-ID`` that the manifest and the signature reference as ``cid:...``. By SMTP the mail
also carries ``SOAPAction: "ebXML"`` and ``MIME-Version: 1.0``.

Reading is forgiving where senders differ and the meaning is clear: CRLF or LF line ends,
folded headers, ``Content-ID`` / ``Content-Id``, content-ids with or without ``<>``, base64,
quoted-printable, 7bit, 8bit or binary parts, a preamble and an epilogue. A plain ``text/xml``
message (an envelope without attachments) is accepted too. Everything that makes the parts
unknowable is a :class:`~meldingstjener.ebxml.codes.EbxmlError` with code MimeProblem.

Memory: the body is never copied to be split. Parts are found with ``find`` on the original
buffer and decoded straight from a ``memoryview`` slice, so a 35 MB payload costs the raw mail
plus one decoded copy of each part. A body in a file (a large HTTP request spooled to disk) is
split the same way through :class:`~.mime_source.FileSource`, and its payload parts stay in the
file: an :class:`Attachment` then decodes its part as it is read (``open``/``chunks``), and
``data`` makes one bytes object only for the callers that need one. :func:`write_package`
writes a message to a file in pieces, reading each payload from its source as it goes.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import BinaryIO, Literal, Protocol

from meldingstjener.contentid import content_id as normal_content_id
from meldingstjener.contentid import written_content_id
from meldingstjener.ebxml.codes import EbxmlError, ErrorCode, cid_location
from meldingstjener.ebxml.mime_headers import (
    MAX_PART_HEADER_BLOCK,
    Headers,
    bare_content_id,
    parse_content_type,
    quote_param,
    render_header,
    split_header_block,
)
from meldingstjener.ebxml.mime_source import (
    ByteSource,
    FilePart,
    FileSource,
    validate_base64_range,
)

TransferEncoding = Literal["base64", "binary"]
SOAP_ACTION = '"ebXML"'
ENVELOPE_CONTENT_TYPE = "text/xml; charset=UTF-8"
_XML_TYPES = frozenset({"text/xml", "application/xml"})
# An ebXML message has the envelope and a payload or two: a cap keeps a body of a million empty
# parts from costing seconds of parsing
MAX_PARTS = 100
# The SOAP envelope is a few kilobytes (headers, signature, manifest); its parse costs about 35
# times its size in memory, so it gets a limit of its own, far below the payload's
MAX_ENVELOPE_BYTES = 1024 * 1024
# ... and is not even decoded when its encoded text is larger than any encoding of 1 MiB can be:
# base64 with line ends makes 78 characters of 57 bytes, quoted-printable at most about 3.1 of one
_ENCODED_ENVELOPE_FACTOR = {"base64": 4, "quoted-printable": 4}
_BASE64_SLICE = 57 * 1024  # 57 input bytes make one 76-character line
_REQUEST_LINE = re.compile(rb"^(?:[A-Z]+ \S+ HTTP/\d(?:\.\d)?|HTTP/\d(?:\.\d)? \d{3}[^\r\n]*)\r?\n")


class Attachment:
    """One payload part: its content-id (bare, without ``<>``), media type and decoded bytes.

    A part of a message read from a file stays in the file (``part``): ``open()`` and
    ``chunks()`` decode it as they read, and every access to ``data`` decodes it into a new
    bytes object, so callers that only stream never hold it whole.
    """

    __slots__ = ("_data", "_part", "content_id", "content_type")

    def __init__(
        self,
        content_id: str,
        content_type: str,
        data: bytes = b"",
        *,
        part: FilePart | None = None,
    ) -> None:
        self.content_id = content_id
        self.content_type = content_type
        self._data = data
        self._part = part

    @classmethod
    def from_file(
        cls, content_id: str, content_type: str, path: str | os.PathLike[str]
    ) -> Attachment:
        """A payload that stays in the file at ``path`` (its bytes as they are)."""
        source = FileSource(path)
        size = len(source)
        return cls(content_id, content_type, part=FilePart(source, 0, size, "binary", size))

    @property
    def data(self) -> bytes:
        return self._data if self._part is None else self._part.read_all()

    @property
    def size(self) -> int:
        return len(self._data) if self._part is None else self._part.size

    @property
    def in_file(self) -> bool:
        return self._part is not None

    def chunks(self) -> Iterator[bytes]:
        """The decoded bytes in pieces (one piece for a part held in memory)."""
        if self._part is None:
            if self._data:
                yield self._data
            return
        yield from self._part.chunks()

    def open(self) -> BinaryIO:
        """A reader of the decoded bytes."""
        return io.BytesIO(self._data) if self._part is None else self._part.open()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attachment):
            return NotImplemented
        return (self.content_id, self.content_type, self.size) == (
            other.content_id,
            other.content_type,
            other.size,
        ) and self.data == other.data

    def __hash__(self) -> int:
        return hash((self.content_id, self.content_type, self.size))

    def __repr__(self) -> str:
        where = "in file" if self._part is not None else "in memory"
        return (
            f"Attachment(content_id={self.content_id!r}, content_type={self.content_type!r}, "
            f"{self.size} bytes {where})"
        )


@dataclass(frozen=True)
class MimeMessage:
    """An unpacked ebXML message: the envelope bytes and the attachments by content-id.

    ``start`` is the envelope part's content-id ("" when it had none). ``headers`` and
    ``message_id`` (the MIME ``Message-Id``, used for duplicate detection) are filled by
    :func:`unpackage_message` only.
    """

    envelope_xml: bytes
    attachments: dict[str, Attachment]
    start: str
    message_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def attachment_bytes(self) -> dict[str, bytes]:
        """content-id -> decoded bytes, the shape the signature check takes."""
        return {cid: part.data for cid, part in self.attachments.items()}


def new_content_id(host: str = "meldingstjener") -> str:
    """A fresh content-id (bare), unique like a message id."""
    return f"{uuid.uuid4()}@{host}"


# --- reading -------------------------------------------------------------------------------


def _decode(data: bytes, start: int, end: int, encoding: str | None, what: str) -> bytes:
    view = memoryview(data)[start:end]
    name = (encoding or "7bit").strip().lower()
    try:
        if name == "base64":
            return binascii.a2b_base64(view)
        if name == "quoted-printable":
            return binascii.a2b_qp(view)
    except (binascii.Error, ValueError) as exc:
        raise EbxmlError(ErrorCode.MIME_PROBLEM, f"the {what} is not valid {name}: {exc}") from None
    finally:
        view.release()
    if name in ("7bit", "8bit", "binary"):
        return data[start:end]
    raise EbxmlError(
        ErrorCode.MIME_PROBLEM, f"the {what} has an unsupported transfer encoding {name[:30]!r}"
    )


def _decode_bytes(data: ByteSource, start: int, end: int, encoding: str | None, what: str) -> bytes:
    """A part decoded into memory (the envelope, or any part of a body held in memory)."""
    if isinstance(data, bytes):
        return _decode(data, start, end, encoding, what)
    raw = data[start:end]
    return _decode(raw, 0, len(raw), encoding, what)


def _attachment(
    data: ByteSource,
    cid: str,
    part_type: str,
    span: tuple[int, int],
    encoding: str | None,
    what: str,
) -> Attachment:
    """A payload part: decoded now from memory, or left in the file (its encoding checked)."""
    start, end = span
    name = (encoding or "7bit").strip().lower()
    if not isinstance(data, FileSource) or name == "quoted-printable":
        # quoted-printable is for text; no sender uses it for a large encrypted payload
        return Attachment(cid, part_type, _decode_bytes(data, start, end, encoding, what))
    if name == "base64":
        try:
            size = validate_base64_range(data, start, end)
        except (binascii.Error, ValueError) as exc:
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM, f"the {what} is not valid base64: {exc}"
            ) from None
        return Attachment(cid, part_type, part=FilePart(data, start, end, "base64", size))
    if name in ("7bit", "8bit", "binary"):
        return Attachment(cid, part_type, part=FilePart(data, start, end, "binary", end - start))
    raise EbxmlError(
        ErrorCode.MIME_PROBLEM, f"the {what} has an unsupported transfer encoding {name[:30]!r}"
    )


@contextmanager
def _located(cid: str) -> Iterator[None]:
    """An error in reading the part whose content-id is ``cid`` is located at its ``cid:`` URL
    (none when the part names no content-id)."""
    try:
        yield
    except EbxmlError as exc:
        if exc.location is None and cid:
            exc.location = cid_location(cid)
        raise


def _delimiter_at(data: ByteSource, index: int, delimiter: bytes) -> tuple[bool, int] | None:
    """At ``index`` (a line start holding ``delimiter``): (is_closing, start of next line), or
    None when the line merely starts with the delimiter text."""
    after = index + len(delimiter)
    if data.startswith(b"--", after):
        return True, after + 2
    pos = after
    while True:  # the rest of the line must be blank (transport padding), read in small pieces
        window = data[pos : pos + 1024]
        newline = window.find(b"\n")
        if window[: newline if newline >= 0 else len(window)].strip(b" \t\r"):
            return None
        if newline >= 0:
            return False, pos + newline + 1
        if pos + len(window) >= len(data):
            return False, len(data)
        pos += len(window)


def _next_delimiter(data: ByteSource, frm: int, delimiter: bytes) -> tuple[int, bool, int]:
    """The next delimiter line at or after ``frm`` (``frm`` must sit at a line start or just
    before a newline): (line start, is_closing, start of the following line)."""
    if data.startswith(delimiter, frm):
        found = _delimiter_at(data, frm, delimiter)
        if found is not None:
            return frm, found[0], found[1]
    needle = b"\n" + delimiter
    pos = frm
    while True:
        hit = data.find(needle, pos)
        if hit < 0:
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM,
                "the closing MIME boundary is missing (the message may be truncated)",
            )
        found = _delimiter_at(data, hit + 1, delimiter)
        if found is not None:
            return hit + 1, found[0], found[1]
        pos = hit + 1


def _split_parts(data: ByteSource, start: int, boundary: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each body part between the boundaries (RFC 2046 5.1.1: the line
    break before a delimiter belongs to the delimiter)."""
    if not boundary.isascii():  # RFC 2046: a boundary is ASCII
        raise EbxmlError(ErrorCode.MIME_PROBLEM, "the boundary holds characters outside ASCII")
    delimiter = b"--" + boundary.encode("ascii")
    line_start, closing, pos = _next_delimiter(data, start, delimiter)
    if closing:
        raise EbxmlError(ErrorCode.MIME_PROBLEM, "the multipart message has no parts")
    parts: list[tuple[int, int]] = []
    while not closing:
        if len(parts) == MAX_PARTS:
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM, f"the message has more than {MAX_PARTS} MIME parts"
            )
        part_start = pos
        line_start, closing, pos = _next_delimiter(data, max(part_start - 1, start), delimiter)
        part_end = line_start - 1  # drop the LF that belongs to the delimiter ...
        if (
            part_end > part_start
            and data[part_end - 1 : part_end] == b"\r"
            and _opened_by_crlf(data, part_start)
        ):
            part_end -= 1  # ... and its CR, where the writer ends lines so
        parts.append((part_start, max(part_end, part_start)))
    return parts


def _opened_by_crlf(data: ByteSource, part_start: int) -> bool:
    """Whether the delimiter line that opened the part at ``part_start`` (the first byte after
    that line's LF) ends in CRLF: then the CR before the next delimiter belongs to it too. A
    writer that ends its lines with LF alone left any CR before the delimiter in the part: a
    binary part (a CMS structure) may end with that byte, and dropping it broke one payload in
    256. The opening line always has its LF, where the closing one may have none (at the end of
    the data) or transport padding before it, so it is the opening line that is judged."""
    return data[part_start - 2 : part_start - 1] == b"\r"


def _envelope(data: ByteSource, start: int, end: int, encoding: str | None, what: str) -> bytes:
    """The envelope decoded into memory, refused by its size before and after decoding (a body
    of 50 MB is not read or decoded to find that it is too large)."""
    name = (encoding or "7bit").strip().lower()
    if end - start > MAX_ENVELOPE_BYTES * _ENCODED_ENVELOPE_FACTOR.get(name, 1):
        raise EbxmlError(
            ErrorCode.OTHER_XML,
            f"the SOAP envelope is {end - start} bytes ({name}); the limit is {MAX_ENVELOPE_BYTES}",
        )
    return _envelope_sized(_decode_bytes(data, start, end, encoding, what))


def _envelope_sized(envelope: bytes) -> bytes:
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise EbxmlError(
            ErrorCode.OTHER_XML,
            f"the SOAP envelope is {len(envelope)} bytes; the limit is {MAX_ENVELOPE_BYTES}",
        )
    return envelope


def _content_id(value: str, what: str) -> str:
    """A content-id as the manifest and the signature name it (see :mod:`~meldingstjener.
    contentid`); a value that is none (``<<x>>``, ``<x``, ``<>``) is a MimeProblem."""
    bare = normal_content_id(value)
    if bare is None:
        raise EbxmlError(ErrorCode.MIME_PROBLEM, f"{what} is not a content-id: {value[:60]!r}")
    return bare


def _unpackage(
    content_type: str,
    data: ByteSource,
    offset: int,
    transfer_encoding: str | None,
    *,
    only_envelope: bool = False,
) -> MimeMessage:
    media, params = parse_content_type(content_type)
    encoding = (transfer_encoding or "7bit").strip().lower()
    if media in _XML_TYPES:
        envelope = _envelope(data, offset, len(data), encoding, "message body")
        return MimeMessage(envelope, {}, "")
    if media != "multipart/related":
        raise EbxmlError(
            ErrorCode.MIME_PROBLEM,
            f"an ebXML message must be multipart/related, not {media[:40]!r}",
        )
    if encoding in ("base64", "quoted-printable"):
        # A multipart body must not be encoded (RFC 2045 6.4); some gateways do it anyway.
        # Rare enough to decode in memory, also when the body is in a file.
        data, offset = _decode_bytes(data, offset, len(data), encoding, "message body"), 0
    boundary = params.get("boundary")
    if not boundary:
        raise EbxmlError(ErrorCode.MIME_PROBLEM, "the Content-Type has no boundary parameter")
    wanted_start = (
        _content_id(params["start"], "the start parameter") if params.get("start") else None
    )
    envelope_part: tuple[str, bytes] | None = None
    attachments: dict[str, Attachment] = {}
    for index, (part_start, part_end) in enumerate(_split_parts(data, offset, boundary), 1):
        what = f"MIME part {index}"
        headers, body_start = split_header_block(
            data, part_start, part_end, what, MAX_PART_HEADER_BLOCK
        )
        raw_cid = headers.get("Content-ID")
        try:
            cid = _content_id(raw_cid, f"the Content-ID of {what}") if raw_cid else ""
        except EbxmlError:
            if not only_envelope:
                raise
            continue  # not the start part, which names its content-id
        is_start = cid == wanted_start if wanted_start is not None else index == 1
        part_type = headers.get("Content-Type") or "text/plain"
        encoding_of_part = headers.get("Content-Transfer-Encoding")
        if is_start:
            if envelope_part is not None:
                raise EbxmlError(
                    ErrorCode.MIME_PROBLEM, f"two MIME parts have the start content-id {cid[:60]!r}"
                )
            with _located(cid):
                envelope = _envelope(data, body_start, part_end, encoding_of_part, what)
            envelope_part = (cid, envelope)
            continue
        if only_envelope:
            continue
        with _located(cid):
            part = _attachment(data, cid, part_type, (body_start, part_end), encoding_of_part, what)
        if not cid:
            raise EbxmlError(ErrorCode.MIME_PROBLEM, f"{what} has no Content-ID")
        if cid in attachments or (envelope_part is not None and cid == envelope_part[0]):
            raise EbxmlError(
                ErrorCode.MIME_PROBLEM,
                f"two MIME parts have the content-id {cid[:60]!r}",
                cid_location(cid),
            )
        attachments[cid] = part
    if envelope_part is None:
        raise EbxmlError(
            ErrorCode.MIME_PROBLEM,
            f"no MIME part has the start content-id {(wanted_start or '')[:60]!r}",
        )
    return MimeMessage(envelope_part[1], attachments, envelope_part[0])


def unpackage(
    content_type: str,
    body: bytes | os.PathLike[str],
    *,
    transfer_encoding: str | None = None,
) -> MimeMessage:
    """Split a message body, given its Content-Type header value (HTTP: headers come apart).

    ``body`` is the bytes, or a file holding them: then the payload parts stay in the file.
    """
    if isinstance(body, os.PathLike):
        return _unpackage(content_type, FileSource(body), 0, transfer_encoding)
    return _unpackage(content_type, body, 0, transfer_encoding)


def unpackage_envelope(content_type: str, body: bytes | os.PathLike[str]) -> bytes:
    """The envelope part of a message :func:`unpackage` refused, when it can be found and
    decoded: the other parts are not read (one of them is what was wrong), so the sender can be
    told so in a MessageError. Raises EbxmlError when the envelope part cannot be had either."""
    source: ByteSource = FileSource(body) if isinstance(body, os.PathLike) else body
    return _unpackage(content_type, source, 0, None, only_envelope=True).envelope_xml


def unpackage_message(raw: bytes) -> MimeMessage:
    """Split a whole message with its headers: a mail as received, or an HTTP request/response
    (a leading request or status line is skipped)."""
    start = 0
    request_line = _REQUEST_LINE.match(raw[:8192])
    if request_line:
        start = request_line.end()
    headers, body_start = split_header_block(raw, start, len(raw), "message")
    content_type = headers.get("Content-Type")
    if not content_type:
        raise EbxmlError(ErrorCode.MIME_PROBLEM, "the message has no Content-Type header")
    message = _unpackage(content_type, raw, body_start, headers.get("Content-Transfer-Encoding"))
    message_id = headers.get("Message-ID")
    return MimeMessage(
        message.envelope_xml,
        message.attachments,
        message.start,
        bare_content_id(message_id) if message_id else None,
        headers.as_dict(),
    )


# --- writing -------------------------------------------------------------------------------


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _base64_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """76-character lines (RFC 2045 6.8) with CRLF, the line end of mail on the wire. Encoded in
    slices of whole lines (a multiple of 57 input bytes), so the output is the same however the
    input is cut into chunks."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        cut = len(data) - len(data) % _BASE64_SLICE
        for start in range(0, cut, _BASE64_SLICE):
            yield base64.encodebytes(data[start : start + _BASE64_SLICE]).replace(b"\n", b"\r\n")
        carry = data[cut:]
    if carry:
        yield base64.encodebytes(carry).replace(b"\n", b"\r\n")


def _part_head(content_id: str, content_type: str, encoding: str) -> bytes:
    return (
        render_header("Content-Type", content_type)
        + render_header("Content-Transfer-Encoding", encoding)
        + render_header("Content-ID", f"<{content_id}>")
        + b"\r\n"
    )


def _contains(chunks: Iterable[bytes], needle: bytes) -> bool:
    """Whether ``needle`` occurs in the concatenation of ``chunks`` (also across two chunks)."""
    keep = len(needle) - 1
    tail = b""
    for chunk in chunks:
        if needle in tail + chunk[:keep] or needle in chunk:
            return True
        tail = (tail + chunk[-keep:])[-keep:] if keep else b""
    return False


def write_package(
    sink: Writable,
    envelope_xml: bytes,
    attachments: Sequence[Attachment],
    *,
    transfer_encoding: TransferEncoding = "base64",
    envelope_content_id: str | None = None,
    boundary: str | None = None,
) -> str:
    """Write the multipart/related body to ``sink`` in pieces; return its Content-Type value.

    Each payload is read from its attachment as it is written (a part in a file is streamed),
    so the whole message is never held in memory. See :func:`package` for the choices.
    """
    if transfer_encoding not in ("base64", "binary"):
        raise ValueError(f"transfer encoding must be base64 or binary, not {transfer_encoding!r}")
    start = written_content_id(envelope_content_id or new_content_id())
    cids = [start]
    for attachment in attachments:
        cid = written_content_id(attachment.content_id)
        if cid in cids:
            raise ValueError(f"attachment content-ids must be unique: {cid[:60]!r}")
        cids.append(cid)
    boundary = boundary or f"----=_Part_{uuid.uuid4().hex}"
    delimiter = b"--" + boundary.encode("ascii")
    if transfer_encoding == "binary":
        # '=' and '_' never occur in base64, so only raw bytes can collide with the boundary.
        while delimiter in envelope_xml or any(
            _contains(a.chunks(), delimiter) for a in attachments
        ):
            boundary = f"----=_Part_{uuid.uuid4().hex}"
            delimiter = b"--" + boundary.encode("ascii")
    sources: list[Iterable[bytes]] = [[envelope_xml], *(a.chunks() for a in attachments)]
    types = [ENVELOPE_CONTENT_TYPE] + [a.content_type for a in attachments]
    for cid, media, source in zip(cids, types, sources, strict=True):
        sink.write(delimiter + b"\r\n" + _part_head(cid, media, transfer_encoding))
        pieces = source if transfer_encoding == "binary" else _base64_lines(source)
        for piece in pieces:
            sink.write(piece)
        sink.write(b"\r\n")
    sink.write(delimiter + b"--\r\n")
    return (
        f'multipart/related; type="text/xml"; boundary={quote_param(boundary)}; '
        f"start={quote_param('<' + start + '>')}"
    )


def package(
    envelope_xml: bytes,
    attachments: Sequence[Attachment],
    *,
    transfer_encoding: TransferEncoding = "base64",
    envelope_content_id: str | None = None,
    boundary: str | None = None,
) -> tuple[bytes, str]:
    """Build the multipart/related body; return it and its Content-Type header value.

    ``base64`` suits SMTP (every part base64, as other Norwegian MSHs send); ``binary`` suits
    HTTP. Content-ids are given bare (no ``<>``); the envelope's is generated when not given.
    A content-id our reader would refuse (``x<y``, ``<a``), or one given twice, raises
    ValueError.
    """
    out = io.BytesIO()
    content_type = write_package(
        out,
        envelope_xml,
        attachments,
        transfer_encoding=transfer_encoding,
        envelope_content_id=envelope_content_id,
        boundary=boundary,
    )
    return out.getvalue(), content_type


def mail_headers(
    *,
    content_type: str,
    from_address: str,
    to_address: str,
    message_id: str | None = None,
    subject: str | None = None,
    date: datetime | None = None,
    host: str = "meldingstjener",
) -> list[tuple[str, str]]:
    """The headers of an ebXML mail, in order. ``message_id`` is the MIME Message-Id (bare;
    generated when not given), which receivers use to drop repeated mails."""
    moment = date or datetime.now(UTC)
    return [
        ("From", from_address),
        ("To", to_address),
        ("Date", format_datetime(moment.astimezone(UTC))),
        ("Subject", subject if subject is not None else "ebXML"),
        ("Message-Id", f"<{written_content_id(message_id or new_content_id(host))}>"),
        ("MIME-Version", "1.0"),
        ("SOAPAction", SOAP_ACTION),
        ("Content-Type", content_type),
        ("Content-Transfer-Encoding", "7bit"),
    ]


def http_headers(content_type: str) -> dict[str, str]:
    """The headers of an ebXML HTTP POST (ebMS 2.0 appendix B.2.2)."""
    return {"Content-Type": content_type, "SOAPAction": SOAP_ACTION, "MIME-Version": "1.0"}


def render_message(headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """Headers (folded at 78 characters) and body as one message, CRLF line ends."""
    head = b"".join(render_header(name, value) for name, value in headers)
    return head + b"\r\n" + body


__all__ = [
    "Attachment",
    "Headers",
    "MimeMessage",
    "TransferEncoding",
    "http_headers",
    "mail_headers",
    "new_content_id",
    "package",
    "render_message",
    "unpackage",
    "unpackage_envelope",
    "unpackage_message",
    "write_package",
]
