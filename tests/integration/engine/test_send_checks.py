"""Before each send, first or resend, the checks submit made are made again: a message queued
while its receiver was down does not go out to a revoked encryption certificate, under an ended
agreement or to a receiver the register has inactive (given up: ``not-delivered`` and its
alert), and waits while its agreement is suspended (held until resumed or PersistDuration)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta

import pytest
from engine_pair import Pair

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import load_settings
from meldingstjener.devsites import dialog_note
from meldingstjener.engine import transmit
from meldingstjener.engine.alerts import AlertKind
from meldingstjener.engine.outbound import submit
from meldingstjener.security.devpki import revoke
from meldingstjener.store.uow import UnitOfWork

SECRET = "Kari Nordmann har hjertesvikt"  # patient data: in no alert or event


def _queued(pair: Pair) -> str:
    """A message submitted while the hospital is down: one attempt failed, it is retrying."""
    pair.network.down.add(pair.hospital_site.endpoint)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    pair.run()
    assert pair.message(pair.gp, message_id).status == "retrying"
    pair.network.down.clear()
    return message_id


def _change(pair: Pair, change: object) -> None:
    with pair.gp.store.unit_of_work() as uow:
        change(uow, pair.clock())  # type: ignore[operator]
        uow.commit()


def _suspend(state: str) -> object:
    def change(uow: UnitOfWork, now: datetime) -> None:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.state = state

    return change


def _not_delivered_alert(pair: Pair, message_id: str) -> str:
    with pair.gp.store.unit_of_work() as uow:
        alerts = [
            a
            for a in uow.alerts.list(open_only=True, kind=AlertKind.NOT_DELIVERED)
            if a.message_id == message_id
        ]
        events = [str(e.detail) for e in uow.events.for_message(message_id)]
    assert len(alerts) == 1
    summary = str(alerts[0].summary)
    assert "another way" in summary
    assert all(SECRET not in text for text in [summary, *events])
    return summary


def _given_up_unsent(pair: Pair, message_id: str, attempts: int = 1) -> str:
    row = pair.message(pair.gp, message_id)
    assert row.status == "not-delivered"
    assert row.attempts == attempts  # the failed first attempt only: nothing more was sent
    assert pair.inbound_messages(pair.hospital) == []
    return _not_delivered_alert(pair, message_id)


def _gp_restarted(pair: Pair) -> None:
    """The GP office's server restarts (and reads the CA's new CRL)."""
    pair.gp.store.database.dispose()
    gp = build_engine(load_settings(pair.gp_site.config_path), clock=pair.clock)
    gp.transports = {"http": pair.network}
    pair.network.engines[pair.gp_site.endpoint] = gp
    pair.gp = gp


def _revoke_hospital_encryption_certificate(pair: Pair) -> None:
    pki = pair.gp_site.directory.parent / "pki"
    revoke(pki, pki / "8200001-enc.pem", when=pair.clock())
    _gp_restarted(pair)


def test_a_queued_message_is_not_resent_to_a_revoked_encryption_certificate(pair: Pair) -> None:
    message_id = _queued(pair)
    _revoke_hospital_encryption_certificate(pair)
    pair.clock.advance(minutes=11)
    pair.run()
    summary = _given_up_unsent(pair, message_id)
    assert "encryption certificate" in summary and "revoked" in summary


def test_a_first_send_is_not_made_to_a_revoked_encryption_certificate(pair: Pair) -> None:
    # accepted, then the certificate is revoked before the worker sends it (a backlog)
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    _revoke_hospital_encryption_certificate(pair)
    pair.run()
    summary = _given_up_unsent(pair, message_id, attempts=0)
    assert "revoked" in summary


def test_a_queued_message_is_given_up_when_its_agreement_has_ended(pair: Pair) -> None:
    message_id = _queued(pair)

    def end(uow: UnitOfWork, now: datetime) -> None:
        agreement = uow.agreements.for_pair("8100001", "8200002")
        assert agreement is not None
        agreement.valid_to = now + timedelta(minutes=5)

    _change(pair, end)
    pair.clock.advance(minutes=11)
    pair.run()
    assert "ended" in _given_up_unsent(pair, message_id)


def test_a_queued_message_is_given_up_when_the_register_has_the_receiver_inactive(
    pair: Pair,
) -> None:
    message_id = _queued(pair)

    def inactive(uow: UnitOfWork, now: datetime) -> None:
        party = uow.parties.get("8200002")
        assert party is not None
        party.active = False

    _change(pair, inactive)
    pair.clock.advance(minutes=11)
    pair.run()
    assert "inactive in the address register" in _given_up_unsent(pair, message_id)


def test_a_suspended_agreement_holds_a_queued_message_until_it_is_resumed(
    pair_with_gp_database: Pair,
) -> None:
    pair = pair_with_gp_database
    message_id = _queued(pair)
    _change(pair, _suspend("suspended"))
    for _ in range(3):  # 33 minutes of the hour's PersistDuration
        pair.clock.advance(minutes=11)
        pair.run()
        row = pair.message(pair.gp, message_id)
        assert row.status == "retrying" and row.attempts == 1  # held: not sent, no Retry used
        assert pair.inbound_messages(pair.hospital) == []
    with pair.gp.store.unit_of_work() as uow:
        codes = [e.code for e in uow.events.for_message(message_id)]
    assert "agreement-suspended" in codes
    _change(pair, _suspend("active"))
    pair.clock.advance(minutes=11)
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-acknowledged" and row.attempts == 2
    assert len(pair.inbound_messages(pair.hospital)) == 1


def test_a_message_held_by_a_suspension_is_given_up_when_persist_duration_passes(
    pair: Pair,
) -> None:
    message_id = _queued(pair)
    _change(pair, _suspend("suspended"))
    for _ in range(7):  # past the hour's PersistDuration
        pair.clock.advance(minutes=11)
        pair.run()
    summary = _given_up_unsent(pair, message_id)
    assert "suspended" in summary and "PersistDuration" in summary


def test_the_certificate_check_before_a_send_holds_no_database_lock(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the validator may fetch CRLs and ask OCSP responders for seconds: receives and submits
    # (another process's, or this one's) must not wait for the database meanwhile
    message_id = _queued(pair)
    database = pair.gp.store.database
    path = database.engine.url.database
    assert path is not None
    seen: list[str] = []
    check = transmit.certificate_problem

    def watched(*args: object, **kwargs: object) -> object:
        if database.write_lock is not None and not database.write_lock.acquire(blocking=False):
            seen.append("this process's write lock is held")
        elif database.write_lock is not None:
            database.write_lock.release()
        other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            seen.append("free")
        except sqlite3.OperationalError as exc:
            seen.append(f"another writer: {exc}")
        finally:
            other.close()
        return check(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transmit, "certificate_problem", watched)
    pair.clock.advance(minutes=11)
    pair.run()
    assert seen and all(s == "free" for s in seen), seen
    assert pair.message(pair.gp, message_id).status == "transport-acknowledged"


def test_a_first_send_held_by_a_suspension_goes_when_resumed_after_persist_duration(
    pair: Pair,
) -> None:
    # never sent, only held: no MessageId the partner may remember, so it is a first send and
    # goes, not given up as a resend past PersistDuration
    message_id = submit(pair.gp, dialog_note(pair.gp_site, pair.hospital_site, SECRET), actor="t")
    _change(pair, _suspend("suspended"))
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "retrying" and row.attempts == 0
    _change(pair, _suspend("active"))
    pair.clock.advance(minutes=61)
    pair.run()
    row = pair.message(pair.gp, message_id)
    assert row.status == "transport-acknowledged" and row.attempts == 1
