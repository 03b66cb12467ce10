"""``serve`` with ``[logging] json_lines = true``: every log line it writes is a JSON object,
its own and those of the libraries it runs (uvicorn, alembic) alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from meldingstjener.devsites import free_port


def test_serve_writes_json_lines(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {port}\n'
        '[identity]\norganisation_her_id = "8100001"\n'
        '[logging]\nlevel = "INFO"\njson_lines = true\n'
    )
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
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "serve logged nothing at INFO"
    documents = [json.loads(line) for line in lines]  # every line is one JSON object
    for document in documents:
        assert {"time", "level", "logger", "message"} <= document.keys()
        assert "color_message" not in document  # uvicorn's copy for terminals
    loggers = {document["logger"] for document in documents}
    assert "uvicorn.error" in loggers  # uvicorn's records too, not its own text format
