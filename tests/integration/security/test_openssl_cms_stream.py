"""Large CMS with `openssl cms`: its streamed BER (indefinite lengths, 4 kB segments) decrypts
here in pieces, byte for byte, and our streamed DER decrypts there."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from test_openssl_cms_interop import KEY_TRANSPORT, RECEIVER, run, tool

from meldingstjener.security import cms_enveloped
from meldingstjener.security.devpki import DevParty, DevPki

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver(interop_pki: DevPki) -> DevParty:
    return interop_pki.parties[RECEIVER]


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def reset(self) -> None:
        self.data.clear()


@pytest.mark.parametrize("transport", ["pkcs1", "oaep-sha256"])
@pytest.mark.parametrize("cipher", ["aes256", "des3"])
def test_openssl_streamed_ber_decrypts_here_in_pieces(
    receiver: DevParty, interop_pki: DevPki, tmp_path: Path, cipher: str, transport: str
) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * MiB + 11))
    encrypted = tmp_path / "enc.ber"
    done = run(
        [
            tool("openssl"),
            "cms",
            "-encrypt",
            "-binary",
            "-stream",
            f"-{cipher}",
            "-in",
            str(plain),
            "-outform",
            "DER",
            "-out",
            str(encrypted),
            "-recip",
            str(interop_pki.directory / f"{RECEIVER}-enc.pem"),
            *KEY_TRANSPORT[transport],
        ]
    )
    assert done.returncode == 0, done.stderr
    assert encrypted.read_bytes()[:2] == b"\x30\x80"  # indefinite length: BER as streamed
    sink = Sink()
    cms_enveloped.decrypt_to(
        lambda: encrypted.open("rb"),
        sink,
        [(receiver.encryption.key, receiver.encryption.certificate)],
    )
    assert bytes(sink.data) == plain.read_bytes()


def test_our_streamed_encryption_decrypts_in_openssl(
    receiver: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 3)
    encrypted = tmp_path / "enc.der"
    with encrypted.open("wb") as sink:
        cms_enveloped.encrypt_to(io.BytesIO(data), len(data), receiver.encryption.certificate, sink)
    d = interop_pki.directory
    out = tmp_path / "out"
    done = run(
        [
            tool("openssl"),
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(encrypted),
            "-recip",
            str(d / f"{RECEIVER}-enc.pem"),
            "-inkey",
            str(d / f"{RECEIVER}-enc.key"),
            "-out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == data
