"""Credentials before the body: on every authenticated route a request without valid
credentials is answered 401 before its body is read, however malformed or large the body is
(not 400, 413 or 422 from a body read and parsed for a caller nobody knows).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from api_sites import ApiPair

from meldingstjener.api.limits import SMALL_BODY_LIMIT
from meldingstjener.devsites import HOSPITAL_SERVICE_HER

MESSAGE = uuid.uuid4()
# Every route that takes a body (and one that takes none, sent one all the same).
ROUTES = (
    ("POST", "/Messages"),
    ("POST", f"/Messages/{MESSAGE}/apprec/{HOSPITAL_SERVICE_HER}"),
    ("POST", f"/Messages/{MESSAGE}/misaddressed"),
    ("PUT", f"/Messages/{MESSAGE}/read/{HOSPITAL_SERVICE_HER}"),
    ("POST", "/api/webhooks"),
    ("POST", "/api/alerts/1/acknowledge"),
)
MALFORMED = b'{"appRecStatus": "Ok", "url": '  # cut off: no JSON parser takes it


class WatchedBody:
    """A body sent in pieces without a Content-Length, which knows whether it was read: the
    test client takes the first piece only when the server asks for the body."""

    def __init__(self, body: bytes, piece: int = 65_536) -> None:
        self.body = body
        self.piece = piece
        self.pieces_read = 0

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.body), self.piece):
            self.pieces_read += 1
            yield self.body[start : start + self.piece]


# ids without the random message id: every xdist worker must collect the same names
@pytest.mark.parametrize(
    ("method", "path"), ROUTES, ids=[f"{m}-{p.replace(str(MESSAGE), 'id')}" for m, p in ROUTES]
)
def test_an_unauthenticated_body_is_refused_unread(
    api_pair: ApiPair, method: str, path: str
) -> None:
    http = api_pair.hospital_http
    for credentials in ({}, {"Authorization": "Bearer not-a-key"}, {"X-Api-Key": "mtk_forged"}):
        headers = {"Content-Type": "application/json", **credentials}
        bodies = (
            WatchedBody(MALFORMED),
            WatchedBody(b'{"url": "' + b"a" * (SMALL_BODY_LIMIT + 10) + b'"}'),  # over 1 MB
        )
        for body in bodies:
            answer = http.request(method, path, headers=headers, content=body)
            assert answer.status_code == 401, (credentials, answer.text)
            assert answer.json()["code"] == "unauthenticated"
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.headers["connection"] == "close"  # its body unread: not kept
            assert body.pieces_read == 0, "the body of an unauthenticated request was read"
        # a declared length over every limit is no different
        answer = http.request(
            method, path, headers={**headers, "Content-Length": "999999999"}, content=b"{}"
        )
        assert answer.status_code == 401, answer.text


def test_an_authenticated_body_is_read_and_its_faults_answered(api_pair: ApiPair) -> None:
    """With valid credentials the same bodies are read: malformed is 400, too large 413."""
    http = api_pair.hospital_http
    path = f"/Messages/{MESSAGE}/apprec/{HOSPITAL_SERVICE_HER}"
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {api_pair.hospital_key}",
    }
    malformed = WatchedBody(MALFORMED)
    answer = http.post(path, headers=headers, content=malformed)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid-input", answer.text
    assert malformed.pieces_read == 1
    large = WatchedBody(b'{"url": "' + b"a" * (SMALL_BODY_LIMIT + 10) + b'"}')
    answer = http.post(path, headers=headers, content=large)
    assert answer.status_code == 413 and answer.json()["code"] == "too-large", answer.text


def test_an_unauthenticated_request_without_a_body_keeps_its_connection(
    api_pair: ApiPair,
) -> None:
    # Nothing of it is left unread: a poll or a scrape with a wrong key is not made to connect
    # again for its next request.
    answer = api_pair.hospital_http.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 401, answer.text
    assert answer.headers.get("connection") != "close"
