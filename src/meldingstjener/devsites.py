"""Two local sites for the demo, the end-to-end tests and the benchmark.

A GP office (one organisation HER-id) and a hospital (an organisation with a service, so that
service-based addressing is exercised), sharing one development PKI, each with its own data
directory and TOML configuration naming the other as partner. :class:`RunningServer` starts a
real ``meldingstjener serve`` process and stops it (gracefully or with SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from meldingstjener.formats import (
    Coded,
    Dialogmelding,
    Foresporsel,
    Notat,
    Party,
    build_dialogmelding,
    code_list,
)
from meldingstjener.security.devpki import init_pki

GP_HER = "8100001"
HOSPITAL_HER = "8200001"
HOSPITAL_SERVICE_HER = "8200002"


@dataclass
class Site:
    name: str
    organisation_her_id: str
    address_her_id: str  # the HER-id partners put in the envelope (service or organisation)
    service_name: str | None
    port: int
    directory: Path
    database_url: str | None = None
    extra_config: str = ""
    edi_address: str = ""

    @property
    def config_path(self) -> Path:
        return self.directory / "meldingstjener.toml"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/ebms"

    def party(self) -> Party:
        """This site as a MsgHead party (organisation, and service when it has one)."""
        if self.service_name:
            return Party.of(
                self.name,
                self.organisation_her_id,
                service_name=self.service_name,
                service_her_id=self.address_her_id,
            )
        return Party.of(self.name, self.organisation_her_id)


# A port handed out stays bound (not listening) for a while, so that no other process's bind to
# port 0 picks it before its server binds it: tests on several xdist workers, a demo beside
# another, each take ports at once. A server binding it with SO_REUSEADDR (asyncio's and so
# uvicorn's default on POSIX) still can while it is held. The oldest are let go.
_RESERVED: deque[socket.socket] = deque()
_KEEP_RESERVED = 64


def free_port() -> int:
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    probe.bind(("127.0.0.1", 0))
    _RESERVED.append(probe)
    while len(_RESERVED) > _KEEP_RESERVED:
        _RESERVED.popleft().close()
    return int(probe.getsockname()[1])


def prepare_sites(
    root: Path,
    *,
    gp_database_url: str | None = None,
    hospital_database_url: str | None = None,
    retry_interval_seconds: int = 2,
    retries: int = 10,
    persist_duration_seconds: int = 120,
    sync_reply: bool = False,
    workers: int = 1,
    channel: str = "http",
    mail_domain: str = "testedi.nhn.no",
    extra_config: dict[str, str] | None = None,
    endpoint_override: dict[str, str] | None = None,
) -> tuple[Site, Site]:
    """Write a shared development PKI and one configuration per site under ``root``.

    ``extra_config`` and ``endpoint_override`` are keyed by the site's organisation HER-id:
    TOML appended to that site's configuration, and the endpoint that site uses for its partner
    (for instance a proxy in between)."""
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    init_pki(
        pki,
        [GP_HER, HOSPITAL_HER],
        names={GP_HER: "Fjordlegen legekontor", HOSPITAL_HER: "Sykehuset Demo HF"},
    )
    gp = Site(
        "Fjordlegen legekontor", GP_HER, GP_HER, None, free_port(), root / "gp", gp_database_url
    )
    hospital = Site(
        "Sykehuset Demo HF",
        HOSPITAL_HER,
        HOSPITAL_SERVICE_HER,
        "Medisinsk poliklinikk",
        free_port(),
        root / "hospital",
        hospital_database_url,
    )
    for site in (gp, hospital):
        site.edi_address = f"{site.organisation_her_id}@{mail_domain}"
        site.extra_config = (extra_config or {}).get(site.organisation_her_id, "")
    for site, other in ((gp, hospital), (hospital, gp)):
        site.directory.mkdir(parents=True, exist_ok=True)
        endpoint = other.endpoint if channel == "http" else f"mailto:{other.edi_address}"
        endpoint = (endpoint_override or {}).get(site.organisation_her_id, endpoint)
        services = ""
        if site.service_name:
            services = (
                f'[[identity.services]]\nher_id = "{site.address_her_id}"\n'
                f'name = "{site.service_name}"\n'
            )
        database = f'[database]\nurl = "{site.database_url}"\n' if site.database_url else ""
        organisation_line = (
            f'organisation_her_id = "{other.organisation_her_id}"\n' if other.service_name else ""
        )
        site.config_path.write_text(
            f'data_dir = "{site.directory / "data"}"\n'
            'environment = "test"\n'
            f"[server]\nport = {site.port}\n"
            f'[identity]\norganisation_her_id = "{site.organisation_her_id}"\n'
            f'name = "{site.name}"\n'
            f"{services}"
            f"[keys]\n"
            f'signing_key = "{pki / (site.organisation_her_id + "-sign.key")}"\n'
            f'signing_cert = "{pki / (site.organisation_her_id + "-sign.pem")}"\n'
            f'encryption_key = "{pki / (site.organisation_her_id + "-enc.key")}"\n'
            f'encryption_cert = "{pki / (site.organisation_her_id + "-enc.pem")}"\n'
            f'[security]\ntrust_anchors = ["{pki / "ca.pem"}"]\n'
            f'crl_files = ["{pki / "crl.pem"}"]\n'
            f"{database}"
            f"[workers]\ncount = {workers}\npoll_interval_seconds = 0.2\n"
            f'[logging]\nlevel = "WARNING"\n'
            f"[[partners]]\n"
            f'her_id = "{other.address_her_id}"\n'
            f'name = "{other.name}"\n'
            f"{organisation_line}"
            f'channel = "{channel}"\nendpoint = "{endpoint}"\n'
            f'signing_cert = "{pki / (other.organisation_her_id + "-sign.pem")}"\n'
            f'encryption_cert = "{pki / (other.organisation_her_id + "-enc.pem")}"\n'
            f"retries = {retries}\n"
            f"retry_interval_seconds = {retry_interval_seconds}\n"
            f"persist_duration_seconds = {persist_duration_seconds}\n"
            f"sync_reply = {'true' if sync_reply else 'false'}\n"
            f"{site.extra_config}"
        )
    return gp, hospital


def dialog_question(sender: Site, receiver: Site, text: str) -> bytes:
    theme = code_list("9152")
    question = Foresporsel(type=Coded(v="1", dn=theme.text("1"), s=theme.oid), sporsmal=text)
    return build_dialogmelding(
        message_type="DIALOG_FORESPORSEL",
        sender=sender.party(),
        receiver=receiver.party(),
        dialog=Dialogmelding(version="1.0", foresporsler=(question,)),
    )


def dialog_note(sender: Site, receiver: Site, text: str) -> bytes:
    theme = code_list("9152")
    note = Notat(tema_kodet=Coded(v="1", dn=theme.text("1"), s=theme.oid), tekst=text)
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=sender.party(),
        receiver=receiver.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
    )


@dataclass
class RunningServer:
    """A real ``meldingstjener serve`` process for one site."""

    site: Site
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 30.0) -> RunningServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meldingstjener",
                "--config",
                str(self.site.config_path),
                "serve",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.site.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.site.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.site.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)  # waiting for a port to open: nothing to synchronise on
                continue
            if httpx.get(url, timeout=5.0).status_code == 200:
                return self
        raise TimeoutError(f"{self.site.name} did not answer on {url} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush — what a crash looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
