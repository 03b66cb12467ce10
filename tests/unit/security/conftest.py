"""Fixtures for the security unit tests: one development PKI per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldingstjener.security.devpki import DevPki, init_pki

SENDER = "8141253"
RECEIVER = "79768"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_pki(tmp_path_factory.mktemp("pki"), [SENDER, RECEIVER])


@pytest.fixture(scope="session")
def pki_dir(pki: DevPki) -> Path:
    return pki.directory
