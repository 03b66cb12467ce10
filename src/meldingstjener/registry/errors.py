"""Errors raised by the registry package: bad register records, bad CPP/CPA documents.

Every error carries a stable ``code`` for logs and operator screens, and a message a person can
act on. Messages name HER-ids, files and fields, never patient data (the register holds none).
"""

from __future__ import annotations


class RegistryError(ValueError):
    """Base of registry errors. ``code`` is stable; the message explains what to do."""

    code = "registry-error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ArFormatError(RegistryError):
    """An address-register record that cannot be read as a communication party."""

    code = "ar-format"


class ArRecordRefused(ArFormatError):
    """One party's record, or a certificate the register gives it, that cannot be used: that
    party is refused, the others of the same answer are not. ``her_id`` names it (or, for a
    record without a readable HER-id, its place in the answer)."""

    code = "ar-record-refused"

    def __init__(self, her_id: str, reason: str) -> None:
        super().__init__(f"HER-id {her_id}: {reason}")
        self.her_id = her_id
        self.reason = reason


class ArPartyNotFound(RegistryError):
    """The address register answered that no party has the requested HER-id."""

    code = "ar-party-not-found"


class CpaFormatError(RegistryError):
    """A CPP/CPA document that is not a usable CPPA 2.0 profile or agreement."""

    code = "cpa-format"


class PartyNotInAgreement(RegistryError):
    """A CPA that does not name the HER-id it was asked about."""

    code = "cpa-party-not-found"
