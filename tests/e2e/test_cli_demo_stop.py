"""``meldingstjener demo`` stopped by SIGTERM (a CI job's time-out, a service manager): it stops
its two servers and removes its directory, as ``serve`` stops its threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import meldingstjener


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` now."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so after the last ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def a_server(pid: int) -> bool:
    """Whether ``pid`` is (still) a ``meldingstjener serve`` process."""
    try:
        arguments = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"meldingstjener" in arguments and b"serve" in arguments


def test_sigterm_stops_the_demos_servers_and_removes_its_directory(tmp_path: Path) -> None:
    # It died at once (rc 143), its two serve processes left running under PID 1 and its
    # /tmp/meldingstjener-demo-* directory left behind.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    env |= {
        "TMPDIR": str(tmp_path),  # the demo's directory, where the test can look for it
        "PYTHONPATH": str(Path(meldingstjener.__file__).resolve().parents[1]),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "meldingstjener", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    servers: list[int] = []
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # the demo says when both servers answer
            seen.append(line)
            if "both answer on /health" in line:
                break
        else:
            raise AssertionError("the demo ended before its servers ran:\n" + "".join(seen))
        servers = [pid for pid in children(process.pid) if a_server(pid)]
        assert len(servers) == 2, (servers, seen)
        assert [path.name[:20] for path in tmp_path.iterdir()] == ["meldingstjener-demo-"]

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, output
        assert [pid for pid in servers if a_server(pid)] == []
        assert list(tmp_path.iterdir()) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in servers:  # only the demo's own servers, if the demo left them
            if a_server(pid):
                os.kill(pid, signal.SIGTERM)
