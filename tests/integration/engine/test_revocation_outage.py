"""The CA's OCSP responder away (answering what is no OCSP answer) while messages go: under
``revocation_policy = "hard"`` a queued message is held, not given up, and a received one is
answered 503 for its sender to send again, not refused; under either policy a
``revocation-unknown`` alert says so, resolved by the responder's next answer. Both parties'
certificates name a real OCSP responder on 127.0.0.1 and no CRL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from engine_pair import Pair, make_pair
from fastapi.testclient import TestClient

from meldingstjener.api import app as api_app
from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, Site, dialog_note
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.security.devpki import DevPki, issue_certificate, load_pki

RETRY = timedelta(seconds=601)  # past the RetryInterval, the OCSP cache and a failure's memory


class Responder:
    """The development CA's OCSP responder: good answers, or (``broken``) a web page."""

    def __init__(self, pki: DevPki) -> None:
        self.pki = pki
        self.broken = False
        self.issued: dict[int, x509.Certificate] = {}
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                data = responder.answer(body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ocsp"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def answer(self, body: bytes) -> bytes:
        if self.broken:
            return b"<html>the CA's web server, not its responder</html>"
        request = ocsp.load_der_ocsp_request(body)
        now = datetime.now(UTC)
        return (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=self.issued[request.serial_number],
                issuer=self.pki.ca_certificate,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=now - timedelta(minutes=1),
                next_update=now + timedelta(days=1),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.pki.ca_certificate)
            .sign(self.pki.ca.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _with_ocsp(pki_dir: Path, responder: Responder, her_id: str, role: str) -> Path:
    """The party's certificate for ``role`` issued again for the same key, naming the
    responder (and no CRL); its file."""
    old = x509.load_pem_x509_certificate((pki_dir / f"{her_id}-{role}.pem").read_bytes())
    extended: list[x509.ObjectIdentifier] = []
    with contextlib.suppress(x509.ExtensionNotFound):  # a signing certificate has none
        extended = list(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    certificate = issue_certificate(
        responder.pki.ca,
        old.public_key(),  # type: ignore[arg-type]
        old.subject,
        old.extensions.get_extension_for_class(x509.KeyUsage).value,
        not_before=old.not_valid_before_utc,
        not_after=old.not_valid_after_utc,
        ocsp_url=responder.url,
        extended_usage=extended,
    )
    responder.issued[certificate.serial_number] = certificate
    path = pki_dir / f"{her_id}-{role}-ocsp.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _rebuilt(pair: Pair, site: Site) -> EngineContext:
    old = pair.gp if site is pair.gp_site else pair.hospital
    old.store.database.dispose()
    ctx = build_engine(load_settings(site.config_path), clock=pair.clock)
    ctx.transports = {"http": pair.network}
    pair.network.engines[site.endpoint] = ctx
    return ctx


@pytest.fixture(params=["hard"])
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ocsp_pair(tmp_path: Path, policy: str) -> Iterator[tuple[Pair, Responder]]:
    pair = make_pair(tmp_path, retry_interval_seconds=600, retries=3, persist_duration_seconds=3600)
    pki_dir = tmp_path / "pki"
    responder = Responder(load_pki(pki_dir))
    files = {
        (her_id, role): _with_ocsp(pki_dir, responder, her_id, role)
        for her_id in (GP_HER, HOSPITAL_HER)
        for role in ("sign", "enc")
    }
    for site in (pair.gp_site, pair.hospital_site):
        text = site.config_path.read_text()
        for (her_id, role), path in files.items():
            text = text.replace(f'"{pki_dir / f"{her_id}-{role}.pem"}"', f'"{path}"')
        text = text.replace(
            f'crl_files = ["{pki_dir / "crl.pem"}"]\n',
            f'revocation_policy = "{policy}"\nrevocation_timeout_seconds = 0.5\n'
            "revocation_cache_seconds = 60\n",
        )
        site.config_path.write_text(text)
    pair.gp = _rebuilt(pair, pair.gp_site)
    pair.hospital = _rebuilt(pair, pair.hospital_site)
    yield pair, responder
    responder.close()
    pair.gp.store.database.dispose()
    pair.hospital.store.database.dispose()


def _alerts(ctx: EngineContext, kind: AlertKind) -> list[tuple[bool, int, str]]:
    """(open, count, summary) of each alert of ``kind``."""
    with ctx.store.unit_of_work() as uow:
        return [
            (a.resolved_at is None, a.count, a.summary)
            for a in uow.alerts.list(open_only=False, kind=kind)
        ]


def _queued(pair: Pair) -> str:
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    return message_id


def test_hard_policy_holds_a_queued_message_while_revocation_cannot_be_found_out(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    message_id = _queued(pair)
    responder.broken = True
    pair.clock.advance(seconds=RETRY.total_seconds())
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "retrying", (row.last_error_code, row.last_error_text)
    assert row.attempts == 1  # held: not sent, and no attempt counted
    assert _alerts(pair.gp, AlertKind.NOT_DELIVERED) == []
    [(still_open, _, summary)] = _alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN)
    assert still_open and responder.url in summary and "hard" in summary
    with pair.gp.store.unit_of_work() as uow:
        held = [e for e in uow.events.for_message(message_id) if e.code == "revocation-unknown"]
    assert held and "checked again" in str(held[-1].detail)
    # the responder answers again: the message goes at its next check, the alert is resolved
    responder.broken = False
    pair.clock.advance(seconds=RETRY.total_seconds())
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    assert [still_open for still_open, _, _ in _alerts(pair.gp, AlertKind.REVOCATION_UNKNOWN)] == [
        False
    ]


def test_hard_policy_gives_a_held_message_up_when_persist_duration_runs_out(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    message_id = _queued(pair)
    responder.broken = True
    for _ in range(7):  # past the hour's PersistDuration
        pair.clock.advance(seconds=RETRY.total_seconds())
        pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert row.attempts == 1
    [(_, _, summary)] = _alerts(pair.gp, AlertKind.NOT_DELIVERED)
    assert "cannot be checked now" in summary and "PersistDuration ran out" in summary
    assert "could not be found out" in summary


@pytest.mark.parametrize("policy", ["soft"], indirect=True)
def test_soft_policy_accepts_unchecked_and_says_so_once(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    responder.broken = True
    first = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    second = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "y"), actor="t")
    pair.run()
    for message_id in (first, second):
        assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    for ctx in (pair.gp, pair.hospital):  # each checks the other's certificates
        [(still_open, count, summary)] = _alerts(ctx, AlertKind.REVOCATION_UNKNOWN)
        assert still_open and count > 1  # one alert, counted at each check
        assert "soft" in summary and "accepted meanwhile" in summary
    responder.broken = False
    pair.clock.advance(seconds=RETRY.total_seconds())
    submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "z"), actor="t")
    pair.run()
    for ctx in (pair.gp, pair.hospital):
        assert [a[0] for a in _alerts(ctx, AlertKind.REVOCATION_UNKNOWN)] == [False]


def test_hard_policy_answers_a_received_message_503_when_revocation_cannot_be_found_out(
    ocsp_pair: tuple[Pair, Responder],
) -> None:
    pair, responder = ocsp_pair
    # the GP's message as it goes over the wire (the hospital down meanwhile)
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    row = pair.message(pair.gp, message_id)
    body = pair.gp.store.payloads.read_bytes(str(row.wire_ref))
    headers = {"Content-Type": str(row.wire_content_type)}
    responder.broken = True
    with TestClient(api_app.create_app(pair.hospital)) as http:
        answer = http.post("/ebms", content=body, headers=headers)
        assert answer.status_code == 503, answer.text
        assert pair.inbound_messages(pair.hospital) == []
        assert _alerts(pair.hospital, AlertKind.MESSAGE_REFUSED) == []
        [(still_open, _, summary)] = _alerts(pair.hospital, AlertKind.REVOCATION_UNKNOWN)
        assert still_open and "503" in summary
        # the sender sends it again once the responder answers: taken, the alert resolved
        responder.broken = False
        pair.clock.advance(seconds=RETRY.total_seconds())
        again = http.post("/ebms", content=body, headers=headers)
        assert again.status_code == 200, again.text
    assert len(pair.inbound_messages(pair.hospital)) == 1  # stored, once
    assert [a[0] for a in _alerts(pair.hospital, AlertKind.REVOCATION_UNKNOWN)] == [False]
