"""Code lists (kodeverk) for the business messages, loaded from the JSON files beside this module.

The data files in ``codelists/`` hold the codes and texts as published by the Directorate of
Health (Volven): 8279 message types, 8258 AppRec status, 8221 AppRec errors, 9051 id types for
organisations, 9152 request types from municipal care. Lookups never raise on an unknown code:
they return None, and the validator reports the code as a problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from meldingstjener.formats.xmlutil import OID_PREFIX

MESSAGE_TYPES = "8279"
APPREC_STATUS = "8258"
APPREC_ERRORS = "8221"
ORGANISATION_ID_TYPES = "9051"
CARE_REQUEST_TYPES = "9152"


@dataclass(frozen=True)
class CodeList:
    """One code list: its number, OID, name and the codes with their display texts."""

    number: str
    oid: str
    name: str
    codes: dict[str, str]

    def text(self, code: str | None) -> str | None:
        """The display text of ``code``, or None when the code is not in the list."""
        return None if code is None else self.codes.get(code)

    def __contains__(self, code: object) -> bool:
        return code in self.codes


@cache
def code_list(number: str) -> CodeList:
    """The code list with this number (e.g. ``"8221"``); KeyError when none is packaged."""
    resource = resources.files("meldingstjener.formats").joinpath("codelists", f"{number}.json")
    try:
        raw = json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyError(f"no code list {number} is packaged with meldingstjener") from None
    return CodeList(
        number=raw["number"],
        oid=raw["oid"],
        name=raw["name"],
        codes={entry["code"]: entry["text"] for entry in raw["codes"]},
    )


def oid_of(number: str) -> str:
    return OID_PREFIX + number


def message_type_name(code: str | None) -> str | None:
    """Display name of a message type from code list 8279 (None when unknown)."""
    return code_list(MESSAGE_TYPES).text(code)
