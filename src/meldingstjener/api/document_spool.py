"""``POST /Messages`` with a large business document: its base64 text goes to a file, not to memory.

Starlette reads a JSON body whole and ``json.loads`` makes a str of it, so a 35 MB document
would cost its JSON body, the str and the decoded bytes at once (and more while they are made).
For a body larger than ``SPOOL_ABOVE`` this ASGI middleware reads the body as it arrives, finds
the top-level ``businessDocument`` string with a small JSON scanner, decodes its base64 straight
into a spool of the payload store, and hands the route the same JSON with the document replaced
by a token. The route takes the spool in place of the token (:func:`spooled_document`), and the
spool becomes the stored payload by a rename. Everything else about the request (validation,
error answers, the OpenAPI document) stays FastAPI's, on a body of a few hundred bytes.

Why our own scanner: a streaming JSON library (ijson) still hands over each string value whole,
and the one value that matters here is the 47 MB string. The scanner only has to tell strings
from structure (quotes and backslash escapes) and know which key it is in at the top level;
whatever it does not recognise it copies, so malformed JSON stays malformed for FastAPI to
refuse as before. Values other than the document are copied and bounded by ``SKELETON_LIMIT``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meldingstjener.api.problems import send_too_large
from meldingstjener.store.payloads import CHUNK, PayloadStore, Spool

SPOOL_ABOVE = 1024 * 1024  # smaller bodies go to FastAPI untouched
SKELETON_LIMIT = 1024 * 1024  # the request without its document: a few hundred bytes in practice
SCOPE_KEY = "meldingstjener.spooled_documents"
FIELD = "businessDocument"

_STRING_END = re.compile(rb'["\\]')
_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/]*")
_SIMPLE_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}


# Base64 as NHN's service reads it (.NET's Convert.FromBase64String): space, tab, CR and LF
# are passed over wherever they stand, so a document wrapped in lines (MIME's 76 characters,
# Java's MimeEncoder) is read; anything else outside the alphabet is refused.
BASE64_WHITESPACE = b" \t\r\n"


def max_encoded_length(max_payload_bytes: int) -> int:
    """The base64 characters (whitespace not counted) of a document at the payload limit."""
    return max_payload_bytes * 4 // 3 + 4


def max_messages_body_bytes(max_payload_bytes: int) -> int:
    """The largest ``POST /Messages`` body: the document's base64 at the limit, wrapped in lines
    of 76 characters whose line ends JSON writes as ``\\r\\n`` (4 bytes each), and a
    megabyte for the JSON around it."""
    return max_encoded_length(max_payload_bytes) * 80 // 76 + 1_000_000


def base64_length(text: str) -> int:
    """The base64 characters of ``text``, whitespace not counted."""
    return len(text) - sum(text.count(space) for space in " \t\r\n")


def decode_base64(text: str | bytes) -> bytes:
    """A whole base64 text, read as ``StrictBase64`` reads it in pieces."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    return base64.b64decode(data.translate(None, BASE64_WHITESPACE), validate=True)


class StrictBase64:
    """Incremental ``decode_base64``: ``base64.b64decode(text, validate=True)`` of the text
    without its whitespace, the same bytes, and an error (:class:`binascii.Error`) for exactly
    the texts it refuses."""

    def __init__(self) -> None:
        self.pending = b""
        self.count = 0  # alphabet characters seen
        self.pads = 0  # '=' seen (only at the end)

    def feed(self, text: bytes) -> bytes:
        text = text.translate(None, BASE64_WHITESPACE)
        if not text:
            return b""
        if self.pads:
            if text.strip(b"="):
                raise binascii.Error("data after padding")
            self.pads += len(text)
            return b""
        body = text.rstrip(b"=")
        if not _BASE64_BODY.fullmatch(body):
            raise binascii.Error("not in the base64 alphabet")
        self.pads = len(text) - len(body)
        self.count += len(body)
        data = self.pending + body
        cut = len(data) - len(data) % 4
        self.pending = data[cut:]
        return binascii.a2b_base64(data[:cut], strict_mode=True) if cut else b""

    def finish(self) -> bytes:
        group = self.count % 4
        if not self.count and self.pads:
            raise binascii.Error("leading padding")
        if group == 0:
            return b""  # padding after whole groups is skipped, as the decoder does
        if group == 1 or self.pads != 4 - group:
            raise binascii.Error("incorrect padding")
        return binascii.a2b_base64(self.pending + b"=" * self.pads, strict_mode=True)


@dataclass
class SpooledDocument:
    """One ``businessDocument`` value taken out of a request: its decoded bytes in ``spool``,
    unless it was too long (``encoded_length``) or not base64 (``invalid``)."""

    token: str
    spool: Spool | None
    max_encoded: int
    encoded_length: int = 0
    invalid: bool = False
    decoder: StrictBase64 = field(default_factory=StrictBase64)

    def feed(self, text: bytes) -> None:
        text = text.translate(None, BASE64_WHITESPACE)  # line ends take no part of the limit
        self.encoded_length += len(text)
        if self.spool is None:
            return
        if self.encoded_length > self.max_encoded:
            self._drop()
            return
        try:
            data = self.decoder.feed(text)
        except (binascii.Error, ValueError):
            self.invalid = True
            self._drop()
            return
        if data:
            self.spool.write(data)

    def finish(self) -> None:
        if self.spool is None:
            return
        try:
            self.spool.write(self.decoder.finish())
        except (binascii.Error, ValueError):
            self.invalid = True
            self._drop()

    def supersede(self) -> None:
        """A later value of the same key replaces this one: its file is not needed."""
        self._drop()

    def _drop(self) -> None:
        if self.spool is not None:
            self.spool.discard()
            self.spool = None


class SkeletonTooLarge(Exception):
    pass


class _Scanner:
    """Copies a JSON text into ``out``, except the value of each top-level ``businessDocument``
    string, which goes to a :class:`SpooledDocument` and is replaced by its token."""

    def __init__(self, new_document: Callable[[], SpooledDocument]) -> None:
        self.new_document = new_document
        self.out = bytearray()
        self.stack = bytearray()  # b"{" and b"[" of the open containers
        self.expect_key = False  # in the top-level object, the next string is a key
        self.last_key: str | None = None
        self.value_of: str | None = None  # the key whose value comes next
        self.mode = "outside"  # or "string" (copied), "document" (spooled)
        self.is_key = False
        self.key = bytearray()
        self.escape = b""  # an escape sequence cut off at the end of a chunk
        self.document: SpooledDocument | None = None

    def _emit(self, data: bytes) -> None:
        if len(self.out) + len(data) > SKELETON_LIMIT:
            raise SkeletonTooLarge
        self.out += data

    def feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self.mode == "outside":
                pos = self._outside(data, pos)
            elif self.mode == "string":
                pos = self._string(data, pos)
            else:
                pos = self._document(data, pos)

    def finish(self) -> bytes:
        """The skeleton (unterminated where the body was: FastAPI then refuses it)."""
        return bytes(self.out)

    def _top_object(self) -> bool:
        return self.stack == b"{"

    def _outside(self, data: bytes, pos: int) -> int:
        quote = data.find(b'"', pos)
        end = len(data) if quote < 0 else quote
        segment = data[pos:end]
        self._emit(segment)
        for byte in segment:
            self._structure(byte)
        if quote < 0:
            return end
        self._start_string()
        return quote + 1

    def _structure(self, byte: int) -> None:
        if byte in b"{[":
            self.stack.append(byte)
            self.expect_key = self._top_object()
            self.value_of = None
        elif byte in b"}]":
            if self.stack:
                self.stack.pop()
            self.expect_key = False
            self.value_of = None
        elif byte == ord(",") and self._top_object():
            self.expect_key = True
            self.value_of = None
        elif byte == ord(":") and self._top_object():
            self.value_of = self.last_key
        elif byte not in b" \t\r\n":
            self.value_of = None  # a number, true, false or null

    def _start_string(self) -> None:
        top = self._top_object()
        if top and self.expect_key:
            self.is_key, self.expect_key = True, False
            self.key.clear()
        else:
            self.is_key = False
        document = top and not self.is_key and self.value_of == FIELD
        self.document = self.new_document() if document else None
        self.mode = "document" if document else "string"
        self._emit(b'"')
        self.value_of = None

    def _string(self, data: bytes, pos: int) -> int:
        if self.escape:  # the character after a backslash that ended the last chunk
            self.escape = b""
            self._copy(data[pos : pos + 1])
            return pos + 1
        match = _STRING_END.search(data, pos)
        if match is None:
            self._copy(data[pos:])
            return len(data)
        stop = match.start()
        if data[stop] == ord("\\"):
            if stop + 1 < len(data):
                self._copy(data[pos : stop + 2])
                return stop + 2
            self._copy(data[pos : stop + 1])
            self.escape = b"\\"
            return len(data)
        self._copy(data[pos:stop])
        self._emit(b'"')
        self.mode = "outside"
        if self.is_key:
            try:
                self.last_key = json.loads(b'"' + bytes(self.key) + b'"')
            except ValueError:
                self.last_key = None
        return stop + 1

    def _copy(self, data: bytes) -> None:
        self._emit(data)
        if self.is_key:
            self.key += data

    def _document(self, data: bytes, pos: int) -> int:
        document = self.document
        assert document is not None
        if self.escape:
            return self._escape(data, pos)
        match = _STRING_END.search(data, pos)
        if match is None:
            document.feed(data[pos:])
            return len(data)
        stop = match.start()
        document.feed(data[pos:stop])
        if data[stop] == ord("\\"):
            self.escape = b"\\"
            return self._escape(data, stop + 1)
        document.finish()
        self._emit(document.token.encode("ascii") + b'"')
        self.mode = "outside"
        self.document = None
        return stop + 1

    def _escape(self, data: bytes, pos: int) -> int:
        """Complete a JSON escape inside the document (``\\/`` is what some encoders write),
        also when it is cut in two by the end of a chunk."""
        if len(self.escape) == 1:
            if pos >= len(data):
                return pos
            self.escape += data[pos : pos + 1]
            pos += 1
        need = 6 if self.escape[1] == ord("u") else 2
        take = data[pos : pos + need - len(self.escape)]
        self.escape += take
        pos += len(take)
        if len(self.escape) < need:
            return pos
        sequence, self.escape = self.escape, b""
        self._unescape(sequence)
        return pos

    def _unescape(self, sequence: bytes) -> None:
        assert self.document is not None
        if len(sequence) == 2 and sequence[1] in _SIMPLE_ESCAPES:
            self.document.feed(_SIMPLE_ESCAPES[sequence[1]])
            return
        digits = sequence[2:]
        if len(sequence) == 6 and re.fullmatch(rb"[0-9A-Fa-f]{4}", digits):
            # anything but ASCII is then refused by the decoder, as a plain str would be
            self.document.feed(chr(int(digits, 16)).encode("utf-8", "surrogatepass"))
            return
        self._emit(b"\\x")  # not a JSON escape: the skeleton stays as malformed as the body


class DocumentSpool:
    """ASGI middleware for ``POST /Messages``; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        payloads: PayloadStore,
        max_payload_bytes: int,
    ) -> None:
        # Nobody unauthenticated makes us write a file: ``CredentialsFirst``, outside this
        # layer, refuses such a request before its body is read.
        self.app = app
        self.payloads = payloads
        self.max_encoded = max_encoded_length(max_payload_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/Messages"
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) <= SPOOL_ABOVE:
            await self.app(scope, receive, send)
            return
        await self._spooling(scope, receive, send)

    async def _spooling(self, scope: Scope, receive: Receive, send: Send) -> None:
        head: list[bytes] = []
        held = 0
        more = True
        while more and held <= SPOOL_ABOVE:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            head.append(message.get("body", b""))
            held += len(head[-1])
            more = message.get("more_body", False)
        if not more and held <= SPOOL_ABOVE:  # small after all: FastAPI reads it as usual
            body = {"type": "http.request", "body": b"".join(head), "more_body": False}
            await self.app(scope, _replay([body], None, receive), send)
            return
        documents: dict[str, SpooledDocument] = {}
        try:
            try:
                skeleton = await self._scan(b"".join(head), more, receive, documents)
            except SkeletonTooLarge:
                await send_too_large(
                    send, f"the request without its document exceeds {SKELETON_LIMIT}"
                )
                return
            except ClientDisconnect:
                return  # the client went away mid-body: nobody to answer, nothing to keep
            scope = dict(scope)
            scope[SCOPE_KEY] = documents
            scope["headers"] = [
                (name, value) for name, value in scope["headers"] if name != b"content-length"
            ] + [(b"content-length", str(len(skeleton)).encode())]
            body = {"type": "http.request", "body": skeleton, "more_body": False}
            await self.app(scope, _replay([body], None, receive), send)
        finally:
            for document in documents.values():
                if document.spool is not None:
                    document.spool.discard()  # kept by then if the message was accepted

    async def _scan(
        self,
        first: bytes,
        more: bool,
        receive: Receive,
        documents: dict[str, SpooledDocument],
    ) -> bytes:
        def new_document() -> SpooledDocument:
            # Of repeated top-level keys JSON keeps the last, so an earlier document is dead
            # weight; dropping it now also keeps one open file per request, not one per repeat
            # (a body of "businessDocument" keys would otherwise exhaust the descriptors).
            if documents:  # only the one before can still hold a file
                next(reversed(documents.values())).supersede()
            token = f"spooled:{secrets.token_hex(16)}"
            document = SpooledDocument(token, self.payloads.spool(), self.max_encoded)
            documents[token] = document
            return document

        scanner = _Scanner(new_document)
        batch = [first]
        size = len(first)
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect
            batch.append(message.get("body", b""))
            size += len(batch[-1])
            more = message.get("more_body", False)
            if size >= CHUNK:
                # decoding and writing ~1 MiB at a time, off the event loop
                await run_in_threadpool(scanner.feed, b"".join(batch))
                batch, size = [], 0
        await run_in_threadpool(scanner.feed, b"".join(batch))
        return scanner.finish()


def _replay(messages: list[Message], then: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` (and ``then``) first, then the real one."""
    queue = [*messages, *([then] if then is not None else [])]

    async def replay() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replay


def spooled_document(request: Request, value: str) -> SpooledDocument | None:
    """The document a ``businessDocument`` value stands for, when the middleware took it out."""
    documents: dict[str, SpooledDocument] = request.scope.get(SCOPE_KEY) or {}
    return documents.get(value) if value.startswith("spooled:") else None
