"""Which database a payload directory belongs to: the store's identity, in both places.

The message rows are in the database; their bodies are files in the payload directory. Every
process of one store must therefore use one payload directory: a ``serve`` on another host
with a folder of its own claims jobs whose files it cannot find (and gave those messages up),
and its own files are missing to every other process. Nothing in either place said which
belonged with which. So the store has a random id, kept in the database (``kv_state``,
:data:`STORE_ID_KEY`) and in a marker file in the payload directory (:data:`MARKER_NAME`, a dot
file: the payload tree's own folders are two characters long, and ``rm -r payloads/*`` leaves it
where it is). The two must agree:

- ``serve`` calls :func:`claim_payload_directory` at start. A store without an id (a new one,
  or one made by a version before this check) takes the folder it was given: the database's id
  is written first (only where none is: of processes starting together on one shared folder,
  the first one's stays, and every one writes the id the database then has into the marker),
  with a mark that the marker is still to be written (:data:`MARKER_PENDING_KEY`, naming the
  folder), then the marker, then the mark is cleared. A start interrupted in between is taken
  up by the next: the database's id, its mark naming this folder, no marker yet.
- A database without an id beside a folder with a marker is a backup of before the id (taken
  "right before ``db upgrade``", docs/OPERATIONS.md) restored beside the folder kept, or a
  start of a version that wrote the marker first interrupted before the database's id: the
  folder is the store's if it holds files the database refers to (:func:`_holds_files_of`, a
  sample of the newest messages' files), and ``serve`` then records the marker's id.
- every other process checks on first touching a payload file (:class:`CheckedPayloadStore`,
  which ``bootstrap.open_store`` makes): ``send`` from a help desk's machine would store a body
  no server can read, and ``sweep`` over another store's folder would remove its files as
  unreferenced. Commands that never touch a payload (``alerts``, ``instances``) need no share.
  They never write an id: only a server makes the choice.
- while ``serve`` runs, its heartbeat reads the marker again (:meth:`CheckedPayloadStore.
  watch_marker`, a read of one small file a minute): a share that drops while the server runs
  leaves its mount point, a writable folder of the host's own, where new bodies would be
  written unseen by every other process and lost from the share's view. A marker gone, another
  store's, or not readable makes the store refuse every touch of a payload
  (:class:`PayloadDirectoryLost`, which the server counts as its store failing) until the
  marker names the store again, looked at once more at every touch meanwhile.

Refused (:class:`PayloadDirectoryNotOurs`, a :class:`StoreUnavailable` that names both places
and what to do): a marker with another id; a marker where the database has no id and the folder
none of its files (another store's folder, or a new database pointed at an old folder); no
marker where the database has
an id, whether the folder is empty (a host's own fresh folder, or a share that is not mounted)
or not (a folder of the time before this check on a second host, which held that host's own
bodies: taking it would carry the fault on). A restored backup of both keeps its id. A folder
emptied of its bodies keeps its marker.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from meldingstjener.store.database import Database
from meldingstjener.store.opening import StoreUnavailable, payloads_failed, shown_url
from meldingstjener.store.payloads import PayloadStore, StoredFile, make_durable_dir
from meldingstjener.store.tables import MessageRow, StateRow

if TYPE_CHECKING:
    from meldingstjener.store.uow import Store

STORE_ID_KEY = "store.id"
# where the first serve found the payload directory: named when another folder is refused
PAYLOAD_DIR_KEY = "store.payload_dir"
MARKER_NAME = ".meldingstjener-store"
# set with the database's id, cleared once the marker is written: the folder (resolved) whose
# marker a start interrupted in between did not write yet
MARKER_PENDING_KEY = "store.marker_pending"
# how many of the newest messages' files are looked for in a marked folder the database has no
# id for: one found is enough (keys are random, another store's folder holds none of them)
FILE_SAMPLE = 20


class PayloadDirectoryNotOurs(StoreUnavailable):
    """The payload directory is not this database's (another store's, or a host's own)."""


class PayloadDirectoryLost(PayloadDirectoryNotOurs):
    """The payload directory stopped being the store's while ``serve`` ran: its marker gone (a
    share unmounted, the folder underneath in its place), another store's, or unreadable."""


def marker_path(directory: Path) -> Path:
    return directory / MARKER_NAME


def read_marker(directory: Path) -> str | None:
    """The store id the directory's marker names; None when it has none."""
    try:
        return marker_path(directory).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise payloads_failed(directory, exc) from None


# How long a look at the marker waits for its read. A hard-mounted network share that hangs
# blocks a read until it answers, maybe for good; the heartbeat that looks would stop beating
# with it (and the other serves then take this one for gone). A read that does not answer in
# time is a directory lost; it goes on in its own thread, and no other is started meanwhile.
MARKER_READ_TIMEOUT = 10.0


class _MarkerRead:
    """One read of a marker in a daemon thread (a hung read must not keep the process from
    exiting), its answer or its error kept for the caller."""

    def __init__(self, directory: Path) -> None:
        self.deadline = time.monotonic() + MARKER_READ_TIMEOUT
        self.marked: str | None = None
        self.error: StoreUnavailable | None = None
        self.thread = threading.Thread(
            target=self._read, args=(directory,), name="payload-marker-read", daemon=True
        )
        self.thread.start()

    def _read(self, directory: Path) -> None:
        try:
            self.marked = read_marker(directory)
        except StoreUnavailable as exc:
            self.error = exc


def store_id(database: Database) -> str | None:
    """The store's id as its database keeps it; None before a ``serve`` of this version ran."""
    return _state(database, STORE_ID_KEY)


def _state(database: Database, key: str) -> str | None:
    # Read outside every unit of work (a deferred transaction on SQLite): the check may come
    # while this thread's unit of work holds the write lock.
    with database.reading() as connection:
        return connection.execute(
            select(StateRow.value).where(StateRow.key == key)
        ).scalar_one_or_none()


def claim_payload_directory(store: Store) -> str:
    """At a ``serve``'s start: the store's id, its payload directory taken for a store that
    has none yet; :class:`PayloadDirectoryNotOurs` when the directory is not the store's."""
    known = _claim(store.database, store.payloads.root)
    if isinstance(store.payloads, CheckedPayloadStore):
        store.payloads.mark_checked(known)
    return known


def _claim(database: Database, directory: Path) -> str:
    known = store_id(database)
    marked = read_marker(directory)
    if known is None and marked is None:
        _record_store_id(database, secrets.token_hex(16), directory, pending=True)
    elif known is None and marked and _holds_files_of(database, directory):
        _record_store_id(database, marked, directory, pending=False)
    known = store_id(database)
    here = str(directory.resolve())
    pending = _state(database, MARKER_PENDING_KEY)
    if known is not None and pending == here and read_marker(directory) is None:
        _write_marker(directory, known)  # the database's id, whichever process wrote it
    check_payload_directory(database, directory, known=known)
    assert known is not None  # a directory that was checked names the store's id
    if pending is not None:
        _clear_pending(database)
    return known


def check_payload_directory(
    database: Database, directory: Path, *, known: str | None = None
) -> None:
    """:class:`PayloadDirectoryNotOurs` unless the directory's marker names this store; a
    store without an id yet, whose directory has no marker, passes (nothing to compare)."""
    known = store_id(database) if known is None else known
    marked = read_marker(directory)
    if marked is not None and marked == known:
        return
    if marked is None and known is None:
        return
    if known is None and marked and _holds_files_of(database, directory):
        return  # a backup of before the id restored beside its folder: serve records the id
    marker = marker_path(directory)
    where = f"the payload directory {directory} (data_dir)"
    database_named = f"the database {shown_url(database.url)}"
    if marked is not None:
        whose = f"store {marked}" if marked else "a store (its marker is empty)"
        has = (
            f"is store {known}"
            if known
            else "has no store id yet, and none of the newest files it refers to is there"
        )
        raise PayloadDirectoryNotOurs(
            f"{where} belongs to {whose} ({marker}), but {database_named} {has}: point "
            "data_dir at the payload directory every serve of this database shares; only if "
            f"{directory} never served another database, remove {marker}"
        )
    if _holds_files(directory):
        raise PayloadDirectoryNotOurs(
            f"{where} has no marker {marker}, but {database_named} is store {known}, whose "
            "serves write theirs there: this folder is not the one they share (a folder of "
            "this host's own?). Point data_dir at the shared payload directory; only if this "
            f"is it (restored from a backup without the marker), write {known} into {marker}"
        )
    shared = _state(database, PAYLOAD_DIR_KEY) or "another folder"
    raise PayloadDirectoryNotOurs(
        f"{where} is empty and unmarked, but {database_named} is store {known}, whose payloads "
        f"are in {shared} (as its first serve named it; its marker {MARKER_NAME} names "
        f"{known}): every serve of one database must use that one payload directory (a network "
        "share); mount it on this host and point data_dir at it"
    )


def _holds_files_of(database: Database, directory: Path) -> bool:
    """Whether ``directory`` holds a file of the newest :data:`FILE_SAMPLE` messages with files
    (newest: retention removes the old ones' first). Looked for directly, not through a
    :class:`CheckedPayloadStore`, which would check again."""
    newest = (
        select(MessageRow.payload_ref, MessageRow.wire_ref)
        .where((MessageRow.payload_ref.is_not(None)) | (MessageRow.wire_ref.is_not(None)))
        .order_by(MessageRow.created_at.desc())
        .limit(FILE_SAMPLE)
    )
    with database.reading() as connection:
        keys = [key for row in connection.execute(newest) for key in row if key]
    try:
        return any((directory / key[:2] / key).is_file() for key in keys)
    except OSError as exc:
        raise payloads_failed(directory, exc) from None


def _holds_files(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return any(entry.name != MARKER_NAME for entry in entries)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise payloads_failed(directory, exc) from None


def _write_marker(directory: Path, value: str) -> None:
    """Write the marker where none is (``x``: of processes starting together on one shared
    folder the first one's stays), durably, as the payloads are."""
    make_durable_dir(directory)
    try:
        with open(marker_path(directory), "x", encoding="ascii") as handle:
            handle.write(f"{value}\n")
            handle.flush()
            os.fsync(handle.fileno())
    except FileExistsError:
        return
    except OSError as exc:
        raise payloads_failed(directory, exc) from None
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _record_store_id(database: Database, value: str, directory: Path, *, pending: bool) -> None:
    """The database's id, unless it has one (another process's, written meanwhile); with it
    the folder and, ``pending``, the mark that its marker is still to be written."""
    here = str(directory.resolve())
    session = database.sessions()
    try:
        if session.get(StateRow, STORE_ID_KEY) is None:
            session.add(StateRow(key=STORE_ID_KEY, value=value))
            session.merge(StateRow(key=PAYLOAD_DIR_KEY, value=here))
            if pending:
                session.merge(StateRow(key=MARKER_PENDING_KEY, value=here))
            session.commit()
    except IntegrityError:  # a process starting at the same time was first
        session.rollback()
    finally:
        session.close()


def _clear_pending(database: Database) -> None:
    """The marker is written (and checked): no start is interrupted before it any more."""
    session = database.sessions()
    try:
        pending = session.get(StateRow, MARKER_PENDING_KEY)
        if pending is not None:
            session.delete(pending)
            session.commit()
    finally:
        session.close()


class CheckedPayloadStore(PayloadStore):
    """A payload store that checks, before its first file is touched, that the directory is
    this database's (:func:`check_payload_directory`); ``serve`` checks at its start instead
    (:func:`claim_payload_directory`) and marks the store checked, with the store's id, which
    its heartbeat then finds in the marker again (:meth:`watch_marker`)."""

    def __init__(self, root: Path, database: Database) -> None:
        super().__init__(root)
        self._database = database
        self._checked = False
        self._check_lock = threading.Lock()
        self._store_id: str | None = None  # known once a serve claimed the directory
        # why the directory is not the store's now (the marker watched): every touch refused
        self._lost: str | None = None
        self._reading: _MarkerRead | None = None  # the last read of the marker, or the one on
        self._read_lock = threading.Lock()
        # when the last look at the marker began (time.monotonic()), for looks kept to one in a
        # while (look_due): a load balancer polls /health every second or two
        self._looked = -math.inf
        self._looked_lock = threading.Lock()

    def mark_checked(self, known: str | None = None) -> None:
        self._checked = True
        self._store_id = known

    @property
    def lost(self) -> bool:
        """Whether the last look at the marker found the directory not the store's."""
        return self._lost is not None

    def look_due(self, every: float) -> bool:
        """Whether a look at the marker (:meth:`watch_marker`) is due for a caller that looks
        at most once in ``every`` seconds: when the last one began that long ago. The caller
        that is told so has the look to itself; those meanwhile are not (one read, not one a
        caller)."""
        with self._looked_lock:
            now = time.monotonic()
            if now - self._looked < every:
                return False
            self._looked = now
            return True

    def watch_marker(self) -> PayloadDirectoryLost | None:
        """Read the marker again: None when it names the store (or no serve claimed the
        directory: nothing to compare with), else why not, every touch of a payload refused
        until a look finds it back."""
        with self._looked_lock:
            self._looked = time.monotonic()
        known = self._store_id
        if known is None:
            return None
        marker = marker_path(self.root)
        try:
            marked = self._read_marker()
        except StoreUnavailable as exc:
            why: str | None = f"its marker {marker} cannot be read ({exc})"
        except TimeoutError:
            why = (
                f"a read of its marker {marker} has not answered in {MARKER_READ_TIMEOUT:g} s "
                "(a network share that hangs?)"
            )
        else:
            if marked is None:
                why = (
                    f"its marker {marker} is missing (a network share unmounted, the folder "
                    "underneath in its place?)"
                )
            elif marked != known:
                whose = f"store {marked}" if marked else "no store (it is empty)"
                why = f"its marker {marker} names {whose}, not store {known}"
            else:
                why = None
        self._lost = (
            None
            if why is None
            else f"the payload directory {self.root} (data_dir) is not the store's any more: "
            f"{why}; nothing is stored until the marker names store {known} again"
        )
        return None if self._lost is None else PayloadDirectoryLost(self._lost)

    def _read_marker(self) -> str | None:
        """The marker's store id, read within :data:`MARKER_READ_TIMEOUT` (TimeoutError when
        not, or while an earlier read still hangs), and read twice before an error is believed:
        a network share's one stale handle is no share lost."""
        read = self._bounded_read()
        if read.error is not None:
            read = self._bounded_read()
        if read.error is not None:
            raise read.error
        return read.marked

    def _bounded_read(self) -> _MarkerRead:
        """One read at a time: a look that comes while another's read is under way (the
        heartbeat, a request's touch, a write's end) waits for that read, until its deadline,
        instead of starting one more beside it (a share that hangs would gather them)."""
        with self._read_lock:
            read = self._reading
            if read is None or not read.thread.is_alive():
                read = self._reading = _MarkerRead(self.root)
        read.thread.join(max(0.0, read.deadline - time.monotonic()))
        if read.thread.is_alive():
            raise TimeoutError
        return read

    def _ensure_checked(self) -> None:
        if self._lost is not None:
            lost = self.watch_marker()  # back by the next touch, not only the next heartbeat
            if lost is not None:
                raise lost
        if self._checked:
            return
        with self._check_lock:
            if not self._checked:
                check_payload_directory(self._database, self.root)
                self._checked = True

    def _path(self, key: str) -> Path:  # every read, write and removal of a payload
        self._ensure_checked()
        return super()._path(key)

    def files(
        self, *, modified_before: float, modified_since: float | None = None
    ) -> Iterator[StoredFile]:
        self._ensure_checked()
        return super().files(modified_before=modified_before, modified_since=modified_since)
