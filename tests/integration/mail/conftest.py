"""Fixtures for the mail tests (helpers are in mailtest_support.py)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailtest_support import (
    CA_FILE,
    CuttingProxy,
    MailSite,
    empty_mailbox,
    mail_pair,
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


@pytest.fixture
def pair(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_boxes: list[str],
    pki_template: Path,
) -> tuple[MailSite, MailSite]:
    """A GP office and a hospital exchanging ebXML by mail, their mailboxes emptied."""
    gp, hospital = mail_pair(tmp_path, monkeypatch, pki_template)
    fresh_boxes.append(gp.user)
    fresh_boxes.append(hospital.user)
    return gp, hospital
