"""Fixtures for the engine tests: a pair of engines (see ``engine_pair``), on SQLite, or with
one side's store on each backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_pair import Pair, make_pair


def _pair(tmp_path: Path, **database_urls: str) -> Iterator[Pair]:
    made = make_pair(
        tmp_path,
        retry_interval_seconds=600,
        retries=3,
        persist_duration_seconds=3600,
        **database_urls,  # type: ignore[arg-type]
    )
    yield made
    made.gp.store.database.dispose()
    made.hospital.store.database.dispose()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    yield from _pair(tmp_path)


@pytest.fixture
def pair_with_gp_database(tmp_path: Path, database_url: str) -> Iterator[Pair]:
    """The ``pair`` with the GP office's store on each backend."""
    yield from _pair(tmp_path, gp_database_url=database_url)


@pytest.fixture
def pair_with_hospital_database(tmp_path: Path, database_url: str) -> Iterator[Pair]:
    """The ``pair`` with the hospital's store on each backend."""
    yield from _pair(tmp_path, hospital_database_url=database_url)
