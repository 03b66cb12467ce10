"""Fixtures for the mail tests (helpers are in mailtest_support.py)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailtest_support import (
    CA_FILE,
    CuttingProxy,
    empty_mailbox,
    make_pki_template,
    require_mail_server,
)


@pytest.fixture(scope="session")
def mail_server() -> None:
    """The local mail server, or a skip (a failure in CI, where .ci/run installs it)."""
    require_mail_server()


@pytest.fixture(scope="session")
def tls_context(mail_server: None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(CA_FILE))


@pytest.fixture
def fresh_boxes(tls_context: ssl.SSLContext) -> Iterator[list[str]]:
    """Empties the mailboxes a test names (call ``.append(user)``); empties them again after."""
    users: list[str] = []

    class _Boxes(list[str]):
        def append(self, user: str) -> None:
            empty_mailbox(user, tls_context)
            users.append(user)
            super().append(user)

    yield _Boxes()
    for user in users:
        empty_mailbox(user, tls_context)


@pytest.fixture
def proxy_factory() -> Iterator[list[CuttingProxy]]:
    """Proxies a test starts (append them); closed after the test."""
    proxies: list[CuttingProxy] = []
    yield proxies
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="session")
def pki_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Development keys for the two sites, shared by every test (copied, never changed)."""
    return make_pki_template(tmp_path_factory.mktemp("mail-pki"))
