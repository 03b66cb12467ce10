"""Resolving a partner's alerts of one kind but some, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from meldingstjener.store.uow import Store

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
KIND = "partner-unreachable"


def _raise(store: Store, key: str, partner: str, kind: str = KIND) -> None:
    with store.unit_of_work() as uow:
        uow.alerts.raise_alert(
            kind, severity="warning", dedup_key=key, summary="s", partner_her_id=partner, at=T0
        )
        uow.commit()


def _open(store: Store) -> set[str]:
    with store.unit_of_work() as uow:
        return {a.dedup_key for a in uow.alerts.list(open_only=True)}


@pytest.mark.parametrize("kept", [[], [f"{KIND}:8200002:smtp"]])
def test_a_partners_alerts_of_one_kind_are_resolved_but_those_kept(
    store: Store, kept: list[str]
) -> None:
    """None kept is an empty set, which PostgreSQL must be able to compare with the keys."""
    _raise(store, f"{KIND}:8200002:http", "8200002")
    _raise(store, f"{KIND}:8200002:smtp", "8200002")
    _raise(store, f"{KIND}:8200002", "8200002")  # an earlier version's key
    _raise(store, f"{KIND}:82000021:http", "82000021")  # another partner
    _raise(store, "ack-missing:8200002", "8200002", kind="ack-missing")  # another kind
    with store.unit_of_work() as uow:
        uow.alerts.resolve_for_partner(KIND, "8200002", kept=kept, at=T0 + timedelta(minutes=1))
        uow.commit()
    assert _open(store) == {f"{KIND}:82000021:http", "ack-missing:8200002", *kept}
