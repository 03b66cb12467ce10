"""Fixtures for the registry integration tests: sample paths, and the fake address register
served over HTTP with our client on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meldingstjener.registry.ar_client import ArClient
from meldingstjener.registry.auth import StaticToken
from meldingstjener.registry.fakes import FakeAddressRegister, serve


@pytest.fixture
def ar_samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "ar"


@pytest.fixture
def cpa_samples(reference_dir: Path) -> Path:
    return reference_dir / "samples" / "cpa"


@pytest.fixture(params=[True, False], ids=["bulk", "one-by-one"])
def register(request: pytest.FixtureRequest) -> Iterator[tuple[FakeAddressRegister, ArClient]]:
    """The fake register, with its bulk lookup and without (the client asks party by party)."""
    fake = FakeAddressRegister()
    fake.bulk_supported = request.param
    with serve(fake) as url:
        client = ArClient(url, StaticToken(""))
        yield fake, client
        client.close()
