"""Reading the body of an HTTP answer whose size and pace the peer controls.

A partner's SyncReply, the address register's or the CPPA service's answer: read whole, an
answer without end fills the memory, and one trickled a byte at a time holds the caller (an
HTTP client's time-out is for each read). :func:`read_capped` reads a streamed ``httpx``
response in pieces, up to a size and, if given, a deadline; the caller says in its own words
what either means for it.
"""

from __future__ import annotations

import time

import httpx


class BodyTooLarge(Exception):
    """The body is longer than the limit (or its Content-Length says it will be)."""


class BodyTooSlow(Exception):
    """The body was not all read by the deadline."""


def read_capped(response: httpx.Response, limit: int, *, deadline: float | None = None) -> bytes:
    """The body of a ``stream=True`` response, decompressed, at most ``limit`` bytes, read by
    ``deadline`` (on :func:`time.monotonic`; checked between reads, so the last read may add
    one read time-out). Raises :class:`BodyTooLarge` or :class:`BodyTooSlow`."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    pieces: list[bytes] = []
    size = 0
    for piece in response.iter_bytes():
        size += len(piece)
        if size > limit:
            raise BodyTooLarge
        pieces.append(piece)
        if deadline is not None and time.monotonic() > deadline:
            raise BodyTooSlow
    return b"".join(pieces)
