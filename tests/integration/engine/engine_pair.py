"""Two real engines in one process, joined by a loopback transport, with an injected clock.

Each side has its own store, keys and configuration (written by ``devsites``); the loopback hands
the packaged bytes straight to the other side's inbound pipeline, which is exactly what the HTTP
endpoint does. Real HTTP between processes is tested in ``test_two_servers.py``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import Site, dialog_note, prepare_sites
from meldingstjener.ebxml.codes import ErrorDetail
from meldingstjener.ebxml.values import MessageHeader
from meldingstjener.engine import inbound
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.worker import Worker
from meldingstjener.store.tables import AlertRow, EventRow, MessageRow
from meldingstjener.store.uow import LogFilter
from meldingstjener.transport.base import Delivery, TransportFailure, TransportResult


class Clock:
    def __init__(self) -> None:
        # the development certificates are valid from the moment they were made
        self.now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class Loopback:
    """Delivers to the engine registered for the endpoint; can be switched off (receiver down)."""

    engines: dict[str, EngineContext] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    tamper: Callable[[bytes], bytes] | None = None
    sent: list[Delivery] = field(default_factory=list)
    channel: str = "http"

    def send(self, delivery: Delivery) -> TransportResult:
        self.sent.append(delivery)
        if delivery.endpoint in self.down:
            raise TransportFailure("connect-failed", f"cannot reach {delivery.endpoint}")
        body = delivery.body.read_bytes() if isinstance(delivery.body, Path) else delivery.body
        if self.tamper is not None:
            body = self.tamper(body)
        try:
            reply = inbound.receive(
                self.engines[delivery.endpoint], delivery.content_type, body, channel="http"
            )
        except inbound.InboundRefused as refused:
            raise TransportFailure("http-400", refused.detail, retryable=False) from None
        except inbound.InboundDeferred:  # POST /ebms answers 503: the sender tries again
            raise TransportFailure("http-503", f"{delivery.endpoint} answered 503") from None
        return TransportResult(reply.content_type, reply.body, 200)

    def close(self) -> None:
        pass


@dataclass
class Pair:
    gp_site: Site
    hospital_site: Site
    gp: EngineContext
    hospital: EngineContext
    clock: Clock
    network: Loopback

    def run(self) -> None:
        """Run both sides' due work until neither has any (the clock does not move)."""
        for _ in range(20):
            ran = (
                Worker(self.gp, "gp").run_until_idle()
                + Worker(self.hospital, "hospital").run_until_idle()
            )
            if ran == 0:
                return

    def until_given_up(self, message_id: str) -> None:
        """Run both sides, moving the clock past the agreement's RetryInterval (10 minutes)
        between rounds, until the GP's ``message_id`` is ``not-delivered``; fails if it never
        is within twelve rounds."""
        for _ in range(12):
            self.run()
            if self.message(self.gp, message_id).status == "not-delivered":
                return
            self.clock.advance(minutes=11)
        raise AssertionError(f"{message_id} is {self.message(self.gp, message_id).status}")

    def message(self, ctx: EngineContext, message_id: str) -> MessageRow:
        with ctx.store.unit_of_work() as uow:
            row = uow.messages.get(message_id)
            assert row is not None
            return row

    def inbound_messages(self, ctx: EngineContext) -> list[MessageRow]:
        with ctx.store.unit_of_work() as uow:
            return [m for m in uow.messages.search(_all()) if m.direction == "in"]


def _all() -> LogFilter:
    return LogFilter()


_PKI_TEMPLATE: list[Path] = []


def _pki_template() -> Path:
    """One development PKI for the whole test process, made on first use: each pair gets a copy
    of it (its own CRL to revoke in, its own files) instead of four new RSA keys and a CA
    (about a third of a pair's setup). ``prepare_sites`` keeps the files it finds."""
    if not _PKI_TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="mt-test-pki-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        prepare_sites(root)  # its PKI as every pair's would be
        _PKI_TEMPLATE.append(root / "pki")
    return _PKI_TEMPLATE[0]


def make_pair(
    tmp_path: Path,
    *,
    configure: Callable[[Site, Site], None] | None = None,
    **site_options: object,
) -> Pair:
    """Two sites in ``tmp_path`` and their engines. ``configure``: called with the sites once
    their files are written, before the engines are built from them (to change a setting
    without building the engines twice)."""
    if not (tmp_path / "pki").exists():
        shutil.copytree(_pki_template(), tmp_path / "pki")
    gp_site, hospital_site = prepare_sites(tmp_path, **site_options)  # type: ignore[arg-type]
    if configure is not None:
        configure(gp_site, hospital_site)
    clock = Clock()
    network = Loopback()
    gp = build_engine(load_settings(gp_site.config_path), clock=clock)
    hospital = build_engine(load_settings(hospital_site.config_path), clock=clock)
    for ctx in (gp, hospital):
        ctx.transports = {"http": network}
    network.engines = {gp_site.endpoint: gp, hospital_site.endpoint: hospital}
    return Pair(gp_site, hospital_site, gp, hospital, clock, network)


T = TypeVar("T")


def at_once(count: int, action: Callable[[], T], timeout: float = 60.0) -> list[T]:
    """Run ``action`` in ``count`` threads released together; their results, or the first
    exception one of them raised. (Whether they really meet inside ``action`` is up to the
    scheduler: a test built on this must hold either way.)"""
    start = threading.Barrier(count)
    results: list[T] = []
    failures: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(action())
        except BaseException as exc:  # handed to the test below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"still running after {timeout} s"
    if failures:
        raise failures[0]
    return results


def sent_header(pair: Pair, message_id: str) -> MessageHeader:
    """The ebXML MessageHeader of a message the GP sent, read from its stored wire bytes."""
    from meldingstjener.ebxml import parse_envelope, unpackage
    from meldingstjener.formats.xmlparse import parse_xml

    sent = pair.message(pair.gp, message_id)
    mime = unpackage(str(sent.wire_content_type), pair.gp.store.payloads.path(str(sent.wire_ref)))
    return parse_envelope(parse_xml(mime.envelope_xml)).header


def answer_with_error(pair: Pair, message_id: str, error: ErrorDetail) -> None:
    """The hospital's MessageError holding ``error`` about a message the GP sent, received by
    the GP."""
    from meldingstjener.ebxml import OriginalIds
    from meldingstjener.engine import signals

    wire = signals.build_error(
        pair.hospital, OriginalIds.of(sent_header(pair, message_id)), [error], "8200002"
    )
    inbound.receive(pair.gp, wire.content_type, wire.body)


def refusals_not_stored(ctx: EngineContext, ebxml_message_id: str | None) -> list[EventRow]:
    """The events of messages with this eb:MessageId refused without a row (their signature was
    not verified)."""
    with ctx.store.unit_of_work() as uow:
        return [
            event
            for event in uow.session.scalars(
                select(EventRow).where(EventRow.ebxml_message_id == ebxml_message_id)
            )
            if event.message_id is None
        ]


def note_with_the_hospital_as_copy(pair: Pair, note: bytes | None = None) -> bytes:
    """``note`` (a GP's note to the hospital, else a new one) readdressed to another doctor
    (8300001) with the hospital's service as copy receiver (OtherReceiver, Role COP)."""
    if note is None:
        note = dialog_note(pair.gp_site, pair.hospital_site, "Kopi til sykehuset")
    start = note.index(b"<Receiver>")
    end = note.index(b"</Receiver>") + len(b"</Receiver>")
    hospital = note[start + len(b"<Receiver>") : end - len(b"</Receiver>")]
    doctor = (
        b"<Receiver><Organisation><OrganisationName>Annen lege</OrganisationName><Ident>"
        b'<Id>8300001</Id><TypeId V="HER" DN="HER-id" S="2.16.578.1.12.4.1.1.9051"/></Ident>'
        b"</Organisation></Receiver>"
    )
    copy = b'<OtherReceiver><RoleReceiver V="COP" DN="Kopimottaker"/>' + hospital
    copy += b"</OtherReceiver>"
    return note[:start] + doctor + copy + note[end:]


def open_alerts_of(pair: Pair, kind: str, *, open_only: bool = True) -> list[AlertRow]:
    """The hospital's alerts of ``kind`` (the open ones, unless ``open_only`` is False)."""
    query = select(AlertRow).where(AlertRow.kind == kind)
    if open_only:
        query = query.where(AlertRow.resolved_at.is_(None))
    with pair.hospital.store.unit_of_work() as uow:
        return list(uow.session.scalars(query))


def notes_and_an_apprec_received(pair: Pair, count: int) -> tuple[list[MessageRow], MessageRow]:
    """``count`` notes the GP office sent the hospital (oldest first), and an AppRec the GP
    office sent it for the hospital's own note: all received by the hospital, not yet taken by
    its EPJ (the AppRec, which nobody answers, beside the notes, which are to be)."""
    from meldingstjener.engine import receipts
    from meldingstjener.engine.outbound import submit

    for number in range(count):
        note = dialog_note(pair.gp_site, pair.hospital_site, f"Henvisning {number}")
        submit(pair.gp, note, actor="t")
    submit(pair.hospital, dialog_note(pair.hospital_site, pair.gp_site, "Svar"), actor="t")
    pair.run()
    [to_gp] = pair.inbound_messages(pair.gp)
    receipts.deliver(pair.gp, to_gp.id, actor="epj:test")
    receipts.send_apprec(pair.gp, to_gp.id, status=1, errors=[], actor="epj:test")
    pair.run()
    received = pair.inbound_messages(pair.hospital)
    notes = sorted((m for m in received if m.msg_type != "APPREC"), key=lambda m: m.created_at)
    [apprec] = [m for m in received if m.msg_type == "APPREC"]
    assert len(notes) == count
    return notes, apprec
