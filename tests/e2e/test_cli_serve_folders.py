"""``serve`` with a ``[folder]`` folder that is not there (a share not mounted, a typo): it stops
at once with a configuration error naming the key (exit 2), and makes no folder. Made on the
local disk, the inbox would take received messages, each marked delivered, that the EPJ never
sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meldingstjener.devsites import free_port


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("folder.inbox_dir", 'inbox_dir = "{at}/mnt/epj/inn"'),
        ("folder.outbox_dir", 'outbox_dir = "{at}/mnt/epj/ut"'),
        ("folder.sent_dir", 'outbox_dir = "{at}/ut"\nsent_dir = "{at}/mnt/epj/sendt"'),
    ],
)
def test_serve_with_a_folder_that_is_not_there_exits_2_and_makes_nothing(
    tmp_path: Path, key: str, line: str
) -> None:
    (tmp_path / "ut").mkdir()
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {port}\n'
        f'[identity]\norganisation_her_id = "8100001"\n[folder]\n{line.format(at=tmp_path)}\n'
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
        _, stderr = process.communicate(timeout=60)  # it stops at once, or has started serving
    except subprocess.TimeoutExpired:
        process.terminate()
        process.communicate(timeout=30)
        pytest.fail("serve started with a folder that is not there")
    assert process.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if key in line]
    assert len(errors) == 1 and "does not exist" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "mnt").exists()  # neither the folder nor its parents
    assert sorted(p.name for p in (tmp_path / "ut").iterdir()) == []  # no sent/ either
