"""A gzipped payload's size once inflated: held to the business message's size limit while it
is inflated (a gzip bomb), and every member of a multi-member gzip stream is read."""

from __future__ import annotations

import tracemalloc
import zlib
from types import SimpleNamespace
from typing import cast

import pytest

from meldingstjener.ebxml.mime import Attachment
from meldingstjener.engine import payload_io
from meldingstjener.engine.context import EngineContext, Policy
from meldingstjener.security import cms_enveloped
from meldingstjener.security.cms_common import CmsError
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
