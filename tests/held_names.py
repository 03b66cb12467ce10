"""Stand-ins for the network's edges that tests of outgoing calls need: a name resolver that
answers chosen names, and can be made to hang like a name server that does not answer
(:class:`HeldResolver`), and a TLS certificate for a name (:func:`self_signed_certificate`)."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# How long a held look-up waits for its release at most before it answers "not found": code
# that waits for the resolver whatever its deadline makes its test fail after this, not hang.
HOLD_LIMIT = 10.0


class HeldResolver:
    """``socket.getaddrinfo`` for ``names`` (name -> the address it stands for), other names
    resolved as the system does. After :meth:`hold` a look-up of one of ``names`` waits until
    :meth:`release` (at most :data:`HOLD_LIMIT`, then a temporary failure, as a resolver's own
    time-out ends; ``expired`` counts those). ``asked`` counts the look-ups of each name."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.asked: Counter[str] = Counter()
        self.expired = 0
        self._held = False
        self._released = threading.Event()
        self._real = socket.getaddrinfo

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._released.set()

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in self.names:
            self.asked[host] += 1
            if self._held and not self._released.wait(HOLD_LIMIT):
                self.expired += 1
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            host = self.names[host]
        return self._real(host, port, *args, **kwargs)


def self_signed_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed CA certificate for ``host`` (its only name) and its key, written as PEM to
    ``directory``: (certificate file, key file). Trusted alone by a client given the file as
    ``SSL_CERT_FILE``; a server loads both."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_file, key_file = directory / f"{host}.pem", directory / f"{host}.key"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_file, key_file
