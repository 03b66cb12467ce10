"""Two revisions measured at the same time, so that both see the same machine.

On a shared machine the figures of ``throughput.py`` move by up to a quarter from one hour to
the next, more than most single changes are worth. This script checks the other revision out
into a temporary git worktree and starts its own ``throughput.py`` together with this
checkout's, with the same arguments. Both pairs of servers then share the cores and the database
server, so the per-message CPU of each (and each one's throughput, about half of what one alone
would reach) can be compared; a change is real when it shows in repeated runs.

Usage:
    python benchmarks/side_by_side.py REVISION [--runs 2] [-- throughput.py arguments]

The default throughput arguments are ``--messages 800 --backend postgresql --large-mb 0
--rate 10``. The PostgreSQL server's CPU is shared by both runs and printed for each as measured
(it is the whole server's, so read it as the sum of both).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARGUMENTS = ["--messages", "800", "--backend", "postgresql", "--large-mb", "0"]
DEFAULT_ARGUMENTS += ["--rate", "10"]

FIGURES = {
    "msg/s": re.compile(r"end to end \(submit -> Acknowledgment\):\s+([\d.]+) msg/s"),
    "GP ms": re.compile(r"CPU per message: GP server\s+([\d.]+) ms"),
    "hospital ms": re.compile(r"hospital server\s+([\d.]+) ms \("),
    "client ms": re.compile(r"this client\s+([\d.]+) ms"),
    "p50 ms": re.compile(r"offered\s+p50\s+([\d.]+) ms"),
    "p99 ms": re.compile(r"offered\s+p50\s+[\d.]+ ms\s+p99\s+([\d.]+) ms"),
}


def figures(output: str) -> dict[str, str]:
    found = {}
    for name, pattern in FIGURES.items():
        match = pattern.search(output)
        found[name] = match.group(1) if match else "?"
    return found


def start(checkout: Path, arguments: list[str]) -> subprocess.Popen[str]:
    environment = dict(os.environ, PYTHONPATH=str(checkout / "src"))
    return subprocess.Popen(
        [sys.executable, str(checkout / "benchmarks" / "throughput.py"), *arguments],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def split_at_double_dash(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's own arguments, and those after the first ``--`` for throughput.py.

    Split here rather than by argparse, which takes ``--`` only where its positionals end and so
    refused ``REVISION --runs 1 -- --messages 100``, the order the usage line shows.
    """
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision", help="the revision to compare this checkout with")
    parser.add_argument("--runs", type=int, default=2)
    own, throughput_arguments = split_at_double_dash(sys.argv[1:])
    args = parser.parse_args(own)
    arguments = throughput_arguments or DEFAULT_ARGUMENTS
    with tempfile.TemporaryDirectory(prefix="mt-side-by-side-") as scratch:
        other = Path(scratch) / "other"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.revision],
            check=True,
            capture_output=True,
        )
        try:
            print(f"{'run':<5}{'checkout':<14}" + "".join(f"{name:>13}" for name in FIGURES))
            for run in range(1, args.runs + 1):
                processes = {
                    args.revision[:12]: start(other, arguments),
                    "this checkout": start(ROOT, arguments),
                }
                outputs = {name: process.communicate()[0] for name, process in processes.items()}
                for name, output in outputs.items():
                    found = figures(output)
                    print(f"{run:<5}{name:<14}" + "".join(f"{v:>13}" for v in found.values()))
                    if "?" in found.values():
                        print(output[-2000:], file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                check=False,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
