"""Errors the engine reports to whoever handed it a message (EPJ, API, folder, CLI)."""

from __future__ import annotations

from collections.abc import Sequence

# Refusals about the receiver's setup, not the message: the register does not know it (yet) or
# has it inactive (or out of its validity period), the agreement is missing, inactive, ended or
# does not cover the message type or version, its certificate is not acceptable (or its
# revocation could not be looked up). An operator who connects the partner, or the next register
# sync, can make the same message pass. The rest (the message itself, its addressing, its size,
# the environment guard) never pass unchanged.
SETUP_CODES = frozenset(
    {
        "unknown-receiver",
        "receiver-inactive",
        "no-agreement",
        "not-agreed",
        "agreement-not-active",
        "message-type-not-agreed",
        "version-not-agreed",
        "no-common-version",
        "certificate-problem",
    }
)


class SubmitRejected(Exception):
    """An outbound message was refused before it was stored: nothing was sent, nothing is owed.

    ``code`` is stable (``invalid-message``, ``unknown-receiver``, ``receiver-inactive``,
    ``no-agreement``, ``inconsistent-addressing``, ``not-agreed``, ``certificate-problem``,
    ``environment-guard``, and the agreement's codes: see ``SETUP_CODES``);
    ``problems`` lists validation findings as plain sentences with their XML paths.
    """

    def __init__(self, code: str, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = list(problems)

    @property
    def about_setup(self) -> bool:
        """Whether the refusal is about the receiver's setup, and may pass later unchanged."""
        return self.code in SETUP_CODES
