"""Helpers for the mail tests: the local Postfix + Dovecot (scripts/install-mail-server.sh),
mailbox counts, waiting for Postfix to deliver, a TCP proxy that can cut a connection, and two
in-process engines that speak to each other by mail only."""

from __future__ import annotations

import contextlib
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import Settings, load_settings
from meldingstjener.devsites import GP_HER, HOSPITAL_HER, Site, prepare_sites
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.mail_channel import (
    MailIntake,
    build_mailbox_collector,
    build_smtp_transport,
)
from meldingstjener.engine.worker import Worker
from meldingstjener.security.devpki import init_pki
from meldingstjener.store.tables import MessageRow
from meldingstjener.store.uow import LogFilter
from meldingstjener.transport.mailbox import CollectResult, MailboxCollector

CA_FILE = Path("/etc/dovecot/private/meldingstjener-mail.pem")
PASSWORD = "meldingstjener-test"
DOMAIN = "testedi.nhn.no"
PORTS = {"smtp": 25, "submission": 587, "pop3": 110, "pop3s": 995, "imap": 143, "imaps": 993}


def _closed_ports() -> list[str]:
    closed = []
    for name, port in PORTS.items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            closed.append(f"{name}:{port}")
    return closed


def require_mail_server() -> None:
    """The local mail server, or a skip (a failure in CI, where .ci/run installs it)."""
    closed = _closed_ports()
    if closed or not CA_FILE.is_file():
        reason = (
            f"the local mail server is not running (closed: {', '.join(closed) or 'none'}; "
            f"certificate {CA_FILE} {'present' if CA_FILE.is_file() else 'missing'}); "
            "run scripts/install-mail-server.sh as root"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def address(her_id: str) -> str:
    return f"{her_id}@{DOMAIN}"


def _pop3(user: str, context: ssl.SSLContext) -> poplib.POP3_SSL:
    session = poplib.POP3_SSL("127.0.0.1", 995, context=context, timeout=10)
    session.user(user)
    session.pass_(PASSWORD)
    return session


def mailbox_count(user: str, context: ssl.SSLContext) -> int:
    session = _pop3(user, context)
    try:
        return int(session.stat()[0])
    finally:
        session.quit()


def empty_mailbox(user: str, context: ssl.SSLContext) -> None:
    session = _pop3(user, context)
    for number in range(1, int(session.stat()[0]) + 1):
        session.dele(number)
    session.quit()


def wait_for_mail(user: str, count: int, context: ssl.SSLContext, timeout: float = 30.0) -> None:
    """Until Postfix has delivered ``count`` mails to ``user`` (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = mailbox_count(user, context)
        if seen >= count:
            return
        time.sleep(0.05)  # polling the mailbox for an external delivery; no event to wait on
    raise AssertionError(f"{user} has {seen} mail(s), expected {count} within {timeout} s")


MAIL_ROOT = Path("/var/mail/vhosts")  # <domain>/<local part>/: Dovecot's maildirs


@contextlib.contextmanager
def unreadable_on_the_server(user: str, marker: bytes) -> Iterator[Path]:
    """Makes the file of the mail in ``user``'s box that holds ``marker`` unreadable to Dovecot
    (mode 000: it reads as the vmail user), as a fault of the server's disk would, until the
    block ends. Dovecot then answers its POP3 RETR with -ERR and ends an IMAP session that
    FETCHes it. POP3 must have listed the box since the mail came (``wait_for_mail`` does):
    it reads each mail's size once, at the first session that sees it. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("making a stored mail unreadable to Dovecot needs root")
    local, _, domain = user.partition("@")
    files = [
        path
        for folder in ("new", "cur")
        for path in (MAIL_ROOT / domain / local / folder).glob("*")
        if marker in path.read_bytes()
    ]
    assert len(files) == 1, f"{len(files)} mails of {user} hold {marker!r}"
    mode = files[0].stat().st_mode
    files[0].chmod(0)
    try:
        yield files[0]
    finally:
        files[0].chmod(mode)


def drop_mail(user: str, raw: bytes) -> None:
    """Hand a raw mail to Postfix (port 25, no authentication from 127.0.0.1)."""
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as server:
        server.sendmail("dropper@" + DOMAIN, [user], raw)


@dataclass
class CuttingProxy:
    """Forwards 127.0.0.1:<port> to a target; after ``cut_after`` bytes from the server it
    closes both sides (a connection that dies in the middle of a collection)."""

    target_port: int
    cut_after: int | None = None
    port: int = 0
    cuts: int = 0
    _server: socket.socket = field(init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _cut_done: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> CuttingProxy:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            budget = [self.cut_after if not self._cut_done.is_set() else None]
            for source, sink, count in ((client, upstream, False), (upstream, client, True)):
                thread = threading.Thread(
                    target=self._pump,
                    args=(source, sink, client, upstream, count, budget),
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        client: socket.socket,
        upstream: socket.socket,
        counted: bool,
        budget: list[int | None],
    ) -> None:
        try:
            while data := source.recv(65536):
                left = budget[0]
                if counted and left is not None:
                    if len(data) >= left:
                        sink.sendall(data[:left])
                        self.cuts += 1
                        self._cut_done.set()
                        raise ConnectionAbortedError
                    budget[0] = left - len(data)
                sink.sendall(data)
        except OSError:
            pass
        for end in (client, upstream):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._server.close()


# --- two engines that speak by mail only -----------------------------------------------------


def mail_config(her_id: str) -> str:
    """The [smtp] and [mailbox] sections for one site (appended to its devsites config)."""
    return (
        "[smtp]\n"
        'host = "127.0.0.1"\nport = 587\nsecurity = "starttls"\n'
        f'username = "{address(her_id)}"\npassword_env = "MT_TEST_MAIL_PASSWORD"\n'
        f'edi_address = "{address(her_id)}"\nca_file = "{CA_FILE}"\n'
        "[mailbox]\n"
        'protocol = "imap"\nhost = "127.0.0.1"\nsecurity = "tls"\n'
        f'username = "{address(her_id)}"\npassword_env = "MT_TEST_MAIL_PASSWORD"\n'
        f'ca_file = "{CA_FILE}"\npoll_interval_seconds = 3600\n'
    )


@dataclass
class MailSite:
    """One in-process engine with its SMTP transport, mailbox collector and intake."""

    site: Site
    settings: Settings
    ctx: EngineContext
    collector: MailboxCollector
    intake: MailIntake

    @property
    def user(self) -> str:
        return self.site.edi_address

    def work(self) -> int:
        return Worker(self.ctx, self.site.name).run_until_idle()

    def collect(self) -> CollectResult:
        return self.intake.collect(self.collector)  # as the collector thread collects

    def messages(self, direction: str) -> list[MessageRow]:
        with self.ctx.store.unit_of_work() as uow:
            return [m for m in uow.messages.search(LogFilter()) if m.direction == direction]


def mail_site(site: Site) -> MailSite:
    settings = load_settings(site.config_path)
    ctx = build_engine(settings)
    transport = build_smtp_transport(settings, host=ctx.host)
    collector = build_mailbox_collector(settings)
    assert transport is not None and collector is not None
    ctx.transports = {**ctx.transports, "smtp": transport}
    return MailSite(
        site, settings, ctx, collector, MailIntake(ctx, settings.data_dir / "quarantine")
    )


def make_pki_template(directory: Path) -> Path:
    """Keys for both sites, made once per session (RSA key generation is the slow part)."""
    init_pki(directory, [GP_HER, HOSPITAL_HER])
    return directory


def _sites(
    root: Path, monkeypatch: pytest.MonkeyPatch, pki_template: Path | None
) -> tuple[Site, Site]:
    monkeypatch.setenv("MT_TEST_MAIL_PASSWORD", PASSWORD)
    if pki_template is not None:
        shutil.copytree(pki_template, root / "pki")  # prepare_sites keeps existing keys
    return prepare_sites(
        root,
        channel="smtp",
        extra_config={GP_HER: mail_config(GP_HER), HOSPITAL_HER: mail_config(HOSPITAL_HER)},
    )


def mail_pair(
    root: Path, monkeypatch: pytest.MonkeyPatch, pki_template: Path | None = None
) -> tuple[MailSite, MailSite]:
    """The devsites GP office and hospital, configured to exchange by mail only."""
    gp_site, hospital_site = _sites(root, monkeypatch, pki_template)
    return mail_site(gp_site), mail_site(hospital_site)


def mail_gp(root: Path, monkeypatch: pytest.MonkeyPatch, pki_template: Path) -> MailSite:
    """Only the GP office's engine (its partner exists in its configuration only)."""
    return mail_site(_sites(root, monkeypatch, pki_template)[0])
