"""Folder integration: the EPJ drops fagmeldinger in an outbox and finds received ones in an inbox.

Outbox: the EPJ writes ``<name>.xml`` under a temporary name and renames it (so we never see half
a file). Each file is submitted and moved to ``sent/``, or to ``failed/`` beside
``<name>.error.txt`` saying why in plain words; moved only if it is the file read, held open
since (see ``outbox_moves``: the EPJ may rename a new file onto the name meanwhile, which then
stays in the outbox). Exactly once across crashes: a ``folder_files``
row is claimed (keyed by the file's name, inode, mtime and content hash) before submitting, and
the message carries that key as its ``client_id``, so after a crash we can tell whether the
submit committed and never send the same file twice; a file whose time or inode changed after
such a crash is found by its name and content among the files that never left the outbox (see
``_claim``). A file is taken once it has settled (see
``FolderSettings.settle_seconds``); one refused for its receiver's setup waits in the outbox for
``hold_minutes``, tried again every minute (``outbox-held``); every refusal raises
``outbox-refused``, and a file that fails unforeseen round after round ``outbox-stuck``.

Inbox: each received fagmelding appears as ``<id>.xml`` with its metadata in ``<id>.json``, which
is written first; both are written under random temporary names, never through a link (see
``files.write_temporary``), and renamed into place, while the processes on one inbox take turns
(so that they write it once) and no other channel can move the message on (see ``write_inbox``). A
``folder_files`` row naming the temporary files is committed before they are renamed into place
and marked written after: a crash between leaves the row, and only the temporaries still there
are renamed (a file already in place is never written again: the EPJ may have taken it). After
that the engine is told the message reached the EPJ (``receipts.deliver``).

The folders are the EPJ's to write in: a side whose folder is a symbolic link does nothing (see
``folder_checks``), and an outbox entry that is not a file (a link, a pipe) is refused, never
followed or waited on. The server makes no folder the configuration names, nor its parents:
only ``sent/`` and ``failed/`` in the outbox, at start, and its own folder there. An inbox that
is missing (a share not mounted) is not made: its messages wait, not delivered, and an alert
says so (see ``folder_checks``). While the payload share is away (``PayloadDirectoryLost``)
outbox files wait in the outbox, not counted as failing, and received messages wait for the
inbox, told once by the ``store-failing`` period. A full disk is not taken for the store's here:
it may be that of the EPJ's folders.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from stat import S_ISDIR, S_ISFIFO, S_ISLNK, S_ISREG, S_ISSOCK
from typing import Any, BinaryIO

from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from meldingstjener.config import FolderSettings
from meldingstjener.engine import receipts
from meldingstjener.engine.alerts import AlertKind, raise_alert
from meldingstjener.engine.context import EngineContext
from meldingstjener.engine.errors import SubmitRejected
from meldingstjener.engine.fagmelding import Fagmelding, inspect
from meldingstjener.engine.outbound import MAX_PAYLOAD_BYTES, submit
from meldingstjener.integration.files import (
    exists_at,
    flock,
    free_name,
    lstat_at,
    open_folder,
    publish,
    write_atomically,
    write_temporary,
)
from meldingstjener.integration.folder_checks import FolderChecks, OpenAlerts, missing_folders
from meldingstjener.integration.outbox_moves import (
    OWN_FOLDER,
    RoundFolders,
    move_out,
    put_back_leftovers,
)
from meldingstjener.model import Direction
from meldingstjener.model.privacy import passed_through
from meldingstjener.store.identity import PayloadDirectoryLost
from meldingstjener.store.payloads import Spool
from meldingstjener.store.tables import (
    FOLDER_CLIENT_PREFIX,
    FOLDER_INBOX,
    FOLDER_OUTBOX,
    FOLDER_WRITTEN,
    FolderFileRow,
    MessageRow,
)
from meldingstjener.store.uow import UnitOfWork

log = logging.getLogger(__name__)

OUTBOX, INBOX = FOLDER_OUTBOX, FOLDER_INBOX  # the sides; a row's kind
PENDING, SENT, FAILED = "pending", "sent", "failed"  # an outbox file's row
STAGING, WRITTEN = "staging", FOLDER_WRITTEN  # an inbox message's row
ACTOR = "folder"
HOLD_RETRY_SECONDS = 60.0  # a file held back for its receiver's setup is tried this often
STUCK_AFTER = 3  # rounds in a row a file fails unforeseen before it is an outbox-stuck alert
FOLDER = ""  # the outbox folder itself among the failing names (no file has an empty name)
OWN = f"{OWN_FOLDER}/"  # the server's own folder in it among them (no file's name has a /)
STUCK_REREAD_ROUNDS = 30  # the open outbox-stuck alerts are read again this often
NAME_SECRET = "folder.name_secret"  # the key of the file names' digests, in the store
SWEEP_EVERY_SECONDS = 3600.0  # the inbox is swept of temporaries a crash left this often
STALE_TEMPORARY_SECONDS = 3600.0  # a temporary inbox file this old is no live process's
# a temporary inbox file: ".<message id>.<xml|json>.<random>.tmp" (earlier versions: no random)
INBOX_TEMPORARY = re.compile(r"\.[0-9a-f-]{36}\.(?:xml|json)(?:\.[0-9a-f]{16})?\.tmp")


@dataclass(frozen=True)
class _Taken:
    """An outbox file as a round took it: the round's folders, the file's name, its status
    when it was read (from the descriptor held open on it; a link's own, for one refused), and
    the SHA-256 of the content read (None before it was read): a file whose time alone changed
    since is still the one read (see ``outbox_moves.move_out``)."""

    folders: RoundFolders
    name: str
    read: os.stat_result
    content: str | None = None


class FolderIntegration:
    def __init__(
        self,
        ctx: EngineContext,
        settings: FolderSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        for problem in missing_folders(settings):  # none is ever made: the rounds wait
            log.error("%s", problem)
        self.ctx = ctx
        self.settings = settings
        self._monotonic = monotonic
        # what this process remembers of the outbox's files, by name (forgotten when gone):
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}  # (size, time), seen since
        # held back: (size, time, inode) when held, file key, next try
        self._held: dict[str, tuple[tuple[int, int, int], str, float]] = {}
        self._failures: dict[str, int] = {}  # unforeseen failures in a row
        self._name_secret: bytes | None = None
        self._swept_at: float | None = None  # when the inbox was last swept of temporaries
        self.outbox = settings.outbox_dir
        self.inbox = settings.inbox_dir
        self.sent = settings.sent_dir or (self.outbox / "sent" if self.outbox else None)
        self.failed = settings.failed_dir or (self.outbox / "failed" if self.outbox else None)
        self.her_ids = list(settings.as_her_ids) or sorted(ctx.own_her_ids)
        outbox_path = os.fsencode(self.outbox.resolve()) if self.outbox else b""
        # this outbox among those sharing the store: its alerts' keys, its files' rows
        self._outbox_tag = hashlib.sha256(outbox_path).hexdigest()[:16]
        # this outbox's open outbox-stuck alerts (read again now and then: one resolved by
        # hand is opened again if still stuck)
        self._stuck_alerts = OpenAlerts(
            ctx,
            AlertKind.OUTBOX_STUCK,
            reread_every=STUCK_REREAD_ROUNDS,
            within=f"{self._outbox_tag}.",
        )
        # the folder-unsafe alerts' keys: by the paths as configured (a link in the last part
        # is what such an alert is about; resolved, the key would change when it is mended)
        self._unsafe_keys = {
            side: f"{side}.{hashlib.sha256(os.fsencode(os.path.abspath(folder))).hexdigest()[:16]}"
            for side, folder in ((OUTBOX, self.outbox), (INBOX, self.inbox))
            if folder is not None
        }
        self._checks = FolderChecks(ctx)
        self._make_sent_and_failed()

    def _make_sent_and_failed(self) -> None:
        """Make ``sent/`` and ``failed/`` in the outbox when missing (not those configured
        elsewhere: see ``folder_checks.missing_folders``), the one folder each, in the outbox
        opened without following a link: never a configured folder, nor a parent."""
        if self.outbox is None:
            return
        defaults = (("sent", self.settings.sent_dir), ("failed", self.settings.failed_dir))
        try:
            outbox = open_folder(self.outbox)
        except OSError as exc:  # a link, or gone since it was checked: the rounds say so
            log.error("folder outbox cannot be opened (%s)", type(exc).__name__)
            return
        try:
            for name, configured in defaults:
                if configured is None:
                    with contextlib.suppress(FileExistsError):  # (a file: the rounds say so)
                        os.mkdir(name, dir_fd=outbox)
        except OSError as exc:
            log.error("folder outbox: sent/ or failed/ cannot be made (%s)", type(exc).__name__)
        finally:
            os.close(outbox)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # keep the loop alive; the next round tries again
                log.error("folder integration round failed\n%s", passed_through(exc))
            stop.wait(self.settings.poll_interval_seconds)

    def run_once(self) -> int:
        # each side on its own: a fault on one must not stop the other
        handled = 0
        for side in (self.outbox_once, self.inbox_once):
            try:
                handled += side()
            except Exception as exc:
                log.error(
                    "folder integration: the %s round failed\n%s",
                    side.__name__,
                    passed_through(exc),
                )
        return handled

    # -- outbox ---------------------------------------------------------------------------------

    def outbox_once(self) -> int:
        if self.outbox is None:
            return 0
        assert self.sent is not None and self.failed is not None
        checked = [
            ("outbox folder", self.outbox),
            ("sent/ folder", self.sent),
            ("failed/ folder", self.failed),
            ("own folder", self.outbox / OWN_FOLDER),
        ]
        if not self._checks.usable(self._unsafe_keys[OUTBOX], "outbox", checked):
            return 0  # a folder is a link: nothing is sent, nothing moved
        try:
            folders = RoundFolders(self.outbox, self.sent, self.failed)
        except OSError as exc:
            self._not_listed(exc)
            return 0
        try:
            try:
                # what a process that died while moving a file left: back first, then listed
                put_back_leftovers(folders)
            except OSError as exc:
                # The own folder cannot be made or used (a file of its name, no permission):
                # no file could be moved out of the outbox, so none is sent (each would stay,
                # sent, in the outbox until it was stuck; see outbox_moves).
                self._own_folder_fails(exc)
                return 0
            self._failures.pop(OWN, None)
            unmoved = self._unmoved()  # asked before the listing: see _left_the_outbox
            try:
                names = sorted(os.listdir(folders.outbox))
            except OSError as exc:
                self._not_listed(exc)
                return 0
            self._failures.pop(FOLDER, None)
            self._left_the_outbox(unmoved, names)
            return self._outbox_round(folders, names)
        finally:
            folders.close()

    def _unmoved(self) -> dict[int, str]:
        """This outbox's rows whose file has not left it as far as the store knows
        (``moved_at`` unset): id and name digest. Few: a file's row is marked when the file is
        moved out, or else by the first round that finds the file gone."""
        with self.ctx.store.unit_of_work() as uow:
            rows = uow.session.execute(
                select(FolderFileRow.id, FolderFileRow.file_name).where(
                    FolderFileRow.outbox_tag == self._outbox_tag,
                    FolderFileRow.moved_at.is_(None),
                )
            )
            return {row_id: name for row_id, name in rows}

    def _left_the_outbox(self, unmoved: dict[int, str], names: list[str]) -> None:
        """Mark as left the rows of ``unmoved`` (asked before the outbox was listed as
        ``names``) whose file's name is not in the outbox.

        Only ``_move_out`` marks a row when its file leaves; one that left any other way (taken
        out by hand after a failed move, removed while the server was down after its submit, a
        crash between the move and the mark) would otherwise stand for ever for a later drop of
        the same name and content, which ``_claim`` would take as that file and move to sent/
        unsent. Asked before the listing: a row claimed since, by another process, for a file
        this listing missed is not marked while its file is still in the outbox. (A file in
        another process's turn at the listing is being moved out: marked by it anyway.)"""
        if not unmoved:
            return
        listed = {self._name_digest(name) for name in names}
        gone = [row_id for row_id, digest in unmoved.items() if digest not in listed]
        if not gone:
            return
        with self.ctx.store.unit_of_work() as uow:
            uow.session.execute(
                update(FolderFileRow)
                .where(FolderFileRow.id.in_(gone), FolderFileRow.moved_at.is_(None))
                .values(moved_at=self.ctx.clock())
            )
            uow.commit()

    def _not_listed(self, exc: OSError) -> None:
        """The outbox itself failed: a share not mounted, a folder removed or not readable."""
        log.error("folder outbox: the folder cannot be listed (%s)", type(exc).__name__)
        self._failures[FOLDER] = self._failures.get(FOLDER, 0) + 1
        self._report_stuck()

    def _own_folder_fails(self, exc: OSError) -> None:
        """The server's own folder in the outbox cannot be made or used: counted as the
        listing's failures are, an ``outbox-stuck`` alert after ``STUCK_AFTER`` rounds."""
        log.error("folder outbox: the server's own folder fails (%s)", type(exc).__name__)
        self._failures[OWN] = self._failures.get(OWN, 0) + 1
        self._report_stuck()

    def _outbox_round(self, folders: RoundFolders, names: list[str]) -> int:
        handled = 0
        present: set[str] = set()
        for name in names:
            if Path(name).suffix.lower() != ".xml" or name.startswith("."):
                continue
            present.add(name)
            try:
                # a link's own status: what it points to is not looked at
                stat = lstat_at(folders.outbox, name)
                if S_ISDIR(stat.st_mode):
                    continue  # a folder: not something an EPJ dropped to be sent
                if not self._settled(name, stat):
                    continue
                self._take_entry(folders, name, stat)
            except Exception as exc:  # one file must not hold up the rest; tried again
                if isinstance(exc, FileNotFoundError) and not exists_at(folders.outbox, name):
                    continue  # taken away meanwhile (by another process on this outbox)
                if isinstance(exc, PayloadDirectoryLost):
                    # The payload share away: no fault of the file, which waits in the outbox,
                    # not counted towards outbox-stuck; told once, by the store-failing period.
                    # (Not a full disk: here that may be the EPJ's folders', no store's.)
                    self.ctx.store_failing.work_refused(exc, "the folder outbox")
                    continue
                # its type only: a traceback would carry the file's path, and an EPJ may
                # name a file by the patient
                log.error("folder outbox: a file not taken (%s)", type(exc).__name__)
                self._failures[name] = self._failures.get(name, 0) + 1
            else:
                self._failures.pop(name, None)
            handled += 1
        gone_held = [held[1] for name, held in self._held.items() if name not in present]
        if gone_held:  # removed or renamed while held: no file waits for its receiver now
            with self.ctx.store.unit_of_work() as uow:  # (forgotten only once resolved)
                uow.alerts.resolve(
                    *(f"{AlertKind.OUTBOX_HELD}:{key}" for key in gone_held), at=self.ctx.clock()
                )
                uow.commit()
        for memory in (self._seen, self._held, self._failures):
            for name in [name for name in memory if name not in present]:
                del memory[name]
        self._report_stuck()
        return handled

    def _settled(self, name: str, stat: os.stat_result) -> bool:
        """Whether the file has kept its size and time for ``settle_seconds``, as seen by this
        process (an EPJ that writes in place, not by a rename). Our own clock between rounds,
        not the file's time: a share's clock may be off ours."""
        if self.settings.settle_seconds <= 0:
            return True
        now = self._monotonic()
        shape = (stat.st_size, stat.st_mtime_ns)
        seen = self._seen.get(name)
        if seen is None or seen[0] != shape:
            self._seen[name] = (shape, now)
            return False
        return now - seen[1] >= self.settings.settle_seconds

    def take(self, path: Path) -> None:
        """Send the outbox file ``path`` exactly once and move it out of the outbox, or refuse
        it (a round of one file, for tools and benchmarks)."""
        assert self.outbox is not None and self.sent is not None and self.failed is not None
        folders = RoundFolders(self.outbox, self.sent, self.failed)
        try:
            self._take_entry(folders, path.name, lstat_at(folders.outbox, path.name))
        finally:
            folders.close()

    def _take_entry(self, folders: RoundFolders, name: str, stat: os.stat_result) -> None:
        """Send one outbox file exactly once and move it out of the outbox; refuse what is not
        a file (``stat``: the outbox entry's own status, as listed)."""
        if not S_ISREG(stat.st_mode):
            self._refuse_not_a_file(_Taken(folders, name, stat))
            return
        # Never through a link (O_NOFOLLOW), and never to wait: a named pipe renamed over the
        # file since it was listed opens at once (O_NONBLOCK), and is then told by its status.
        # (A device put there would be opened; making one takes root.)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=folders.outbox)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO):  # a link; a socket
                raise
            self._seen.pop(name, None)  # not the file listed: looked at again next round
            return
        # The descriptor stays open until the file has been moved: while it is, no other file
        # can have this one's inode, so a file found with it is this file (see outbox_moves).
        try:
            opened = os.fstat(fd)
            if not S_ISREG(opened.st_mode) or _shape(opened) != _shape(stat):
                self._seen.pop(name, None)  # the same
                return
            with open(fd, "rb", closefd=False) as handle:
                self._take_open(_Taken(folders, name, opened), handle)
        finally:
            os.close(fd)

    def _take_open(self, taken: _Taken, handle: BinaryIO) -> None:
        """Take the file, open as ``handle``: refused when too large, else read, sent and
        moved."""
        stat, name = taken.read, taken.name
        if stat.st_size > MAX_PAYLOAD_BYTES:
            self._fail(
                taken,
                _name_key(name, stat),
                "too-large",
                f"the file is {stat.st_size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                [],
                claimed=False,
            )
            return
        held = self._held.get(name)
        if held is not None and held[0] == _shape(stat) and held[2] > self._monotonic():
            return  # held back, unchanged, and not due again: not even read
        # A snapshot in the payload store, read in pieces: what is hashed is what is sent, and
        # it becomes the stored payload by a rename (a 35 MB file is never held in memory).
        with self.ctx.store.payloads.spool() as data:
            data.write_from(handle)
            after = os.fstat(handle.fileno())
            if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self._seen.pop(name, None)
                return  # written to while it was read: taken when it has settled
            self._take(replace(taken, content=data.sha256), data)

    def _refuse_not_a_file(self, taken: _Taken) -> None:
        """Refuse a link, a named pipe, a socket or a device named like a message: it is moved
        to failed/ as it is (a link itself, never what it points to), beside an .error.txt.
        Nothing is read through it: a link may point to any file the server can read."""
        what = _not_a_file(taken.read.st_mode)
        self._fail(
            taken,
            _name_key(taken.name, taken.read),
            "not-a-file",
            f"it is {what}, not a file; the server sends only files put in the outbox "
            "themselves, and never reads through a link",
            [],
            claimed=False,
        )

    def _take(self, taken: _Taken, data: Spool) -> None:
        name, stat = taken.name, taken.read
        # the name as bytes: a file name need not be valid UTF-8 (the same key when it is)
        identity = os.fsencode(name) + f"\0{stat.st_ino}\0{stat.st_mtime_ns}\0".encode()
        key = hashlib.sha256(identity + data.sha256.encode()).hexdigest()
        state = self._claim(key, self._name_digest(name), data.sha256)
        if state is None:
            return  # another process claimed it first
        # the key of the row found: an earlier one when the file's time or inode has changed
        key, outcome, message_id, first_tried = state
        if outcome == SENT:
            self._move_sent(taken, key, message_id)
            return
        if outcome == FAILED:
            self._move_failed(taken, key)
            return
        message_id = message_id or self._submitted_before(key)
        if message_id is None:
            try:
                inspected = self._inspect_sender(data)
                # the key as idempotency key too: two processes watching one outbox may both
                # find the file claimed but unsent; the unique index lets one message through
                message_id = submit(
                    self.ctx,
                    data,
                    actor=ACTOR,
                    client_id=_client_id(key),
                    idempotency_key=f"{ACTOR}:{key}",
                    inspected=inspected,
                    # an AppRec answers only a message sent to a HER-id the folder acts for
                    may_answer=self._acts_for,
                )
            except SubmitRejected as rejected:
                if rejected.about_setup and not self._held_long_enough(first_tried):
                    self._hold(name, _shape(stat), key, rejected)
                    return
                self._fail(taken, key, rejected.code, rejected.message, rejected.problems)
                return
        decided = self._mark(key, SENT, message_id, stale_held=self._stale_held(name, key))
        self._held.pop(name, None)
        if decided == FAILED:
            # another process refused it for good at the end of its hold while this one's
            # submit went through (a moment's race, its check for a message just before this
            # one's commit): the file and its explanation in failed/ are the other process's,
            # and the refusal's alert is put right (the same key: it replaces the text)
            self._sent_though_refused(key, message_id)
            return
        self._move_sent(taken, key, message_id)
        log.info("outbox file sent as message %s", message_id)

    def _inspect_sender(self, data: Spool) -> Fagmelding:
        """The file's message, read once (``submit`` is given it); refused when it is sent as
        one of our HER-ids that ``[folder] as_her_ids`` leaves out: the folder acts for those
        only, as an API client for its own (an EPJ on one service must not send as another)."""
        inspected = inspect(data, self.ctx.policy.schema_dir)
        sender = inspected.sender.communication_party
        bounded = bool(self.settings.as_her_ids)  # unset: every HER-id of ours (submit checks)
        # an invalid message, or one that names no sender, is refused by submit as that
        if bounded and inspected.valid and sender is not None and str(sender) not in self.her_ids:
            raise SubmitRejected(
                "not-allowed",
                f"the message is sent as HER-id {sender}, which this folder does not act for "
                f"([folder] as_her_ids: {', '.join(self.her_ids)}); nothing was sent",
            )
        return inspected

    def _acts_for(self, her_id: str) -> bool:
        """Whether the folder acts for ``her_id`` (``[folder] as_her_ids``, else all of ours)."""
        return her_id in self.her_ids

    def _claim(
        self, key: str, name_digest: str, content: str
    ) -> tuple[str, str, str | None, datetime] | None:
        """(key, outcome, message id, first claimed) of the file's row, claimed now if it had
        none; None when another process claimed it at the same moment.

        The file's row is the one of its key, or else the one of a file of the same name and
        content that never left this outbox (``moved_at`` unset; the latest): the same file,
        whose time or inode changed while the server was down after its submit (an antivirus
        scan, an SMB client setting the time, a share remounted with new inode numbers). Taken
        as new, it would be sent again as another message. A file dropped again after the first
        left the outbox (moved out, or found gone by a round: see ``_left_the_outbox``) is a new
        one, and is sent (the EPJ may send the same message twice). (``outbox_moves`` tells the
        file read by the same rule while it is moved.)"""
        with self.ctx.store.unit_of_work() as uow:
            row = uow.session.scalars(
                select(FolderFileRow).where(FolderFileRow.kind == OUTBOX, FolderFileRow.key == key)
            ).first()
            if row is None:
                row = uow.session.scalars(
                    select(FolderFileRow)
                    .where(
                        FolderFileRow.outbox_tag == self._outbox_tag,
                        FolderFileRow.moved_at.is_(None),
                        FolderFileRow.content_sha256 == content,
                        FolderFileRow.file_name == name_digest,
                    )
                    .order_by(FolderFileRow.id.desc())
                ).first()
            if row is not None:
                return row.key, row.outcome, row.message_id, row.at
            now = self.ctx.clock()
            uow.session.add(
                FolderFileRow(
                    kind=OUTBOX,
                    key=key,
                    file_name=name_digest,
                    outcome=PENDING,
                    at=now,
                    content_sha256=content,
                    outbox_tag=self._outbox_tag,
                )
            )
            try:
                uow.commit()
            except IntegrityError:
                return None
            return key, PENDING, None, now

    def _submitted_before(self, key: str) -> str | None:
        """The message of an earlier attempt that committed before the process died."""
        with self.ctx.store.unit_of_work() as uow:
            return uow.session.scalars(
                select(MessageRow.id).where(
                    MessageRow.direction == Direction.OUTBOUND.value,
                    MessageRow.client_id == _client_id(key),
                )
            ).first()

    def _held_long_enough(self, first_tried: datetime) -> bool:
        return self.ctx.clock() - first_tried >= timedelta(minutes=self.settings.hold_minutes)

    def _hold(
        self, name: str, shape: tuple[int, int, int], key: str, rejected: SubmitRejected
    ) -> None:
        """Leave a file refused for its receiver's setup in the outbox, to be tried again: the
        operator connecting the partner, or the register's next sync, lets it through."""
        held = self._held.get(name)
        if held is not None and held[1] == key:
            # said when this process first held it (counting every try is noise)
            self._held[name] = (shape, key, self._monotonic() + HOLD_RETRY_SECONDS)
            return
        with self.ctx.store.unit_of_work() as uow:
            if held is not None:  # the file was written again: the old one is held no more
                uow.alerts.resolve(f"{AlertKind.OUTBOX_HELD}:{held[1]}", at=self.ctx.clock())
            raise_alert(
                uow,
                AlertKind.OUTBOX_HELD,
                f"a file in the folder outbox (file key {key[:12]}) is not sent yet: "
                f"{rejected.code}: {rejected.message}. It stays in the outbox and is tried again "
                f"every minute; after {self.settings.hold_minutes} minutes it is moved to "
                "failed/",
                at=self.ctx.clock(),
                key=key,
            )
            uow.commit()
        # remembered once told: an alert that did not commit is raised at the next try
        self._held[name] = (shape, key, self._monotonic() + HOLD_RETRY_SECONDS)
        log.warning("outbox file held back (%s)", rejected.code)

    def _mark(
        self,
        key: str,
        outcome: str,
        message_id: str | None,
        also: Callable[[UnitOfWork], None] | None = None,
        stale_held: str | None = None,
    ) -> str:
        """Record the file's outcome, unless another process recorded one first; return the
        outcome that stands. ``also`` runs in the same transaction (the refusal's alert);
        ``stale_held``: the key of an earlier version of the file this process held."""
        with self.ctx.store.unit_of_work() as uow:
            row = uow.session.scalars(
                select(FolderFileRow)
                .where(FolderFileRow.kind == OUTBOX, FolderFileRow.key == key)
                .with_for_update()
            ).one()
            if row.outcome != PENDING:
                return row.outcome
            if outcome == FAILED:
                # another process's submit of the file went through (the end of a hold): it
                # is sent, whatever this process was told
                sent = uow.session.scalars(
                    select(MessageRow.id).where(
                        MessageRow.direction == Direction.OUTBOUND.value,
                        MessageRow.client_id == _client_id(key),
                    )
                ).first()
                if sent is not None:
                    outcome, message_id, also = SENT, sent, None
            row.outcome = outcome
            row.message_id = message_id
            # a file held back for its receiver's setup is held no more (also when another
            # process, or one before a restart, held it)
            now = self.ctx.clock()
            held = [f"{AlertKind.OUTBOX_HELD}:{k}" for k in (key, stale_held) if k is not None]
            uow.alerts.resolve(*held, at=now)
            if also is not None:
                also(uow)
            uow.commit()
        return outcome

    def _stale_held(self, name: str, key: str) -> str | None:
        """The key of an earlier version of the file ``name`` this process holds back."""
        held = self._held.get(name)
        return held[1] if held is not None and held[1] != key else None

    def _sent_though_refused(self, key: str, message_id: str) -> None:
        log.error("an outbox file refused by another process was sent as %s", message_id)
        with self.ctx.store.unit_of_work() as uow:
            raise_alert(
                uow,
                AlertKind.OUTBOX_REFUSED,
                f"a file in the folder outbox (file key {key[:12]}) was moved to failed/ by one "
                f"server process while another sent it as message {message_id}: it WAS sent, "
                "whatever its .error.txt says; the EPJ must not send it again",
                at=self.ctx.clock(),
                key=key,
                message_id=message_id,
            )
            uow.commit()

    def _fail(
        self,
        taken: _Taken,
        key: str,
        code: str,
        reason: str,
        problems: list[str],
        *,
        claimed: bool = True,
    ) -> None:
        name = taken.name
        lines = [
            f"The file {_printable(name)} was not sent, and nothing was sent for it.",
            f"Reason ({code}): {reason}",
        ]
        if problems:
            lines.append("What is wrong in the message:")
            lines.extend(f"  - {problem}" for problem in problems)
        lines.append("Correct the message and put it in the outbox again as a new file.")
        lines.append(f"(File key {key[:12]}, as the operator's alert names it.)")
        failed = taken.folders.failed()
        target = free_name(failed, name, key[:12])
        explanation = ("\n".join(lines) + "\n").encode()
        mode = self.settings.file_mode
        write_atomically(failed, f"{target}.error.txt", explanation, mode=mode)

        def alert(uow: UnitOfWork) -> None:
            raise_alert(
                uow,
                AlertKind.OUTBOX_REFUSED,
                f"a file in the folder outbox (file key {key[:12]}) was refused and moved to "
                f"failed/, beside an .error.txt saying why; nothing was sent for it: {code}: "
                f"{reason}",
                at=self.ctx.clock(),
                key=key,
            )

        # the alert with the outcome, or neither: a crash between them left a refusal unsaid
        stale = self._stale_held(name, key)
        if not claimed:
            with self.ctx.store.unit_of_work() as uow:
                if stale is not None:
                    uow.alerts.resolve(f"{AlertKind.OUTBOX_HELD}:{stale}", at=self.ctx.clock())
                alert(uow)
                uow.commit()
        elif self._mark(key, FAILED, None, also=alert, stale_held=stale) != FAILED:
            # another process sent it first (at the end of a hold): its outcome stands
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{target}.error.txt", dir_fd=failed)
            self._held.pop(name, None)
            return
        got = self._move_out(taken, key, failed, target, key[:12], record=claimed)
        if got is not None and got != target:  # a name taken meanwhile: the explanation follows
            write_atomically(failed, f"{got}.error.txt", explanation, mode=mode)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{target}.error.txt", dir_fd=failed)
        self._held.pop(name, None)
        log.warning("outbox file refused (%s)", code)

    def _report_stuck(self) -> None:
        """Raise ``outbox-stuck`` for a file that failed unforeseen ``STUCK_AFTER`` rounds in a
        row (it cannot be read, or not moved: permissions, a full disk), and resolve it when the
        file went through or is gone, also one raised before this process started."""
        assert self.outbox is not None
        stuck = {
            self._stuck_key(name): name
            for name, failures in self._failures.items()
            if failures >= STUCK_AFTER
        }
        known = self._stuck_alerts.keys()
        # raised while not known to be open: one that did not commit is raised again next round
        news = set(stuck) - known
        # over when the file went through or is gone; not when it failed again (a process
        # started after the alert counts its own rounds from nought)
        failing = {self._stuck_key(name) for name in self._failures}
        over = known - failing
        if not news and not over:
            return
        now = self.ctx.clock()
        with self.ctx.store.unit_of_work() as uow:
            for key in news:
                what = (
                    f"the folder outbox {self.outbox} could not be listed {STUCK_AFTER} rounds in "
                    "a row (a share not mounted, the directory removed or not readable?): no "
                    "file in it is sent"
                    if stuck[key] == FOLDER
                    else f"the server's own folder {self.outbox / OWN_FOLDER} in the folder "
                    f"outbox could not be made or used {STUCK_AFTER} rounds in a row (a file of "
                    "that name, no permission to make it?): no file in the outbox is sent, since "
                    "none could be moved out of it afterwards"
                    if stuck[key] == OWN
                    else f"a file in the folder outbox (name key {key.partition('.')[2]}) could "
                    f"not be taken {STUCK_AFTER} rounds in a row: it cannot be read, or not "
                    "moved to sent/ or failed/ (permissions, a full disk?). It stays in the "
                    "outbox"
                )
                raise_alert(
                    uow,
                    AlertKind.OUTBOX_STUCK,
                    f"{what}; tried again every round, the server's log names the error",
                    at=now,
                    key=key,
                )
            for key in over:
                uow.alerts.resolve(f"{AlertKind.OUTBOX_STUCK}:{key}", at=now)
            uow.commit()
        known -= over  # (in place: the set the next round is given)
        known |= news

    def _stuck_key(self, name: str) -> str:
        return f"{self._outbox_tag}.{self._name_digest(name)[:16]}"

    def _name_digest(self, name: str) -> str:
        """What the store and the alerts keep of an outbox file's name: a keyed digest, not the
        name, which an EPJ may make of the patient's (a plain hash of a national identity
        number is found back by trying them all). The key is this store's own, kept in it, so
        every process sharing the store digests a name alike."""
        if self._name_secret is None:
            self._name_secret = bytes.fromhex(_store_secret(self.ctx))
        return hmac.new(self._name_secret, os.fsencode(name), hashlib.sha256).hexdigest()

    def _move_failed(self, taken: _Taken, key: str) -> None:
        """Move a file refused before (its .error.txt is in failed/ already)."""
        failed = taken.folders.failed()
        self._move_out(taken, key, failed, free_name(failed, taken.name, key[:12]), key[:12])

    def _move_sent(self, taken: _Taken, key: str, message_id: str | None) -> None:
        sent, tag = taken.folders.sent(), (message_id or "sent")[:8]
        moved = self._move_out(taken, key, sent, taken.name, tag)
        if moved is None:
            # gone (another process moved it), or another file put in its place: that one
            # is the EPJ's next message, and waits in the outbox for a later round
            log.info("outbox file sent as message %s was not there to move", message_id)

    def _move_out(
        self, taken: _Taken, key: str, target: int, wanted: str, tag: str, *, record: bool = True
    ) -> str | None:
        """Move the file out of the outbox (see ``outbox_moves.move_out``); ``record``: it was
        claimed as row ``key``, and that it left is recorded, so that a file of its name and
        content found there later is a new one (see ``_claim``). Recorded also when it was not
        moved (gone, or another file was at its name): the file read is not in the outbox
        either way. (A crash between the move and the record leaves the row as if the file had
        stayed, until the next round finds it gone: see ``_left_the_outbox``.)"""
        got = move_out(
            taken.folders,
            taken.name,
            taken.read,
            target,
            wanted,
            tag,
            content_sha256=taken.content,
        )
        if not record:
            return got
        with self.ctx.store.unit_of_work() as uow:
            uow.session.execute(
                update(FolderFileRow)
                .where(
                    FolderFileRow.kind == OUTBOX,
                    FolderFileRow.key == key,
                    FolderFileRow.moved_at.is_(None),
                )
                .values(moved_at=self.ctx.clock())
            )
            uow.commit()
        return got

    # -- inbox ----------------------------------------------------------------------------------

    def inbox_once(self) -> int:
        if self.inbox is None:
            return 0
        inbox = [("inbox folder", self.inbox)]
        # present: an inbox missing or not a folder (a share unmounted) is said at once, not
        # left to a silent wait; it is never made (see folder_checks)
        if not self._checks.usable(self._unsafe_keys[INBOX], "inbox", inbox, present=True):
            return 0  # a link, or no folder: nothing is written, no message delivered
        self._sweep_temporaries()
        written = FolderFileRow
        # Still acknowledged: not written yet, staged by a round that died before its files
        # were in place and recorded, or written by a round that died before it marked the
        # message delivered (then only that is done: the EPJ may have taken the files).
        state = (
            select(written.outcome)
            .where(written.kind == INBOX, written.key == MessageRow.id)
            .scalar_subquery()
        )
        query = (
            select(MessageRow, state)
            .where(
                MessageRow.direction == Direction.INBOUND.value,
                MessageRow.status == "acknowledged",
                MessageRow.payload_ref.is_not(None),
                MessageRow.to_her_id.in_(self.her_ids),
            )
            .order_by(MessageRow.created_at)
            .limit(100)
        )
        with self.ctx.store.unit_of_work() as uow:
            rows = [(row, outcome) for row, outcome in uow.session.execute(query)]
        for row, outcome in rows:
            try:
                if outcome == WRITTEN:
                    self._deliver(row.id)
                else:
                    self.write_inbox(row)
            except Exception as exc:  # one message must not hold up the rest; tried again
                if isinstance(exc, PayloadDirectoryLost):
                    # The payload share away: every message of the round would meet it. They
                    # wait, still acknowledged; told once, by the store-failing period, not
                    # with a traceback per message. (Not a full disk: the inbox's is the EPJ's.)
                    self.ctx.store_failing.work_refused(exc, "the folder inbox")
                    break
                log.error(
                    "folder inbox: message %s could not be written (%s)\n%s",
                    row.id,
                    type(exc).__name__,
                    passed_through(exc),
                )
        return len(rows)

    def write_inbox(self, row: MessageRow) -> None:
        """Write one message's files, once, also across a crash.

        In two steps: the files are written under temporary names and a ``staging`` row naming
        those is committed; then, in a transaction of its own, each temporary still there is
        renamed into place and the row marked ``written``. A crash (or a failed commit) after
        the renames leaves the row staging and no temporary: the files are not written again,
        the EPJ may have taken them. One before them leaves the temporaries, put in place by
        the next round (or by this one, for a message another process staged). Processes on
        the same inbox take turns on each step, and ask the store again in their turn: had
        one not waited for another, it would write the files again after the EPJ took them,
        or rename a temporary the other is about to rename."""
        assert self.inbox is not None
        with _opened(self.inbox) as inbox, self._turn():
            self._stage(row, inbox)
            written = self._publish_staged(row.id, inbox)
        if written:
            self._deliver(row.id)

    def _stage(self, row: MessageRow, inbox: int) -> None:
        """Write the message's files under temporary names in the open folder ``inbox`` and
        commit a ``staging`` row naming them, unless the message has a row already (staged or
        written) or is no longer waiting for its files."""
        if self.ctx.store.database.is_postgresql:
            # Processes on any host: the message's row lock, held while its files are written.
            # (A hung network share holds that row and one connection as long as it hangs.)
            with self.ctx.store.unit_of_work() as uow:
                if not _still_to_write(uow, row.id, lock=True):
                    return
                _record_staging(uow, row.id, self._stage_files(row, inbox))
                uow.commit()
        else:
            # SQLite serves one host, and its one writer must not wait for the files' content
            # to be written (every unit of work of the process would): the processes take turns
            # on a file lock beside the database (``_turn``), and the content is written with
            # the store free, then the message is asked again.
            with self.ctx.store.unit_of_work() as uow:
                if not _still_to_write(uow, row.id, lock=False):
                    return  # asked first: a 35 MB document is not copied for nothing
            staged = self._stage_files(row, inbox)
            with self.ctx.store.unit_of_work() as uow:
                if not _still_to_write(uow, row.id, lock=False):
                    _remove(inbox, [temporary for temporary, _ in staged])
                    return
                _record_staging(uow, row.id, staged)
                uow.commit()

    def _publish_staged(self, message_id: str, inbox: int) -> bool:
        """Put the staged files of the message in place in the open folder ``inbox`` and mark
        its row written; whether this call did (not when no staging row is left, or the message
        was taken through another channel since it was staged).

        In one unit of work that asks the message again: on PostgreSQL under its row lock, on
        SQLite holding the store's write lock from its first statement (BEGIN IMMEDIATE). The
        EPJ marking it read through the API meanwhile is seen, and no file of it appears after
        that. A temporary no longer there was renamed into place by a round that died before its
        commit: its file is not written again (the EPJ may have taken it)."""
        postgresql = self.ctx.store.database.is_postgresql
        with self.ctx.store.unit_of_work() as uow:
            status = _message_status(uow, message_id, lock=postgresql)
            row = uow.session.scalars(
                select(FolderFileRow).where(
                    FolderFileRow.kind == INBOX, FolderFileRow.key == message_id
                )
            ).first()
            if row is None or row.outcome != STAGING:
                return False  # written (by another process), or never staged
            if row.staged_as is None:
                # A staging row naming no temporaries (kept by an earlier migration 0020 going
                # down and up again): nothing of it can be put in place, and the message is not
                # written. Removed, the next round writes it anew; kept, it would wait for ever.
                uow.session.delete(row)
                uow.commit()
                return False
            temporaries = row.staged_as.split("/")
            if status != "acknowledged":
                _remove(inbox, temporaries)  # taken through another channel: no file appears
                uow.session.delete(row)
                uow.commit()
                return False
            for temporary, name in zip(temporaries, _inbox_names(message_id), strict=True):
                if exists_at(inbox, temporary):
                    publish(inbox, temporary, name)
            row.outcome, row.staged_as, row.at = WRITTEN, None, self.ctx.clock()
            uow.commit()
        return True

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        """This inbox's turn among the processes sharing the SQLite database: a lock file
        beside the database (not in the inbox, which is the EPJ's). On PostgreSQL the
        message's row lock is the turn (see ``_stage`` and ``_publish_staged``)."""
        assert self.inbox is not None
        if self.ctx.store.database.is_postgresql:
            return contextlib.nullcontext()
        database = make_url(self.ctx.store.database.url).database
        if not database or database == ":memory:":
            return contextlib.nullcontext()  # a database of this process alone
        inbox = hashlib.sha256(os.fsencode(self.inbox.resolve())).hexdigest()[:16]
        return flock(Path(f"{database}.inbox-{inbox}.lock"))

    def _stage_files(self, row: MessageRow, inbox: int) -> list[tuple[str, str]]:
        """Write a message's two files under temporary names in the open folder ``inbox``;
        (temporary, final) name of each, in the order they are to be put in place: the
        sidecar first, so that when the .xml appears its metadata is already there."""
        assert row.payload_ref is not None
        sidecar = json.dumps(inbox_metadata(row), indent=2).encode()
        sidecar_name, document_name = _inbox_names(row.id)
        mode = self.settings.file_mode
        with self.ctx.store.payloads.open(row.payload_ref) as payload:
            return [
                (write_temporary(inbox, sidecar_name, sidecar, mode=mode), sidecar_name),
                (write_temporary(inbox, document_name, payload, mode=mode), document_name),
            ]

    def _sweep_temporaries(self) -> None:
        """Remove the temporary inbox files a process left when it died while writing them
        (hourly): the name of a message's file, a random part, ``.tmp``; also the fixed
        ``.<name>.tmp`` of earlier versions. Only those older than an hour, so as not to take
        one another process is writing now; unlinked by name, a link too (never followed).
        Never one a staging row names whose message still waits for it: it is the message's
        file, to be put in place (a server down for a day after staging it would lose it)."""
        assert self.inbox is not None
        now = self._monotonic()
        if self._swept_at is not None and now - self._swept_at < SWEEP_EVERY_SECONDS:
            return
        self._swept_at = now
        with self.ctx.store.unit_of_work() as uow:
            staged = uow.session.scalars(
                select(FolderFileRow.staged_as)
                .join(MessageRow, MessageRow.id == FolderFileRow.key)
                .where(
                    FolderFileRow.kind == INBOX,
                    FolderFileRow.outcome == STAGING,
                    MessageRow.status == "acknowledged",
                )
            )
            kept = {name for names in staged if names for name in names.split("/")}
        with _opened(self.inbox) as inbox:
            for name in os.listdir(inbox):
                if not INBOX_TEMPORARY.fullmatch(name) or name in kept:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    status = os.stat(name, dir_fd=inbox, follow_symlinks=False)
                    if time.time() - status.st_mtime >= STALE_TEMPORARY_SECONDS:
                        os.unlink(name, dir_fd=inbox)
                        log.info("folder inbox: a temporary file left by a crash was removed")

    def _deliver(self, message_id: str) -> None:
        try:
            receipts.deliver(self.ctx, message_id, actor=ACTOR)
        except receipts.AppRecRefused as refused:
            log.warning(
                "message %s written to the inbox but not deliverable: %s", message_id, refused.code
            )


def _message_status(uow: UnitOfWork, message_id: str, *, lock: bool) -> str | None:
    """The message's status (``lock``: its row locked till the unit of work ends)."""
    if lock:
        state = uow.messages.lock_state(message_id)
        return None if state is None else state.status
    return uow.session.scalar(select(MessageRow.status).where(MessageRow.id == message_id))


def _still_to_write(uow: UnitOfWork, message_id: str, *, lock: bool) -> bool:
    """Whether the message is still waiting for its inbox files and none are staged or written
    (``lock``: its row locked)."""
    status = _message_status(uow, message_id, lock=lock)
    written = uow.session.scalars(
        select(FolderFileRow.id).where(FolderFileRow.kind == INBOX, FolderFileRow.key == message_id)
    ).first()
    return status == "acknowledged" and written is None


def _record_staging(uow: UnitOfWork, message_id: str, staged: list[tuple[str, str]]) -> None:
    """The row saying the message's files are written under the temporary names ``staged``
    (temporary, final) and are to be renamed into place (a temporary's name has no /)."""
    uow.session.add(
        FolderFileRow(
            kind=INBOX,
            key=message_id,
            file_name=f"{message_id}.xml",
            message_id=message_id,
            outcome=STAGING,
            staged_as="/".join(temporary for temporary, _ in staged),
        )
    )


def _client_id(key: str) -> str:
    """The client_id of the message the outbox file of row ``key`` was sent as (retention finds
    a row's message by it too: see ``engine/retention.py``)."""
    return f"{FOLDER_CLIENT_PREFIX}{key}"


def _inbox_names(message_id: str) -> tuple[str, str]:
    """A message's two inbox files, in the order they are put in place: the sidecar first, so
    that when the .xml appears its metadata is already there."""
    return f"{message_id}.json", f"{message_id}.xml"


def _remove(folder: int, names: list[str]) -> None:
    """Unlink the files ``names`` in the open ``folder`` (one gone already is no matter)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)


@contextlib.contextmanager
def _opened(folder: Path) -> Iterator[int]:
    """The folder ``folder`` open for steps relative to it (see ``files.open_folder``)."""
    fd = open_folder(folder)
    try:
        yield fd
    finally:
        os.close(fd)


def _shape(stat: os.stat_result) -> tuple[int, int, int]:
    """What tells a file unchanged without reading it: its size, time and inode."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _store_secret(ctx: EngineContext) -> str:
    """The store's own key for file-name digests (hex), made by the first process to need it."""
    for _ in range(2):
        with ctx.store.unit_of_work() as uow:
            secret = uow.state.get(NAME_SECRET)
            if secret is not None:
                return secret
            uow.state.set(NAME_SECRET, secrets.token_hex(32))
            try:
                uow.commit()
            except IntegrityError:
                continue  # another process made it at the same moment: read that one
    raise RuntimeError("the folder integration's name key could not be made")


def _not_a_file(mode: int) -> str:
    """What an outbox entry that is not a file is, in words."""
    if S_ISLNK(mode):
        return "a symbolic link"
    if S_ISFIFO(mode):
        return "a named pipe"
    if S_ISSOCK(mode):
        return "a socket"
    return "a device or another special file"


def _name_key(name: str, stat: os.stat_result) -> str:
    """A key for a file refused before it was read (too large, not a file): its name, inode
    and time."""
    identity = os.fsencode(name) + f"\0{stat.st_ino}\0{stat.st_mtime_ns}".encode()
    return hashlib.sha256(identity).hexdigest()


def _printable(name: str) -> str:
    """A file name as text that can be stored and shown (undecodable bytes as escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def inbox_metadata(row: MessageRow) -> dict[str, Any]:
    """The sidecar: ids, addressing and type of a received message; never its content."""
    return {
        "id": row.id,
        "ebxmlMessageId": row.ebxml_message_id,
        "conversationId": row.ebxml_conversation_id,
        "businessDocumentId": row.msg_id,
        "messageType": row.msg_type,
        "messageTypeVersion": row.msg_type_version,
        "isAppRec": row.msg_type == receipts.APPREC,
        "senderHerId": row.from_her_id,
        "receiverHerId": row.to_her_id,
        "sender": {"organisation": row.sender_org_her_id, "service": row.sender_service_her_id},
        "receiver": {
            "organisation": row.receiver_org_her_id,
            "service": row.receiver_service_her_id,
        },
        "receivedAt": row.created_at.isoformat(),
        "payloadSha256": row.payload_sha256,
        "payloadSize": row.payload_size,
        "contentType": "application/xml",
    }
