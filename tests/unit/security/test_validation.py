"""Certificate validation against a development CA, with its CRL and an OCSP responder served
over real HTTP from a local server thread."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from meldingstjener.security.devpki import (
    DevPki,
    init_pki,
    issue_certificate,
    party_name,
    revoke,
)
from meldingstjener.security.validation import CertificateValidator, Reason

Route = Callable[[bytes], tuple[int, bytes]]


class LocalServer:
    """A stdlib HTTP server on 127.0.0.1 whose routes the tests set."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bytes) -> None:
                server.hits[self.path] += 1
                route = server.routes.get(self.path)
                status, data = route(body) if route else (404, b"")
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def ca(server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = init_pki(tmp_path_factory.mktemp("vpki"), ["1001"], crl_url=f"{server.url}/ca.crl")
    server.routes["/ca.crl"] = lambda _: (200, pki.crl_path.read_bytes())
    return pki


def _cert(
    pki: DevPki,
    *,
    role: str = "sign",
    crl_url: str | None = None,
    ocsp_url: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    party = pki.parties["1001"]
    key_usage = (party.signing if role == "sign" else party.encryption).certificate.extensions
    return issue_certificate(
        pki.ca,
        party.signing.key.public_key(),
        party_name("TEST AS", "974760673"),
        key_usage.get_extension_for_class(x509.KeyUsage).value,
        not_before=not_before or now - timedelta(days=1),
        not_after=not_after or now + timedelta(days=30),
        crl_url=crl_url,
        ocsp_url=ocsp_url,
    )


def _validator(pki: DevPki, **options: object) -> CertificateValidator:
    return CertificateValidator([pki.ca_certificate], timeout=2.0, **options)  # type: ignore[arg-type]


def test_valid_certificate_with_crl_from_its_distribution_point(
    ca: DevPki, server: LocalServer
) -> None:
    check = _validator(ca).validate(ca.parties["1001"].signing.certificate, usage="signing")
    assert check.ok, check.details
    assert check.reasons == []
    assert check.chain[-1] == ca.ca_certificate


def test_crl_is_cached(ca: DevPki, server: LocalServer) -> None:
    validator = _validator(ca)
    before = server.hits["/ca.crl"]
    for _ in range(3):
        assert validator.validate(ca.parties["1001"].encryption.certificate, usage="encryption").ok
    assert server.hits["/ca.crl"] - before == 1


def test_revoked_certificate(tmp_path: Path, server: LocalServer) -> None:
    pki = init_pki(tmp_path, ["2002"], crl_url=f"{server.url}/revoking.crl")
    server.routes["/revoking.crl"] = lambda _: (200, pki.crl_path.read_bytes())
    cert = pki.parties["2002"].signing.certificate
    assert _validator(pki).validate(cert, usage="signing").ok
    revoke(tmp_path, tmp_path / "2002-sign.pem")
    check = _validator(pki).validate(cert, usage="signing")
    assert not check.ok
    assert check.reasons == [Reason.REVOKED]
    assert "revoked on" in check.details[0]
    # Checked at a time before the revocation, it was still good.
    earlier = datetime.now(UTC) - timedelta(minutes=30)
    assert _validator(pki).validate(cert, usage="signing", at=earlier).ok


def test_configured_crl_without_fetching(tmp_path: Path) -> None:
    pki = init_pki(tmp_path, ["3003"])
    revoke(tmp_path, pki.parties["3003"].encryption.certificate)
    validator = _validator(pki, crls=[pki.crl()], fetch_crls=False)
    assert validator.validate(pki.parties["3003"].signing.certificate, usage="signing").ok
    check = validator.validate(pki.parties["3003"].encryption.certificate, usage="encryption")
    assert check.reasons == [Reason.REVOKED]


def test_a_newer_crl_from_the_distribution_point_outranks_a_configured_one(
    tmp_path: Path, server: LocalServer
) -> None:
    pki = init_pki(tmp_path, ["3004"], crl_url=f"{server.url}/newer.crl")
    configured = pki.crl()  # still current, from before the revocation
    cert = pki.parties["3004"].signing.certificate
    revoke(tmp_path, cert)
    server.routes["/newer.crl"] = lambda _: (200, pki.crl_path.read_bytes())
    check = _validator(pki, crls=[configured]).validate(cert, usage="signing")
    assert check.reasons == [Reason.REVOKED]


def _crl(
    pki: DevPki, *extensions: x509.ExtensionType, revoked: int | None = None
) -> x509.CertificateRevocationList:
    """A CRL of the development CA with ``extensions``, listing ``revoked`` if given."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca_certificate.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=True)
    if revoked is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked)
            .revocation_date(now - timedelta(minutes=10))
            .build()
        )
    return builder.sign(pki.ca.key, hashes.SHA256())


def _point(**narrowed: object) -> x509.IssuingDistributionPoint:
    given: dict[str, object] = {
        "full_name": None,
        "relative_name": None,
        "only_contains_user_certs": False,
        "only_contains_ca_certs": False,
        "only_some_reasons": None,
        "indirect_crl": False,
        "only_contains_attribute_certs": False,
    }
    given.update(narrowed)
    return x509.IssuingDistributionPoint(**given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "scope",
    [
        x509.DeltaCRLIndicator(1),
        _point(only_contains_ca_certs=True),
        _point(only_some_reasons=frozenset({x509.ReasonFlags.key_compromise})),
        _point(full_name=[x509.UniformResourceIdentifier("http://example.invalid/other.crl")]),
    ],
    ids=["delta", "ca-only", "some-reasons", "another-point"],
)
def test_a_crl_whose_scope_leaves_the_certificate_out_proves_nothing(
    ca: DevPki, server: LocalServer, scope: x509.ExtensionType
) -> None:
    server.routes["/scoped.crl"] = lambda _: (
        200,
        _crl(ca, scope).public_bytes(serialization.Encoding.DER),
    )
    cert = _cert(ca, crl_url=f"{server.url}/scoped.crl")
    check = _validator(ca, revocation_policy="hard").validate(cert, usage="signing")
    assert check.reasons == [Reason.REVOCATION_UNKNOWN]
    assert "not used" in check.details[0]


def test_a_crl_of_end_entity_certificates_proves_nothing_of_a_ca(ca: DevPki) -> None:
    from meldingstjener.security.revocation import RevocationChecker, RevocationStatus

    crl = _crl(ca, _point(only_contains_user_certs=True))
    checker = RevocationChecker(crls=[crl], fetch_crls=False, ocsp_enabled=False)
    result = checker.check(ca.ca_certificate, ca.ca_certificate, datetime.now(UTC))
    assert result.status is RevocationStatus.UNKNOWN
    assert "end-entity certificates only" in result.detail


def test_a_crl_for_the_certificates_own_distribution_point_is_used(
    ca: DevPki, server: LocalServer
) -> None:
    url = f"{server.url}/partition.crl"
    cert = _cert(ca, crl_url=url)
    point = _point(full_name=[x509.UniformResourceIdentifier(url)], only_contains_user_certs=True)
    server.routes["/partition.crl"] = lambda _: (
        200,
        _crl(ca, point, revoked=cert.serial_number).public_bytes(serialization.Encoding.DER),
    )
    check = _validator(ca, revocation_policy="hard").validate(cert, usage="signing")
    assert check.reasons == [Reason.REVOKED]


def test_expired(ca: DevPki) -> None:
    now = datetime.now(UTC)
    cert = _cert(ca, not_before=now - timedelta(days=400), not_after=now - timedelta(days=1))
    check = _validator(ca, check_revocation=False).validate(cert, usage="signing")
    assert check.reasons == [Reason.EXPIRED]
    assert not check.ok
    assert check.details[0].startswith("the certificate has expired:")


def test_not_yet_valid(ca: DevPki) -> None:
    now = datetime.now(UTC)
    cert = _cert(ca, not_before=now + timedelta(days=2), not_after=now + timedelta(days=30))
    check = _validator(ca, check_revocation=False).validate(cert, usage="signing")
    assert check.reasons == [Reason.NOT_YET_VALID]


def test_wrong_usage(ca: DevPki) -> None:
    check = _validator(ca, check_revocation=False).validate(
        ca.parties["1001"].encryption.certificate, usage="signing"
    )
    assert check.reasons == [Reason.WRONG_USAGE]
    assert Reason.WRONG_USAGE.amqp_error_condition == "transport:invalid-certificate"


def test_untrusted(ca: DevPki, tmp_path: Path) -> None:
    stranger = init_pki(tmp_path, ["4004"])
    check = _validator(ca).validate(stranger.parties["4004"].signing.certificate, usage="signing")
    assert check.reasons == [Reason.UNTRUSTED]
    assert not check.ok


def test_revocation_unknown_soft_and_hard(ca: DevPki, server: LocalServer) -> None:
    cert = _cert(ca, crl_url=f"{server.url}/missing.crl")
    soft = _validator(ca).validate(cert, usage="signing")
    assert soft.reasons == [Reason.REVOCATION_UNKNOWN]
    assert soft.ok
    assert "missing.crl" in soft.details[0]
    hard = _validator(ca, revocation_policy="hard").validate(cert, usage="signing")
    assert hard.reasons == [Reason.REVOCATION_UNKNOWN]
    assert not hard.ok


def test_certificate_naming_no_revocation_source(ca: DevPki) -> None:
    check = _validator(ca, revocation_policy="hard").validate(_cert(ca), usage="signing")
    assert check.reasons == [Reason.REVOCATION_UNKNOWN]


def test_crl_fetch_times_out(ca: DevPki, server: LocalServer) -> None:
    def hang(_: bytes) -> tuple[int, bytes]:
        server.release.wait(30)  # released when the server fixture closes
        return 200, b""

    server.routes["/slow.crl"] = hang
    cert = _cert(ca, crl_url=f"{server.url}/slow.crl")
    check = CertificateValidator([ca.ca_certificate], timeout=0.3).validate(cert, usage="signing")
    assert check.reasons == [Reason.REVOCATION_UNKNOWN]
    assert "timed out" in check.details[0] or "Timeout" in check.details[0]


def test_crl_signed_by_someone_else_is_not_used(
    ca: DevPki, server: LocalServer, tmp_path: Path
) -> None:
    stranger = init_pki(tmp_path, [])
    server.routes["/forged.crl"] = lambda _: (200, stranger.crl_path.read_bytes())
    cert = _cert(ca, crl_url=f"{server.url}/forged.crl")
    check = _validator(ca).validate(cert, usage="signing")
    assert check.reasons == [Reason.REVOCATION_UNKNOWN]


def _ocsp_responder(pki: DevPki, issued: list[x509.Certificate], revoked: set[int]) -> Route:
    def answer(body: bytes) -> tuple[int, bytes]:
        request = ocsp.load_der_ocsp_request(body)
        now = datetime.now(UTC)
        cert = next(c for c in issued if c.serial_number == request.serial_number)
        status = (
            ocsp.OCSPCertStatus.REVOKED
            if cert.serial_number in revoked
            else (ocsp.OCSPCertStatus.GOOD)
        )
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=pki.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=status,
                this_update=now - timedelta(minutes=1),
                next_update=now + timedelta(hours=1),
                revocation_time=now - timedelta(minutes=10)
                if cert.serial_number in revoked
                else None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.ca_certificate)
            .sign(pki.ca.key, hashes.SHA256())
        )
        return 200, response.public_bytes(serialization.Encoding.DER)

    return answer


def test_ocsp_good_and_revoked(ca: DevPki, server: LocalServer) -> None:
    good = _cert(ca, ocsp_url=f"{server.url}/ocsp")
    bad = _cert(ca, ocsp_url=f"{server.url}/ocsp")
    server.routes["/ocsp"] = _ocsp_responder(ca, [good, bad], {bad.serial_number})
    validator = _validator(ca, revocation_policy="hard")
    assert validator.validate(good, usage="signing").ok
    revoked = validator.validate(bad, usage="signing")
    assert revoked.reasons == [Reason.REVOKED]
    assert "OCSP" in revoked.details[0]
    without_ocsp = _validator(ca, ocsp=False).validate(good, usage="signing")
    assert without_ocsp.reasons == [Reason.REVOCATION_UNKNOWN]


@pytest.mark.parametrize(
    ("age", "usable"), [(timedelta(minutes=1), True), (timedelta(days=2), False)]
)
def test_an_ocsp_answer_without_next_update_is_taken_for_a_day(
    ca: DevPki, server: LocalServer, age: timedelta, usable: bool
) -> None:
    cert = _cert(ca, ocsp_url=f"{server.url}/ocsp-open-ended")

    def answer(_body: bytes) -> tuple[int, bytes]:
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=ca.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=datetime.now(UTC) - age,
                next_update=None,
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.ca_certificate)
            .sign(ca.ca.key, hashes.SHA256())
        )
        return 200, response.public_bytes(serialization.Encoding.DER)

    server.routes["/ocsp-open-ended"] = answer
    check = _validator(ca, revocation_policy="hard").validate(cert, usage="signing")
    if usable:
        assert check.ok, check.details
    else:
        assert check.reasons == [Reason.REVOCATION_UNKNOWN]
        assert "no next update" in check.details[0]


def test_every_reason_has_plain_words() -> None:
    for reason in Reason:
        assert reason.message.startswith("the certificate") or reason.message.startswith("whether")
        assert reason.amqp_error_condition.startswith("transport:")


def test_a_revocation_stays_when_the_crl_cannot_be_fetched_anew(ca: DevPki) -> None:
    """Past the cached CRL's nextUpdate the distribution point is down: the last CRL still
    proves the revocation it lists; of a certificate it does not list it proves nothing."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    revoked = _cert(ca, crl_url="http://crl.invalid/ca.crl")
    other = _cert(ca, crl_url="http://crl.invalid/ca.crl")
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.ca_certificate.subject)
        .last_update(t0)
        .next_update(t0 + timedelta(hours=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked.serial_number)
            .revocation_date(t0 - timedelta(days=1))
            .build()
        )
        .sign(ca.ca.key, hashes.SHA256())
    )
    now = [t0]
    reachable = [True]

    def fetch(url: str, body: bytes | None, content_type: str | None, timeout: float) -> bytes:
        if not reachable[0]:
            raise OSError("connection timed out")
        return crl.public_bytes(serialization.Encoding.DER)

    validator = CertificateValidator(
        [ca.ca_certificate], fetcher=fetch, ocsp=False, clock=lambda: now[0]
    )
    assert validator.validate(revoked, usage="signing").reasons == [Reason.REVOKED]
    assert validator.validate(other, usage="signing").reasons == []
    now[0] = t0 + timedelta(hours=2)
    reachable[0] = False
    check = validator.validate(revoked, usage="signing")
    assert not check.ok
    assert check.reasons == [Reason.REVOKED]
    assert "revoked on" in check.details[0]
    assert validator.validate(other, usage="signing").reasons == [Reason.REVOCATION_UNKNOWN]


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "usable"),
    [
        (timedelta(days=-30), timedelta(days=30), True),
        (timedelta(days=-400), timedelta(days=-30), False),
        (timedelta(days=1), timedelta(days=30), False),
    ],
)
def test_a_delegated_ocsp_responder_must_be_valid_now(
    ca: DevPki, valid_from: timedelta, valid_to: timedelta, usable: bool
) -> None:
    """RFC 6960 4.2.2.2: an answer signed by a responder certificate out of its validity
    period is not used."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    cert = _cert(ca, ocsp_url="http://ocsp.invalid/")
    responder_key = ca.parties["1001"].encryption.key
    responder = issue_certificate(
        ca.ca,
        responder_key.public_key(),
        party_name("OCSP RESPONDER", "974760673"),
        x509.KeyUsage(True, False, False, False, False, False, False, False, False),
        not_before=t0 + valid_from,
        not_after=t0 + valid_to,
        extended_usage=[ExtendedKeyUsageOID.OCSP_SIGNING],
    )

    def fetch(url: str, body: bytes | None, content_type: str | None, timeout: float) -> bytes:
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=ca.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=t0 - timedelta(minutes=1),
                next_update=t0 + timedelta(hours=4),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
            .certificates([responder])
            .sign(responder_key, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    validator = CertificateValidator(
        [ca.ca_certificate], fetcher=fetch, fetch_crls=False, clock=lambda: t0
    )
    check = validator.validate(cert, usage="signing", at=t0)
    if usable:
        assert check.reasons == [], check.details
    else:
        assert check.reasons == [Reason.REVOCATION_UNKNOWN]
        assert "not signed by the issuer or a responder" in check.details[0]


def test_an_ocsp_answer_is_reused_until_its_next_update(ca: DevPki) -> None:
    """A busy server asks the responder once per certificate and nextUpdate, not per message;
    a revocation the responder learns of after that is seen once the answer is out of date."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    cert = _cert(ca, ocsp_url="http://ocsp.invalid/")
    asked: list[datetime] = []
    revoked = [False]
    now = [t0]

    def fetch(url: str, body: bytes | None, content_type: str | None, timeout: float) -> bytes:
        asked.append(now[0])
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=ca.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.REVOKED if revoked[0] else ocsp.OCSPCertStatus.GOOD,
                this_update=now[0] - timedelta(minutes=1),
                next_update=now[0] + timedelta(minutes=30),
                revocation_time=now[0] - timedelta(minutes=2) if revoked[0] else None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, ca.ca_certificate)
            .sign(ca.ca.key, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    validator = CertificateValidator(
        [ca.ca_certificate], fetcher=fetch, fetch_crls=False, clock=lambda: now[0]
    )
    for minutes in (0, 1, 20):
        now[0] = t0 + timedelta(minutes=minutes)
        assert validator.validate(cert, usage="signing", at=now[0]).reasons == []
    assert asked == [t0]
    revoked[0] = True
    now[0] = t0 + timedelta(minutes=31)
    check = validator.validate(cert, usage="signing", at=now[0])
    assert check.reasons == [Reason.REVOKED], check.details
    assert asked == [t0, now[0]]


def test_a_cached_ocsp_answer_whose_responder_expired_is_asked_anew(ca: DevPki) -> None:
    """The delegated responder's certificate expires (rotated) while its answer is cached: the
    responder is asked again at once, and the certificate is not left of unknown status."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    cert = _cert(ca, ocsp_url="http://ocsp.invalid/")
    responder_key = ca.parties["1001"].encryption.key
    now = [t0]
    asked: list[datetime] = []

    def responder(start: datetime) -> x509.Certificate:
        return issue_certificate(
            ca.ca,
            responder_key.public_key(),
            party_name("OCSP RESPONDER", "974760673"),
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            not_before=start - timedelta(days=1),
            not_after=start + timedelta(minutes=10),
            extended_usage=[ExtendedKeyUsageOID.OCSP_SIGNING],
        )

    def fetch(url: str, body: bytes | None, content_type: str | None, timeout: float) -> bytes:
        asked.append(now[0])
        signer = responder(now[0])  # the responder's current certificate
        response = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=ca.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=now[0] - timedelta(minutes=1),
                next_update=now[0] + timedelta(hours=4),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
            .certificates([signer])
            .sign(responder_key, hashes.SHA256())
        )
        return response.public_bytes(serialization.Encoding.DER)

    validator = CertificateValidator(
        [ca.ca_certificate], fetcher=fetch, fetch_crls=False, clock=lambda: now[0]
    )
    assert validator.validate(cert, usage="signing", at=now[0]).reasons == []
    now[0] = t0 + timedelta(minutes=11)
    check = validator.validate(cert, usage="signing", at=now[0])
    assert check.reasons == [], check.details
    assert asked == [t0, now[0]]
