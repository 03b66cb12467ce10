"""Message-type versions ("1.0", "1.1", "2.5", "1.10"): ordering and the newest common one.

Versions are compared part by part as numbers, so "1.10" is newer than "1.9". A part that is not
a number compares after numbers, by text, so odd values never crash the comparison.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SPLIT = re.compile(r"[.\-_p]")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() takes "²", which int() refuses


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    text = version.strip().lower().lstrip("v")
    parts = [p for p in _SPLIT.split(text) if p]
    return tuple((0, int(p)) if _DIGITS.fullmatch(p) else (1, p) for p in parts)


def normalise_version(version: str) -> str:
    """ "v1p1" (CPA package naming) and " 1.1 " -> "1.1"; trailing ".0" parts are kept."""
    key = version_key(version)
    return ".".join(str(value) for _, value in key) if key else version.strip()


def sort_versions(versions: Iterable[str]) -> tuple[str, ...]:
    """Distinct versions, newest first."""
    unique = {normalise_version(v): v for v in versions if v and v.strip()}
    return tuple(sorted(unique, key=version_key, reverse=True))


def choose_version(ours: Iterable[str], theirs: Iterable[str]) -> str | None:
    """The newest version both sides support, or None when they share none."""
    common = {normalise_version(v) for v in ours if v and v.strip()} & {
        normalise_version(v) for v in theirs if v and v.strip()
    }
    if not common:
        return None
    return max(common, key=version_key)
