"""A CA's revocation services away or misbehaving: the timeout is a deadline for the whole
request (a responder trickling its answer, or a name server that does not answer, does not hold
a check for as long as it likes), and a source that failed is not asked again for a minute (an
outage does not cost every check the whole timeout again). A real OCSP responder and CRL server
on 127.0.0.1, named by an address or by a host name."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ocsp_responder import Responder

from held_names import HeldResolver, self_signed_certificate
from meldingstjener import netresolve
from meldingstjener.integration import webhook_targets
from meldingstjener.security.devpki import init_pki
from meldingstjener.security.revocation import FAILURE_MEMORY
from meldingstjener.security.validation import CertificateValidator, Reason


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


def test_only_a_source_that_failed_is_an_outage_that_may_pass(responder: Responder) -> None:
    # hard policy: a certificate whose status is unknown because of itself (it names no
    # address, its responder does not know it) is refused, not held or answered 503 for ever
    validator = CertificateValidator([responder.pki.ca_certificate], revocation_policy="hard")
    nameless = validator.validate(responder.certificate(ocsp_path=None), usage="signing")
    assert nameless.reasons == [Reason.REVOCATION_UNKNOWN] and not nameless.ok
    assert not nameless.revocation_unknown_only
    assert [finding.outage for finding in nameless.revocation] == [False]
    stranger = responder.certificate()
    responder.unknown.add(stranger.serial_number)
    not_known = validator.validate(stranger, usage="signing")
    assert "does not know the certificate" in not_known.details[0]
    assert not not_known.revocation_unknown_only
    # the responder away: an outage, which passes
    away = responder.certificate()
    responder.away.add(away.serial_number)
    unreachable = validator.validate(away, usage="signing")
    assert unreachable.revocation_unknown_only
    assert [finding.outage for finding in unreachable.revocation] == [True]
    # ... and told so while its failure is remembered, without asking again
    assert validator.validate(away, usage="signing").revocation_unknown_only


def test_a_name_server_that_does_not_answer_is_given_up_on_at_the_timeout(
    responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # getaddrinfo takes no time-out: a resolver that hangs (its time-out times its attempts
    # times the name servers, half a minute) held the check, and the message being sent
    resolver = HeldResolver({"ca.held.test": "127.0.0.1"})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    responder.url = responder.url.replace("127.0.0.1", "ca.held.test")
    certificate = responder.certificate(crl_path="/ca.crl")  # two sources on one host
    anchors = [responder.pki.ca_certificate]
    answered = CertificateValidator(anchors, timeout=0.3, revocation_policy="hard")
    assert answered.validate(certificate, usage="signing").reasons == []
    resolver.hold()
    try:
        check = CertificateValidator(anchors, timeout=0.3, revocation_policy="hard").validate(
            certificate, usage="signing"
        )
        # ended by each source's deadline (0.3 s) while the look-up was still held, not at
        # the resolver's own end (HOLD_LIMIT, counted in ``expired``)
        assert resolver.expired == 0
    finally:
        resolver.release()
    assert check.reasons == [Reason.REVOCATION_UNKNOWN], check.details
    assert check.revocation_unknown_only  # an outage, which passes
    assert "ca.held.test was not resolved within 0.3 s" in check.details[0]
    # the OCSP request joined the CRL's look-up under way, no second one begun
    assert resolver.asked["ca.held.test"] == 2  # the answered check's, the held one


def test_webhook_hosts_left_hanging_do_not_take_a_cas_look_up(
    responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A webhook's host is an API client's choice: as many of its names left hanging as
    # netresolve lets be under way had a CA host's look-up, for a message being sent, refused
    # at once. The webhooks' look-ups are bounded apart from revocation's.
    hooks = {f"hook{number}.held.test": "127.0.0.1" for number in range(netresolve.MAX_PENDING)}
    held = HeldResolver(hooks)
    answering = HeldResolver({"ca.names.test": "127.0.0.1"})

    def resolver(host: str, *args: object) -> object:
        return (held if host in hooks else answering)(host, *args)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    held.hold()
    try:
        for host in hooks:
            with pytest.raises(netresolve.ResolveTimeout, match=r"within 0\.01 s"):
                webhook_targets.resolve(host, 443, timeout=0.01)
        with pytest.raises(netresolve.ResolveTimeout, match="under way already"):
            webhook_targets.resolve("one-more.held.test", 443, timeout=5)  # the bound holds
        responder.url = responder.url.replace("127.0.0.1", "ca.names.test")
        validator = CertificateValidator(
            [responder.pki.ca_certificate], timeout=5.0, revocation_policy="hard"
        )
        check = validator.validate(responder.certificate(), usage="signing")
    finally:
        held.release()
        for thread in threading.enumerate():  # the look-ups left waiting end with the release
            if thread.name == "netresolve":
                thread.join(5)
    assert check.reasons == [], check.details
    assert answering.asked == {"ca.names.test": 1}


def test_a_responder_named_by_its_host_name_is_reached(responder: Responder) -> None:
    # "localhost" is looked up (in a thread of its own), and its addresses tried in turn: ::1
    # may come first, where nothing listens
    responder.url = responder.url.replace("127.0.0.1", "localhost")
    validator = CertificateValidator([responder.pki.ca_certificate], revocation_policy="hard")
    assert validator.validate(responder.certificate(), usage="signing").reasons == []
    assert responder.asked == {"/ocsp": 1}


def test_a_responder_over_tls_is_verified_for_the_name_in_the_url(
    responder: Responder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The connection is made to the address the name resolved to: TLS must still name the
    # host (SNI) and verify the responder's certificate for it, not for the address
    certificate_file, key_file = self_signed_certificate(tmp_path, "ca.tls.test")
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate_file))  # the one CA trusted
    names = {"ca.tls.test": "127.0.0.1", "other.tls.test": "127.0.0.1"}
    monkeypatch.setattr(socket, "getaddrinfo", HeldResolver(names))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate_file, key_file)
    server_names: list[str | None] = []
    tls.sni_callback = lambda _socket, server_name, _context: server_names.append(server_name)
    responder.httpd.socket = tls.wrap_socket(responder.httpd.socket, server_side=True)
    port = responder.httpd.server_address[1]
    anchors = [responder.pki.ca_certificate]
    responder.url = f"https://ca.tls.test:{port}"
    validator = CertificateValidator(anchors, revocation_policy="hard")
    assert validator.validate(responder.certificate(), usage="signing").reasons == []
    assert server_names == ["ca.tls.test"]
    responder.url = f"https://other.tls.test:{port}"  # the same server, by a name it has not
    check = CertificateValidator(anchors, revocation_policy="hard").validate(
        responder.certificate(), usage="signing"
    )
    assert check.reasons == [Reason.REVOCATION_UNKNOWN]
    assert "CERTIFICATE_VERIFY_FAILED" in check.details[0], check.details
    assert server_names == ["ca.tls.test", "other.tls.test"]
