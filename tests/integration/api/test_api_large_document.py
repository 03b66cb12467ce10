"""POST /Messages with a large business document: decoded into a file on arrival, byte-exact,
with the same answers as a small one for every mistake, and no temporary file left behind."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_sites import ApiPair
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meldingstjener.api import document_response, document_spool
from meldingstjener.api.app import create_app
from meldingstjener.api.document_spool import SpooledDocument, _Scanner
from meldingstjener.api.edi2 import Edi2
from meldingstjener.api.edi2_models import GetBusinessDocumentResponse
from meldingstjener.config import ApiSettings
from meldingstjener.devsites import dialog_note
from meldingstjener.formats import Attachment as Vedlegg
from meldingstjener.formats import Coded, Dialogmelding, Notat, build_dialogmelding
from meldingstjener.store.payloads import PayloadStore

MiB = 1024 * 1024


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def _document(api_pair: ApiPair, size: int = 2 * MiB) -> bytes:
    pair = api_pair.pair
    note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="Skannet journal")
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Vedlegg(data=os.urandom(size), mime_type="application/pdf"),),
    )


def _body(document: bytes, **extra: object) -> bytes:
    fields = {
        "contentType": "application/xml",
        "contentTransferEncoding": "base64",
        "businessDocument": base64.b64encode(document).decode("ascii"),
        **extra,
    }
    return json.dumps(fields).encode()


def _wrapped(document: bytes) -> str:
    """base64 as MIME writes it: lines of 76 characters ending in CRLF."""
    return base64.encodebytes(document).decode("ascii").replace("\n", "\r\n")


def _pieces(body: bytes, size: int = 65_536) -> Iterator[bytes]:
    """Sent without a Content-Length, in pieces, as a streaming client does."""
    return (body[i : i + size] for i in range(0, len(body), size))


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_a_large_document_is_stored_byte_exact_and_sent(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[object] = []
    post_message = Edi2.post_message

    def watching(self: Edi2, *args: object) -> object:
        taken.append(args[2])  # (who, body, spooled document, idempotency key)
        return post_message(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Edi2, "post_message", watching)
    document = _document(api_pair)
    http = api_pair.gp_http
    body = _pieces(_body(document))
    answer = http.post("/Messages", headers=_bearer(api_pair.gp_key), content=body)
    assert answer.status_code == 201, answer.text
    assert len(taken) == 1 and isinstance(taken[0], SpooledDocument)
    pair = api_pair.pair
    row = pair.message(pair.gp, answer.json())
    assert pair.gp.store.payloads.read_bytes(str(row.payload_ref)) == document
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    assert pair.hospital.store.payloads.read_bytes(str(received.payload_ref)) == document
    assert _temporaries(pair.gp.store.payloads.root) == []


def test_escaped_slashes_and_a_declared_length_decode_the_same(api_pair: ApiPair) -> None:
    document = _document(api_pair)
    body = _body(document).replace(b"/", b"\\/")  # what some JSON encoders write
    assert b"\\/" in body
    http = api_pair.gp_http
    answer = http.post("/Messages", headers=_bearer(api_pair.gp_key), content=body)
    assert answer.status_code == 201, answer.text
    row = api_pair.pair.message(api_pair.pair.gp, answer.json())
    assert api_pair.pair.gp.store.payloads.read_bytes(str(row.payload_ref)) == document


def test_mistakes_in_a_large_request_get_the_answers_a_small_one_gets(
    api_pair: ApiPair,
) -> None:
    http = api_pair.gp_http
    headers = _bearer(api_pair.gp_key)
    document = _document(api_pair)
    good = _body(document)
    not_base64 = good.replace(b'"businessDocument": "', b'"businessDocument": "*', 1)
    answer = http.post("/Messages", headers=headers, content=_pieces(not_base64))
    assert answer.status_code == 400 and answer.json()["errorCode"] == 1000
    assert "base64" in answer.json()["detail"]
    surprise = _body(document, surprise=1)
    answer = http.post("/Messages", headers=headers, content=_pieces(surprise))
    assert answer.status_code == 400 and answer.json()["validationErrors"]
    answer = http.post("/Messages", headers=headers, content=_pieces(good[:-10]))
    assert answer.status_code == 400 and answer.json()["code"] == "invalid-input"
    bad_escape = good.replace(b'"businessDocument": "', b'"businessDocument": "\\x', 1)
    answer = http.post("/Messages", headers=headers, content=_pieces(bad_escape))
    assert answer.status_code == 400 and answer.json()["code"] == "invalid-input"
    answer = http.post(
        "/Messages", headers={"Content-Type": "application/json"}, content=_pieces(good)
    )
    assert answer.status_code == 401
    huge_field = _body(b"<a/>", contentType="x" * (2 * MiB))
    answer = http.post("/Messages", headers=headers, content=_pieces(huge_field))
    assert answer.status_code == 413 and answer.json()["code"] == "too-large"
    assert _temporaries(api_pair.pair.gp.store.payloads.root) == []


def test_a_document_over_the_limit_is_413_before_it_is_decoded(api_pair: ApiPair) -> None:
    pair = api_pair.pair
    app = create_app(pair.gp, api_settings=ApiSettings(max_payload_bytes=1_500_000))
    with TestClient(app) as http:
        body = _body(_document(api_pair, 1_600_000))
        answer = http.post("/Messages", headers=_bearer(api_pair.gp_key), content=_pieces(body))
    assert answer.status_code == 413 and answer.json()["code"] == "too-large"
    assert _temporaries(pair.gp.store.payloads.root) == []


TEXT = st.text(alphabet='ab"\\/{}[]:, é\n', max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=400),
    others=st.dictionaries(TEXT, JSON_VALUES, max_size=3),
    escape_slashes=st.booleans(),
    ascii_only=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_the_scanner_takes_out_the_document_however_the_body_is_cut(
    tmp_path: Path,
    data: bytes,
    others: dict[str, object],
    escape_slashes: bool,
    ascii_only: bool,
    cuts: list[int],
) -> None:
    others.pop(document_spool.FIELD, None)
    fields = {**others, document_spool.FIELD: base64.b64encode(data).decode()}
    body = json.dumps(fields, ensure_ascii=ascii_only).encode()
    if escape_slashes:
        body = body.replace(b"/", b"\\/")
    payloads = PayloadStore(tmp_path / "payloads")
    documents: list[SpooledDocument] = []

    def new_document() -> SpooledDocument:
        documents.append(SpooledDocument(f"spooled:{len(documents)}", payloads.spool(), 10**9))
        return documents[-1]

    scanner = _Scanner(new_document)
    start = 0
    for end in [*sorted(c for c in cuts if c < len(body)), len(body)]:
        scanner.feed(body[start:end])
        start = end
    skeleton = json.loads(scanner.finish())
    assert skeleton == {**others, document_spool.FIELD: "spooled:0"}
    [document] = documents
    assert document.spool is not None and not document.invalid
    assert document.spool.read_bytes() == data
    document.spool.discard()


def test_a_nested_or_repeated_business_document_is_handled_as_json_would(
    tmp_path: Path,
) -> None:
    payloads = PayloadStore(tmp_path)
    documents: list[SpooledDocument] = []

    def new_document() -> SpooledDocument:
        documents.append(SpooledDocument(f"spooled:{len(documents)}", payloads.spool(), 10**9))
        return documents[-1]

    scanner = _Scanner(new_document)
    scanner.feed(
        b'{"x": {"businessDocument": "QQ=="}, "businessDocument": "QUI=", '
        b'"business\\u0044ocument": "QUJD"}'
    )
    skeleton = json.loads(scanner.finish())
    assert skeleton == {"x": {"businessDocument": "QQ=="}, "businessDocument": "spooled:1"}
    assert [d.spool.read_bytes() for d in documents if d.spool] == [b"AB", b"ABC"]


@pytest.mark.parametrize(
    "text",
    [b"QQ", b"QQ=", b"=QQ=", b"QUJD=", b"QQ===", b"QQ==QQ==", b"Q Q==", b"QQ==\n", b"", b"Q\vQ=="],
)
def test_the_document_decoder_agrees_with_b64decode(text: bytes) -> None:
    # whitespace as .NET's Convert.FromBase64String passes over it: space, tab, CR, LF
    try:
        expected: bytes | None = base64.b64decode(text.translate(None, b" \t\r\n"), validate=True)
    except ValueError:
        expected = None
    decoder = document_spool.StrictBase64()
    try:
        pieces = b"".join(decoder.feed(text[i : i + 1]) for i in range(len(text)))
        got: bytes | None = pieces + decoder.finish()
    except ValueError:
        got = None
    assert got == expected


def test_an_unauthenticated_large_request_is_refused_before_its_body_is_read(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    spooled: list[object] = []
    start = PayloadStore.spool

    def counting(self: PayloadStore) -> object:
        spooled.append(self)
        return start(self)

    monkeypatch.setattr(PayloadStore, "spool", counting)
    body = _body(_document(api_pair))
    http = api_pair.gp_http
    for headers in (
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "Authorization": "Bearer not-a-key"},
    ):
        answer = http.post("/Messages", headers=headers, content=_pieces(body))
        assert answer.status_code == 401 and answer.json()["code"] == "unauthenticated"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert spooled == []
    assert _temporaries(api_pair.pair.gp.store.payloads.root) == []
    # with a key the same body is spooled (document, then what is sent) and taken
    answer = http.post("/Messages", headers=_bearer(api_pair.gp_key), content=_pieces(body))
    assert answer.status_code == 201, answer.text
    assert spooled


def test_a_large_document_is_fetched_in_pieces_byte_exact(
    api_pair: ApiPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET .../business-document streams a large document with its length announced: the body
    is the JSON FastAPI writes for the model, and no piece holds more than a slice of it."""
    document = _document(api_pair, size=3 * MiB)
    pair = api_pair.pair
    answer = api_pair.gp_http.post(
        "/Messages", headers=_bearer(api_pair.gp_key), content=_body(document)
    )
    assert answer.status_code == 201, answer.text
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    encoded: list[int] = []
    original = base64.b64encode

    def watching(data: bytes) -> bytes:
        encoded.append(len(data))
        return original(data)

    monkeypatch.setattr(document_response.base64, "b64encode", watching)
    with api_pair.hospital_http.stream(
        "GET",
        f"/Messages/{received.id}/business-document",
        headers=_bearer(api_pair.hospital_key),
    ) as fetched:
        assert fetched.status_code == 200
        body = b"".join(fetched.iter_bytes())
        assert fetched.headers["content-length"] == str(len(body))
        assert fetched.headers["content-type"] == "application/json"
    expected = GetBusinessDocumentResponse(
        businessDocument=original(document).decode("ascii"),
        contentType="application/xml",
        contentTransferEncoding="base64",
    )
    assert body == json.dumps(expected.model_dump(), separators=(",", ":")).encode()
    assert len(encoded) > 1 and max(encoded) <= document_response.PIECE


def test_a_small_document_answer_is_the_model_json_and_a_purged_file_is_404(
    api_pair: ApiPair,
) -> None:
    pair = api_pair.pair
    answer = api_pair.gp_http.post(
        "/Messages",
        headers=_bearer(api_pair.gp_key),
        content=_body(dialog_note(pair.gp_site, pair.hospital_site, "Liten")),
    )
    assert answer.status_code == 201, answer.text
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    headers = _bearer(api_pair.hospital_key)
    url = f"/Messages/{received.id}/business-document"
    fetched = api_pair.hospital_http.get(url, headers=headers)
    assert fetched.status_code == 200
    stored = pair.hospital.store.payloads.read_bytes(str(received.payload_ref))
    assert fetched.json() == {
        "businessDocument": base64.b64encode(stored).decode("ascii"),
        "contentType": "application/xml",
        "contentTransferEncoding": "base64",
    }
    assert fetched.content == json.dumps(fetched.json(), separators=(",", ":")).encode()
    assert pair.hospital.store.payloads.delete(str(received.payload_ref))
    gone = api_pair.hospital_http.get(url, headers=headers)
    assert gone.status_code == 404 and gone.json()["code"] == "not-found"


@pytest.mark.parametrize("size", [1024, 2 * MiB], ids=["small", "spooled"])
def test_a_document_wrapped_in_lines_is_read_as_nhns_service_reads_it(
    api_pair: ApiPair, size: int
) -> None:
    # MIME's base64 (76 characters and CRLF, as Java's MimeEncoder writes it): NHN's .NET
    # service passes over the line ends, so an EPJ written against it sends them.
    document = _document(api_pair, size)
    encoded = _wrapped(document)
    body = _body(document, businessDocument=encoded)
    answer = api_pair.gp_http.post("/Messages", headers=_bearer(api_pair.gp_key), content=body)
    assert answer.status_code == 201, answer.text
    with api_pair.pair.gp.store.unit_of_work() as uow:
        row = uow.messages.get(answer.json())
        assert row is not None and row.payload_ref is not None
    assert api_pair.pair.gp.store.payloads.read_bytes(row.payload_ref) == document
    unwrapped = json.loads(body)
    unwrapped["businessDocument"] = encoded.replace("\r\n", "\r\n*")
    refused = api_pair.gp_http.post(
        "/Messages", headers=_bearer(api_pair.gp_key), content=json.dumps(unwrapped).encode()
    )
    assert refused.status_code == 400 and "base64" in refused.json()["detail"]


def test_a_wrapped_document_just_under_the_limit_is_taken(api_pair: ApiPair) -> None:
    # The line ends of a wrapped document are no part of it: counted, they made a document
    # just under the limit too large.
    pair = api_pair.pair
    limit = 1_500_000
    document = _document(api_pair, 1_120_000)
    assert limit * 0.97 < len(document) <= limit
    encoded = _wrapped(document)
    body = _body(document, businessDocument=encoded)
    app = create_app(pair.gp, api_settings=ApiSettings(max_payload_bytes=limit))
    with TestClient(app) as http:
        answer = http.post("/Messages", headers=_bearer(api_pair.gp_key), content=_pieces(body))
    assert answer.status_code == 201, answer.text
