"""How ``serve`` writes its log: text lines for people, or JSON lines for log collectors.

``[logging] json_lines = true`` writes one JSON object per line: ``time`` (UTC, ISO 8601),
``level``, ``logger`` and ``message``, then any structured values a log call passes with
``extra={...}``, and ``exception`` (the traceback as text) when one is logged. The standard
library's ``logging`` does it all; a collector needs no parser of our text format.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has: whatever else a record carries came from ``extra=``.
# uvicorn's ``color_message`` is its message again with terminal colours: no use in a collector.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName", "color_message"}
)


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in the text are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # a value JSON has no type for (a path, a datetime) is written as its text
        return json.dumps(document, ensure_ascii=False, default=str)


def configure_logging(level: str, *, json_lines: bool = False) -> None:
    """Send the root logger's records at ``level`` and above to stderr, as text or JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLinesFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    # not forced: a process whose logging is set up already (a test's capture) keeps it
    logging.basicConfig(level=level, handlers=[handler])
