"""The server log's line for each alert (avvik) opened, reopened or resolved.

Monitoring that reads only the journal must see an alert the moment it is raised, not only in
the database, the console or a webhook. One line when an alert opens (or a resolved one comes
back), one when it is resolved; a repeat of an open alert, or a lasting state counted again,
logs nothing (a partner down for a night is one line, not one per send). Opened: WARNING for a
``warning``, ERROR for an ``error`` or ``critical`` alert; resolved: INFO.

The line carries the alert's id, kind, severity and summary. A summary is written by our own
code from ids, codes and counts (message ids, eb:MessageIds, HER-ids, message types, paths of
our own folders; ``engine.alerts``), never from a fagmelding, and masked by ``redact`` when
stored: what the console and webhooks show of it already. A value a sender chose that may carry
more (a mail's Message-Id) is named by a digest and its host alone. It is logged as
stored, on one line, every character that is not printable a ``?``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

# the log level of an alert opened, by its severity (an unknown one is logged as an error)
LEVELS = {"warning": logging.WARNING, "error": logging.ERROR, "critical": logging.ERROR}


def raised(alert_id: int, kind: str, severity: str, summary: str) -> None:
    """Log an alert opened, or reopened (a resolved problem come back)."""
    log.log(
        LEVELS.get(severity, logging.ERROR),
        "alert %d %s raised (%s): %s",
        alert_id,
        kind,
        severity,
        _one_line(summary),
    )


def resolved(
    alert_id: int, kind: str, severity: str, summary: str, *, by: str | None = None
) -> None:
    """Log an alert resolved: by the server (the problem went away) or by hand (``by``)."""
    log.info(
        "alert %d %s resolved%s (was %s): %s",
        alert_id,
        kind,
        f" by {by}" if by else "",
        severity,
        _one_line(summary),
    )


def all_resolved(alerts: Iterable[tuple[int, str, str, str]]) -> None:
    """Log each alert (id, kind, severity, summary) a statement resolved."""
    for alert_id, kind, severity, summary in alerts:
        resolved(alert_id, kind, severity, summary)


def _one_line(summary: str) -> str:
    """The summary on one line, of printable characters: a journal reader takes a line for an
    entry, and a control character of a received value (an escape sequence, a right-to-left
    mark) must not rewrite what a terminal shows of it. Each other one is a ``?``."""
    return "".join(
        character if character.isprintable() else "?" for character in " ".join(summary.split())
    )
