"""Errors the engine reports to whoever handed it a message (EPJ, API, folder, CLI)."""

from __future__ import annotations

from collections.abc import Sequence


class SubmitRejected(Exception):
    """An outbound message was refused before it was stored: nothing was sent, nothing is owed.

    ``code`` is stable (``invalid-message``, ``unknown-receiver``, ``no-agreement``,
    ``inconsistent-addressing``, ``not-agreed``, ``certificate-problem``, ``environment-guard``);
    ``problems`` lists validation findings as plain sentences with their XML paths.
    """

    def __init__(self, code: str, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = list(problems)
