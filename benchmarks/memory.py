"""Peak memory of the large-message paths, as multiples of the payload size.

Each path runs in fresh processes, warmed up with one small message first, and reports how much
its peak resident set (VmHWM, reset after the warm-up where the kernel allows) grew while one
large fagmelding went through:

- ``api``: a real GP server (``meldingstjener serve``) takes the fagmelding through the EPJ API
  (``POST /Messages``, JSON with the document base64) and sends it to the hospital; measured
  until the hospital's Acknowledgment is stored,
- ``receive``: the real hospital server receiving that message over HTTP (``POST /ebms``),
- ``fetch``: the hospital's EPJ fetching that document from the hospital server
  (``GET /Messages/{id}/business-document``, read by the client in pieces),
- ``file``: ``meldingstjener send FILE`` in a child process (submit only; a server sends),
- ``folder``: the folder drop taking the same file from an outbox in a child process,
- ``mail``: a fresh hospital process collecting the message from its mailbox (IMAP, or POP3 with
  ``--mail-protocol pop3``) after the GP sent it by SMTP; needs the local mail server of
  ``scripts/install-mail-server.sh``.

Usage:
    python benchmarks/memory.py [--mb 35] [--paths api,receive,fetch,file,folder,mail] [--rounds 1]
        [--mail-protocol imap|pop3] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from meldingstjener.api.clients import add_client
from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, Site, dialog_note, prepare_sites
from meldingstjener.store.uow import LogFilter

CHUNK = 1024 * 1024
MB = 1024 * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5`` to clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakGrowth:
    """RSS now, then how far the peak rose above it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        reset_peak(pid)
        self.before_kb = _status_kb(pid, "VmRSS")

    def grown_mb(self) -> float:
        return (_status_kb(self.pid, "VmHWM") - self.before_kb) / 1024


def large_fagmelding(gp: Site, hospital: Site, megabytes: float) -> bytes:
    """A DIALOG_NOTAT whose PDF attachment makes the whole document about ``megabytes`` MiB."""
    from meldingstjener.formats import (
        Attachment,
        Coded,
        Dialogmelding,
        Notat,
        build_dialogmelding,
        code_list,
    )

    theme = code_list("9152")
    note = Notat(tema_kodet=Coded(v="1", dn=theme.text("1"), s=theme.oid), tekst="Vedlegg")
    # base64 inside the XML makes the document 4/3 of the attachment; leave room for MsgHead
    data = os.urandom(int(megabytes * MB * 3 / 4) - 64 * 1024)
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=gp.party(),
        receiver=hospital.party(),
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(Attachment(data=data, mime_type="application/pdf", description="scan"),),
    )


def _json_request(document: Path, target: Path) -> None:
    """The POST /Messages body, written in pieces (the benchmark client holds no big copies)."""
    head = b'{"contentType": "application/xml", "contentTransferEncoding": "base64", '
    with document.open("rb") as source, target.open("wb") as out:
        out.write(head + b'"businessDocument": "')
        while chunk := source.read(3 * CHUNK):  # a multiple of 3: no padding inside
            out.write(base64.b64encode(chunk))
        out.write(b'"}')


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _wait_acknowledged(gp_config: Path, message_id: str, timeout: float) -> None:
    engine = build_engine(load_settings(gp_config))
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.store.unit_of_work() as uow:
                row = uow.messages.get(message_id)
            if row is not None and row.status == "transport-acknowledged":
                return
            if time.monotonic() > deadline:
                status = row.status if row is not None else "missing"
                raise TimeoutError(f"message {message_id} is {status} after {timeout} s")
            time.sleep(0.05)  # polling the store: the servers are other processes
    finally:
        engine.store.database.dispose()


def _newest_received(hospital_config: Path) -> str:
    """The id of the message the hospital received last."""
    engine = build_engine(load_settings(hospital_config))
    try:
        with engine.store.unit_of_work() as uow:
            rows = uow.messages.search(LogFilter(direction="in"))
        return max(rows, key=lambda row: row.created_at).id
    finally:
        engine.store.database.dispose()


def measure_servers(
    root: Path, gp: Site, hospital: Site, document: Path, rounds: int
) -> dict[str, float]:
    """``api`` (GP server), ``receive`` and ``fetch`` (hospital server) growth in MB for one
    document (the largest growth over ``rounds`` documents)."""
    engine = build_engine(load_settings(gp.config_path))
    _, key = add_client(engine.store, "memory-benchmark", ["send"], [gp.organisation_her_id])
    engine.store.database.dispose()
    hospital_engine = build_engine(load_settings(hospital.config_path))
    _, hospital_key = add_client(
        hospital_engine.store,
        "memory-benchmark",
        ["receive"],
        [hospital.organisation_her_id, hospital.address_her_id],
    )
    hospital_engine.store.database.dispose()
    body = root / "request.json"
    _json_request(document, body)
    gp_server = RunningServer(gp, root / "gp.log").start()
    hospital_server = RunningServer(hospital, root / "hospital.log").start()
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{gp.port}",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=600,
    )
    epj = httpx.Client(
        base_url=f"http://127.0.0.1:{hospital.port}",
        headers={"Authorization": f"Bearer {hospital_key}"},
        timeout=600,
    )
    try:
        small = base64.b64encode(dialog_note(gp, hospital, "warm-up")).decode("ascii")
        warm = api.post(
            "/Messages",
            content=json.dumps(
                {
                    "businessDocument": small,
                    "contentType": "application/xml",
                    "contentTransferEncoding": "base64",
                }
            ),
        )
        warm.raise_for_status()
        _wait_acknowledged(gp.config_path, str(warm.json()), 120)
        warm_fetch = epj.get(
            f"/Messages/{_newest_received(hospital.config_path)}/business-document"
        )
        warm_fetch.raise_for_status()
        assert gp_server.process is not None and hospital_server.process is not None
        grown = {"api": 0.0, "receive": 0.0, "fetch": 0.0}
        for _ in range(rounds):  # later rounds: a process that already had a large message
            gp_peak = PeakGrowth(gp_server.process.pid)
            hospital_peak = PeakGrowth(hospital_server.process.pid)
            response = api.post(
                "/Messages",
                content=_file_chunks(body),
                headers={"Content-Length": str(body.stat().st_size)},
            )
            response.raise_for_status()
            _wait_acknowledged(gp.config_path, str(response.json()), 600)
            grown["api"] = max(grown["api"], gp_peak.grown_mb())
            grown["receive"] = max(grown["receive"], hospital_peak.grown_mb())
            received = _newest_received(hospital.config_path)
            fetch_peak = PeakGrowth(hospital_server.process.pid)
            fetched = 0
            with epj.stream("GET", f"/Messages/{received}/business-document") as answer:
                answer.raise_for_status()
                for piece in answer.iter_bytes():
                    fetched += len(piece)
            if fetched < document.stat().st_size:
                raise RuntimeError(f"fetched {fetched} bytes, less than the document")
            grown["fetch"] = max(grown["fetch"], fetch_peak.grown_mb())
        return grown
    finally:
        api.close()
        epj.close()
        gp_server.stop()
        hospital_server.stop()
        body.unlink(missing_ok=True)


def measure_child(path_name: str, gp: Site, document: Path, rounds: int) -> float:
    """Growth in MB of a fresh child process: one that submits ``document`` by file
    (``file``/``folder``), or the hospital collecting its mail (``mail``, ``document`` is the
    warm-up mail)."""
    completed = subprocess.run(
        [
            sys.executable,
            __file__,
            "--rounds",
            str(rounds),
            "--child",
            path_name,
            str(gp.config_path),
            str(document),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{path_name} child failed:\n{completed.stdout}\n{completed.stderr}")
    return float(completed.stdout.strip().splitlines()[-1])


def child(path_name: str, config: Path, document: Path, rounds: int) -> None:
    """Runs in the fresh process: warm up with a small file, then measure the large one."""
    from meldingstjener.cli import app

    settings = load_settings(config)
    work = Path(tempfile.mkdtemp(prefix="mt-memory-child-"))
    small = work / "small.xml"
    gp, hospital = _sites_of(config)
    small.write_bytes(dialog_note(gp, hospital, "warm-up"))
    if path_name == "file":

        def run(path: Path) -> None:
            app(["--config", str(config), "send", str(path)], standalone_mode=False)

    else:
        from meldingstjener.config import FolderSettings
        from meldingstjener.integration.folder import FolderIntegration

        engine = build_engine(settings)
        folder = FolderIntegration(engine, FolderSettings(outbox_dir=work / "outbox"))

        def run(path: Path) -> None:
            target = work / "outbox" / path.name
            shutil.copyfile(path, target)
            folder.take(target)

    run(small)
    grown = 0.0
    for _ in range(rounds):
        peak = PeakGrowth(os.getpid())
        run(document)
        grown = max(grown, peak.grown_mb())
    print(f"{grown:.1f}")
    shutil.rmtree(work, ignore_errors=True)


# the local mail server of scripts/install-mail-server.sh
MAIL_PASSWORD = "meldingstjener-test"
MAIL_CA = Path("/etc/dovecot/private/meldingstjener-mail.pem")
MAIL_DOMAIN = "testedi.nhn.no"


def _mail_config(her_id: str, protocol: str) -> str:
    return (
        f'[smtp]\nhost = "127.0.0.1"\nport = 587\nsecurity = "starttls"\n'
        f'username = "{her_id}@{MAIL_DOMAIN}"\npassword_env = "MT_BENCH_MAIL_PASSWORD"\n'
        f'edi_address = "{her_id}@{MAIL_DOMAIN}"\nca_file = "{MAIL_CA}"\n'
        f'[mailbox]\nprotocol = "{protocol}"\nhost = "127.0.0.1"\nsecurity = "tls"\n'
        f'username = "{her_id}@{MAIL_DOMAIN}"\npassword_env = "MT_BENCH_MAIL_PASSWORD"\n'
        f'ca_file = "{MAIL_CA}"\n'
    )


def _mails_in_box(her_id: str, *, empty: bool = False) -> int:
    import imaplib
    import ssl

    context = ssl.create_default_context(cafile=str(MAIL_CA))
    with imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=context) as box:
        box.login(f"{her_id}@{MAIL_DOMAIN}", MAIL_PASSWORD)
        box.select("INBOX")
        _, data = box.search(None, "ALL")
        numbers = data[0].split() if data and data[0] else []
        if empty and numbers:
            box.store(b",".join(numbers).decode(), "+FLAGS.SILENT", r"(\Deleted)")
            box.expunge()
        return len(numbers)


def _wait_for_mail(her_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _mails_in_box(her_id) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no mail for {her_id} within {timeout} s")
        time.sleep(0.2)  # Postfix delivers on its own time; there is nothing to wait on


def measure_mail(root: Path, megabytes: float, rounds: int, protocol: str) -> float:
    """``mail``: growth in MB of a fresh hospital process collecting one large mail."""
    from meldingstjener.devsites import GP_HER, HOSPITAL_HER
    from meldingstjener.engine.mail_channel import build_mailbox_collector, build_smtp_transport
    from meldingstjener.engine.outbound import submit
    from meldingstjener.engine.worker import Worker

    os.environ["MT_BENCH_MAIL_PASSWORD"] = MAIL_PASSWORD
    gp, hospital = prepare_sites(
        root / "mail",
        retry_interval_seconds=3600,  # no resend of the warm-up mail while the large one goes
        channel="smtp",
        extra_config={h: _mail_config(h, protocol) for h in (GP_HER, HOSPITAL_HER)},
    )
    engine = build_engine(load_settings(gp.config_path))
    smtp = build_smtp_transport(load_settings(gp.config_path), host=engine.host)
    assert smtp is not None
    engine.transports = {**engine.transports, "smtp": smtp}
    _mails_in_box(hospital.organisation_her_id, empty=True)
    collector = build_mailbox_collector(load_settings(hospital.config_path))
    assert collector is not None
    grown = 0.0
    document = root / "mail" / "large.xml"
    document.write_bytes(large_fagmelding(gp, hospital, megabytes))
    for round_number in range(rounds):
        # a new small mail each round, so the child's warm-up is a first receipt too
        small = root / "mail" / f"small-{round_number}.eml"
        note = dialog_note(gp, hospital, f"warm-up {round_number}")
        submit(engine, note, actor="memory-benchmark")
        Worker(engine, "memory-benchmark").run_until_idle()
        _wait_for_mail(hospital.organisation_her_id, 60)
        collector.collect_once(lambda mail, small=small: small.write_bytes(mail.read()))
        submit(engine, document.read_bytes(), actor="memory-benchmark")
        Worker(engine, "memory-benchmark").run_until_idle()
        _wait_for_mail(hospital.organisation_her_id, 300)
        grown = max(grown, measure_child("mail", hospital, small, 1))
    engine.store.database.dispose()
    return grown


def mail_child(config: Path, small: Path) -> None:
    """Runs in the fresh hospital process: a small mail through the intake and a collection that
    leaves the large one in the box (warm-up), then the large one collected and received."""
    from meldingstjener.engine.mail_channel import MailIntake, build_mailbox_collector

    os.environ["MT_BENCH_MAIL_PASSWORD"] = MAIL_PASSWORD
    settings = load_settings(config)
    engine = build_engine(settings)
    intake = MailIntake(engine, settings.data_dir / "quarantine")
    collector = build_mailbox_collector(settings)
    assert collector is not None
    with small.open("rb") as warm_up:
        intake.on_mail(warm_up)

    def keep_it(mail: object) -> None:
        raise RuntimeError("warm-up: the mail stays in the box")

    # the connection, TLS, login and spooling warmed up too: a collection that keeps the mail
    collector.collect_once(keep_it)
    peak = PeakGrowth(os.getpid())
    result = collector.collect_once(intake.on_mail)
    if result.delivered != 1:
        raise RuntimeError(f"the large mail was not received: {result}")
    print(f"{peak.grown_mb():.1f}")


def _sites_of(config: Path) -> tuple[Site, Site]:
    """The two demo sites as ``prepare_sites`` wrote them (only what a MsgHead party needs)."""
    from meldingstjener.devsites import GP_HER, HOSPITAL_HER, HOSPITAL_SERVICE_HER

    gp = Site("Fjordlegen legekontor", GP_HER, GP_HER, None, 0, config.parent)
    hospital = Site(
        "Sykehuset Demo HF",
        HOSPITAL_HER,
        HOSPITAL_SERVICE_HER,
        "Medisinsk poliklinikk",
        0,
        config.parent.parent / "hospital",
    )
    return gp, hospital


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=35.0, help="fagmelding size in MiB")
    parser.add_argument("--paths", default="api,receive,fetch,file,folder")
    parser.add_argument(
        "--rounds", type=int, default=1, help="large messages per process; the worst counts"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--mail-protocol", choices=("imap", "pop3"), default="imap")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "CONFIG", "DOCUMENT"))
    args = parser.parse_args()
    if args.child and args.child[0] == "mail":
        mail_child(Path(args.child[1]), Path(args.child[2]))
        return
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]), args.rounds)
        return
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    root = Path(tempfile.mkdtemp(prefix="mt-memory-"))
    try:
        gp, hospital = prepare_sites(
            root, retry_interval_seconds=60, retries=2, persist_duration_seconds=900
        )
        document = root / "fagmelding.xml"
        document.write_bytes(large_fagmelding(gp, hospital, args.mb))
        size_mb = document.stat().st_size / MB
        print(f"fagmelding: {size_mb:.1f} MiB ({document.stat().st_size} bytes)")
        results: dict[str, float] = {}
        if {"api", "receive", "fetch"} & set(paths):
            results.update(measure_servers(root, gp, hospital, document, args.rounds))
        for name in ("file", "folder"):
            if name in paths:
                results[name] = measure_child(name, gp, document, args.rounds)
        if "mail" in paths:
            results["mail"] = measure_mail(root, args.mb, args.rounds, args.mail_protocol)
        labels = {
            "api": "submit via POST /Messages + send (GP server)",
            "receive": "receive via POST /ebms (hospital server)",
            "fetch": "fetch via GET .../business-document (hospital)",
            "file": "submit via `meldingstjener send FILE`",
            "folder": "submit via the folder drop",
            "mail": f"collect by {args.mail_protocol.upper()} + receive (hospital)",
        }
        for name in paths:
            grown = results[name]
            print(f"{labels[name]:<46} peak +{grown:6.0f} MiB = {grown / size_mb:4.1f} x payload")
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
