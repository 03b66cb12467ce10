"""The folder integration's check of its own folders, and the ``folder-unsafe`` alert.

The outbox, the inbox, ``sent/`` and ``failed/`` are where the EPJ writes; ``sent/`` and
``failed/`` are inside the outbox unless configured elsewhere. Whoever may write the folder
around one of them may put a symbolic link in its place, and the server would read and send
files, or write received documents and move files, wherever the link points. So a folder that
is a link is not used at all: the side it belongs to (outbox or inbox) does nothing until it is
mended, and the operator is told at once, once, by ``folder-unsafe``; the alert ends when the
folder is one again.

The server never makes a folder the configuration names, nor its parents (:func:`missing_folders`
refuses one missing at start): made on the local disk in place of a share not mounted (or by a
typo), the inbox would take received messages the EPJ never sees, each marked delivered. So an
inbox that is missing or not a folder while the server runs (a share unmounted) is not served
either, and raises the same alert: its messages wait, not delivered, until it is there again. In
the outbox such a folder is the rounds' own failure (``outbox-stuck``), not this.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from meldingstjener.config import FolderSettings
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.integration.files import UnsafeFolder, open_folder

log = logging.getLogger(__name__)

REREAD_CHECKS = 30  # the open folder-unsafe alerts are read again this often
CONFIGURED = ("outbox_dir", "inbox_dir", "sent_dir", "failed_dir")  # [folder]'s folders


def missing_folders(settings: FolderSettings) -> list[str]:
    """What is wrong with the folders ``[folder]`` names, one line each naming its key: not
    there, or not a folder. The server makes none of them: in place of a share not mounted, or
    of a typo, it would make them on the local disk, and the EPJ would never see what is
    written there. Nor does it refuse to start for one (``serve`` says so on its standard
    error): a share mounted late at boot must not keep every partner's messages out; the side
    whose folder is missing waits for it, and the rounds raise its alert (``folder-unsafe``
    for the inbox, ``outbox-stuck`` for the outbox). A symbolic link to a folder passes here,
    and is refused by the rounds (``folder-unsafe``: see :class:`FolderChecks`)."""
    problems = []
    for key in CONFIGURED:
        folder: Path | None = getattr(settings, key)
        if folder is None or os.path.isdir(folder):
            continue
        what = "is not a folder" if os.path.lexists(folder) else "does not exist"
        problems.append(
            f"folder.{key}: {folder} {what}; the server makes no folder of the EPJ's (a share "
            "not mounted, or a typo?): that side of the folder integration waits for it, with "
            "an alert"
        )
    return problems


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

    def usable(
        self, key: str, side: str, folders: Sequence[tuple[str, Path]], *, present: bool = False
    ) -> bool:
        """Whether none of ``folders`` ((what it is, its path)) is a symbolic link, nor, when
        ``present``, missing or not a folder (else the round itself fails on it). ``key``
        names the side's alert (the same for every process serving that folder)."""
        unsafe: tuple[str, Path, str, bool] | None = None  # what, its path, why, a link
        for what, path in folders:
            try:
                os.close(open_folder(path))
            except UnsafeFolder as exc:
                unsafe = (what, exc.path, exc.reason, True)
                break
            except OSError as exc:
                if present:
                    unsafe = (what, path, _not_usable(exc), False)
                    break
                continue  # missing, or not a folder: the round itself fails on it
        known = self._open.keys()
        if unsafe is None:
            if key in known:
                with self.ctx.store.unit_of_work() as uow:
                    uow.alerts.resolve(f"{AlertKind.FOLDER_UNSAFE}:{key}", at=self.ctx.clock())
                    uow.commit()
                known.discard(key)
            return True
        what, path, reason, link = unsafe
        log.error("folder %s: %s %s %s: not used", side, what, path, reason)
        if link:
            advice = (
                "A link may point anywhere the server can read or write, so no file is taken, "
                "moved or written through it. Put the folder itself in its place (or configure "
                "the folder's real path in [folder]), and find out who made the link"
            )
        else:
            advice = (
                "The server does not make it (a share not mounted would be made on the local "
                "disk, where the EPJ never looks): nothing is written to it, and the messages "
                "for it wait, not delivered, until the folder is there again. Mount the share, "
                "or mend the folder"
            )
        if key not in known:
            with self.ctx.store.unit_of_work() as uow:
                raise_alert(
                    uow,
                    AlertKind.FOLDER_UNSAFE,
                    f"the folder integration's {side} is not served: its {what} {path} "
                    f"{reason}. {advice}",
                    at=self.ctx.clock(),
                    key=key,
                )
                uow.commit()
            known.add(key)  # once committed: one that failed to commit is raised next round
        return False


def _not_usable(exc: OSError) -> str:
    """Why a folder that is no link cannot be opened, in words (for an alert: no file name)."""
    if exc.errno == errno.ENOENT:
        return "does not exist (a share not mounted, or the folder removed?)"
    if exc.errno == errno.ENOTDIR:
        return "is not a folder"
    return f"cannot be opened ({errno.errorcode.get(exc.errno or 0, type(exc).__name__)})"
