"""Review of the POST /Messages spooling middleware: repeated documents, a client that goes
away, and the scanner and decoder checked against ``json.loads`` and ``b64decode``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from meldingstjener.api.document_spool import (
    FIELD,
    SCOPE_KEY,
    DocumentSpool,
    SpooledDocument,
    StrictBase64,
    _Scanner,
)
from meldingstjener.store.payloads import PayloadStore

PIECE = 65_536


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def _pieces(body: bytes) -> list[Message]:
    return [
        {"type": "http.request", "body": body[i : i + PIECE], "more_body": i + PIECE < len(body)}
        for i in range(0, len(body), PIECE)
    ]


def _drive(middleware: DocumentSpool, messages: list[Message]) -> list[Message]:
    """One POST /Messages without a Content-Length through the middleware; what it sent."""
    sent: list[Message] = []
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/Messages", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    return sent


async def _answer(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_repeated_documents_keep_one_file_open_at_a_time(tmp_path: Path) -> None:
    # json.loads keeps the last of repeated keys; every earlier value used to keep an open
    # spool file until the request ended, so ~1000 repeats in a 1 MB body exhausted the
    # process's descriptors (OSError: Too many open files).
    store = PayloadStore(tmp_path)
    last = os.urandom(900_000)
    body = (
        b"{"
        + b'"businessDocument": "QUJD", ' * 50
        + b'"businessDocument": "'
        + base64.b64encode(last)
        + b'"}'
    )
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        skeleton = json.loads((await receive())["body"])
        seen["temporaries"] = len(_temporaries(tmp_path))
        document: SpooledDocument = scope[SCOPE_KEY][skeleton[FIELD]]
        assert document.spool is not None
        seen["document"] = document.spool.read_bytes()
        await _answer(send)

    sent = _drive(DocumentSpool(app, payloads=store, max_payload_bytes=10**8), _pieces(body))
    assert sent[0]["status"] == 200
    assert seen["temporaries"] == 1
    assert seen["document"] == last
    assert _temporaries(tmp_path) == []


def test_a_client_gone_mid_body_ends_quietly_and_leaves_no_file(tmp_path: Path) -> None:
    # The disconnect used to escape the middleware as ClientDisconnect: an "Exception in ASGI
    # application" for every upload a client gave up on.
    store = PayloadStore(tmp_path)
    called: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)
        await _answer(send)

    head = b'{"contentType": "application/xml", "businessDocument": "' + b"QUJD" * 400_000
    messages = [{"type": "http.request", "body": head, "more_body": True}]
    messages.append({"type": "http.disconnect"})
    sent = _drive(DocumentSpool(app, payloads=store, max_payload_bytes=10**8), messages)
    assert sent == [] and called == []
    assert _temporaries(tmp_path) == []


# --- the scanner and the decoder against the in-memory reading -------------------------------


class _MemorySpool:
    """Just what SpooledDocument uses of a Spool."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def discard(self) -> None:
        self.data.clear()


def _scan(body: bytes, cuts: list[int]) -> tuple[bytes, dict[str, SpooledDocument]]:
    documents: dict[str, SpooledDocument] = {}

    def new_document() -> SpooledDocument:
        token = f"spooled:{len(documents):032x}"
        spool: Any = _MemorySpool()
        documents[token] = SpooledDocument(token, spool, 10**9)
        return documents[token]

    scanner = _Scanner(new_document)
    start = 0
    for end in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
        scanner.feed(body[start:end])
        start = end
    return scanner.finish(), documents


def _strict_b64(text: str | bytes) -> bytes | None:
    """The reference: the standard library's strict decoder, after the whitespace .NET's
    Convert.FromBase64String passes over (space, tab, CR, LF)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        return base64.b64decode(data.translate(None, b" \t\r\n"), validate=True)
    except (binascii.Error, ValueError):
        return None


def _loads(text: bytes) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return ValueError


BASE64ISH = st.one_of(
    st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet='QUJD=+/ \n"\\é\x00\ud800', max_size=10),
)
KEYS = st.sampled_from([FIELD, "a", "businessdocument"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | BASE64ISH,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    """JSON texts as encoders write them (and a few broken ones): repeated keys, nested
    documents, escaped slashes and key characters, a BOM, a byte taken out."""
    ascii_only = draw(st.booleans())
    if draw(st.booleans()):  # an object, possibly with repeated keys
        fields = draw(st.lists(st.tuples(KEYS, VALUES), max_size=4))
        text = (
            "{"
            + ", ".join(
                f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=ascii_only)}" for k, v in fields
            )
            + "}"
        )
    else:
        text = json.dumps(
            draw(VALUES), ensure_ascii=ascii_only, indent=draw(st.sampled_from([None, 1]))
        )
    if draw(st.booleans()):
        text = text.replace("/", "\\/")
    if draw(st.booleans()):
        text = text.replace(f'"{FIELD}"', '"business\\u0044ocument"')
    body = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    if body and draw(st.integers(0, 4)) == 0:
        cut = draw(st.integers(0, len(body) - 1))
        body = body[:cut] + body[cut + 1 :]
    return body


@settings(max_examples=400, deadline=None)
@given(body=_bodies(), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_the_scanner_reads_what_json_loads_reads(body: bytes, cuts: list[int]) -> None:
    original = _loads(body)
    skeleton, documents = _scan(body, cuts)
    replaced = _loads(skeleton)
    if original is ValueError:
        assert replaced is ValueError  # malformed stays malformed, for FastAPI to refuse
        return
    assert replaced is not ValueError
    if isinstance(original, dict) and isinstance(original.get(FIELD), str):
        assert isinstance(replaced, dict)
        document = documents[replaced[FIELD]]
        spool: Any = document.spool
        decoded = None if document.invalid or spool is None else bytes(spool.data)
        assert decoded == _strict_b64(original[FIELD])
        replaced[FIELD] = original[FIELD]
    assert replaced == original


@settings(max_examples=2000, deadline=None)
@given(
    text=st.text(alphabet="AQUJD=+/ \n\r\t\v-_\x00é", max_size=14).map(str.encode),
    cuts=st.lists(st.integers(0, 20), max_size=5),
)
def test_the_document_decoder_is_b64decode_however_the_text_is_cut(
    text: bytes, cuts: list[int]
) -> None:
    decoder = StrictBase64()
    points = [*sorted({c % (len(text) + 1) for c in cuts}), len(text)]
    try:
        got: bytes | None = b"".join(
            decoder.feed(text[a:b]) for a, b in zip([0, *points], points, strict=False)
        )
        got += decoder.finish()
    except (binascii.Error, ValueError):
        got = None
    assert got == _strict_b64(text)
