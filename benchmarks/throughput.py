"""End-to-end throughput and latency between two real servers over HTTP.

Starts a GP office and a hospital server (``devsites``), submits N dialog messages through the
GP server's EDI 2.0 API (``POST /Messages``, 8 client threads by default, as EPJs would), and
measures until every one is transport-acknowledged:

- messages per second end to end (submit of the first -> Acknowledgment of the last),
- submit-to-Acknowledgment latency p50/p99 at full speed and at a paced 100 messages/s,
- peak memory (VmHWM) of each server process, and for one large payload the server's peak
  growth as a multiple of the payload size,
- the machine's RSA-2048 private-key operations per second, measured in the same run, so the
  throughput can be read as a share of the crypto limit (about three private-key operations per
  message: sign the envelope, decrypt the payload key, sign the Acknowledgment).

Usage:
    python benchmarks/throughput.py [--messages N] [--backend sqlite|postgresql|both]
        [--postgres-url URL] [--large-mb 35] [--workers 4] [--rate 100] [--sync-reply] [--clients 8]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from meldingstjener.api.clients import add_client
from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, dialog_note, prepare_sites
from meldingstjener.store.tables import MessageRow


def rsa_private_ops_per_second(seconds: float = 2.0) -> float:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        key.sign(b"x" * 32, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / (time.perf_counter() - started)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int, *, kernel_only: bool = False) -> float:
    """User + system CPU time of a process so far (or only the system part)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[12]) if kernel_only else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine (its CPU is part of the cost)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except OSError:
            continue  # a backend that exited meanwhile (its time is not counted)
    return found


def database_cpu_since(before: dict[int, float]) -> float:
    """CPU the PostgreSQL processes alive now used since ``before`` (new ones: all of it)."""
    after = cpu_by_pid(postgres_pids())
    return sum(spent - before.get(pid, 0.0) for pid, spent in after.items())


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle (all cores, every process incl. PostgreSQL)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def acknowledged_count(engine: object) -> int:
    """How many messages the GP server holds as transport-acknowledged (an index-only count)."""
    from sqlalchemy import func, select

    with engine.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        return int(
            uow.session.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(MessageRow.status == "transport-acknowledged")
            )
            or 0
        )


def wait_acknowledged(
    engine: object, ids: list[str], timeout: float, *, before: int
) -> list[MessageRow]:
    """Wait until every message in ``ids`` is transport-acknowledged; return their rows.

    ``before`` is ``acknowledged_count`` taken before the first of ``ids`` was submitted; the
    benchmark waits for each batch, so no other message is acknowledged meanwhile. The poll
    counts on the status index: a count over the ids themselves (an ``IN`` list of a thousand
    UUIDs) cost PostgreSQL 60 ms a time, more than a third of its work in a run. The rows are read
    once at the end and each one is checked, so a miscount cannot pass unnoticed.
    """
    from sqlalchemy import select

    deadline = time.monotonic() + timeout
    while (done := acknowledged_count(engine) - before) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{len(ids)} acknowledged after {timeout} s")
        time.sleep(0.1)
    with engine.store.unit_of_work() as uow:  # type: ignore[attr-defined]
        rows = list(uow.session.scalars(select(MessageRow).where(MessageRow.id.in_(ids))))
    late = [row.id for row in rows if row.status != "transport-acknowledged"]
    if len(rows) != len(set(ids)) or late:
        raise RuntimeError(f"{len(rows)} of {len(set(ids))} found; not acknowledged: {late[:5]}")
    return rows


def create_databases(admin_url: str) -> tuple[str, str]:
    import psycopg

    names = [f"mt_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{names[0]}", f"{base}/{names[1]}"


def drop_databases(admin_url: str, urls: tuple[str | None, str | None]) -> None:
    """Remove the run's databases (each run makes two; left behind, they pile up)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        for url in urls:
            if url is not None:
                connection.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" (FORCE)')


def run(
    backend: str,
    messages: int,
    postgres_admin: str,
    large_mb: int,
    workers: int,
    rate: float,
    sync_reply: bool,
    clients: int,
) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"mt-bench-{backend}-"))
    urls: tuple[str | None, str | None] = (None, None)
    if backend == "postgresql":
        urls = create_databases(postgres_admin)
    gp_site, hospital_site = prepare_sites(
        root,
        gp_database_url=urls[0],
        hospital_database_url=urls[1],
        retry_interval_seconds=30,
        retries=5,
        persist_duration_seconds=600,
        workers=workers,
        sync_reply=sync_reply,
    )
    gp = build_engine(load_settings(gp_site.config_path))
    _, key = add_client(gp.store, "benchmark", ["send", "receive"], [gp_site.organisation_her_id])
    gp_server = RunningServer(gp_site, root / "gp.log").start()
    hospital_server = RunningServer(hospital_site, root / "hospital.log").start()
    payload = dialog_note(gp_site, hospital_site, "Benchmark " + "x" * 2000)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{gp_site.port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    body = {
        "businessDocument": base64.b64encode(payload).decode("ascii"),
        "contentType": "application/xml",
        "contentTransferEncoding": "base64",
    }

    def post(_: int = 0) -> str:
        response = api.post("/Messages", json=body)
        response.raise_for_status()
        return str(response.json())

    pool = ThreadPoolExecutor(max_workers=clients)
    try:
        # warm-up (connections, caches)
        before = acknowledged_count(gp)
        wait_acknowledged(gp, list(pool.map(post, range(10))), 60, before=before)

        assert gp_server.process is not None and hospital_server.process is not None
        pids = {"GP": gp_server.process.pid, "hospital": hospital_server.process.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        kernel_before = {name: cpu_seconds(pid, kernel_only=True) for name, pid in pids.items()}
        busy_before = machine_busy_seconds()
        database_before = cpu_by_pid(postgres_pids())
        client_before = time.process_time()
        before = acknowledged_count(gp)
        started = time.perf_counter()
        ids = list(pool.map(post, range(messages)))
        submitted = time.perf_counter() - started
        rows = wait_acknowledged(gp, ids, 600, before=before)
        elapsed = time.perf_counter() - started
        cpu = {name: (cpu_seconds(pid) - cpu_before[name]) * 1000 for name, pid in pids.items()}
        kernel = {
            name: (cpu_seconds(pid, kernel_only=True) - kernel_before[name]) * 1000
            for name, pid in pids.items()
        }
        busy = (machine_busy_seconds() - busy_before) * 1000
        client = (time.process_time() - client_before) * 1000
        database = database_cpu_since(database_before) * 1000 if backend == "postgresql" else 0.0
        latencies = [(r.status_changed_at - r.created_at).total_seconds() * 1000 for r in rows]
        mode = "SyncReply: Acknowledgment in the HTTP response" if sync_reply else "async signals"
        print(f"\n== {backend}: {messages} messages, GP -> hospital over HTTP ({mode}) ==")
        print(f"API submit rate (validate+encrypt+sign+store): {messages / submitted:7.1f} msg/s")
        print(f"end to end (submit -> Acknowledgment):      {messages / elapsed:7.1f} msg/s")
        print(
            f"latency at full load  p50 {statistics.median(latencies):7.1f} ms   "
            f"p99 {percentile(latencies, 0.99):7.1f} ms"
        )
        print(
            f"CPU per message: GP server {cpu['GP'] / messages:5.1f} ms "
            f"({kernel['GP'] / messages:4.1f} in the kernel), hospital server "
            f"{cpu['hospital'] / messages:5.1f} ms ({kernel['hospital'] / messages:4.1f} in the "
            f"kernel), PostgreSQL {database / messages:5.1f} ms, "
            f"this client {client / messages:5.1f} ms; whole machine {busy / messages:5.1f} ms "
            f"(of {os.cpu_count()} cores, anything else running included)"
        )

        paced = []
        # enough concurrent clients that the asked rate can really be offered while the
        # server queues (each request then waits for its turn)
        paced_pool = ThreadPoolExecutor(max_workers=min(64, max(clients, int(rate))))
        paced_cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        before = acknowledged_count(gp)
        start = time.perf_counter()
        for n in range(min(messages, 500)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            paced.append(paced_pool.submit(post))
        offered_for = time.perf_counter() - start  # the pace of starting requests
        paced_ids = [future.result() for future in paced]
        paced_pool.shutdown()
        achieved = len(paced_ids) / offered_for
        rows = wait_acknowledged(gp, paced_ids, 600, before=before)
        latencies = [(r.status_changed_at - r.created_at).total_seconds() * 1000 for r in rows]
        paced_cpu = {
            name: (cpu_seconds(pid) - paced_cpu_before[name]) * 1000 / len(paced_ids)
            for name, pid in pids.items()
        }
        print(
            f"latency at {achieved:5.1f} msg/s offered  p50 {statistics.median(latencies):7.1f} ms"
            f"   p99 {percentile(latencies, 0.99):7.1f} ms   (CPU per message: GP server "
            f"{paced_cpu['GP']:5.1f} ms, hospital server {paced_cpu['hospital']:5.1f} ms)"
        )

        assert gp_server.process is not None and hospital_server.process is not None
        print(
            f"peak RSS: GP server {peak_rss_mb(gp_server.process.pid):.0f} MB, "
            f"hospital server {peak_rss_mb(hospital_server.process.pid):.0f} MB"
        )

        if large_mb:
            from meldingstjener.formats import Attachment

            hospital_pid = hospital_server.process.pid
            gp_pid = gp_server.process.pid
            before = {"gp": current_rss_mb(gp_pid), "hospital": current_rss_mb(hospital_pid)}
            acknowledged = acknowledged_count(gp)
            big = _large_message(gp_site, hospital_site, large_mb, Attachment)
            large = api.post(
                "/Messages",
                json={**body, "businessDocument": base64.b64encode(big).decode("ascii")},
            )
            large.raise_for_status()
            large_id = str(large.json())
            wait_acknowledged(gp, [large_id], 600, before=acknowledged)
            size_mb = len(big) / 1024 / 1024
            for name, pid in (("GP", gp_pid), ("hospital", hospital_pid)):
                growth = peak_rss_mb(pid) - before[name.lower()]
                print(
                    f"{size_mb:.0f} MB fagmelding: {name} server peak grew {growth:6.0f} MB "
                    f"= {growth / size_mb:4.1f} x the payload (from {before[name.lower()]:.0f} MB)"
                )
    finally:
        pool.shutdown()
        api.close()
        gp_server.stop()
        hospital_server.stop()
        gp.store.database.dispose()
        if backend == "postgresql":
            drop_databases(postgres_admin, urls)


def _large_message(
    gp_site: object, hospital_site: object, megabytes: int, attachment: type
) -> bytes:
    import os

    from meldingstjener.formats import Coded, Dialogmelding, Notat, build_dialogmelding, code_list

    theme = code_list("9152")
    note = Notat(tema_kodet=Coded(v="1", dn=theme.text("1"), s=theme.oid), tekst="Vedlegg")
    # base64 inside the XML makes the fagmelding 4/3 of the attachment
    # leave room for the MsgHead around the attachment: the whole fagmelding stays under the limit
    data = os.urandom(int(megabytes * 1024 * 1024 * 3 / 4) - 64 * 1024)
    return build_dialogmelding(
        message_type="DIALOG_NOTAT",
        sender=gp_site.party(),  # type: ignore[attr-defined]
        receiver=hospital_site.party(),  # type: ignore[attr-defined]
        dialog=Dialogmelding(version="1.0", notater=(note,)),
        attachments=(attachment(data=data, mime_type="application/pdf", description="scan"),),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin connection; the run creates two fresh databases and drops them after",
    )
    parser.add_argument("--large-mb", type=int, default=35)
    parser.add_argument(
        "--rate", type=float, default=100.0, help="offered load for the paced latency run, msg/s"
    )
    parser.add_argument("--workers", type=int, default=4, help="worker threads per server")
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients")
    parser.add_argument(
        "--sync-reply",
        action="store_true",
        help="agreements with SyncReply: the Acknowledgment comes back in the HTTP response "
        "instead of as its own request",
    )
    args = parser.parse_args()
    ops = rsa_private_ops_per_second()
    print(
        f"RSA-2048 private-key operations: {ops:.0f}/s on one core "
        f"(~3 per message -> crypto alone caps one core near {ops / 3:.0f} msg/s)"
    )
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        run(
            backend,
            args.messages,
            args.postgres_url,
            args.large_mb,
            args.workers,
            args.rate,
            args.sync_reply,
            args.clients,
        )


if __name__ == "__main__":
    main()
