"""Keeping patient data out of logs and event texts.

Event and alert texts are written by our own code from ids and codes, never copied from payloads.
As a second line of defence, :func:`redact` masks anything shaped like a Norwegian national
identity number (fødselsnummer / D-nummer: 11 digits) before text is stored or logged.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable

# A national identity number stands as its own token: digits inside a hex id, a UUID or a file
# name are not one (and masking them would garble the very ids an operator needs).
_NATIONAL_ID = re.compile(r"(?<![\w-])\d{6}[ -]?\d{5}(?![\w-])")


# Inside a code nothing is an id of ours: eleven digits anywhere in it, glued to letters or
# not ("Pasient_01017012345"), may be a national identity number
_ELEVEN_DIGITS = re.compile(r"\d{6}\D?\d{5}")


def redact(text: str | None) -> str | None:
    if text is None:
        return None
    return _NATIONAL_ID.sub("[redacted-id]", text)


def redact_all(value: object) -> object:
    """A stored structure (a receipt's error codes: lists of objects of codes and texts) with
    every text in it masked by :func:`redact`, and each ``code`` also by any eleven digits in
    it (inside a code nothing is an id of ours); keys and numbers as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [redact_all(item) for item in value]
    if isinstance(value, dict):
        return {
            key: _ELEVEN_DIGITS.sub("[redacted-id]", str(redact(item)))
            if key == "code" and isinstance(item, str)
            else redact_all(item)
            for key, item in value.items()
        }
    return value


def partner_code(value: str | None, shape: re.Pattern[str], *, limit: int = 64) -> str:
    """A code a partner sent (an ebXML errorCode, an AppRec Error V), fit for our texts and
    code columns: as sent when it has the ``shape`` of a code and hides no national identity
    number, cut to ``limit`` (what the columns hold); anything else is ``?``. A partner's field
    may hold any text, and a text where a code belongs may quote the message."""
    value = None if value is None else value.strip()
    if value is None or not shape.fullmatch(value) or _ELEVEN_DIGITS.search(value):
        return "?"
    return value[:limit]


def codes_shown(codes: Iterable[str], *, most: int = 10) -> str:
    """Codes (already made fit by :func:`partner_code`) for a log line or an alert: each once,
    in the order met, ``most`` of them and a count of the rest."""
    shown = list(dict.fromkeys(codes))
    more = len(shown) - most
    return ", ".join(shown[:most]) + (f" and {more} more" if more > 0 else "")


def passed_through(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the errors it came from, with their class names and
    source lines but not their texts: what a log line shows of an error instead of
    ``exc_info``. An exception's text may quote what it was given (an element name or value of
    a received message, a database's DETAIL line); where it failed is what the help desk needs.
    """
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        lines.append(f"{kind.__module__}.{kind.__qualname__}, raised through:\n")
        lines.extend(traceback.format_tb(current.__traceback__))
        current = current.__cause__ or current.__context__
    return "".join(lines).rstrip("\n")
