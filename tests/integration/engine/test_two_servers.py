"""Two real `meldingstjener serve` processes exchanging ebXML over HTTP, on SQLite and PostgreSQL.

The test process submits through the GP's store (as `meldingstjener send` does) and watches both
stores; the servers do all sending, receiving and acknowledging. A forwarding proxy between them
tampers with or duplicates a message when a test asks it to.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from engine_pair import refusals_not_stored
from proxy import Proxy
from typer.testing import CliRunner

from meldingstjener.bootstrap import build_engine
from meldingstjener.cli import app
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, Site, dialog_note, prepare_sites
from meldingstjener.engine import receipts
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.outbound import submit
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import LogFilter

pytestmark = pytest.mark.slow

WRONG_HER = "8299999"
MISSING_SERVICE_HER = "8200099"  # under the hospital's organisation, but no such service


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll another process's visible state until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


@dataclass
class Servers:
    gp_site: Site
    hospital_site: Site
    gp_server: RunningServer
    hospital_server: RunningServer
    gp: EngineContext  # the GP's store and keys, used here to submit and to look
    hospital: EngineContext
    proxy: Proxy

    def status(self, ctx: EngineContext, message_id: str) -> str:
        with ctx.store.unit_of_work() as uow:
            row = uow.messages.get(message_id)
            return "" if row is None else row.status

    def inbound(self, ctx: EngineContext) -> list[MessageRow]:
        with ctx.store.unit_of_work() as uow:
            return uow.messages.search(LogFilter(direction="in", limit=100_000))

    def inbound_by_ebxml_id(self, ctx: EngineContext, ebxml_id: str | None) -> list[MessageRow]:
        return [m for m in self.inbound(ctx) if m.ebxml_message_id == ebxml_id]

    def send_note(self, text: str = "Notat", to: Site | None = None) -> str:
        return submit(
            self.gp, dialog_note(self.gp_site, to or self.hospital_site, text), actor="test"
        )

    def acknowledged(self, message_id: str, timeout: float = 60.0) -> MessageRow:
        wait_for(
            lambda: self.status(self.gp, message_id) == "transport-acknowledged",
            f"message {message_id} acknowledged",
            timeout,
        )
        with self.gp.store.unit_of_work() as uow:
            row = uow.messages.get(message_id)
            assert row is not None
            return row


def _databases(
    backend: str, request: pytest.FixtureRequest
) -> Iterator[tuple[str | None, str | None]]:
    if backend == "sqlite":
        yield None, None
        return
    base = request.getfixturevalue("postgres_url")
    admin = base.rsplit("/", 1)[0] + "/postgres"
    names = [f"mt_e2e_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with psycopg.connect(admin, autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    yield tuple(f"{base.rsplit('/', 1)[0]}/{name}" for name in names)  # type: ignore[misc]
    with psycopg.connect(admin, autocommit=True) as connection:
        for name in names:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_servers(
    root: Path, gp_db: str | None, hospital_db: str | None, **options: object
) -> Servers:
    proxy = Proxy("http://127.0.0.1:1/ebms")
    extra_gp = (
        "[[partners]]\n"
        f'her_id = "{WRONG_HER}"\nname = "Not served by the hospital"\n'
        'channel = "http"\nendpoint = "{hospital}"\n'
        f'signing_cert = "{root / "pki" / "8200001-sign.pem"}"\n'
        f'encryption_cert = "{root / "pki" / "8200001-enc.pem"}"\n'
        "retries = 0\n"
        "[[partners]]\n"
        f'her_id = "{MISSING_SERVICE_HER}"\nname = "A service the hospital does not have"\n'
        'organisation_her_id = "8200001"\n'
        'channel = "http"\nendpoint = "{hospital}"\n'
        f'signing_cert = "{root / "pki" / "8200001-sign.pem"}"\n'
        f'encryption_cert = "{root / "pki" / "8200001-enc.pem"}"\n'
    )
    gp_site, hospital_site = prepare_sites(
        root,
        gp_database_url=gp_db,
        hospital_database_url=hospital_db,
        endpoint_override={"8100001": proxy.url},
        extra_config={"8100001": extra_gp},
        **options,  # type: ignore[arg-type]
    )
    proxy.target = hospital_site.endpoint
    gp_config = gp_site.config_path.read_text().replace("{hospital}", hospital_site.endpoint)
    gp_site.config_path.write_text(gp_config)
    servers = Servers(
        gp_site,
        hospital_site,
        RunningServer(gp_site, root / "gp.log"),
        RunningServer(hospital_site, root / "hospital.log"),
        build_engine(load_settings(gp_site.config_path)),
        build_engine(load_settings(hospital_site.config_path)),
        proxy,
    )
    servers.hospital_server.start()
    servers.gp_server.start()
    return servers


def stop_servers(servers: Servers) -> None:
    servers.gp_server.stop()
    servers.hospital_server.stop()
    servers.proxy.close()
    servers.gp.store.database.dispose()
    servers.hospital.store.database.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp(f"servers-{request.param}")
    databases = _databases(request.param, request)
    gp_db, hospital_db = next(databases)
    running = start_servers(
        root, gp_db, hospital_db, retry_interval_seconds=1, retries=60, persist_duration_seconds=300
    )
    yield running
    stop_servers(running)
    next(databases, None)


def test_delivery_with_acknowledgment(servers: Servers) -> None:
    message_id = servers.send_note("Levert?")
    row = servers.acknowledged(message_id)
    [received] = servers.inbound_by_ebxml_id(servers.hospital, row.ebxml_message_id)
    assert received.status == "acknowledged"
    assert received.payload_sha256 == row.payload_sha256  # the same fagmelding, decrypted


def test_wrong_receiver_gets_a_message_error(servers: Servers) -> None:
    wrong = Site("Ukjent", "8290000", WRONG_HER, "Ukjent tjeneste", 0, Path("."))
    message_id = servers.send_note("Feil mottaker", to=wrong)
    wait_for(lambda: servers.status(servers.gp, message_id) == "transport-error", "MessageError")
    with servers.gp.store.unit_of_work() as uow:
        row = uow.messages.get(message_id)
        assert row is not None and row.last_error_code == "ValueNotRecognized"
        assert any(
            a.kind == "message-error-received" and a.message_id == message_id
            for a in uow.alerts.list()
        )


def test_tampered_payload_gets_a_security_failure(servers: Servers) -> None:
    def flip(body: bytes) -> bytes:
        end = body.rindex(b"\r\n--")
        return body[: end - 1] + bytes([body[end - 1] ^ 0x01]) + body[end:]

    servers.proxy.next_tamper = flip
    message_id = servers.send_note("Tuklet med")
    wait_for(lambda: servers.status(servers.gp, message_id) == "transport-error", "SecurityFailure")
    with servers.gp.store.unit_of_work() as uow:
        row = uow.messages.get(message_id)
        assert row is not None and row.last_error_code == "SecurityFailure"
    # not verified: answered in the response, not stored (its MessageId is anybody's to write)
    assert servers.inbound_by_ebxml_id(servers.hospital, row.ebxml_message_id) == []
    assert refusals_not_stored(servers.hospital, row.ebxml_message_id)


def test_duplicate_is_delivered_once_and_acknowledged_again(servers: Servers) -> None:
    servers.proxy.duplicate_next = True
    message_id = servers.send_note("To ganger")
    row = servers.acknowledged(message_id)

    def ack_again() -> bool:  # the same Acknowledgment: the sender logs it as a repeat
        with servers.gp.store.unit_of_work() as uow:
            events = uow.events.for_message(message_id)
            return [e.code for e in events].count("signal-repeated") == 1

    wait_for(ack_again, "the Acknowledgment sent again")
    with servers.gp.store.unit_of_work() as uow:
        receipts = uow.receipts.for_message(message_id)
        assert len([r for r in receipts if r.kind == "acknowledgment"]) == 1
    [received] = servers.inbound_by_ebxml_id(servers.hospital, row.ebxml_message_id)
    with servers.hospital.store.unit_of_work() as uow:
        assert [e.code for e in uow.events.for_message(received.id)].count("duplicate") == 1


def test_receiver_down_then_retried_and_delivered(servers: Servers) -> None:
    servers.hospital_server.stop()
    message_id = servers.send_note("Mens sykehuset var nede")

    def retried() -> bool:
        with servers.gp.store.unit_of_work() as uow:
            row = uow.messages.get(message_id)
            return row is not None and row.status == "retrying" and row.attempts >= 2

    wait_for(retried, "two failed attempts")
    servers.hospital_server.start()
    row = servers.acknowledged(message_id)
    assert len(servers.inbound_by_ebxml_id(servers.hospital, row.ebxml_message_id)) == 1


@pytest.mark.parametrize("victim", ["hospital", "gp"])
def test_kill_9_in_mid_flight_delivers_every_message_exactly_once(
    servers: Servers, victim: str
) -> None:
    count = 20
    ids = [servers.send_note(f"Melding {n}") for n in range(count)]
    server = servers.hospital_server if victim == "hospital" else servers.gp_server
    # Kill as soon as the first messages have landed, while the rest are in flight.
    wait_for(lambda: any(servers.status(servers.gp, i) != "accepted" for i in ids), "first sends")
    server.kill()
    server.start()
    for message_id in ids:
        servers.acknowledged(message_id, timeout=120)
    with servers.gp.store.unit_of_work() as uow:
        ebxml_ids = {uow.messages.get(i).ebxml_message_id for i in ids}  # type: ignore[union-attr]
    received = [m for m in servers.inbound(servers.hospital) if m.ebxml_message_id in ebxml_ids]
    assert len(received) == count, "a message was lost or doubled"
    assert {m.status for m in received} == {"acknowledged"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_receiver_down_beyond_persist_duration_is_not_delivered_then_sent_again(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A message given up while the hospital was down: not-delivered, and an alert saying the
    content must reach the receiver another way or be sent again. ``meldingstjener resend``
    (by the MsgId, as ``show`` takes it) once the hospital is back: the new copy reaches it, is
    acknowledged and answered, and the old one's alert is resolved."""
    databases = _databases(backend, request)
    gp_db, hospital_db = next(databases)
    running = start_servers(
        tmp_path,
        gp_db,
        hospital_db,
        retry_interval_seconds=1,
        retries=10,
        persist_duration_seconds=3,
    )
    try:
        running.hospital_server.stop()
        original_id = running.send_note("Kommer fram andre gang")
        wait_for(lambda: running.status(running.gp, original_id) == "not-delivered", "given up")
        with running.gp.store.unit_of_work() as uow:
            [alert] = [a for a in uow.alerts.list() if a.kind == "not-delivered"]
            assert alert.message_id == original_id and "another way" in alert.summary
            assert f"meldingstjener resend {original_id}" in alert.summary
        running.hospital_server.start()
        with running.gp.store.unit_of_work() as uow:
            original = uow.messages.get(original_id)
            assert original is not None
        config = str(running.gp_site.config_path)
        result = CliRunner().invoke(
            app, ["--config", config, "resend", str(original.msg_id), "--by", "kari"]
        )
        assert result.exit_code == 0, result.output
        copy_id = result.output.strip()

        copy = running.acknowledged(copy_id)
        [received] = running.inbound_by_ebxml_id(running.hospital, copy.ebxml_message_id)
        assert received.msg_id == original.msg_id
        assert copy.ebxml_conversation_id == original.ebxml_conversation_id
        receipts.deliver(running.hospital, received.id, actor="epj")
        receipts.send_apprec(running.hospital, received.id, status=1, errors=[], actor="epj")
        _wait_status(running, running.gp, copy_id, "apprec-ok")
        with running.gp.store.unit_of_work() as uow:
            [alert] = [a for a in uow.alerts.for_message(original_id) if a.kind == "not-delivered"]
            assert alert.resolved_at is not None
        # once only: the MsgId now names both copies, our id the one sent again
        again = CliRunner().invoke(app, ["--config", config, "resend", original_id])
        assert again.exit_code == 1
        refusal = f"refused (already-sent-again): message {original_id} was sent again already"
        assert f"{refusal}, as {copy_id}" in again.output
    finally:
        stop_servers(running)
        next(databases, None)


def _received(servers: Servers, message_id: str) -> MessageRow:
    row = servers.acknowledged(message_id)
    [received] = servers.inbound_by_ebxml_id(servers.hospital, row.ebxml_message_id)
    return received


def _wait_status(servers: Servers, ctx: EngineContext, message_id: str, status: str) -> None:
    wait_for(lambda: servers.status(ctx, message_id) == status, f"{message_id} {status}")


def test_an_ok_apprec_closes_the_loop(servers: Servers) -> None:
    message_id = servers.send_note("Takk for henvisningen")
    received = _received(servers, message_id)
    receipts.deliver(servers.hospital, received.id, actor="epj")
    receipts.send_apprec(servers.hospital, received.id, status=1, errors=[], actor="epj")
    _wait_status(servers, servers.gp, message_id, "apprec-ok")
    [status] = receipts.receiver_status(servers.gp, message_id)
    assert (status.transport_delivery_state, status.app_rec_status) == ("Acknowledged", "Ok")


def test_a_rejected_apprec_shows_its_codes_and_raises_an_alert(servers: Servers) -> None:
    message_id = servers.send_note("Ukjent pasient")
    received = _received(servers, message_id)
    receipts.deliver(servers.hospital, received.id, actor="epj")
    receipts.send_apprec(
        servers.hospital, received.id, status=2, errors=[("E35", "Pasient ukjent")], actor="epj"
    )
    _wait_status(servers, servers.gp, message_id, "apprec-rejected")
    [info] = receipts.apprec_info(servers.gp, message_id)
    assert info.app_rec_status == "Rejected" and info.errors[0][0] == "E35"
    with servers.gp.store.unit_of_work() as uow:
        assert any(
            a.kind == "apprec-rejected" and a.message_id == message_id for a in uow.alerts.list()
        )


def test_a_service_we_do_not_have_is_purged_and_answered_e21(servers: Servers) -> None:
    nowhere = Site("Sykehuset Demo HF", "8200001", MISSING_SERVICE_HER, "Finnes ikke", 0, Path("."))
    message_id = servers.send_note("Til en tjeneste som ikke finnes", to=nowhere)
    _wait_status(servers, servers.gp, message_id, "apprec-rejected")
    with servers.gp.store.unit_of_work() as uow:
        row = uow.messages.get(message_id)
        assert row is not None and row.last_error_code == "E21"
    [received] = servers.inbound_by_ebxml_id(servers.hospital, row.ebxml_message_id)
    assert received.status == "misaddressed-purged" and received.payload_ref is None


def test_a_wrong_recipient_report_sends_a_dialog_avvik(servers: Servers) -> None:
    message_id = servers.send_note("Feil pasient?")
    received = _received(servers, message_id)
    receipts.deliver(servers.hospital, received.id, actor="epj")
    receipts.send_apprec(servers.hospital, received.id, status=1, errors=[], actor="epj")
    _wait_status(servers, servers.gp, message_id, "apprec-ok")
    receipts.report_misaddressed(servers.hospital, received.id, actor="epj:lege", reason="Ikke vår")
    with servers.gp.store.unit_of_work() as uow:
        msg_id = uow.messages.get(message_id).msg_id  # type: ignore[union-attr]

    def avvik_arrived() -> bool:
        return any(
            m.msg_type == "DIALOG_AVVIK" and m.conversation_ref_to_parent == msg_id
            for m in servers.inbound(servers.gp)
        )

    wait_for(avvik_arrived, "the DIALOG_AVVIK at the GP")
    assert servers.status(servers.hospital, received.id) == "misaddressed-purged"
