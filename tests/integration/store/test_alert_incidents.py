"""An alert's life as the server log and the alert's row tell it, on SQLite and PostgreSQL: one
log line when it opens, when it comes back after it was resolved and when it is resolved (by
the server or by hand), none for a repeat; a reopened alert is a new incident (counted from 1,
first seen again); a resolution by hand keeps its note, and who resolved it, until the problem
comes back (migrations 0030 and 0032)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from meldingstjener.store.audit import FollowUp, NoteRefused, follow_up_alert
from meldingstjener.store.migrate import downgrade, upgrade
from meldingstjener.store.tables import AlertRow
from meldingstjener.store.uow import Store

T0 = datetime(2026, 12, 5, 15, 6, 1, tzinfo=UTC)
KEY = "store-failing:gp:8080"
SUMMARY = "Instance gp:8080 refuses to store anything: its marker names store e595"
ALERT_LOG = "meldingstjener.store.alert_log"


def raise_alert(
    store: Store, at: datetime, *, severity: str = "critical", commit: bool = True
) -> None:
    with store.unit_of_work() as uow:
        uow.alerts.raise_alert(
            "store-failing", severity=severity, dedup_key=KEY, summary=SUMMARY, at=at
        )
        if commit:
            uow.commit()


def resolve(store: Store, at: datetime) -> None:
    with store.unit_of_work() as uow:
        uow.alerts.resolve(KEY, at=at)
        uow.commit()


def the_alert(store: Store) -> AlertRow:
    with store.unit_of_work() as uow:
        row = uow.alerts.by_key(KEY)
        assert row is not None
        return row


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == ALERT_LOG]


def test_an_alert_logs_when_it_opens_reopens_and_is_resolved_and_not_when_repeated(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERT_LOG)
    for minute in range(3):  # one outage, raised at every refused request
        raise_alert(store, T0 + timedelta(minutes=minute))
    alert_id = the_alert(store).id
    opened = f"alert {alert_id} store-failing raised (critical): {SUMMARY}"
    assert lines(caplog) == [(logging.ERROR, opened)]
    resolve(store, T0 + timedelta(minutes=3))
    resolve(store, T0 + timedelta(minutes=4))  # none open: nothing more to say
    closed = f"alert {alert_id} store-failing resolved (was critical): {SUMMARY}"
    assert lines(caplog) == [(logging.ERROR, opened), (logging.INFO, closed)]
    caplog.clear()
    raise_alert(store, T0 + timedelta(minutes=5))  # the problem back: told again
    raise_alert(store, T0 + timedelta(minutes=6))
    assert lines(caplog) == [(logging.ERROR, opened)]


def test_a_warning_logs_as_a_warning_and_a_rolled_back_raise_not_at_all(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERT_LOG)
    raise_alert(store, T0, severity="warning", commit=False)
    assert lines(caplog) == []
    raise_alert(store, T0, severity="warning")
    [(level, line)] = lines(caplog)
    assert level == logging.WARNING and "store-failing raised (warning)" in line


def test_an_alert_resolved_by_hand_logs_who_and_keeps_the_note_out_of_the_log(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERT_LOG)
    raise_alert(store, T0)
    alert_id = the_alert(store).id
    with store.unit_of_work() as uow:
        note = "  marker restored from backup; fnr 01017012345 was on the ticket  "
        follow_up_alert(
            uow, alert_id, resolve=True, client="cli", person="kari", by="kari", note=note
        )
        uow.commit()
    assert lines(caplog)[-1] == (
        logging.INFO,
        f"alert {alert_id} store-failing resolved by kari (was critical): {SUMMARY}",
    )
    kept = the_alert(store).resolution_note
    assert kept == "marker restored from backup; fnr [redacted-id] was on the ticket"
    assert "01017012345" not in caplog.text


def test_a_note_is_kept_whole_or_refused_and_never_dropped_unsaid(store: Store) -> None:
    raise_alert(store, T0)
    alert_id = the_alert(store).id

    def resolve_with(note: str) -> FollowUp | None:
        with store.unit_of_work() as uow:
            done = follow_up_alert(
                uow, alert_id, resolve=True, client="api", person=None, by="ops", note=note
            )
            uow.commit()
            return done

    # 500 characters as given, longer once masked: refused, not cut at its end
    with pytest.raises(NoteRefused, match="502 characters"):
        resolve_with("fnr 01017012345 " + "x" * 484)
    assert the_alert(store).resolved_at is None  # nothing changed
    blank = resolve_with("   ")  # blanks are no note
    assert blank is not None and not blank.note_not_kept
    assert the_alert(store).resolved_at is not None and the_alert(store).resolution_note is None
    # resolved already (here without a note): a note now is not kept, and the caller told
    late = resolve_with("sent by phone")
    assert late is not None and late.note_not_kept and late.resolved_before
    assert the_alert(store).resolution_note is None
    raise_alert(store, T0 + timedelta(minutes=1))  # a new incident, resolved with a note
    assert not resolve_with("sent by phone").note_not_kept  # type: ignore[union-attr]
    again = resolve_with(" sent by phone ")  # the same note again: a repeat, kept
    assert again is not None and again.resolved_before and not again.note_not_kept
    assert resolve_with("another note").note_not_kept  # type: ignore[union-attr]
    assert the_alert(store).resolution_note == "sent by phone"


def test_the_alerts_of_a_partner_given_up_log_their_resolve_with_why(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ALERT_LOG)
    with store.unit_of_work() as uow:
        for endpoint in ("http", "mail"):
            uow.alerts.raise_alert(
                "partner-unreachable",
                severity="warning",
                dedup_key=f"partner-unreachable:8094866:{endpoint}",
                summary=f"8094866 unreachable by {endpoint}",
                partner_her_id="8094866",
                at=T0,
            )
        uow.commit()
    caplog.clear()
    with store.unit_of_work() as uow:
        uow.alerts.resolve_all_for_partner(
            "partner-unreachable", "8094866", resolution="Nothing waits.", at=T0
        )
        uow.commit()
    assert sorted(line for _, line in lines(caplog)) == [
        f"alert {number} partner-unreachable resolved (was warning): 8094866 unreachable by "
        f"{endpoint} Nothing waits."
        for number, endpoint in ((1, "http"), (2, "mail"))
    ]
    assert {level for level, _ in lines(caplog)} == {logging.INFO}


def test_a_reopened_alert_is_a_new_incident_and_its_old_note_goes(store: Store) -> None:
    for minute in range(16):
        raise_alert(store, T0 + timedelta(minutes=minute))
    with store.unit_of_work() as uow:
        alert_id = uow.alerts.by_key(KEY).id  # type: ignore[union-attr]
        uow.alerts.close(alert_id, by="kari", at=T0 + timedelta(minutes=17), note="mended")
        uow.commit()
    assert (the_alert(store).resolution_note, the_alert(store).resolved_by) == ("mended", "kari")
    again = T0 + timedelta(minutes=62)
    raise_alert(store, again)
    raise_alert(store, again + timedelta(minutes=1))
    row = the_alert(store)
    assert (row.first_seen, row.count, row.resolved_at) == (again, 2, None)
    assert (row.changed_at, row.resolution_note, row.acknowledged_by, row.resolved_by) == (
        again + timedelta(minutes=1),
        None,
        None,
        None,
    )
    resolve(store, again + timedelta(minutes=2))  # by the server: by nobody
    assert the_alert(store).resolved_by is None


def test_who_resolved_an_alert_is_kept_apart_from_who_acknowledged_it(store: Store) -> None:
    raise_alert(store, T0)
    alert_id = the_alert(store).id
    for resolve_it, by in ((False, "anne"), (True, "bob"), (True, "carl")):
        with store.unit_of_work() as uow:
            follow_up_alert(
                uow, alert_id, resolve=resolve_it, client="api", person=None, by=f"ops/{by}"
            )
            uow.commit()
    row = the_alert(store)  # carl came after it was resolved: nothing changed
    assert (row.acknowledged_by, row.resolved_by) == ("ops/anne", "ops/bob")


def test_migration_0032_adds_who_resolved_on_a_filled_store_and_goes_down_again(
    own_database: Store,
) -> None:
    database = own_database.database
    downgrade(database, "0031")
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO alerts (kind, severity, dedup_key, summary, first_seen, last_seen, "
                "count, resolved_at, acknowledged_by, resolution_note) VALUES ('clock-skew', "
                "'error', 'clock-skew:gp', 's', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 3, "
                "CURRENT_TIMESTAMP, 'kari', 'mended')"
            )
        )
    upgrade(database)
    with own_database.unit_of_work() as uow:
        row = uow.alerts.by_key("clock-skew:gp")
        assert row is not None
        # resolved before it was kept: by nobody named (the audit log has who)
        assert (row.acknowledged_by, row.resolution_note, row.resolved_by) == (
            "kari",
            "mended",
            None,
        )
    downgrade(database, "0031")
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT resolution_note FROM alerts")).scalar_one() == (
            "mended"
        )
    upgrade(database)


def test_the_migration_adds_the_note_on_a_filled_store_and_goes_down_again(
    own_database: Store,
) -> None:
    database = own_database.database
    downgrade(database, "0028")
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO alerts (kind, severity, dedup_key, summary, first_seen, last_seen, "
                "count, resolved_at) VALUES ('clock-skew', 'error', 'clock-skew:gp', 's', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 3, CURRENT_TIMESTAMP)"
            )
        )
    upgrade(database)
    with own_database.unit_of_work() as uow:
        row = uow.alerts.by_key("clock-skew:gp")
        assert row is not None and (row.count, row.resolution_note) == (3, None)
    downgrade(database, "0028")
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT count FROM alerts")).scalar_one() == 3
    upgrade(database)
