"""Small pure helpers: text folding, ISO 8601 durations and timestamps, versions, queues."""

from __future__ import annotations

from datetime import timedelta

import pytest

from meldingstjener.registry.isotime import NORWAY, parse_duration, parse_timestamp
from meldingstjener.registry.normalise import fold_word, tokens
from meldingstjener.registry.parties import complete_queues, queue_name
from meldingstjener.registry.versions import sort_versions


@pytest.mark.parametrize(
    "word, folded",
    [
        ("Tromsø", "tromso"),
        ("tromsoe", "tromso"),
        ("Ålesund", "alesund"),
        ("Aalesund", "alesund"),
        ("Bærum", "baerum"),
        ("Café", "cafe"),
    ],
)
def test_fold_word(word: str, folded: str) -> None:
    assert fold_word(word) == folded


def test_tokens_drop_punctuation() -> None:
    assert tokens("Øre-nese-hals, St. Olavs") == ("ore", "nese", "hals", "st", "olavs")
    assert tokens(None) == ()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("PT720M", timedelta(hours=12)),
        ("PT240M", timedelta(hours=4)),
        ("P4D", timedelta(days=4)),
        ("P1DT2H30M15S", timedelta(days=1, hours=2, minutes=30, seconds=15)),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("-PT1H", timedelta(hours=-1)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "12h", "P1H", "PT1D"])
def test_parse_duration_refuses_non_durations(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration(text)


def test_parse_timestamp_attaches_norwegian_time_to_naive_values() -> None:
    value = parse_timestamp("2023-04-04T00:00:00")
    assert value is not None and value.tzinfo is NORWAY
    assert parse_timestamp("not a date") is None
    assert parse_timestamp(None) is None


def test_sort_versions_newest_first_without_duplicates() -> None:
    assert sort_versions(["1.0", "1.10", "1.2", "1.2 ", "v1p1"]) == ("1.10", "1.2", "1.1", "1.0")


def test_a_version_in_other_digits_than_ascii_sorts_after_numbers() -> None:
    # "²".isdigit() is True and int("²") raises: such a part is text, as any other odd one
    assert sort_versions(["1.1", "\u00b2", "2.0"]) == ("\u00b2", "2.0", "1.1")


def test_queue_helpers() -> None:
    assert queue_name("tb.test.nhn.no/NHNTESTServiceBus/8141703_async") == "8141703_async"
    assert complete_queues({"sync": "h/9_sync"}) == {
        "sync": "h/9_sync",
        "async": "h/9_async",
        "error": "h/9_error",
        "syncreply": "h/9_syncreply",
        "dl": "h/9_dl",
    }
    assert complete_queues({"async": "odd-name"}) == {"async": "odd-name"}
