"""What a partner's MIME costs us before it is refused: a Content-Type that no real sender
writes is a MimeProblem at a size limit, and parsing one costs time linear in its length.

The costs are counted, never timed."""

from __future__ import annotations

import pytest

from meldingstjener.ebxml import EbxmlError, ErrorCode, unpackage
from meldingstjener.ebxml.mime_headers import MAX_CONTENT_TYPE, parse_content_type

CONTENT_TYPE = 'multipart/related; type="text/xml"; boundary="BOUND"; start="<env@x>"'


def _body(*parts: bytes) -> bytes:
    return b"".join(b"--BOUND\r\n" + part + b"\r\n" for part in parts) + b"--BOUND--\r\n"


ENV_PART = b"Content-Type: text/xml\r\nContent-ID: <env@x>\r\n\r\n<e/>"


# --- Content-Type ---------------------------------------------------------------------------


def test_stray_tokens_in_a_content_type_are_skipped() -> None:
    # every '; a' used to make the parser look for '=' to the end of the value: quadratic
    value = "multipart/related" + "; a" * 2000 + '; boundary="BOUND"; start="<env@x>"'
    assert len(value) < MAX_CONTENT_TYPE
    assert parse_content_type(value) == (
        "multipart/related",
        {"boundary": "BOUND", "start": "<env@x>"},
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('a/b; x="1;2=3"; y=4', {"x": "1;2=3", "y": "4"}),
        ('a/b; lone; x = "v;w" ; z', {"x": "v;w"}),
        ("a/b; lone;; =v; y=", {"": "v", "y": ""}),
        ('a/b; x="a\\";b"; y="=;"', {"x": 'a";b', "y": "=;"}),
        ("a/b; lone", {}),
        ("a/b; n=1; N=2", {"n": "1"}),
    ],
)
def test_quoted_values_and_stray_tokens_keep_their_meaning(
    value: str, expected: dict[str, str]
) -> None:
    assert parse_content_type(value) == ("a/b", expected)


def test_a_content_type_longer_than_any_real_one_is_a_mime_problem() -> None:
    value = CONTENT_TYPE + "; a" * (MAX_CONTENT_TYPE // 3)
    with pytest.raises(EbxmlError) as caught:
        unpackage(value, _body(ENV_PART))
    assert caught.value.code is ErrorCode.MIME_PROBLEM
    assert "Content-Type" in str(caught.value)
    assert unpackage(CONTENT_TYPE + "; a" * 100, _body(ENV_PART)).envelope_xml == b"<e/>"
