"""The audit detail of a request FastAPI's validation refused: locations and rule codes only."""

from __future__ import annotations

from meldingstjener.api.validation_audit import MAX_FAULTS, validation_detail


def test_only_our_names_and_the_rules_broken_are_written() -> None:
    detail = validation_detail(
        [
            {"type": "extra_forbidden", "loc": ("body", "Kari Nordmann"), "input": "x"},
            {"type": "string_type", "loc": ("body", "appRecErrorList", 0, "errorCode")},
            {"type": "value_error", "loc": ("body", "url"), "msg": "Value error, Kari"},
            {"type": "missing", "loc": ("body", "Ola Nordmann 01017012345", "x")},
            {"type": "Kari Nordmann", "loc": ()},
        ]
    )
    assert detail == (
        "the request is not valid: body.* (extra_forbidden); "
        "body.appRecErrorList.0.errorCode (string_type); body.url (value_error); "
        "body.*.x (missing); request (invalid)"
    )


def test_a_request_with_many_faults_is_one_bounded_detail() -> None:
    errors = [{"type": "int_parsing", "loc": ("query", "ReceiverHerIds", i)} for i in range(500)]
    detail = validation_detail(errors)
    assert detail.count("int_parsing") == MAX_FAULTS
    assert detail.endswith(f"; {500 - MAX_FAULTS} more")
