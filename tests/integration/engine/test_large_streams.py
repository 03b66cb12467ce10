"""Large messages through both engines in files: byte-exact, and refused cleanly when broken.

The receiving side gets the body as ``POST /ebms`` hands it over for a large request: spooled to
a file in its payload store. Transfer encodings and line ends vary as senders vary them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine_pair import Loopback, Pair, make_pair
from fastapi.testclient import TestClient

from meldingstjener.api import app as api_app
from meldingstjener.ebxml import package, unpackage
from meldingstjener.ebxml.mime_headers import parse_content_type
from meldingstjener.engine import inbound
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.formats import Attachment as Vedlegg
from meldingstjener.formats import Coded, Dialogmelding, Notat, build_dialogmelding
from meldingstjener.transport.base import Delivery, TransportFailure, TransportResult

MiB = 1024 * 1024
Transform = Callable[[bytes, str], tuple[bytes, str]]


@dataclasses.dataclass
class SpoolingLoopback(Loopback):
    """Hands the receiver a spooled file, as the HTTP endpoint does for a large body."""

    transform: Transform | None = None

    def send(self, delivery: Delivery) -> TransportResult:
        self.sent.append(delivery)
        assert isinstance(delivery.body, Path)
        body, content_type = delivery.body.read_bytes(), delivery.content_type
        if self.transform is not None:
            body, content_type = self.transform(body, content_type)
        receiver = self.engines[delivery.endpoint]
        with receiver.store.payloads.spool() as spool:
            spool.write(body)
            try:
                reply = inbound.receive(receiver, content_type, spool, channel="http")
            except inbound.InboundRefused as refused:
                raise TransportFailure("http-400", refused.detail, retryable=False) from None
        return TransportResult(reply.content_type, reply.body, 200)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = make_pair(tmp_path, retry_interval_seconds=600, retries=3, persist_duration_seconds=3600)
    network = SpoolingLoopback(engines=made.network.engines)
    for ctx in (made.gp, made.hospital):
        ctx.transports = {"http": network}
    made.network = network
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()


def _fagmelding(pair: Pair, attachment: bytes) -> bytes:
    note = Notat(tema_kodet=Coded(v="1", dn="Helseopplysninger"), tekst="Skannet journal")
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=pair.gp_site.party(),
        receiver=pair.hospital_site.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Vedlegg(data=attachment, mime_type="application/pdf"),),
    )


def _submit_spooled(ctx: EngineContext, payload: bytes) -> str:
    with ctx.store.payloads.spool() as spool:
        spool.write(payload)
        return submit(ctx, spool, actor="t")


def _temporaries(ctx: EngineContext) -> list[Path]:
    return [p for p in ctx.store.payloads.root.rglob(".*") if p.is_file()]


def _repackaged(encoding: str, line_end: bytes) -> Transform:
    """The same message as another MSH would send it: parts re-encoded, other line ends."""

    def transform(body: bytes, content_type: str) -> tuple[bytes, str]:
        message = unpackage(content_type, body)
        params = parse_content_type(content_type)[1]
        repacked, new_type = package(
            message.envelope_xml,
            list(message.attachments.values()),
            transfer_encoding=encoding,  # type: ignore[arg-type]
            envelope_content_id=params["start"],
        )
        if line_end == b"\n":
            assert encoding == "base64"  # binary parts keep their bytes
            repacked = repacked.replace(b"\r\n", b"\n")
        return repacked, new_type

    return transform


def _binary_with_lf(body: bytes, content_type: str) -> tuple[bytes, str]:
    """Binary parts with LF line ends in the MIME structure (the payload bytes untouched)."""
    message = unpackage(content_type, body)
    boundary = "lf-boundary-1234"
    start = parse_content_type(content_type)[1]["start"]
    parts = [(start, "text/xml", message.envelope_xml)] + [
        (f"<{p.content_id}>", p.content_type, p.data) for p in message.attachments.values()
    ]
    out = b""
    for cid, media, data in parts:
        out += f"--{boundary}\nContent-Type: {media}\nContent-ID: {cid}\n".encode()
        out += b"Content-Transfer-Encoding: binary\n\n" + data + b"\n"
    out += f"--{boundary}--\n".encode()
    return out, f'multipart/related; type="text/xml"; boundary="{boundary}"; start="{start}"'


@pytest.mark.parametrize(
    "transform",
    [
        None,
        _repackaged("base64", b"\r\n"),
        _repackaged("base64", b"\n"),
        _binary_with_lf,
    ],
    ids=["binary-crlf", "base64-crlf", "base64-lf", "binary-lf"],
)
def test_a_large_message_arrives_byte_exact(pair: Pair, transform: Transform | None) -> None:
    assert isinstance(pair.network, SpoolingLoopback)
    pair.network.transform = transform
    payload = _fagmelding(pair, os.urandom(3 * MiB))
    message_id = _submit_spooled(pair.gp, payload)
    pair.run()
    sent = pair.message(pair.gp, message_id)
    assert sent.status == "transport-acknowledged"
    assert pair.gp.store.payloads.read_bytes(str(sent.payload_ref)) == payload
    [received] = pair.inbound_messages(pair.hospital)
    assert received.status == "acknowledged"
    stored = pair.hospital.store.payloads.read_bytes(str(received.payload_ref))
    assert stored == payload and received.payload_sha256 == hashlib.sha256(payload).hexdigest()
    if transform is None:  # the wire form is kept as it came
        wire = pair.hospital.store.payloads.read_bytes(str(received.wire_ref))
        assert wire == pair.gp.store.payloads.read_bytes(str(sent.wire_ref))
    assert _temporaries(pair.gp) == [] and _temporaries(pair.hospital) == []


def test_a_compressed_payload_is_gunzipped_into_the_store(pair: Pair) -> None:
    pair.gp.policy = dataclasses.replace(pair.gp.policy, compress_payloads=True)
    payload = _fagmelding(pair, b"%PDF-1.4 " + b"0123456789" * 300_000)
    message_id = _submit_spooled(pair.gp, payload)
    sent = pair.message(pair.gp, message_id)
    assert pair.gp.store.payloads.size(str(sent.wire_ref)) < len(payload) // 3
    pair.run()
    [received] = pair.inbound_messages(pair.hospital)
    assert pair.hospital.store.payloads.read_bytes(str(received.payload_ref)) == payload


def _wire_of(pair: Pair, payload: bytes) -> tuple[bytes, str]:
    message_id = _submit_spooled(pair.gp, payload)
    row = pair.message(pair.gp, message_id)
    return pair.gp.store.payloads.read_bytes(str(row.wire_ref)), str(row.wire_content_type)


def _receive_file(ctx: EngineContext, content_type: str, body: bytes) -> inbound.InboundReply:
    with ctx.store.payloads.spool() as spool:
        spool.write(body)
        return inbound.receive(ctx, content_type, spool, channel="http")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.9999])
def test_a_truncated_large_body_is_a_mime_problem_and_leaves_nothing(
    pair: Pair, keep: float
) -> None:
    body, content_type = _wire_of(pair, _fagmelding(pair, os.urandom(2 * MiB)))
    with pytest.raises(inbound.InboundRefused) as refused:
        _receive_file(pair.hospital, content_type, body[: int(len(body) * keep)])
    assert refused.value.code == "MimeProblem"
    assert pair.inbound_messages(pair.hospital) == []
    assert not any(p.is_file() for p in pair.hospital.store.payloads.root.rglob("*"))


def test_garbled_ciphertext_is_a_security_failure_and_leaves_no_temporary(pair: Pair) -> None:
    body, content_type = _wire_of(pair, _fagmelding(pair, os.urandom(2 * MiB)))
    middle = len(body) // 2
    garbled = body[:middle] + bytes(b ^ 0x5A for b in body[middle : middle + 64])
    garbled += body[middle + 64 :]
    reply = _receive_file(pair.hospital, content_type, garbled)
    assert reply.body is not None and b'errorCode="SecurityFailure"' in reply.body
    # its signature does not verify: answered in the response, nothing stored
    assert pair.inbound_messages(pair.hospital) == []
    assert _temporaries(pair.hospital) == []


def test_base64_with_a_character_missing_is_a_mime_problem(pair: Pair) -> None:
    body, content_type = _repackaged("base64", b"\r\n")(
        *_wire_of(pair, _fagmelding(pair, os.urandom(2 * MiB)))
    )
    middle = body.index(b"\r\n", len(body) // 2) - 1
    # the envelope is readable: the sender is told by a MessageError (not stored, unverified)
    reply = _receive_file(pair.hospital, content_type, body[:middle] + body[middle + 1 :])
    assert reply.body is not None and b'errorCode="MimeProblem"' in reply.body
    assert b"base64" in reply.body
    assert pair.inbound_messages(pair.hospital) == []
    assert _temporaries(pair.hospital) == []


def test_post_ebms_spools_a_large_body_and_keeps_it_as_the_wire_form(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    spooled: list[object] = []
    receive = inbound.receive

    def watching(ctx: EngineContext, content_type: str, body: object, **kw: str) -> object:
        spooled.append(type(body).__name__)
        return receive(ctx, content_type, body, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(inbound, "receive", watching)
    payload = _fagmelding(pair, os.urandom(2 * MiB))
    body, content_type = _wire_of(pair, payload)
    small, small_type = _wire_of(pair, _fagmelding(pair, b"%PDF small"))
    with TestClient(api_app.create_app(pair.hospital)) as http:
        pieces = (body[i : i + 100_000] for i in range(0, len(body), 100_000))
        answer = http.post("/ebms", content=pieces, headers={"Content-Type": content_type})
        assert answer.status_code == 200, answer.text
        assert http.post("/ebms", content=small, headers={"Content-Type": small_type}).is_success
        cut = http.post("/ebms", content=body[:-100], headers={"Content-Type": content_type})
        assert cut.status_code == 400 and cut.text.startswith("MimeProblem")
    assert spooled == ["Spool", "bytes", "Spool"]
    received = {r.payload_sha256: r for r in pair.inbound_messages(pair.hospital)}
    row = received[hashlib.sha256(payload).hexdigest()]
    assert pair.hospital.store.payloads.read_bytes(str(row.wire_ref)) == body
    assert pair.hospital.store.payloads.read_bytes(str(row.payload_ref)) == payload
    assert _temporaries(pair.hospital) == []
