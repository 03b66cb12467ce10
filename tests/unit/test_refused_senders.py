"""The senders a period of the store failing names: the most refused first, bounded."""

from __future__ import annotations

import pytest

from meldingstjener.engine import ebms_alerts


def test_the_senders_refused_the_most_are_named_and_the_rest_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ebms_alerts, "SENDERS_NAMED", 2)
    senders = ebms_alerts.RefusedSenders()
    assert senders.told() == ""  # no request named one (the EPJ API's calls)
    for her_id in ("4", "5", "5", "3"):
        senders.add(her_id)
    # ties by HER-id
    assert senders.told().endswith(": 5 (2), 3 (1) and 1 more (1).")


def test_a_period_counts_a_bounded_number_of_senders_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A From is not verified: requests naming ever new ones must not grow the count for good.
    monkeypatch.setattr(ebms_alerts, "SENDERS_NAMED", 2)
    monkeypatch.setattr(ebms_alerts, "SENDERS_KEPT", 3)
    senders = ebms_alerts.RefusedSenders()
    for her_id in ("5", "5", "4", "3", "2", "1", "1"):
        senders.add(her_id)
    assert senders.told().endswith(": 5 (2), 3 (1) and over 1 more (4).")
