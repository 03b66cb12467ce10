"""A gzipped payload's size once inflated: held to the business message's size limit while it
is inflated (a gzip bomb), and every member of a multi-member gzip stream is read."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO, cast

import pytest
from cms_streams import Sink, Trickle

from meldingstjener.ebxml.mime import Attachment
from meldingstjener.engine import payload_io
from meldingstjener.engine.context import EngineContext, Policy
from meldingstjener.security import cms_enveloped
from meldingstjener.security.cms_common import CmsError, gunzip_if_gzip
from meldingstjener.security.devpki import DevParty, DevPki

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver(pki: DevPki) -> DevParty:
    return pki.parties["79768"]


def _context(receiver: DevParty) -> EngineContext:
    """What decrypt_payload reads of the engine's context for a part held in memory."""
    pair = (receiver.encryption.key, receiver.encryption.certificate)
    return cast(
        EngineContext,
        SimpleNamespace(keys=SimpleNamespace(decryption_candidates=[pair]), policy=Policy()),
    )


def test_a_gzip_bomb_is_refused_while_it_inflates(receiver: DevParty) -> None:
    """200 MiB of zeros gzip to ~200 kB of ciphertext, well under the in-memory part size: it
    is refused once past the XML size limit (64 MiB), not inflated whole first."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    bomb = b"".join(compressor.compress(zeros) for _ in range(200)) + compressor.flush()
    ciphertext = cms_enveloped.encrypt(bomb, receiver.encryption.certificate)
    assert len(ciphertext) < payload_io.IN_MEMORY
    part = Attachment("payload@example.no", payload_io.PAYLOAD_CONTENT_TYPE, ciphertext)
    ctx = _context(receiver)
    tracemalloc.start()
    try:
        with pytest.raises(CmsError) as refused:
            payload_io.decrypt_payload(ctx, part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.code == "too-large"
    assert peak < 100 * MIB, f"peak {peak / MIB:.0f} MiB"


def _members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(part) for part in parts)


FIRST = b"<MsgHead>" + os.urandom(700_000)
SECOND = os.urandom(700_000) + b"</MsgHead>"


def _streamed(der: bytes, receiver: DevParty, most: int) -> bytes:
    """decrypt_to from a stream handing out at most ``most`` bytes per read."""
    sink = Sink()
    candidates = [(receiver.encryption.key, receiver.encryption.certificate)]
    cms_enveloped.decrypt_to(lambda: cast(BinaryIO, Trickle(der, most)), sink, candidates)
    return bytes(sink.data)


@pytest.mark.parametrize(
    ("first", "second"),
    [(b"small", b" and more"), (FIRST, SECOND), (b"", b"after an empty member"), (FIRST, b"")],
    ids=["small", "large", "empty first", "empty last"],
)
def test_every_member_of_a_multi_member_gzip_is_read(
    receiver: DevParty, first: bytes, second: bytes
) -> None:
    """gzip(a) + gzip(b) gunzips to a + b, as gzip and Python's gzip read it, in memory and
    streamed (the boundary between the members falling anywhere in the pieces)."""
    stream = _members(first, second)
    assert gzip.decompress(stream) == first + second
    der = cms_enveloped.encrypt(stream, receiver.encryption.certificate)
    candidates = [(receiver.encryption.key, receiver.encryption.certificate)]
    assert cms_enveloped.decrypt(der, candidates) == first + second
    for most in (1 << 20, 4096, 7, 1) if len(stream) < 1000 else (1 << 20, 4099):
        assert _streamed(der, receiver, most) == first + second
    assert gunzip_if_gzip(stream) == first + second


def test_three_members_and_the_size_limit_over_all_of_them(receiver: DevParty) -> None:
    stream = _members(b"a" * 1000, b"b" * 1000, b"c" * 1000)
    der = cms_enveloped.encrypt(stream, receiver.encryption.certificate)
    candidates = [(receiver.encryption.key, receiver.encryption.certificate)]
    assert cms_enveloped.decrypt(der, candidates) == b"a" * 1000 + b"b" * 1000 + b"c" * 1000
    for refused in (
        lambda: cms_enveloped.decrypt(der, candidates, max_size=2500),
        lambda: gunzip_if_gzip(stream, max_size=2500),
    ):
        with pytest.raises(CmsError) as caught:
            refused()
        assert caught.value.code == "too-large"


REAL_SAMPLE = Path(
    "/work/shared/reference/samples/ebxml/real-smtp-mail/2023_08_29T12_56_58_328.p7m.deenveloped"
)


@pytest.mark.parametrize("padding", [b"\0", b"\0" * 8, b"\0" * 5000], ids=["1", "8", "5000"])
def test_zero_padding_after_the_last_member_is_ignored(receiver: DevParty, padding: bytes) -> None:
    """gzip and Python's gzip ignore zero bytes after the last member (a writer padding the
    stream to a block size): so do we, in memory and streamed."""
    stream = _members(b"<MsgHead>", b"</MsgHead>") + padding
    assert gzip.decompress(stream) == b"<MsgHead></MsgHead>"
    der = cms_enveloped.encrypt(stream, receiver.encryption.certificate)
    candidates = [(receiver.encryption.key, receiver.encryption.certificate)]
    assert cms_enveloped.decrypt(der, candidates) == b"<MsgHead></MsgHead>"
    for most in (1 << 20, 4096, 7, 1):
        assert _streamed(der, receiver, most) == b"<MsgHead></MsgHead>"
    assert gunzip_if_gzip(stream) == b"<MsgHead></MsgHead>"


@pytest.mark.skipif(not REAL_SAMPLE.exists(), reason="the reference samples are not here")
def test_a_real_payload_with_zero_padding_gunzips_as_without() -> None:
    real = REAL_SAMPLE.read_bytes()
    assert gunzip_if_gzip(real + b"\0" * 8) == gunzip_if_gzip(real) == gzip.decompress(real)


@pytest.mark.parametrize(
    "trailing",
    [b"x", b"\x1f", b"trailing garbage", b"\0" * 8 + b"x", b"\0" + gzip.compress(b"more")],
    ids=["x", "half-magic", "garbage", "zeros-then-garbage", "zeros-then-member"],
)
def test_other_bytes_after_a_member_are_refused(receiver: DevParty, trailing: bytes) -> None:
    stream = _members(b"<MsgHead/>") + trailing
    der = cms_enveloped.encrypt(stream, receiver.encryption.certificate)
    candidates = [(receiver.encryption.key, receiver.encryption.certificate)]
    attempts = [
        lambda: cms_enveloped.decrypt(der, candidates),
        lambda: _streamed(der, receiver, 1),
        lambda: gunzip_if_gzip(stream),
    ]
    for attempt in attempts:
        with pytest.raises(CmsError) as caught:
            attempt()
        assert caught.value.code == "cms-error"
        assert "not valid gzip" in caught.value.message
