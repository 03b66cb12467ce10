"""Answers of the register or the token endpoint that are not of the shape asked for give the
client's own errors (ArFormatError, TokenError), never TypeError or ValueError, and are never
read as something else."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from meldingstjener.registry.ar_client import ArClient, ArExport
from meldingstjener.registry.auth import ClientCredentialsTokenProvider, StaticToken, TokenError
from meldingstjener.registry.errors import ArFormatError


def _client(body: Any) -> ArClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    return ArClient("http://ar", StaticToken("x"), http=httpx.Client(transport=transport))


def _tokens(expires_in: Any) -> ClientCredentialsTokenProvider:
    body = {"access_token": "abc", "token_type": "Bearer", "expires_in": expires_in}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    return ClientCredentialsTokenProvider(
        "http://helseid/connect/token",
        "c",
        client_secret="s",
        http=httpx.Client(transport=transport),
        clock=lambda: 0.0,
    )


def test_an_export_whose_her_ids_are_not_a_list_is_a_format_error() -> None:
    # a string would otherwise be read a character at a time: HER-ids 8, 1, 4, ...
    with pytest.raises(ArFormatError, match="no list of HER-ids"):
        _client({"lastSequenceNumber": 5, "communicationParties": "8141253"}).export()
    with pytest.raises(ArFormatError):
        _client({"lastSequenceNumber": 5, "communicationParties": [8141253, 1.9]}).export()
    export = _client({"lastSequenceNumber": 5, "communicationParties": [8141253, "42"]}).export()
    assert export.her_ids == ("8141253", "42")


@pytest.mark.parametrize("her_id", [-5, 1.9, 0, True, "\u00b2", "x"])
def test_an_event_whose_her_id_is_not_a_positive_whole_number_is_a_format_error(
    her_id: Any,
) -> None:
    with pytest.raises(ArFormatError, match="positive whole number"):
        _client({"results": [{"sequenceNumber": 1, "herId": her_id}]}).events(1)


@pytest.mark.parametrize("expires_in", [None, "soon", "nan", "inf", -1, [60], True])
def test_a_token_lifetime_that_is_not_a_number_is_a_token_error(expires_in: Any) -> None:
    with pytest.raises(TokenError, match="expires_in"):
        _tokens(expires_in).access_token()


def test_a_token_lifetime_longer_than_a_day_is_taken_as_a_day() -> None:
    tokens = _tokens(1e308)
    assert tokens.access_token() == "abc"
    assert tokens._expires_at <= 86_400


@pytest.mark.parametrize("number", [-5, 1.9, True, "\u00b2", "x"])
def test_a_sequence_number_that_is_not_a_whole_number_is_a_format_error(number: Any) -> None:
    with pytest.raises(ArFormatError, match="sequence number"):
        _client({"lastSequenceNumber": number, "communicationParties": [8141253]}).export()
    with pytest.raises(ArFormatError, match="sequenceNumber"):
        _client({"results": [{"sequenceNumber": number, "herId": 8141253}]}).events(1)


def test_sequence_numbers_written_as_strings_of_digits_are_read() -> None:
    assert _client({"lastSequenceNumber": "17", "communicationParties": []}).export() == ArExport(
        last_sequence_number=17, her_ids=()
    )
    assert (
        _client({"results": [{"sequenceNumber": "3", "herId": 8141253}]})
        .events(1)[0]
        .sequence_number
        == 3
    )
