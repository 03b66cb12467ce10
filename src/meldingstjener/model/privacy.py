"""Keeping patient data out of logs and event texts.

Event and alert texts are written by our own code from ids and codes, never copied from payloads.
As a second line of defence, :func:`redact` masks anything shaped like a Norwegian national
identity number (fødselsnummer / D-nummer: 11 digits) before text is stored or logged.
"""

from __future__ import annotations

import re

# A national identity number stands as its own token: digits inside a hex id, a UUID or a file
# name are not one (and masking them would garble the very ids an operator needs).
_NATIONAL_ID = re.compile(r"(?<![\w-])\d{6}[ -]?\d{5}(?![\w-])")


def redact(text: str | None) -> str | None:
    if text is None:
        return None
    return _NATIONAL_ID.sub("[redacted-id]", text)
