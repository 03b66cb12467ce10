"""What an alert's log line and text carry of values a sender chose: a mail's Message-Id named
as it is only when of the shape mail programs make, else by a digest; and no character of a
summary that is not printable reaches the server log."""

from __future__ import annotations

import logging

import pytest

from meldingstjener.engine.mail_channel import message_id_told
from meldingstjener.store import alert_log


@pytest.mark.parametrize(
    "message_id",
    [
        "20261205150601.4F2A1B@mail.legekontor.no",
        "CAFx+abc=def_0-9$#%@mail.gmail.com",
    ],
)
def test_a_message_id_of_the_shape_mail_programs_make_is_named_as_it_is(message_id: str) -> None:
    assert message_id_told(message_id) == f"Message-Id {message_id}"


@pytest.mark.parametrize(
    "message_id",
    [
        "Kari Nordmann født 01.01.1970@legekontor.no",  # words, spaces: not generated
        "abc\x1b[2J@relay",  # a terminal's escape sequence
        "abc\r\nalert 9 forged@relay",  # a line of its own
        "a" * 64 + "@" + "b" * 64,  # longer than the safe length
        "no-at-sign",
        "x@y@z",
        "\udcff@relay",  # a byte the header's decoding could not read
    ],
)
def test_any_other_message_id_is_named_by_a_digest(message_id: str) -> None:
    told = message_id_told(message_id)
    assert told.startswith("a Message-Id of SHA-256 ") and told.endswith("...")
    assert len(told) == len("a Message-Id of SHA-256 ") + 16 + 3
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
