"""``serve`` with a ``[folder]`` folder that is not there (a share not mounted yet, a typo): it
names the key on its standard error, makes no folder and starts all the same. Made on the local
disk, the inbox would take received messages, each marked delivered, that the EPJ never sees;
refusing to start would keep every partner's messages out for a share mounted late at boot
(the side that lacks its folder waits for it, with an alert: tests/integration/api/
test_folder_missing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving import serve_until_healthy

from meldingstjener.devsites import free_port


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("folder.inbox_dir", 'inbox_dir = "{at}/mnt/epj/inn"'),
        ("folder.outbox_dir", 'outbox_dir = "{at}/mnt/epj/ut"'),
        ("folder.sent_dir", 'outbox_dir = "{at}/ut"\nsent_dir = "{at}/mnt/epj/sendt"'),
    ],
)
def test_serve_with_a_folder_that_is_not_there_names_it_makes_nothing_and_serves(
    tmp_path: Path, key: str, line: str
) -> None:
    (tmp_path / "ut").mkdir()
    port = free_port()
    config = tmp_path / "c.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[server]\nport = {port}\n'
        f'[identity]\norganisation_her_id = "8100001"\n[folder]\n{line.format(at=tmp_path)}\n'
    )
    code, stderr = serve_until_healthy(config, port)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith(f"warning: {key}:")]
    assert len(warnings) == 1 and "does not exist" in warnings[0], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "mnt").exists()  # neither the folder nor its parents
    made = {path.name for path in (tmp_path / "ut").iterdir()}
    assert made <= {"failed", ".meldingstjener"}  # no sent/ in place of the one configured
