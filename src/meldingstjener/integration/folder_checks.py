"""The folder integration's check of its own folders, and the ``folder-unsafe`` alert.

The outbox, the inbox, ``sent/`` and ``failed/`` are where the EPJ writes; ``sent/`` and
``failed/`` are inside the outbox unless configured elsewhere. Whoever may write the folder
around one of them may put a symbolic link in its place, and the server would read and send
files, or write received documents and move files, wherever the link points. So a folder that
is a link is not used at all: the side it belongs to (outbox or inbox) does nothing until it is
mended, and the operator is told at once, once, by ``folder-unsafe``; the alert ends when the
folder is one again. A folder that is missing or not a folder is the rounds' own failure
(``outbox-stuck``), not this.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.integration.files import UnsafeFolder, open_folder

log = logging.getLogger(__name__)

REREAD_CHECKS = 30  # the open folder-unsafe alerts are read again this often


class OpenAlerts:
    """What this process knows of the open alerts of one kind: their keys (without the kind),
    those starting with ``within`` only, read from the store at first and again every
    ``reread_every`` uses. In between the caller keeps the set up to date with what it raised
    and resolved; reading it again finds one resolved by hand (raised again if still due) and
    one raised or resolved by another process."""

    def __init__(
        self, ctx: EngineContext, kind: AlertKind, *, reread_every: int, within: str = ""
    ) -> None:
        self.ctx = ctx
        self.kind = kind
        self.reread_every = reread_every
        self.within = within
        self._keys: set[str] | None = None  # None: not read yet
        self._uses = 0

    def keys(self) -> set[str]:
        """The open alerts' keys, to be changed in place by the caller as it raises and
        resolves them (once committed: one that did not commit is seen as not raised)."""
        self._uses += 1
        if self._keys is None or self._uses >= self.reread_every:
            self._uses = 0
            prefix = f"{self.kind}:"
            with self.ctx.store.unit_of_work() as uow:
                self._keys = {
                    alert.dedup_key.removeprefix(prefix)
                    for alert in uow.alerts.list(open_only=True, limit=None, kind=self.kind.value)
                    if alert.dedup_key.startswith(prefix + self.within)
                }
        return self._keys


class FolderChecks:
    """Whether a side's folders may be used; raises and resolves its ``folder-unsafe`` alert."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._open = OpenAlerts(ctx, AlertKind.FOLDER_UNSAFE, reread_every=REREAD_CHECKS)

    def usable(self, key: str, side: str, folders: Sequence[tuple[str, Path]]) -> bool:
        """Whether none of ``folders`` ((what it is, its path)) is a symbolic link. ``key``
        names the side's alert (the same for every process serving that folder)."""
        unsafe: tuple[str, UnsafeFolder] | None = None
        for what, path in folders:
            try:
                os.close(open_folder(path))
            except UnsafeFolder as exc:
                unsafe = (what, exc)
                break
            except OSError:
                continue  # missing, or not a folder: the round itself fails on it
        known = self._open.keys()
        if unsafe is None:
            if key in known:
                with self.ctx.store.unit_of_work() as uow:
                    uow.alerts.resolve(f"{AlertKind.FOLDER_UNSAFE}:{key}", at=self.ctx.clock())
                    uow.commit()
                known.discard(key)
            return True
        what, refused = unsafe
        log.error("folder %s: %s %s %s: not used", side, what, refused.path, refused.reason)
        if key not in known:
            with self.ctx.store.unit_of_work() as uow:
                raise_alert(
                    uow,
                    AlertKind.FOLDER_UNSAFE,
                    f"the folder integration's {side} is not served: its {what} {refused.path} "
                    f"{refused.reason}. A link may point anywhere the server can read or write, so "
                    "no file is taken, moved or written through it. Put the folder itself in "
                    "its place (or configure the folder's real path in [folder]), and find out "
                    "who made the link",
                    at=self.ctx.clock(),
                    key=key,
                )
                uow.commit()
            known.add(key)  # once committed: one that failed to commit is raised next round
        return False
