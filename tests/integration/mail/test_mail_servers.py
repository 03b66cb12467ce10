"""Two real `meldingstjener serve` processes exchanging messages and receipts by mail only,
through the real Postfix and Dovecot: the servers send by SMTP and collect by IMAP themselves."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mailtest_support import _sites

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import RunningServer, dialog_question
from meldingstjener.engine.outbound import submit
from meldingstjener.model import Direction


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_two_servers_exchange_by_mail_only(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_boxes: list[str],
    pki_template: Path,
) -> None:
    gp_site, hospital_site = _sites(tmp_path, monkeypatch, pki_template)
    for site in (gp_site, hospital_site):
        fresh_boxes.append(site.edi_address)
        config = site.config_path.read_text().replace(
            "poll_interval_seconds = 3600", "poll_interval_seconds = 0.5"
        )
        site.config_path.write_text(config)
    servers = [
        RunningServer(gp_site, tmp_path / "gp.log").start(),
        RunningServer(hospital_site, tmp_path / "hospital.log").start(),
    ]
    gp = build_engine(load_settings(gp_site.config_path))
    hospital = build_engine(load_settings(hospital_site.config_path))
    try:
        message_id = submit(
            gp, dialog_question(gp_site, hospital_site, "Per e-post?"), actor="test"
        )

        def status() -> str:
            with gp.store.unit_of_work() as uow:
                row = uow.messages.get(message_id)
                return "" if row is None else row.status

        wait_for(lambda: status() == "transport-acknowledged", "the Acknowledgment by mail")
        with gp.store.unit_of_work() as uow:
            sent = uow.messages.get(message_id)
            assert sent is not None and sent.channel == "smtp"
        with hospital.store.unit_of_work() as uow:
            received = uow.messages.by_ebxml_id(Direction.INBOUND, str(sent.ebxml_message_id))
            assert received is not None
            assert (received.channel, received.status) == ("smtp", "acknowledged")
    finally:
        for server in servers:
            server.stop()
        gp.store.database.dispose()
        hospital.store.database.dispose()
