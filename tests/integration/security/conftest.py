"""Fixtures for interop tests against tools we did not write: openssl and xmlsec1."""

from __future__ import annotations

import pytest

from meldingstjener.security.devpki import DevPki, init_pki

SENDER = "8141253"
RECEIVER = "79768"


@pytest.fixture(scope="session")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_pki(tmp_path_factory.mktemp("interop-pki"), [SENDER, RECEIVER])
