"""Files in the payload store that nothing refers to: found and removed.

A payload file is made durable before the transaction that refers to it commits, so a committed
reference never points at a missing file. A crash in between, or a process killed while it was
writing a spool, leaves a file that no message or receipt refers to, and such a file may hold a
decrypted business message. A file is an orphan when it was last written longer ago than the
grace period (no unit of work stays open that long; a spool being written is always fresh) and
no row refers to it. Old files never gain a reference: every reference is made to a file just
written, under a random key.

The payload directory belongs to one database: a second database's files in it would look
unreferenced. So do the files of messages received after a backup, once the database is
restored from it and the newer payload directory kept: they are the only copies of those
messages, and a sweep given ``move_to`` moves the orphans there (under the same relative
paths) instead of removing them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, union

from meldingstjener.store.payloads import StoredFile
from meldingstjener.store.tables import MessageRow, ReceiptRow
from meldingstjener.store.uow import Store

GRACE = timedelta(hours=24)
_BATCH = 500  # keys per reference query


@dataclass
class SweepReport:
    """What a sweep found (and removed, unless it was a dry run)."""

    swept_until: float  # files last written before this (epoch seconds) were looked at
    examined: int = 0
    orphans: list[StoredFile] = field(default_factory=list)
    # why a sweep given move_to stopped part-way (a file of the same name already there): the
    # orphans moved before it are in ``orphans``, to be recorded as any sweep's are
    stopped: str | None = None

    @property
    def orphan_bytes(self) -> int:
        return sum(f.size for f in self.orphans)

    @property
    def temporaries(self) -> int:
        return sum(1 for f in self.orphans if f.temporary)


def sweep(
    store: Store,
    *,
    grace: timedelta = GRACE,
    since: float | None = None,
    now: float | None = None,
    dry_run: bool = False,
    move_to: Path | None = None,
) -> SweepReport:
    """Remove the orphans among the files last written in ``[since, now - grace)``, or move
    them into ``move_to`` (made if missing; outside the payload directory). A move that finds
    a file of its name there stops the sweep (:attr:`SweepReport.stopped`), the files moved
    before it in the report, so that the caller records them.

    ``since`` is the ``swept_until`` of the previous sweep, so each file is looked at once.
    File ages are taken from the wall clock, as the file system's times are.
    """
    until = (time.time() if now is None else now) - grace.total_seconds()
    report = SweepReport(swept_until=until)
    files = store.payloads.files(modified_before=until, modified_since=since)
    for orphan in _unreferenced(store, _counted(files, report)):
        if dry_run:
            report.orphans.append(orphan)
        elif move_to is not None:
            try:
                moved = _moved(orphan, store.payloads.root, move_to)
            except FileExistsError as exc:
                report.stopped = str(exc)
                break
            if moved:
                report.orphans.append(orphan)
        elif store.payloads.remove(orphan):
            report.orphans.append(orphan)
    return report


def _moved(orphan: StoredFile, root: Path, target: Path) -> bool:
    """Move ``orphan`` from the payload directory ``root`` to the same relative path under
    ``target``; False when it was gone. A file already there is never overwritten (a
    ``FileExistsError``: move to a new directory); a move across file systems is a copy, and
    the orphan is removed only once its copy is complete."""
    destination = target / orphan.path.relative_to(root)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        raise FileExistsError(f"{destination} exists already; move to an empty directory")
    try:
        shutil.move(orphan.path, destination)  # a rename, or a copy and delete across disks
    except FileNotFoundError:
        return False
    return True


def _counted(files: Iterable[StoredFile], report: SweepReport) -> Iterator[StoredFile]:
    for found in files:
        report.examined += 1
        yield found


def _unreferenced(store: Store, files: Iterable[StoredFile]) -> Iterator[StoredFile]:
    batch: dict[str, StoredFile] = {}
    for found in files:
        if found.key is None:
            yield found  # a spool never kept: nothing can refer to it
            continue
        batch[found.key] = found
        if len(batch) >= _BATCH:
            yield from _not_in_store(store, batch)
            batch = {}
    yield from _not_in_store(store, batch)


def _not_in_store(store: Store, batch: dict[str, StoredFile]) -> Iterator[StoredFile]:
    if not batch:
        return
    keys = list(batch)
    referring = union(
        select(MessageRow.payload_ref).where(MessageRow.payload_ref.in_(keys)),
        select(MessageRow.wire_ref).where(MessageRow.wire_ref.in_(keys)),
        select(ReceiptRow.wire_ref).where(ReceiptRow.wire_ref.in_(keys)),
    )
    with store.unit_of_work() as uow:
        referenced = set(uow.session.scalars(referring))
    for key, found in batch.items():
        if key not in referenced:
            yield found
