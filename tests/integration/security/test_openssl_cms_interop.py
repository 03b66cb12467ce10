"""CMS interop with `openssl cms`: their EnvelopedData/SignedData into our code and back."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from meldingstjener.security import cms, cms_enveloped
from meldingstjener.security.devpki import DevParty, DevPki

SENDER = "8141253"  # HER-ids the session PKI in conftest.py issues for
RECEIVER = "79768"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not on PATH")
    return path


def run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, check=False)


PAYLOAD = b"<MsgHead>\r\n  \xc3\xa6\xc3\xb8\xc3\xa5 binary \x00\x01\xff</MsgHead>\n"

KEY_TRANSPORT = {
    "pkcs1": [],
    "oaep-sha1": ["-keyopt", "rsa_padding_mode:oaep"],
    "oaep-sha256": ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"],
}


@pytest.fixture(scope="module")
def receiver(interop_pki: DevPki) -> DevParty:
    return interop_pki.parties[RECEIVER]


@pytest.fixture(scope="module")
def sender(interop_pki: DevPki) -> DevParty:
    return interop_pki.parties[SENDER]


def _openssl_encrypt(tmp_path: Path, cert: Path, cipher: str, transport: str, data: bytes) -> bytes:
    (tmp_path / "plain").write_bytes(data)
    out = tmp_path / "enc.der"
    done = run(
        [
            tool("openssl"),
            "cms",
            "-encrypt",
            "-binary",
            f"-{cipher}",
            "-in",
            str(tmp_path / "plain"),
            "-outform",
            "DER",
            "-out",
            str(out),
            "-recip",
            str(cert),
            *KEY_TRANSPORT[transport],
        ]
    )
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


@pytest.mark.parametrize("transport", sorted(KEY_TRANSPORT))
@pytest.mark.parametrize("cipher", ["aes256", "aes128", "aes192", "des3"])
def test_openssl_encrypted_decrypts_here(
    receiver: DevParty, interop_pki: DevPki, tmp_path: Path, cipher: str, transport: str
) -> None:
    cert = interop_pki.directory / f"{RECEIVER}-enc.pem"
    der = _openssl_encrypt(tmp_path, cert, cipher, transport, PAYLOAD)
    candidates = [(receiver.encryption.key, receiver.encryption.certificate)]
    assert cms.decrypt(der, candidates) == PAYLOAD


def _encrypted_keys_printed(der: Path) -> list[bytes]:
    """Each RecipientInfo's encryptedKey as `openssl cms -cmsout -print` shows it."""
    done = run([tool("openssl"), "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(der)])
    assert done.returncode == 0, done.stderr
    keys: list[bytes] = []
    current: list[str] | None = None
    for line in done.stdout.decode().splitlines():
        if line.strip() == "encryptedKey:":
            current = []
            keys.append(b"")
            continue
        dump = re.match(r"\s+[0-9a-f]{4} - ((?:[0-9a-f]{2}[ -]){0,15}[0-9a-f]{2})", line)
        if current is not None and dump:
            keys[-1] += bytes.fromhex(dump.group(1).replace("-", " "))
        else:
            current = None
    return keys


def test_the_wrapped_keys_for_us_are_named_by_their_digest(
    receiver: DevParty, sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_bytes(PAYLOAD)
    out = tmp_path / "enc.der"
    d = interop_pki.directory
    done = run(
        [
            tool("openssl"),
            "cms",
            "-encrypt",
            "-binary",
            "-aes256",
            "-in",
            str(tmp_path / "plain"),
            "-outform",
            "DER",
            "-out",
            str(out),
            str(d / f"{SENDER}-enc.pem"),
            str(d / f"{RECEIVER}-enc.pem"),
        ]
    )
    assert done.returncode == 0, done.stderr
    printed = _encrypted_keys_printed(out)
    assert len(printed) == 2 and all(len(key) == 256 for key in printed)
    ours = cms_enveloped.wrapped_keys(
        lambda: out.open("rb"), [(receiver.encryption.key, receiver.encryption.certificate)]
    )
    assert len(ours) == 1  # the receiver's key only, not the sender's
    assert ours <= {hashlib.sha256(key).hexdigest() for key in printed}
    theirs = cms_enveloped.wrapped_keys(
        lambda: out.open("rb"), [(sender.encryption.key, sender.encryption.certificate)]
    )
    assert len(theirs) == 1 and theirs != ours
    assert cms_enveloped.wrapped_keys(lambda: out.open("rb"), []) == frozenset()


def test_des3_refused_by_policy(receiver: DevParty, interop_pki: DevPki, tmp_path: Path) -> None:
    der = _openssl_encrypt(
        tmp_path, interop_pki.directory / f"{RECEIVER}-enc.pem", "des3", "pkcs1", PAYLOAD
    )
    with pytest.raises(cms.CmsError) as caught:
        cms.decrypt(
            der, [(receiver.encryption.key, receiver.encryption.certificate)], allow_3des=False
        )
    assert caught.value.code == "weak-algorithm-refused"


def test_openssl_gzipped_payload_is_detected(
    receiver: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    import gzip

    der = _openssl_encrypt(
        tmp_path,
        interop_pki.directory / f"{RECEIVER}-enc.pem",
        "aes256",
        "pkcs1",
        gzip.compress(PAYLOAD),
    )
    assert cms.decrypt(der, [(receiver.encryption.key, receiver.encryption.certificate)]) == PAYLOAD


def test_our_encryption_decrypts_in_openssl(
    receiver: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    (tmp_path / "enc.der").write_bytes(cms.encrypt(PAYLOAD, receiver.encryption.certificate))
    d = interop_pki.directory
    done = run(
        [
            tool("openssl"),
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "enc.der"),
            "-recip",
            str(d / f"{RECEIVER}-enc.pem"),
            "-inkey",
            str(d / f"{RECEIVER}-enc.key"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAYLOAD
    info = run(
        [
            tool("openssl"),
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "enc.der"),
        ]
    )
    assert b"aes-256-cbc" in info.stdout
    assert b"issuerAndSerialNumber" in info.stdout


def test_our_signature_verifies_in_openssl(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    (tmp_path / "signed.der").write_bytes(
        cms.sign(PAYLOAD, sender.signing.key, sender.signing.certificate)
    )
    done = run(
        [
            tool("openssl"),
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "signed.der"),
            "-CAfile",
            str(interop_pki.directory / "ca.pem"),
            "-purpose",
            "any",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == PAYLOAD


@pytest.mark.parametrize(
    "extra", [[], ["-md", "sha1"], ["-keyopt", "rsa_padding_mode:pss"], ["-noattr"]]
)
def test_openssl_signature_verifies_here(
    sender: DevParty, interop_pki: DevPki, tmp_path: Path, extra: list[str]
) -> None:
    d = interop_pki.directory
    (tmp_path / "plain").write_bytes(PAYLOAD)
    done = run(
        [
            tool("openssl"),
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-in",
            str(tmp_path / "plain"),
            "-signer",
            str(d / f"{SENDER}-sign.pem"),
            "-inkey",
            str(d / f"{SENDER}-sign.key"),
            "-outform",
            "DER",
            "-out",
            str(tmp_path / "signed.der"),
            *extra,
        ]
    )
    assert done.returncode == 0, done.stderr
    der = (tmp_path / "signed.der").read_bytes()
    verified = cms.verify(der, expected_signer=sender.signing.certificate)
    assert verified.content == PAYLOAD
    tampered = der.replace(b"binary", b"BINARY")
    with pytest.raises(cms.CmsError):
        cms.verify(tampered, expected_signer=sender.signing.certificate)


def test_openssl_sign_then_encrypt_decrypts_and_verifies_here(
    sender: DevParty, receiver: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    d = interop_pki.directory
    (tmp_path / "plain").write_bytes(PAYLOAD)
    signed = run(
        [
            tool("openssl"),
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-in",
            str(tmp_path / "plain"),
            "-signer",
            str(d / f"{SENDER}-sign.pem"),
            "-inkey",
            str(d / f"{SENDER}-sign.key"),
            "-outform",
            "DER",
            "-out",
            str(tmp_path / "signed.der"),
        ]
    )
    assert signed.returncode == 0, signed.stderr
    der = _openssl_encrypt(
        tmp_path,
        d / f"{RECEIVER}-enc.pem",
        "aes256",
        "pkcs1",
        (tmp_path / "signed.der").read_bytes(),
    )
    verified = cms.decrypt_and_verify(
        der,
        [(receiver.encryption.key, receiver.encryption.certificate)],
        expected_signer=sender.signing.certificate,
    )
    assert verified.content == PAYLOAD


def test_our_sign_then_encrypt_opens_in_openssl(
    sender: DevParty, receiver: DevParty, interop_pki: DevPki, tmp_path: Path
) -> None:
    d = interop_pki.directory
    der = cms.sign_and_encrypt(
        PAYLOAD, sender.signing.key, sender.signing.certificate, receiver.encryption.certificate
    )
    (tmp_path / "both.der").write_bytes(der)
    decrypted = run(
        [
            tool("openssl"),
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "both.der"),
            "-recip",
            str(d / f"{RECEIVER}-enc.pem"),
            "-inkey",
            str(d / f"{RECEIVER}-enc.key"),
            "-out",
            str(tmp_path / "signed.der"),
        ]
    )
    assert decrypted.returncode == 0, decrypted.stderr
    verified = run(
        [
            tool("openssl"),
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(tmp_path / "signed.der"),
            "-CAfile",
            str(d / "ca.pem"),
            "-purpose",
            "any",
        ]
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == PAYLOAD
