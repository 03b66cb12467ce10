"""A CA's revocation services away or misbehaving: the timeout is a deadline for the whole
request (a responder trickling its answer does not hold a check for as long as it likes), and a
source that failed is not asked again for a minute (an outage does not cost every check the
whole timeout again). A real OCSP responder and CRL server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from meldingstjener.security.devpki import DevPki, init_pki, issue_certificate, party_name
from meldingstjener.security.revocation import FAILURE_MEMORY
from meldingstjener.security.validation import CertificateValidator, Reason


class Responder:
    """An OCSP responder (and CRL server) of the test CA whose behaviour the test sets:
    ``good`` answers, ``garbage`` (200 with what is no OCSP answer or CRL), or ``trickle``
    (the good answer, its header lines sent one every 50 ms first: a second in all)."""

    def __init__(self, pki: DevPki) -> None:
        self.pki = pki
        self.mode = "good"
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
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def answer(self, path: str, body: bytes) -> bytes:
        self.asked[path] += 1
        if self.mode == "garbage":
            return b"<html>not what was asked for</html>"
        if path.endswith(".crl"):
            return self.pki.crl_path.read_bytes()
        request = ocsp.load_der_ocsp_request(body)
        now = datetime.now(UTC)
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=self.issued[request.serial_number],
                issuer=self.pki.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
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
        self, *, ocsp_path: str | None = "/ocsp", crl_path: str | None = None
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        party = self.pki.parties["1001"]
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


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    served = Responder(init_pki(tmp_path / "pki", ["1001"]))
    yield served
    served.close()


def test_a_responder_that_trickles_its_answer_is_given_up_on_at_the_timeout(
    responder: Responder,
) -> None:
    # each line comes well within the timeout, the whole answer (a second) long after it: a
    # timeout per read would wait for it all, and take it
    certificate = responder.certificate()
    responder.mode = "trickle"
    validator = CertificateValidator(
        [responder.pki.ca_certificate], timeout=0.3, revocation_policy="hard"
    )
    check = validator.validate(certificate, usage="signing")
    assert check.reasons == [Reason.REVOCATION_UNKNOWN], check.details
    assert "TimeoutError" in check.details[0]
    # the same answer at its own pace is taken
    responder.mode = "good"
    patient = CertificateValidator([responder.pki.ca_certificate], timeout=5.0)
    assert patient.validate(certificate, usage="signing").reasons == []


def test_a_source_that_failed_is_not_asked_again_for_a_minute(responder: Responder) -> None:
    # a certificate naming both a CRL and an OCSP responder: every check during an outage
    # would otherwise wait for each of them again
    certificate = responder.certificate(crl_path="/ca.crl")
    responder.mode = "garbage"
    now = [datetime.now(UTC)]
    validator = CertificateValidator(
        [responder.pki.ca_certificate], timeout=2.0, clock=lambda: now[0]
    )
    first = validator.validate(certificate, usage="signing")
    assert first.reasons == [Reason.REVOCATION_UNKNOWN]
    assert first.ok  # soft: accepted, unchecked
    for _ in range(3):
        again = validator.validate(certificate, usage="signing")
        assert again.details == first.details  # the failure's own words, told again
    assert responder.asked == {"/ca.crl": 1, "/ocsp": 1}
    # a minute on, the sources are asked again, and their answers taken
    responder.mode = "good"
    now[0] += FAILURE_MEMORY + timedelta(seconds=1)
    assert validator.validate(certificate, usage="signing").reasons == []
    assert responder.asked["/ca.crl"] == 2
