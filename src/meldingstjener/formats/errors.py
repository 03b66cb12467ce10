"""Errors raised when a business message cannot be read or built.

Every error has a stable short ``code`` (for logs, metrics and tests) and ``apprec_code``, the
code from code list 8221 a receiver would put in a negative AppRec (T01 not well-formed, T02 does
not validate, T10 unsupported format, T99 other format error). ``path`` names the offending
element. Messages never contain patient data: they name elements, never quote their content.
"""

from __future__ import annotations


class FormatError(ValueError):
    """A business message that cannot be read or built."""

    code = "format-error"
    apprec_code = "T99"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{message} (at {path})" if path else message)


class UnknownMessageFormat(FormatError):
    """The root element is not a business message this package reads."""

    code = "unknown-format"
    apprec_code = "T10"


class UnsupportedVersion(FormatError):
    """MIGversion or namespace is missing or names a version this package does not support."""

    code = "unsupported-version"
    apprec_code = "T10"


class MissingElement(FormatError):
    """A mandatory element or attribute is absent or empty."""

    code = "missing-element"
    apprec_code = "T02"


class InvalidValue(FormatError):
    """An element holds a value that is not allowed (a bad date, an unknown status, ...)."""

    code = "invalid-value"
    apprec_code = "T02"


class MarkupInValue(InvalidValue):
    """An element that holds a value (an id, a HER-id, a date, a name) holds a comment, a
    processing instruction or an element besides its text. A comment cuts the text a reader
    sees (``1123<!---->74`` reads as ``1123`` to some, ``112374`` to others), so such a value
    is refused rather than read one way."""

    code = "markup-in-value"


class UnknownAppRecStatus(InvalidValue):
    """An AppRec Status that is not in code list 8258: the receipt cannot be interpreted."""

    code = "unknown-status"
