"""``serve`` with ``[logging] json_lines = true``: every log line it writes is a JSON object,
its own and those of the libraries it runs (uvicorn, alembic) alike."""

from __future__ import annotations

import json
from pathlib import Path

from serving import serve_until_healthy

from meldingstjener.devsites import free_port


def test_serve_writes_json_lines(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {port}\n'
        '[identity]\norganisation_her_id = "8100001"\n'
        '[logging]\nlevel = "INFO"\njson_lines = true\n'
    )
    _, stderr = serve_until_healthy(config, port)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "serve logged nothing at INFO"
    documents = [json.loads(line) for line in lines]  # every line is one JSON object
    for document in documents:
        assert {"time", "level", "logger", "message"} <= document.keys()
        assert "color_message" not in document  # uvicorn's copy for terminals
    loggers = {document["logger"] for document in documents}
    assert "uvicorn.error" in loggers  # uvicorn's records too, not its own text format
