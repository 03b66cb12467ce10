"""Fixtures for the business-message tests: the fagmelding samples and the KITH schemas."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "fagmelding"


@pytest.fixture(scope="session")
def kith_xsd(reference_dir: Path) -> Path:
    return reference_dir / "xsd" / "kith"
