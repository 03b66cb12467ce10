"""The MSH/application description in eb:MessageHeader/eb:Description (HITS 1210).

HITS 1210 asks every MSH to say which MSH and which business application (fagsystem) sent a
message, as a small JSON object in ``eb:Description xml:lang="NO"``. The key names are the
Norwegian ones seen in NAV's envelopes and tests::

    {"MSH-system":"Medilink","MSH-versjon":"1.23.2434",
     "fagsystem":"System X","fagsystem-versjon":"1.24.6565"}

(on one line in the envelope).

Signals may carry only the MSH pair (NAV sends ``{"MSH-system":"NAV EBMS","MSH-versjon":"1.0.0"}``
in its MessageErrors). ``eb:Description`` is free text in ebMS, so text that is not this JSON is
not an error: :meth:`MshDescription.from_text` then returns None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# the longest eb:Description text read as HITS 1210 JSON (a longer one is no such object);
# codes.MAX_DESCRIPTION_CHARS is where a description is cut, another limit
MAX_JSON_DESCRIPTION_CHARS = 4096
KEY_MSH = "MSH-system"
KEY_MSH_VERSION = "MSH-versjon"
KEY_APPLICATION = "fagsystem"
KEY_APPLICATION_VERSION = "fagsystem-versjon"
DESCRIPTION_LANG = "NO"


@dataclass(frozen=True, slots=True)
class MshDescription:
    """Which MSH and which business application (fagsystem) produced a message."""

    msh_system: str | None = None
    msh_version: str | None = None
    application: str | None = None
    application_version: str | None = None

    def to_json(self) -> str:
        """Compact JSON in the HITS 1210 key order; absent values are left out."""
        pairs = (
            (KEY_MSH, self.msh_system),
            (KEY_MSH_VERSION, self.msh_version),
            (KEY_APPLICATION, self.application),
            (KEY_APPLICATION_VERSION, self.application_version),
        )
        return json.dumps(
            {key: value for key, value in pairs if value is not None},
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_text(cls, text: str | None) -> MshDescription | None:
        """The description in ``text``, or None when it is not a HITS 1210 JSON object."""
        # four names and versions fit in far less; a longer text is not one (and deeply nested
        # JSON would exhaust the parser's recursion)
        if not text or len(text) > MAX_JSON_DESCRIPTION_CHARS or not text.strip().startswith("{"):
            return None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        known = (KEY_MSH, KEY_MSH_VERSION, KEY_APPLICATION, KEY_APPLICATION_VERSION)
        values = [data.get(key) for key in known]
        if all(value is None for value in values):
            return None
        # Numbers as versions ("MSH-versjon": 2) happen; keep them as the text they stand for.
        as_text = [None if value is None else str(value) for value in values]
        return cls(*as_text)
