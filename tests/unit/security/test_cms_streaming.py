"""CMS EnvelopedData in pieces: the same bytes as whole, BER as openssl streams it, clean errors.

openssl's own streamed (BER) output is tested in tests/integration/security.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable
from typing import BinaryIO

import pytest
from asn1crypto import cms as acms
from cms_streams import Sink, Trickle

from meldingstjener.security import ber, cms, cms_enveloped
from meldingstjener.security.devpki import DevParty, DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver(pki: DevPki) -> DevParty:
    return pki.parties[RECEIVER]


@pytest.fixture(scope="module")
def sender(pki: DevPki) -> DevParty:
    return pki.parties[SENDER]


def _candidates(party: DevParty) -> list[cms.DecryptionCandidate]:
    return [(party.encryption.key, party.encryption.certificate)]


def _decrypt(
    opener: Callable[[], BinaryIO], party: DevParty, **options: object
) -> tuple[bytes, Sink]:
    sink = Sink()
    cms_enveloped.decrypt_to(opener, sink, _candidates(party), **options)  # type: ignore[arg-type]
    return bytes(sink.data), sink


def _as_ber(der: bytes, segment: int, nested: bool = False) -> bytes:
    """The same EnvelopedData as openssl streams it: indefinite lengths, and the ciphertext in
    OCTET STRING segments (inside a second constructed level when ``nested``)."""
    enveloped = acms.ContentInfo.load(der)["content"]
    eci = enveloped["encrypted_content_info"]
    ciphertext = eci["encrypted_content"].native
    pieces = [
        ber.der_header(ber.OCTET_STRING, len(ciphertext[i : i + segment]))
        + ciphertext[i : i + segment]
        for i in range(0, len(ciphertext), segment)
    ]
    if nested:
        half = len(pieces) // 2
        pieces = [b"\x24\x80" + b"".join(pieces[:half]) + b"\x00\x00", *pieces[half:]]
    eoc = b"\x00\x00"
    content = b"\xa0\x80" + b"".join(pieces) + eoc
    eci_ber = (
        b"\x30\x80"
        + eci["content_type"].dump()
        + eci["content_encryption_algorithm"].dump()
        + content
        + eoc
    )
    body = enveloped["version"].dump() + enveloped["recipient_infos"].dump() + eci_ber
    inner = b"\x30\x80" + body + eoc
    return b"\x30\x80" + acms.ContentType("enveloped_data").dump() + b"\xa0\x80" + inner + eoc * 2


def test_streamed_encryption_is_the_der_asn1crypto_writes(receiver: DevParty) -> None:
    out = io.BytesIO()
    data = os.urandom(MiB + 17)
    written = cms_enveloped.encrypt_to(
        io.BytesIO(data), len(data), receiver.encryption.certificate, out
    )
    der = out.getvalue()
    assert written == len(der)
    assert acms.ContentInfo.load(der).dump(force=True) == der
    assert cms.decrypt(der, _candidates(receiver)) == data


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("segment", [1000, 4096])
def test_ber_in_segments_decrypts_to_the_same_bytes(
    receiver: DevParty, segment: int, nested: bool
) -> None:
    data = os.urandom(3 * MiB + 5)
    der = cms.encrypt(data, receiver.encryption.certificate)
    streamed = _as_ber(der, segment, nested)
    assert _decrypt(lambda: io.BytesIO(streamed), receiver)[0] == data
    assert cms.decrypt(streamed, _candidates(receiver)) == data


def test_a_trickling_stream_decrypts(receiver: DevParty) -> None:
    data = os.urandom(20_000)
    der = _as_ber(cms.encrypt(data, receiver.encryption.certificate), 333)
    assert _decrypt(lambda: Trickle(der), receiver)[0] == data  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("trickle", [False, True])
def test_a_wrong_key_tried_first_leaves_nothing_behind(
    sender: DevParty, receiver: DevParty, trickle: bool
) -> None:
    data = b"<MsgHead>" + os.urandom(100_000) + b"</MsgHead>"
    wrong_then_right = [
        (sender.encryption.key, receiver.encryption.certificate),
        (receiver.encryption.key, receiver.encryption.certificate),
    ]
    # With CBC only the padding of the last block tells a wrong key from the right one, and a
    # wrong key's garbage passes it about once in 256 tries (RSA unwrapping never fails: a bad
    # one gives a random key, against Bleichenbacher). That garbage is then the result; the
    # key store refuses a key that is not its certificate's, so only a test pairs them wrongly.
    # Each round encrypts again with a new content key: five rounds all passing is 1 in 10^12.
    for _ in range(5):
        der = _as_ber(cms.encrypt(data, receiver.encryption.certificate), 4096)
        sink = Sink()

        def opener(der: bytes = der) -> BinaryIO:
            return Trickle(der, 999) if trickle else io.BytesIO(der)  # type: ignore[return-value]

        cms_enveloped.decrypt_to(opener, sink, wrong_then_right)
        if sink.resets:
            break
        assert bytes(sink.data) != data  # the rare round: the wrong key's garbage was taken
    assert bytes(sink.data) == data and sink.resets == 1


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.999])
def test_a_truncated_structure_is_not_cms(receiver: DevParty, keep: float) -> None:
    data = os.urandom(200_000)
    for der in (
        cms.encrypt(data, receiver.encryption.certificate),
        _as_ber(cms.encrypt(data, receiver.encryption.certificate), 4096),
    ):
        cut = der[: int(len(der) * keep)]
        with pytest.raises(cms.CmsError) as caught:
            _decrypt(lambda cut=cut: io.BytesIO(cut), receiver)  # type: ignore[misc]
        assert caught.value.code == "not-cms"


def test_a_gzipped_payload_is_gunzipped_in_pieces(receiver: DevParty) -> None:
    data = b"<MsgHead>" + b"journal text " * 400_000 + b"</MsgHead>"
    der = cms.encrypt(data, receiver.encryption.certificate, compress=True)
    assert len(der) < len(data) // 10
    plain, _ = _decrypt(lambda: io.BytesIO(der), receiver)
    assert plain == data
    raw, _ = _decrypt(lambda: io.BytesIO(der), receiver, gunzip=False)
    assert raw.startswith(b"\x1f\x8b") and gzip.decompress(raw) == data


def test_a_gzip_bomb_is_refused_while_it_inflates(receiver: DevParty) -> None:
    der = cms.encrypt(b"\0" * (20 * MiB), receiver.encryption.certificate, compress=True)
    with pytest.raises(cms.CmsError) as caught:
        _decrypt(lambda: io.BytesIO(der), receiver, max_size=MiB)
    assert caught.value.code == "too-large"


def test_broken_gzip_is_reported_only_after_the_padding_checked_out(receiver: DevParty) -> None:
    broken = gzip.compress(os.urandom(300_000))[:-5000] + b"\xff" * 5000
    der = cms.encrypt(broken, receiver.encryption.certificate)
    with pytest.raises(cms.CmsError) as caught:
        _decrypt(lambda: io.BytesIO(der), receiver)
    assert caught.value.code == "cms-error" and "not valid gzip" in caught.value.message
    with pytest.raises(zlib.error):
        zlib.decompress(broken, wbits=31)


def test_the_announced_length_must_be_the_length(receiver: DevParty) -> None:
    with pytest.raises(cms.CmsError):
        cms_enveloped.encrypt_to(
            io.BytesIO(b"12345"), 4, receiver.encryption.certificate, io.BytesIO()
        )
