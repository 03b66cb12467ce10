"""The time window and order of the operator's searches (``GET /api/log``, ``GET /api/audit``).

Newest first: oldest first and capped by ``limit``, the newest rows were out of reach unless the
operator guessed a ``since`` close enough to now. Older rows are reached by paging back with
``until``. A time without a zone is UTC, as ``meldingstjener log --since`` takes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query

PAGING = (
    "Newest first, at most `limit` rows. For older rows ask again with `until` set to the time "
    "of the last row received: rows of that very time come again (skip those by id). Times "
    "without a zone are UTC."
)
Since = Annotated[datetime | None, Query(description="Only rows at or after this time")]
Until = Annotated[datetime | None, Query(description="Only rows at or before this time")]
