"""The base error of the security layer: every failure carries a stable ``code``.

Codes are short kebab-case strings meant for logs, receipts and operator screens; the
message is for a person and never contains message content or patient data.
"""

from __future__ import annotations


class SecurityError(Exception):
    """A security failure with a stable ``code`` and a plain-words message."""

    code: str = "security-error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"
