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
- ``folder``: the folder drop taking the same file from an outbox in a child process.

Usage:
    python benchmarks/memory.py [--mb 35] [--paths api,receive,fetch,file,folder] [--rounds 1]
        [--keep]
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
    """Growth in MB of a fresh process that submits ``document`` by file (``file``/``folder``)."""
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
    parser.add_argument("--child", nargs=3, metavar=("PATH", "CONFIG", "DOCUMENT"))
    args = parser.parse_args()
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
        labels = {
            "api": "submit via POST /Messages + send (GP server)",
            "receive": "receive via POST /ebms (hospital server)",
            "fetch": "fetch via GET .../business-document (hospital)",
            "file": "submit via `meldingstjener send FILE`",
            "folder": "submit via the folder drop",
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
