"""A real OCSP responder (and CRL server) of a development CA on 127.0.0.1, for the revocation
tests (unit and integration alike): what it answers the test sets.

``mode``: ``good`` answers, ``garbage`` (200 with what is no OCSP answer or CRL: the CA's web
server, not its responder), or ``trickle`` (the good answer, its header lines sent one every 50 ms
first: a second in all). ``away``: serials of certificates it answers garbage about whatever the
mode (one partner's certificate unchecked, the rest answered). ``unknown``: serials it answers
OCSP status ``unknown`` about (the CA does not know the certificate). ``asked`` counts the
requests per path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from meldingstjener.security.devpki import DevPki, issue_certificate, party_name

GARBAGE = b"<html>the CA's web server, not its responder</html>"


class Responder:
    """The development CA's OCSP responder and CRL server (see the module's text). ``url`` is
    its base; ``ocsp_url`` the responder's address its certificates name by default."""

    def __init__(self, pki: DevPki) -> None:
        self.pki = pki
        self.mode = "good"
        self.away: set[int] = set()
        self.unknown: set[int] = set()
        self.asked: Counter[str] = Counter()
        self.issued: dict[int, x509.Certificate] = {}
        responder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self._answer(responder.answer(self.path, body))

            def do_GET(self) -> None:
                self._answer(responder.answer(self.path, b""))

            def _answer(self, data: bytes) -> None:
                if responder.mode == "trickle":
                    self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                    for number in range(20):
                        self.wfile.flush()
                        time.sleep(0.05)
                        self.wfile.write(f"X-Slow-{number}: yes\r\n".encode())
                    self.wfile.write(f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.ocsp_url = f"{self.url}/ocsp"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def answer(self, path: str, body: bytes) -> bytes:
        self.asked[path] += 1
        if self.mode == "garbage":
            return GARBAGE
        if path.endswith(".crl"):
            return self.pki.crl_path.read_bytes()
        request = ocsp.load_der_ocsp_request(body)
        if request.serial_number in self.away:
            return GARBAGE
        status = (
            ocsp.OCSPCertStatus.UNKNOWN
            if request.serial_number in self.unknown
            else ocsp.OCSPCertStatus.GOOD
        )
        now = datetime.now(UTC)
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=self.issued[request.serial_number],
                issuer=self.pki.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=status,
                this_update=now - timedelta(minutes=1),
                next_update=now + timedelta(hours=1),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.pki.ca_certificate)
            .sign(self.pki.ca.key, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    def certificate(
        self,
        *,
        ocsp_path: str | None = "/ocsp",
        crl_path: str | None = None,
        her_id: str | None = None,
    ) -> x509.Certificate:
        """A new signing certificate for the key of party ``her_id`` of the PKI (default: its
        first), naming the responder at ``ocsp_path`` and the CRL at ``crl_path`` (None:
        none)."""
        now = datetime.now(UTC)
        party = self.pki.parties[her_id or next(iter(self.pki.parties))]
        certificate = issue_certificate(
            self.pki.ca,
            party.signing.key.public_key(),
            party_name("TEST AS", "974760673"),
            party.signing.certificate.extensions.get_extension_for_class(x509.KeyUsage).value,
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=30),
            ocsp_url=f"{self.url}{ocsp_path}" if ocsp_path else None,
            crl_url=f"{self.url}{crl_path}" if crl_path else None,
        )
        self.issued[certificate.serial_number] = certificate
        return certificate

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
