"""The ``revocation-unknown`` alert with several ``serve`` processes on one store, on SQLite and
PostgreSQL: one process raises it, and another that gets answers from the CA resolves it once
no process has seen the CA fail for a while; two that disagree do not raise and resolve it in
turn. Each process is its own :class:`Store` and its own validator (its own caches and memory
of failures) on the one database, and the CA's responder is a real one over HTTP.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "security"))
from ocsp_responder import Responder

from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.trust import REVOCATION_QUIET, certificate_problem
from meldingstjener.security.devpki import init_pki
from meldingstjener.security.revocation import FAILURE_MEMORY
from meldingstjener.security.validation import CertificateValidator
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.uow import Store


class Clock:
    """The processes' common time (hosts keep time), moved on by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Process:
    """One ``serve`` process's part in a revocation check: its store and its validator."""

    store: Store
    validator: CertificateValidator
    clock: Clock

    def check(self, certificate: x509.Certificate) -> None:
        certificate_problem(self.validator, certificate, "signing", self.clock(), store=self.store)


@dataclass
class Setting:
    responder: Responder
    clock: Clock
    a: Process
    b: Process

    def alerts(self) -> list[tuple[bool, int]]:
        """(open, count) of each revocation-unknown alert."""
        with self.a.store.unit_of_work() as uow:
            return [
                (alert.resolved_at is None, alert.count)
                for alert in uow.alerts.list(open_only=False, kind=AlertKind.REVOCATION_UNKNOWN)
            ]


@pytest.fixture
def setting(database_url: str, tmp_path: Path) -> Iterator[Setting]:
    responder = Responder(init_pki(tmp_path / "pki", ["1001"]))
    clock = Clock()
    databases: list[Database] = []

    def process(name: str) -> Process:
        database = Database(database_url)
        databases.append(database)
        # the OCSP answers kept no longer than a failure is remembered: each check after a
        # minute asks the responder again, as a process whose cache has run out does
        validator = CertificateValidator(
            [responder.pki.ca_certificate],
            clock=clock,
            timeout=0.5,
            cache_seconds=FAILURE_MEMORY.total_seconds(),
        )
        return Process(Store(database, PayloadStore(tmp_path / name)), validator, clock)

    yield Setting(responder, clock, process("a"), process("b"))
    responder.close()
    for database in databases:
        database.dispose()


def test_an_alert_raised_by_a_process_that_no_longer_asks_is_resolved_by_anothers_answers(
    setting: Setting,
) -> None:
    certificate = setting.responder.certificate()
    setting.b.check(certificate)  # b runs, and its answers settle the CA here
    setting.responder.mode = "garbage"  # the responder is away from a
    setting.a.check(certificate)
    assert setting.alerts() == [(True, 1)]
    # a stops (or never needs the CA again); the responder answers b
    setting.responder.mode = "good"
    setting.clock.advance(FAILURE_MEMORY + timedelta(seconds=1))
    setting.b.check(certificate)
    assert setting.alerts() == [(True, 1)]  # a may still fail: nobody has said otherwise yet
    setting.clock.advance(REVOCATION_QUIET)
    setting.b.check(certificate)
    assert setting.alerts() == [(False, 1)]


def test_an_alert_a_process_still_counts_is_not_resolved_by_anothers_answers(
    setting: Setting,
) -> None:
    # one certificate's address is away from a (a's network, or its own address), another
    # certificate of the CA is answered about to b: a's alert stays open, told once
    away = setting.responder.certificate(ocsp_path="/away")
    answered = setting.responder.certificate()
    setting.responder.away.add(away.serial_number)
    seen: list[bool] = []
    for _ in range(2 * int(REVOCATION_QUIET / FAILURE_MEMORY)):
        setting.a.check(away)
        setting.b.check(answered)
        [(still_open, _count)] = setting.alerts()
        seen.append(still_open)
        setting.clock.advance(FAILURE_MEMORY + timedelta(seconds=1))
    assert all(seen)  # raised once, counted since, never resolved between
    with setting.a.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=False, kind=AlertKind.REVOCATION_UNKNOWN)
        assert alert.changed_at == alert.first_seen  # told once
    # the address answers a again: a's own answer resolves it at once, as with one process
    setting.responder.away.clear()
    setting.a.check(away)
    assert [still_open for still_open, _ in setting.alerts()] == [False]


def test_a_process_that_starts_while_another_fails_leaves_its_alert_open(
    setting: Setting,
) -> None:
    away = setting.responder.certificate(ocsp_path="/away")
    answered = setting.responder.certificate()
    setting.responder.away.add(away.serial_number)
    setting.a.check(away)
    setting.b.check(answered)  # b's first answer after its start: a counted it just now
    assert setting.alerts() == [(True, 1)]
