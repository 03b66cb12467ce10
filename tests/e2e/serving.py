"""``meldingstjener serve`` as a subprocess, for the tests of what it says as it starts: run
until it answers on ``/health``, then stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def serve_until_healthy(config: Path, port: int) -> tuple[int, str]:
    """Start serve with ``config`` (listening on ``port``; no MELDINGSTJENER_ variables of
    this environment), wait until ``/health`` answers 200, stop it: its exit code and standard
    error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "meldingstjener", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not answer"
                time.sleep(0.1)  # waiting for the port to open: nothing to synchronise on
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr
