"""Code lists are packaged data; unknown codes are answered with None, not an exception."""

from __future__ import annotations

import pytest

from meldingstjener.formats import code_list, message_type_name


def test_8221_holds_the_general_apprec_errors() -> None:
    errors = code_list("8221")
    assert errors.oid == "2.16.578.1.12.4.1.1.8221"
    for code in ("E10", "E20", "E21", "E30", "E35", "S01", "S99", "T01", "T02", "T10", "X99"):
        assert code in errors
    assert errors.text("E21") == "Mottaker finnes ikke"
    assert errors.text("E99") is None


def test_8258_statuses() -> None:
    assert code_list("8258").codes == {"1": "OK", "2": "Avvist", "3": "OK, feil i delmelding"}


@pytest.mark.parametrize(
    "code",
    [
        "EPIKRISE",
        "HENVISNING",
        "REQ_LAB",
        "SVAR_LAB",
        "SVAR_RTG",
        "APPREC",
        "DIALOG_AVVIK",
        "DIALOG_FORESPORSEL",
        "DIALOG_SVAR",
        "DIALOG_NOTAT",
        "DIALOG_HELSEFAGLIG",
        "LOG_INNLAGT",
    ],
)
def test_8279_message_types(code: str) -> None:
    assert message_type_name(code)


def test_unknown_message_type_and_list() -> None:
    assert message_type_name("NO_SUCH_TYPE") is None
    assert message_type_name(None) is None
    assert code_list("9051").text("HER") == "HER-id"
    assert code_list("9152").text("99") == "Annen henvendelse"
    with pytest.raises(KeyError, match="no code list 1234"):
        code_list("1234")
