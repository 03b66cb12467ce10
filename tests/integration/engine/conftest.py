"""Fixtures for the engine tests: a pair of engines (see ``engine_pair``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_pair import Pair, make_pair


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = make_pair(tmp_path, retry_interval_seconds=600, retries=3, persist_duration_seconds=3600)
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()
