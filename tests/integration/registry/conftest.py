"""Fixtures for the registry integration tests: sample paths and agreement builders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def ar_samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "ar"


@pytest.fixture
def cpa_samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "cpa"
