"""XML signatures made and checked by implementations we did not write: python-xmlsec (libxmlsec1
in-process) and the xmlsec1 command line tool. The interop tests hold ours against both."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

xmlsec = pytest.importorskip("xmlsec")

DS = "http://www.w3.org/2000/09/xmldsig#"

# libxmlsec's I/O callbacks are process-global: cid: URIs resolve to what is served now.
_served: dict[str, bytes] = {}
_installed = False


def _open(name: bytes) -> io.BytesIO | None:
    text = name.decode("utf-8", "replace")
    data = _served.get(text.removeprefix("cid:").strip("<>")) if text.startswith("cid:") else None
    return io.BytesIO(data) if data is not None else None


def _read(context: io.BytesIO, buffer: memoryview) -> int:
    return context.readinto(buffer)


def _close(context: io.BytesIO) -> None:
    context.close()


@contextmanager
def serving(attachments: Mapping[str, bytes]) -> Iterator[None]:
    """Let libxmlsec resolve ``cid:`` references to ``attachments`` (and nothing else)."""
    global _installed
    if not _installed:
        xmlsec.cleanup_callbacks()
        # Claim every URI, so libxmlsec never falls back to its file or network loaders.
        xmlsec.register_callbacks(lambda _name: True, _open, _read, _close)
        _installed = True
    _served.clear()
    _served.update({cid.strip("<>"): data for cid, data in attachments.items()})
    try:
        yield
    finally:
        _served.clear()


def signature_of(root: etree._Element) -> etree._Element:
    node = next(root.iter(f"{{{DS}}}Signature"), None)
    assert node is not None, "no ds:Signature in the document"
    return node


def as_template(signed: bytes) -> etree._Element:
    """A signed document with its DigestValues and SignatureValue emptied: the template
    xmlsec fills in. Parsed without our hardening so that nothing is normalised away."""
    root = etree.fromstring(signed)
    for name in ("DigestValue", "SignatureValue"):
        for node in signature_of(root).iter(f"{{{DS}}}{name}"):
            node.text = None
    return root


def xmlsec_sign(
    root: etree._Element, key: rsa.RSAPrivateKey, attachments: Mapping[str, bytes] = {}
) -> None:
    """Fill in the signature template in ``root`` with python-xmlsec."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatPem)
    with serving(attachments):
        context.sign(signature_of(root))


def xmlsec_verifies(
    data: bytes, certificate: x509.Certificate, attachments: Mapping[str, bytes] = {}
) -> bool:
    """python-xmlsec's verdict on the (serialised) signed document."""
    root = etree.fromstring(data)
    context = xmlsec.SignatureContext()
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    context.key = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatCertPem)
    with serving(attachments):
        try:
            context.verify(signature_of(root))
        except xmlsec.Error:
            return False
    return True


def xmlsec1() -> str:
    path = shutil.which("xmlsec1")
    if path is None:
        pytest.skip("xmlsec1 is not on PATH (scripts/install-system-deps.sh installs it)")
    return path


def _url_maps(attachments: Mapping[str, bytes], directory: Path) -> list[str]:
    args = []
    for index, (cid, data) in enumerate(attachments.items()):
        path = directory / f"attachment-{index}"
        path.write_bytes(data)
        args += [f"--url-map:cid:{cid.strip('<>')}", str(path)]
    return args


def xmlsec1_verifies(
    data: bytes,
    directory: Path,
    *,
    trusted_pem: Path | None = None,
    attachments: Mapping[str, bytes] = {},
) -> bool:
    """The xmlsec1 tool's verdict. With ``trusted_pem`` the KeyInfo certificate must chain to
    it; without, the certificate is taken as it is (``--insecure``), for real samples whose
    CA we do not have."""
    document = directory / "to-verify.xml"
    document.write_bytes(data)
    trust = ["--trusted-pem", str(trusted_pem)] if trusted_pem else ["--insecure"]
    done = subprocess.run(
        [xmlsec1(), "--verify", *trust, *_url_maps(attachments, directory), str(document)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def xmlsec1_sign(
    template: bytes,
    directory: Path,
    key_pem: Path,
    cert_pem: Path,
    attachments: Mapping[str, bytes] = {},
) -> bytes:
    """The template signed by the xmlsec1 tool."""
    (directory / "template.xml").write_bytes(template)
    done = subprocess.run(
        [
            xmlsec1(),
            "--sign",
            "--privkey-pem",
            f"{key_pem},{cert_pem}",
            *_url_maps(attachments, directory),
            "--output",
            str(directory / "signed.xml"),
            str(directory / "template.xml"),
        ],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return (directory / "signed.xml").read_bytes()
