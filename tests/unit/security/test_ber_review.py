"""Review of the streaming CMS reader: nesting that must not recurse without end, OAEP
parameters that must give a coded error, a gzip stream cut short, and the streamed decryption
checked against a whole-buffer one (asn1crypto and cryptography on the bytes held whole)."""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import BinaryIO

import pytest
from asn1crypto import algos
from asn1crypto import cms as acms
from cms_streams import Sink, Trickle
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from meldingstjener.security import ber, cms, cms_enveloped
from meldingstjener.security.devpki import DevParty, DevPki

RECEIVER = "79768"  # a HER-id the session PKI in conftest.py issues for


@pytest.fixture(scope="module")
def receiver(pki: DevPki) -> DevParty:
    return pki.parties[RECEIVER]


def _candidates(party: DevParty) -> list[cms.DecryptionCandidate]:
    return [(party.encryption.key, party.encryption.certificate)]


def _streamed(data: bytes, party: DevParty, most: int = 1 << 30) -> bytes:
    sink = Sink()

    def opener() -> BinaryIO:
        return Trickle(data, most)  # type: ignore[return-value]

    cms_enveloped.decrypt_to(opener, sink, _candidates(party))
    return bytes(sink.data)


# --- indefinite lengths nested without end -----------------------------------------------------


def test_indefinite_lengths_nested_deeply_are_not_cms(receiver: DevParty) -> None:
    # "30 80" 5000 times used to end in RecursionError (uncaught: no error code at all)
    nested = b"\x30\x80" * 5000
    with pytest.raises(cms.CmsError) as caught:
        ber.Reader(io.BytesIO(nested)).element()
    assert caught.value.code == "not-cms"
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt(nested, _candidates(receiver))
    assert caught.value.code == "not-cms"


def test_indefinite_lengths_nested_a_little_are_read_whole() -> None:
    element = b"\x30\x80" * 6 + b"\x05\x00" + b"\x00\x00" * 6
    reader = ber.Reader(io.BytesIO(element + b"\x05\x00"))
    assert reader.element() == element
    assert reader.consumed == len(element)


# --- OAEP parameters ----------------------------------------------------------------------------


def _with_oaep(der: bytes, party: DevParty, parameters: dict[str, object]) -> bytes:
    """The EnvelopedData ``der`` with its content key re-wrapped by RSA-OAEP (``parameters``)."""
    info = acms.ContentInfo.load(der)
    ktri = info["content"]["recipient_infos"][0].chosen
    content_key = party.encryption.key.decrypt(ktri["encrypted_key"].native, padding.PKCS1v15())
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    ktri["encrypted_key"] = party.encryption.certificate.public_key().encrypt(content_key, oaep)
    ktri["key_encryption_algorithm"] = {"algorithm": "rsaes_oaep", "parameters": parameters}
    return info.dump(force=True)


def test_oaep_sha256_decrypts_whole_and_in_pieces(receiver: DevParty) -> None:
    data = os.urandom(5000)
    der = _with_oaep(
        cms.encrypt(data, receiver.encryption.certificate),
        receiver,
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        },
    )
    assert cms.decrypt(der, _candidates(receiver)) == data
    assert _streamed(der, receiver, most=97) == data


def test_oaep_mgf1_without_its_hash_is_an_unsupported_algorithm(receiver: DevParty) -> None:
    # MGF1 without parameters used to raise TypeError ('Void' object is not subscriptable)
    der = _with_oaep(
        cms.encrypt(b"<MsgHead/>", receiver.encryption.certificate),
        receiver,
        {"hash_algorithm": {"algorithm": "sha256"}, "mask_gen_algorithm": {"algorithm": "mgf1"}},
    )
    params = acms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen[
        "key_encryption_algorithm"
    ]["parameters"]
    assert not isinstance(params["mask_gen_algorithm"]["parameters"], algos.DigestAlgorithm)
    for decrypt in (
        lambda: cms.decrypt(der, _candidates(receiver)),
        lambda: _streamed(der, receiver),
    ):
        with pytest.raises(cms.CmsError) as caught:
            decrypt()
        assert caught.value.code == "unsupported-algorithm"


# --- gzip cut short -------------------------------------------------------------------------------

TEXT = b"<MsgHead>" + b"journal text, line by line " * 5000 + b"</MsgHead>"


@pytest.mark.parametrize("keep", ["magic", "half", "no trailer"])
def test_a_gzip_stream_cut_short_is_not_valid_gzip(receiver: DevParty, keep: str) -> None:
    # It used to pass as a shorter plaintext: zlib reports no error for a stream that stops
    whole = gzip.compress(TEXT)
    cut = {"magic": whole[:2], "half": whole[: len(whole) // 2], "no trailer": whole[:-8]}[keep]
    with pytest.raises(EOFError):
        gzip.decompress(cut)
    der = cms.encrypt(cut, receiver.encryption.certificate)
    for decrypt in (
        lambda: cms.decrypt(der, _candidates(receiver)),
        lambda: _streamed(der, receiver, most=1000),
    ):
        with pytest.raises(cms.CmsError) as caught:
            decrypt()
        assert caught.value.code == "cms-error" and "not valid gzip" in caught.value.message
    assert cms.decrypt(der, _candidates(receiver), gunzip=False) == cut


# --- streamed against whole ----------------------------------------------------------------------


def _whole(der: bytes, party: DevParty) -> bytes | None:
    """Decrypt with everything in memory, as the code did before it streamed; None: refused."""
    enveloped = acms.ContentInfo.load(der)["content"]
    ktri = enveloped["recipient_infos"][0].chosen
    key = party.encryption.key.decrypt(ktri["encrypted_key"].native, padding.PKCS1v15())
    eci = enveloped["encrypted_content_info"]
    iv = eci["content_encryption_algorithm"]["parameters"].native
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(eci["encrypted_content"].native) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    if not plain.startswith(b"\x1f\x8b"):
        return plain
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(plain)
    except zlib.error:
        return None
    return out if inflater.eof else None


def _segmented(der: bytes, segment: int, nested: bool) -> bytes:
    """The same EnvelopedData in BER: indefinite lengths, the ciphertext in OCTET STRINGs of
    ``segment`` bytes (the first half of them one level deeper when ``nested``)."""
    enveloped = acms.ContentInfo.load(der)["content"]
    eci = enveloped["encrypted_content_info"]
    ciphertext = eci["encrypted_content"].native
    segments = [
        ber.der_header(ber.OCTET_STRING, len(piece)) + piece
        for piece in (ciphertext[i : i + segment] for i in range(0, len(ciphertext), segment))
    ]
    if nested and segments:
        half = (len(segments) + 1) // 2
        segments[:half] = [b"\x24\x80" + b"".join(segments[:half]) + b"\x00\x00"]
    end = b"\x00\x00"
    eci_ber = (
        b"\x30\x80"
        + eci["content_type"].dump()
        + eci["content_encryption_algorithm"].dump()
        + b"\xa0\x80"
        + b"".join(segments)
        + end
        + end
    )
    inner = enveloped["version"].dump() + enveloped["recipient_infos"].dump() + eci_ber
    outer = acms.ContentType("enveloped_data").dump() + b"\xa0\x80\x30\x80" + inner + end + end
    return b"\x30\x80" + outer + end


PLAINTEXTS = st.one_of(
    st.binary(max_size=3000),
    st.integers(0, 200_000).map(lambda n: gzip.compress((b"journal line\n" * n)[:n])),
    st.tuples(st.binary(min_size=1, max_size=5000), st.floats(0, 1)).map(
        lambda t: gzip.compress(t[0])[: max(2, int(len(gzip.compress(t[0])) * t[1]))]
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    plaintext=PLAINTEXTS,
    form=st.sampled_from(["der", "ber", "ber-nested"]),
    segment=st.integers(1, 5000),
    most=st.integers(1, 70_000),
)
def test_streamed_decryption_is_the_whole_buffer_decryption(
    receiver: DevParty, plaintext: bytes, form: str, segment: int, most: int
) -> None:
    der = cms.encrypt(plaintext, receiver.encryption.certificate)
    expected = _whole(der, receiver)
    data = der if form == "der" else _segmented(der, segment, form == "ber-nested")
    try:
        got: bytes | None = _streamed(data, receiver, most)
    except cms.CmsError as exc:
        assert "gzip" in exc.message
        got = None
    assert got == expected


def _in_segments(der: bytes, empty: int) -> bytes:
    """``der`` re-encoded with indefinite lengths, its ciphertext after ``empty`` zero-length
    OCTET STRING segments (legal BER, two bytes each)."""
    info = acms.ContentInfo.load(der)
    enveloped = info["content"]
    eci = enveloped["encrypted_content_info"]
    ciphertext = eci["encrypted_content"].native
    segments = b"\x04\x00" * empty + ber.der_header(ber.OCTET_STRING, len(ciphertext)) + ciphertext

    def indefinite(tag: int, body: bytes) -> bytes:
        return bytes((tag, 0x80)) + body + b"\x00\x00"

    eci_ber = indefinite(
        0x30,
        eci["content_type"].dump()
        + eci["content_encryption_algorithm"].dump()
        + indefinite(0xA0, segments),
    )
    body = enveloped["version"].dump() + enveloped["recipient_infos"].dump() + eci_ber
    return indefinite(0x30, info["content_type"].dump() + indefinite(0xA0, indefinite(0x30, body)))


def test_implausibly_many_segments_are_not_cms(receiver: DevParty) -> None:
    """Millions of empty segments cost a second of CPU per 2 MB: past one segment per 512
    bytes of content (and 1024 more) the content is refused."""
    der = cms.encrypt(b"<MsgHead/>", receiver.encryption.certificate)
    assert cms.decrypt(_in_segments(der, 1000), _candidates(receiver)) == b"<MsgHead/>"
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt(_in_segments(der, 100_000), _candidates(receiver))
    assert caught.value.code == "not-cms" and "segments" in caught.value.message
