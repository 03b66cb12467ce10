"""API client systems: create (the key is shown once, only its hash is kept), list, rotate a
key, revoke.

A rotation gives a client a new key and keeps accepting the one it replaces until its overlap
ends, so that the EPJ's instances can be given the new key meanwhile; afterwards the old key is
refused exactly as a wrong one. Rotated again within an overlap, each older key keeps its own end,
cut to the new overlap's end when that is sooner: a rotation never lengthens an old key's life,
and one with overlap 0 ends every old key at once (a key leaked).

Every API request looks its key up. :class:`ClientCache` keeps the clients found for a few
seconds, so a busy EPJ does not cost a database round trip per request: a revocation by this
process is seen at once (change generations), one by another process (the operator's CLI) within
``KEY_CACHE_SECONDS``. Unknown keys are not kept: whoever tries random keys fills no memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from meldingstjener.integration.webhooks import end_webhooks_of
from meldingstjener.model import HerId, InvalidHerId
from meldingstjener.store import audit, changes
from meldingstjener.store.tables import ApiClientKeyUseRow, ApiClientOldKeyRow, ApiClientRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store, UnitOfWork

log = logging.getLogger(__name__)

# metrics: GET /metrics alone (a monitoring system's key: it may read no message)
SCOPES = ("send", "receive", "admin", "metrics")
KEY_PREFIX = "mtk_"
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_ENTRIES = 1024
# A client's name is written where a text of 128 characters must hold it with more beside it:
# the message log's actor "api:<name>" (or "apprec-document:jwt:<name>"), the audit log. A
# longer name failed every such write on PostgreSQL (the column refuses it), as a 500.
MAX_CLIENT_NAME_CHARS = 100
# How long a rotated key's old key is still accepted unless the operator says otherwise: a
# working day to reconfigure every instance of the EPJ. At most a month: an old key is a second
# key to the same client, and one left working for longer is one forgotten.
DEFAULT_OVERLAP_HOURS = 24
MAX_OVERLAP_HOURS = 24 * 31


class ClientError(ValueError):
    """A client cannot be made or changed as asked; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ClientInfo:
    name: str
    scopes: tuple[str, ...]
    her_ids: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    # when the last of its replaced keys stops being accepted; None when none is (never a key)
    old_key_until: datetime | None = None
    # when a request last came with a replaced key still accepted (None: none since)
    old_key_last_used: datetime | None = None


@dataclass(frozen=True)
class _KeyHolder:
    """The client a key belongs to, and until when the key is accepted (None: its current key)."""

    client: ClientInfo
    key_expires_at: datetime | None

    def accepted_at(self, now: datetime) -> bool:
        return self.key_expires_at is None or now < self.key_expires_at


def hash_key(key: str) -> str:
    """Keys are long random strings, so a plain SHA-256 is enough (no guessing to slow down)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _info(
    row: ApiClientRow,
    old_key_until: datetime | None = None,
    old_key_last_used: datetime | None = None,
) -> ClientInfo:
    return ClientInfo(
        row.name,
        tuple(row.scopes),
        tuple(row.her_ids),
        row.created_at,
        row.revoked_at,
        old_key_until,
        old_key_last_used,
    )


def _forget_expired_keys(uow: UnitOfWork, now: datetime) -> None:
    """Delete the hashes of old keys whose overlap has ended: refused anyway, kept no longer
    (and the uses noted of every old key gone)."""
    uow.session.execute(delete(ApiClientOldKeyRow).where(ApiClientOldKeyRow.expires_at <= now))
    kept = select(ApiClientOldKeyRow.key_hash)
    uow.session.execute(delete(ApiClientKeyUseRow).where(ApiClientKeyUseRow.key_hash.not_in(kept)))


def _new_key() -> tuple[str, str]:
    """A new key and its hash."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


_CLIENT_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_CLIENT_NAME_CHARS}}}")


def add_client(
    store: Store,
    name: str,
    scopes: Sequence[str],
    her_ids: Sequence[str],
    *,
    own_her_ids: Collection[str] = (),
    actor: str | None = None,
) -> tuple[ClientInfo, str]:
    """Make a client; return it and its key. The key is not stored and cannot be shown again.
    With ``actor`` (an operator's command) it is recorded in the audit log, as a rotation and
    a revocation are.

    With ``own_her_ids`` (the configured identity's), a HER-id the client is to act for must be
    one of them: a client made for another's HER-id could never send (our outbound check
    refuses a sender that is not ours) nor receive, and the operator learnt that only from the
    EPJ's first refused call."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ClientError(
            "invalid-scope",
            f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}",
        )
    try:
        checked = [str(HerId(h)) for h in her_ids]
    except InvalidHerId as exc:
        raise ClientError("invalid-her-id", str(exc)) from None
    foreign = sorted(set(checked) - set(own_her_ids)) if own_her_ids else []
    if foreign:
        raise ClientError(
            "not-our-her-id",
            f"not among this server's HER-ids (the [identity] section: "
            f"{', '.join(own_her_ids)}): {', '.join(foreign)}",
        )
    # No ":" in particular: the logs name a token's client "jwt:<client_id>" (Principal.label),
    # which a key client's name must never be.
    if not _CLIENT_NAME.fullmatch(name):
        raise ClientError(
            "invalid-name",
            f"the client name must be 1 to {MAX_CLIENT_NAME_CHARS} letters, digits, '.', '_' "
            "or '-'",
        )
    key, key_hash = _new_key()
    row = ApiClientRow(
        name=name,
        key_hash=key_hash,
        scopes=sorted(set(scopes)),
        her_ids=checked,
        created_at=utcnow(),
    )
    with store.unit_of_work() as uow:
        uow.session.add(row)
        if actor is not None:
            detail = f"client {name}: scopes {', '.join(row.scopes)}"
            _audit_change(uow, actor, "client-add", detail)
        try:
            uow.commit()
        except IntegrityError:
            raise ClientError("exists", f"a client named {name!r} exists already") from None
        return _info(row), key


def list_clients(store: Store, *, now: datetime | None = None) -> list[ClientInfo]:
    """Every client, with when its replaced keys stop being accepted (the ended ones are
    forgotten here: the operator's look after an overlap leaves no hash of them behind)."""
    at = now or utcnow()
    with store.unit_of_work() as uow:
        _forget_expired_keys(uow, at)
        uow.commit()
        old_keys = {
            client_id: (ends, used)
            for client_id, ends, used in uow.session.execute(
                select(
                    ApiClientOldKeyRow.client_id,
                    func.max(ApiClientOldKeyRow.expires_at),
                    func.max(ApiClientKeyUseRow.last_used_at),
                )
                .outerjoin(
                    ApiClientKeyUseRow, ApiClientKeyUseRow.key_hash == ApiClientOldKeyRow.key_hash
                )
                .where(ApiClientOldKeyRow.expires_at > at)
                .group_by(ApiClientOldKeyRow.client_id)
            )
        }
        rows = uow.session.scalars(select(ApiClientRow).order_by(ApiClientRow.name))
        return [_info(row, *old_keys.get(row.id, (None, None))) for row in rows]


def overlap_of(hours: float) -> timedelta:
    """The overlap an operator gave in hours (``nan`` and ``inf`` are refused as any other
    value out of range, not raised by ``timedelta``)."""
    if not math.isfinite(hours) or not 0 <= hours <= MAX_OVERLAP_HOURS:
        raise ClientError(
            "invalid-overlap",
            f"the overlap must be 0 to {MAX_OVERLAP_HOURS} hours (0: the old key stops at once)",
        )
    return timedelta(hours=hours)


def rotate_client(
    store: Store,
    name: str,
    *,
    overlap: timedelta,
    actor: str,
    now: datetime | None = None,
) -> tuple[ClientInfo, str]:
    """Give the client a new key; return it (with when its old key stops) and the key, which is
    not stored and cannot be shown again. The old key is accepted for ``overlap`` more (none:
    it stops at once); older keys still accepted stop at their own end or at this one's, the
    sooner. Recorded in the audit log as done by ``actor``."""
    overlap_of(overlap / timedelta(hours=1))  # the one rule of what an overlap may be
    at = now or utcnow()
    ends = at + overlap
    key, key_hash = _new_key()
    with store.unit_of_work() as uow:
        # locked: two rotations at once would each keep the same key as the old one, and one
        # new key would be lost without a trace
        row = uow.session.scalars(
            select(ApiClientRow).where(ApiClientRow.name == name).with_for_update()
        ).first()
        if row is None:
            raise ClientError("not-found", f"no client named {name!r}")
        if row.revoked_at is not None:
            raise ClientError(
                "revoked",
                f"client {name!r} is revoked: its key cannot be rotated; add a new client",
            )
        uow.session.execute(
            update(ApiClientOldKeyRow)
            .where(ApiClientOldKeyRow.client_id == row.id, ApiClientOldKeyRow.expires_at > ends)
            .values(expires_at=ends)
        )
        _forget_expired_keys(uow, at)  # with overlap 0, every old key of this client too
        if ends > at:
            uow.session.add(
                ApiClientOldKeyRow(
                    key_hash=row.key_hash, client_id=row.id, replaced_at=at, expires_at=ends
                )
            )
        row.key_hash = key_hash
        until = ends.isoformat(timespec="seconds")
        _audit_change(
            uow, actor, "client-rotate-key", f"client {name}: old key accepted until {until}"
        )
        uow.commit()
        until = uow.session.scalar(
            select(func.max(ApiClientOldKeyRow.expires_at)).where(
                ApiClientOldKeyRow.client_id == row.id
            )
        )
        return _info(row, until), key


def _audit_change(uow: UnitOfWork, actor: str, action: str, detail: str) -> None:
    """An operator's change of a client, in the audit log beside the clients' own requests."""
    audit.add(
        uow, client=actor, person=None, action=action, outcome=audit.Outcome.OK, detail=detail
    )


def revoke_client(store: Store, name: str, *, actor: str | None = None) -> ClientInfo:
    """Revoke the client: its key, and any old key still in its overlap, are refused at once
    (recorded in the audit log with ``actor``)."""
    with store.unit_of_work() as uow:
        row = uow.session.scalars(select(ApiClientRow).where(ApiClientRow.name == name)).first()
        if row is None:
            raise ClientError("not-found", f"no client named {name!r}")
        already = row.revoked_at is not None
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        uow.session.execute(
            delete(ApiClientOldKeyRow).where(ApiClientOldKeyRow.client_id == row.id)
        )
        end_webhooks_of(uow, name, at=row.revoked_at)  # they end with the client
        if actor is not None:
            again = " (revoked before: nothing changed)" if already else ""
            _audit_change(uow, actor, "client-revoke", f"client {name}{again}")
        uow.commit()
        return _info(row)


def _find_by_hash(store: Store, key_hash: str, now: datetime) -> _KeyHolder | None:
    """The active client whose current key, or an old key still accepted at ``now``, hashes to
    ``key_hash``; or None. An old key found ended is forgotten."""
    with store.unit_of_work() as uow:
        row = uow.session.scalars(
            select(ApiClientRow).where(ApiClientRow.key_hash == key_hash)
        ).first()
        expires_at = None
        if row is None:  # not a current key: perhaps one being replaced
            found = uow.session.execute(
                select(ApiClientRow, ApiClientOldKeyRow.expires_at)
                .join(ApiClientOldKeyRow, ApiClientOldKeyRow.client_id == ApiClientRow.id)
                .where(ApiClientOldKeyRow.key_hash == key_hash)
            ).first()
            if found is None:
                return None
            row, expires_at = found
        if row.revoked_at is not None:
            return None
        holder = _KeyHolder(_info(row), expires_at)
        if not holder.accepted_at(now):
            # once per old key: the next time it is not found at all
            uow.session.execute(
                delete(ApiClientOldKeyRow).where(ApiClientOldKeyRow.key_hash == key_hash)
            )
            uow.commit()
            return None
        return holder


def _note_old_key_use(store: Store, key_hash: str, at: datetime) -> None:
    """Note that a request came with a replaced key (``clients list`` shows when one last did).
    Best effort: a failure is logged, and the key is accepted all the same."""
    try:
        with store.unit_of_work() as uow:
            uow.session.merge(ApiClientKeyUseRow(key_hash=key_hash, last_used_at=at))
            uow.commit()
    except Exception as exc:  # a full disk, a busy SQLite, two processes inserting at once
        log.warning("the use of a replaced API key could not be noted: %s", type(exc).__name__)


class ClientCache:
    """Active clients by key hash, kept ``seconds`` or until this process changes a client.

    An old key's end is kept with it and judged by ``clock`` at every request: a kept entry
    never lets an old key in after its overlap."""

    def __init__(
        self,
        store: Store,
        *,
        seconds: float = KEY_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.seconds = seconds
        self.monotonic = monotonic
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[_KeyHolder, int, float]] = {}

    def _generation(self) -> int:
        return changes.generation(self.store.database.url, changes.CLIENT_TABLES)

    def size(self) -> int:
        with self._lock:
            return len(self._entries)

    def find(self, key: str) -> ClientInfo | None:
        """The active client holding ``key``, or None (read from the store when not kept)."""
        key_hash = hash_key(key)
        generation = self._generation()
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key_hash)
        if (
            entry is not None
            and entry[1] == generation
            and entry[2] > self.monotonic()
            and entry[0].accepted_at(now)  # an old key's overlap may have ended since
        ):
            return entry[0].client
        holder = _find_by_hash(self.store, key_hash, now)
        if holder is not None and holder.key_expires_at is not None:
            # once per look-up of an old key (KEY_CACHE_SECONDS), not per request
            _note_old_key_use(self.store, key_hash, now)
        with self._lock:
            if holder is None:
                self._entries.pop(key_hash, None)
                return None
            if len(self._entries) >= KEY_CACHE_ENTRIES:
                self._entries.clear()
            # the generation read BEFORE the lookup: a change committed meanwhile voids it
            self._entries[key_hash] = (holder, generation, self.monotonic() + self.seconds)
        return holder.client
