"""What an alert's log line and text carry of values a sender chose: a mail's Message-Id named
as it is only when of the shape mail programs make, else by a digest; and no character of a
summary that is not printable reaches the server log."""

from __future__ import annotations

import logging

import pytest

from meldingstjener.engine.mail_channel import message_id_told
from meldingstjener.store import alert_log


@pytest.mark.parametrize(
    ("message_id", "host"),
    [
        ("20261205150601.4F2A1B@mail.legekontor.no", "mail.legekontor.no"),
        ("ola.nordmann.diabetes@legekontor.no", "legekontor.no"),  # words of a plain shape
        ("Kari Nordmann født 01.01.1970@legekontor.no", "legekontor.no"),
        ("abc\x1b[2J@relay", "relay"),  # a terminal's escape sequence
        ("abc\r\nalert 9 forged@relay", "relay"),  # a line of its own
        ("x@y@z", "z"),
        ("no-at-sign", None),
        ("abc@re lay\x1b", None),  # a host of no host's shape
        ("\udcff@\udcff", None),  # bytes the header's decoding could not read
    ],
)
def test_a_message_id_is_named_by_a_digest_and_its_host(message_id: str, host: str | None) -> None:
    # the part before "@" is the sender's choice: never told as it is
    told = message_id_told(message_id)
    at = f" @{host}" if host else ""
    assert told.startswith(f"a Message-Id{at} of SHA-256 ") and told.endswith("...")
    assert len(told) == len(f"a Message-Id{at} of SHA-256 ") + 16 + 3
    assert message_id.split("@")[0] not in told
    assert message_id_told(message_id) == told  # the same mail, the same name


def test_the_log_line_of_an_alert_has_no_character_that_is_not_printable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=alert_log.__name__)
    summary = "a\x1b[31m red\x00 \u202eright-to-left\x7f\nnext line\u2028end"
    alert_log.raised(7, "mail-quarantined", "warning", summary)
    alert_log.resolved(7, "mail-quarantined", "warning", summary)
    logged = [record.getMessage() for record in caplog.records]
    assert logged == [
        "alert 7 mail-quarantined raised (warning): a?[31m red? ?right-to-left? next line end",
        "alert 7 mail-quarantined resolved (was warning): a?[31m red? ?right-to-left? next line "
        "end",
    ]
