"""The JSON lines log format: one object per record with time, level, logger and message, the
structured values of ``extra=`` and a logged exception."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from meldingstjener.cli.logging_setup import JsonLinesFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "meldingstjener.engine", logging.WARNING, "x.py", 1, message, args, None
    )
    made.created = 1_800_000_000.25
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_record_is_one_line_of_json() -> None:
    line = JsonLinesFormatter().format(record("took back %d job(s)\nafter a restart", 2))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250+00:00",
        "level": "WARNING",
        "logger": "meldingstjener.engine",
        "message": "took back 2 job(s)\nafter a restart",
    }


def test_extras_and_exceptions_are_kept() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        failed = record("job failed", message_id="abc", attempts=3, path=Path("/x"))
        failed.exc_info = sys.exc_info()
    document = json.loads(JsonLinesFormatter().format(failed))
    assert (document["message_id"], document["attempts"], document["path"]) == ("abc", 3, "/x")
    assert document["exception"].startswith("Traceback")
    assert "ValueError: broken" in document["exception"]
