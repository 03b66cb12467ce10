"""A message's last error is its newest failure (help-desk finding 3).

A message whose sends failed first one way, then another (connection refused, then 503s) kept
the first failure as its last error, "next attempt" long past, in ``status`` while it was
retried and as the history of it once acknowledged; a resend for want of an Acknowledgment
left the failed send before it as the last error."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from engine_pair import Pair
from typer.testing import CliRunner

from meldingstjener.cli import app
from meldingstjener.devsites import dialog_note
from meldingstjener.engine.outbound import submit
from meldingstjener.engine.worker import Worker
from meldingstjener.transport.base import Delivery, TransportFailure, TransportResult


def cli(pair: Pair, *args: str) -> tuple[int, str]:
    """``meldingstjener ARGS`` on the GP office's store."""
    result = CliRunner().invoke(app, ["--config", str(pair.gp_site.config_path), *args])
    return result.exit_code, result.output


@dataclass
class _Failing:
    """Fails with ``failures`` in turn, then hands over to the pair's network."""

    pair: Pair
    failures: list[tuple[str, str]]
    channel: str = "http"

    def send(self, delivery: Delivery) -> TransportResult:
        if self.failures:
            code, detail = self.failures.pop(0)
            raise TransportFailure(code, detail)
        return self.pair.network.send(delivery)


def test_the_last_error_is_the_newest_failure(pair: Pair) -> None:
    # Connection refused first, then 503s: the last error stayed "connect-failed ... next
    # attempt <long past>" through every 503, and the acknowledged message's history showed it.
    failing = _Failing(pair, [("connect-failed", "refused"), ("http-503", "503 one")])
    failing.failures.append(("http-503", "503 two"))
    pair.gp.transports = {"http": failing}  # type: ignore[dict-item]
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).last_error_code == "connect-failed"
    for detail in ("503 one", "503 two"):
        pair.clock.advance(minutes=11)
        pair.run()
        row = pair.message(pair.gp, message_id)
        due = f"next attempt {pair.clock() + timedelta(minutes=10):%Y-%m-%d %H:%M:%S} UTC"
        assert (row.status, row.last_error_code) == ("retrying", "http-503")
        assert row.last_error_text == f"{detail}; {due}"
    code, output = cli(pair, "status", message_id)
    assert f"last error: http-503 503 two; {due}" in " ".join(output.split())
    pair.clock.advance(minutes=11)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"
    code, output = cli(pair, "status", message_id)
    assert code == 0, output
    assert f"history, before it was transport-acknowledged: http-503 503 two; {due}" in " ".join(
        output.split()
    )


def test_a_missing_acknowledgment_is_the_last_error_of_the_resend(pair: Pair) -> None:
    pair.gp.transports = {"http": _Failing(pair, [("connect-failed", "refused")])}  # type: ignore[dict-item]
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, "x"), actor="t")
    pair.run()
    pair.network.down.add(pair.gp_site.endpoint)  # the Acknowledgment of the next is lost
    pair.clock.advance(minutes=11)
    pair.run()
    assert pair.message(pair.gp, message_id).status == "sent"
    pair.clock.advance(minutes=11)
    Worker(pair.gp, "gp").run_until_idle()  # the ack-timeout, and its resend (lost again)
    row = pair.message(pair.gp, message_id)
    assert row.last_error_code == "ack-missing"
    assert row.last_error_text == "no Acknowledgment within the retry interval; resending"
