"""Timestamps and ISO 8601 durations as they appear in address-register records and CPP/CPAs.

The register writes local Norwegian time without an offset ("2023-04-04T00:00:00"); CPAs write
offsets or "Z". Naive values get Europe/Oslo attached so every datetime we hand out is aware and
comparable. Durations ("PT720M", "P4D") become :class:`datetime.timedelta`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

NORWAY = ZoneInfo("Europe/Oslo")

_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<years>\d+(?:\.\d+)?)Y)?(?:(?P<months>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)

# Years and months have no fixed length; retry and persistence settings never use them in
# practice, so a plain approximation is good enough and better than refusing the agreement.
_DAYS_PER_YEAR = 365
_DAYS_PER_MONTH = 30


def parse_duration(text: str) -> timedelta:
    """``"PT240M"`` -> 4 hours. ValueError with the offending text when it is not ISO 8601."""
    value = text.strip()
    match = _DURATION.match(value)
    if match is None or value in {"P", "-P"} or value.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {value[:40]!r} (expected e.g. PT720M or P4D)")
    parts = {name: float(v) for name, v in match.groupdict().items() if v and name != "sign"}
    days = (
        parts.get("years", 0.0) * _DAYS_PER_YEAR
        + parts.get("months", 0.0) * _DAYS_PER_MONTH
        + parts.get("weeks", 0.0) * 7
        + parts.get("days", 0.0)
    )
    result = timedelta(
        days=days,
        hours=parts.get("hours", 0.0),
        minutes=parts.get("minutes", 0.0),
        seconds=parts.get("seconds", 0.0),
    )
    return -result if match.group("sign") else result


def parse_timestamp(text: str | None) -> datetime | None:
    """An aware datetime, or None for a missing or unreadable value (records are not refused
    because of one odd date)."""
    if text is None:
        return None
    value = str(text).strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=NORWAY)
    return parsed
