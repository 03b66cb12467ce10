"""Message ids and timestamps as ebMS 2.0 writes them.

MessageId is ``<uuid>@<host>`` (RFC 2822 msg-id shape, ebMS 2.0 3.1.6.1); timestamps are UTC,
ISO 8601 with a trailing ``Z`` (ebMS 2.0 3.1.6.2). Parsing is lenient where peers differ
harmlessly: any number of fraction digits (.NET writes seven; we keep microseconds), a numeric
offset instead of ``Z``, and a timestamp without a zone is read as UTC (the ebMS rule says it
*is* UTC).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$",
    re.ASCII,  # \d would take any script's digits
)
_HOST = re.compile(r"^[A-Za-z0-9.-]+$")


def is_message_id_host(host: str) -> bool:
    """Whether ``host`` may end a MessageId (and a mail's Message-Id and content-ids): a DNS
    name or an IPv4 address, letters, digits, dots and hyphens."""
    return bool(_HOST.match(host))


def new_message_id(host: str) -> str:
    """A fresh, globally unique MessageId such as ``3f0c...-...@msh.example.no``."""
    if not is_message_id_host(host):
        raise ValueError(f"not a host name for a message id: {host[:40]!r}")
    return f"{uuid.uuid4()}@{host}"


def format_timestamp(moment: datetime) -> str:
    """``moment`` in UTC as ``YYYY-MM-DDThh:mm:ss[.ffffff]Z``; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    utc = moment.astimezone(UTC)
    timespec = "microseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from an xsd:dateTime; ValueError when it is not one."""
    match = _TIMESTAMP.match(text.strip())
    if not match:
        raise ValueError("not an ISO 8601 date-time")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "0")[:6].ljust(6, "0")
    zone = match.group(8)
    tz: timezone = UTC
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    moment = datetime(year, month, day, hour, minute, second, int(fraction), tzinfo=tz)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of UTC, 9999-12-31 west of it
        raise ValueError("a date-time outside the years 1-9999 in UTC") from None
