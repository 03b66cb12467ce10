"""The ``revocation-unknown`` alert with several ``serve`` processes on one store, on SQLite and
PostgreSQL: each process keeps its own alert of a CA, raised and resolved by its own answers
alone. One that fails and checks seldom is not resolved by another's answers meanwhile (nor
raised again, told anew, at its next check); one whose outage ends does not resolve another's.
Each process is its own :class:`Store` and its own validator (its own caches and memory of
failures) on the one database, and the CA's responder is a real one over HTTP.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "security"))
from ocsp_responder import Responder

from meldingstjener.engine.alerts import AlertKind, keep_alert
from meldingstjener.engine.trust import certificate_problem, revocation_alert_key
from meldingstjener.security.devpki import init_pki
from meldingstjener.security.revocation import FAILURE_MEMORY
from meldingstjener.security.validation import CertificateValidator
from meldingstjener.store.database import Database
from meldingstjener.store.payloads import PayloadStore
from meldingstjener.store.uow import Store

ALERT_LOG = "meldingstjener.store.alert_log"


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

    name: str
    store: Store
    validator: CertificateValidator
    clock: Clock

    def check(self, certificate: x509.Certificate) -> None:
        certificate_problem(
            self.validator,
            certificate,
            "signing",
            self.clock(),
            store=self.store,
            instance=self.name,
        )


@dataclass
class Setting:
    responder: Responder
    clock: Clock
    a: Process
    b: Process

    def alerts(self) -> dict[str, tuple[bool, int]]:
        """(open, count) of each revocation-unknown alert, by the instance its text names."""
        with self.a.store.unit_of_work() as uow:
            found = uow.alerts.list(open_only=False, kind=AlertKind.REVOCATION_UNKNOWN)
        return {
            alert.summary.split(":")[0].removeprefix("Instance "): (
                alert.resolved_at is None,
                alert.count,
            )
            for alert in found
        }


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
        return Process(name, Store(database, PayloadStore(tmp_path / name)), validator, clock)

    yield Setting(responder, clock, process("a"), process("b"))
    responder.close()
    for database in databases:
        database.dispose()


def test_a_process_that_fails_and_checks_seldom_keeps_its_alert_while_another_is_answered(
    setting: Setting, caplog: pytest.LogCaptureFixture
) -> None:
    # a reaches not the address one certificate of the CA names, and checks it seldom (the soft
    # policy: only a message signed with it brings a check); b is answered about another
    # certificate of the CA every minute. a's alert is a's: open from its first check to the
    # end, told once, with one log line
    caplog.set_level(logging.INFO, logger=ALERT_LOG)
    away = setting.responder.certificate(ocsp_path="/away")
    answered = setting.responder.certificate()
    setting.responder.away.add(away.serial_number)
    seen: list[dict[str, tuple[bool, int]]] = []
    for minute in range(45):
        if minute % 12 == 0:
            setting.a.check(away)
        setting.b.check(answered)
        seen.append(setting.alerts())
        setting.clock.advance(FAILURE_MEMORY + timedelta(seconds=1))
    assert all(alerts.keys() == {"a"} and alerts["a"][0] for alerts in seen)
    assert seen[-1] == {"a": (True, 4)}  # counted at each of a's checks, never resolved
    with setting.a.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=False, kind=AlertKind.REVOCATION_UNKNOWN)
        assert alert.changed_at == alert.first_seen  # told once
    assert len([r for r in caplog.records if r.name == ALERT_LOG]) == 1
    # the address answers a again: a's own answer resolves it at once
    setting.responder.away.clear()
    setting.a.check(away)
    assert setting.alerts() == {"a": (False, 4)}


def test_a_process_whose_outage_ends_leaves_anothers_alert_open(setting: Setting) -> None:
    first = setting.responder.certificate(ocsp_path="/away")
    second = setting.responder.certificate(ocsp_path="/away")
    setting.responder.away.update({first.serial_number, second.serial_number})
    setting.a.check(first)
    setting.b.check(second)
    assert setting.alerts() == {"a": (True, 1), "b": (True, 1)}
    setting.clock.advance(FAILURE_MEMORY + timedelta(seconds=1))
    setting.responder.away.discard(first.serial_number)
    setting.b.check(second)  # b still fails
    setting.a.check(first)  # a's outage ended
    assert setting.alerts() == {"a": (False, 1), "b": (True, 2)}
    setting.clock.advance(FAILURE_MEMORY + timedelta(seconds=1))
    setting.b.check(second)
    assert setting.alerts() == {"a": (False, 1), "b": (True, 3)}  # not reopened: counted


def test_a_process_that_starts_resolves_what_its_run_before_left_open_and_only_that(
    setting: Setting,
) -> None:
    away = setting.responder.certificate(ocsp_path="/away")
    answered = setting.responder.certificate()
    setting.responder.away.add(away.serial_number)
    setting.a.check(away)
    setting.b.check(away)
    setting.b.check(answered)  # b's answers are not a's: a's alert stays
    assert setting.alerts() == {"a": (True, 1), "b": (True, 1)}
    # a starts again (a store of its own, no memory): its first answer from the CA settles
    # what its run before left, not b's
    restarted = Process(
        "a",
        Store(setting.a.store.database, setting.a.store.payloads),
        setting.a.validator,
        setting.clock,
    )
    setting.responder.away.clear()
    restarted.check(answered)
    assert setting.alerts() == {"a": (False, 1), "b": (True, 1)}


def test_a_check_that_names_no_instance_is_refused(setting: Setting) -> None:
    with pytest.raises(TypeError):
        certificate_problem(
            setting.a.validator,
            setting.responder.certificate(),
            "signing",
            setting.clock(),
            store=setting.a.store,
        )


def test_an_alert_of_a_version_before_alerts_named_their_instance_is_resolved_by_an_answer(
    setting: Setting,
) -> None:
    certificate = setting.responder.certificate()
    issuer = setting.responder.pki.ca_certificate
    legacy = revocation_alert_key("a", issuer).removeprefix("a/")
    with setting.a.store.unit_of_work() as uow:
        keep_alert(
            uow, AlertKind.REVOCATION_UNKNOWN, "left by an upgrade", at=setting.clock(), key=legacy
        )
        uow.commit()
    setting.b.check(certificate)
    with setting.a.store.unit_of_work() as uow:
        [alert] = uow.alerts.list(open_only=False, kind=AlertKind.REVOCATION_UNKNOWN)
        assert alert.resolved_at is not None
