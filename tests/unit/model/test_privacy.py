"""Redaction masks national identity numbers and nothing that merely contains digits."""

from __future__ import annotations

import re

import pytest

from meldingstjener.model.privacy import codes_shown, partner_code, redact


@pytest.mark.parametrize(
    "text",
    [
        "pasient 01017012345 mottatt",
        "pasient 010170 12345 mottatt",
        "fnr:01017012345.",
        "01017012345",
    ],
)
def test_national_identity_numbers_are_masked(text: str) -> None:
    masked = redact(text)
    assert masked is not None and "12345" not in masked and "[redacted-id]" in masked


@pytest.mark.parametrize(
    "text",
    [
        "kept aside as c405b3daee2397273da03596293768b2.eml",
        "message 6a896844-9ae6-4e4a-b2ed-bc2c3f44dd3b",
        "HER-id 8142987 and organisation number 999999999",
        "MsgId 2023082912565832812",  # 19 digits: an id, not a person
    ],
)
def test_ids_that_contain_digits_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_none_stays_none() -> None:
    assert redact(None) is None


CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]*")  # the shape of an ebXML errorCode


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("ValueNotRecognized", "ValueNotRecognized"),
        (" SecurityFailure ", "SecurityFailure"),  # padding is no part of a code
        ("1001", "1001"),
        ("x" * 80, "x" * 64),  # what the code columns hold
        ("Pasient_01017012345", "?"),  # glued to letters: still a person's number
        ("A01017012345", "?"),
        ("ukjent-pasient-010170-12345", "?"),
        ("Kari Nordmann", "?"),  # not shaped like a code
        (None, "?"),
    ],
)
def test_a_partners_code_is_shown_only_when_it_is_one(sent: str | None, shown: str) -> None:
    assert partner_code(sent, CODE) == shown


def test_codes_are_shown_each_once_and_the_rest_counted() -> None:
    assert codes_shown(["E21", "?", "E21", "X99"]) == "E21, ?, X99"
    assert codes_shown([]) == ""
    many = [f"E{number}" for number in range(14)]
    assert codes_shown(many) == ", ".join(many[:10]) + " and 4 more"
    assert codes_shown(many, most=13) == ", ".join(many[:13]) + " and 1 more"
