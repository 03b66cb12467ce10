"""API client systems: create (the key is shown once, only its hash is kept), list, revoke.

Every API request looks its key up. :class:`ClientCache` keeps the clients found for a few
seconds, so a busy EPJ does not cost a database round trip per request: a revocation by this
process is seen at once (change generations), one by another process (the operator's CLI) within
``KEY_CACHE_SECONDS``. Unknown keys are not kept: whoever tries random keys fills no memory.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from meldingstjener.integration.webhooks import end_webhooks_of
from meldingstjener.model import HerId, InvalidHerId
from meldingstjener.store import changes
from meldingstjener.store.tables import ApiClientRow
from meldingstjener.store.types import utcnow
from meldingstjener.store.uow import Store

# metrics: GET /metrics alone (a monitoring system's key: it may read no message)
SCOPES = ("send", "receive", "admin", "metrics")
KEY_PREFIX = "mtk_"
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_ENTRIES = 1024
# A client's name is written where a text of 128 characters must hold it with more beside it:
# the message log's actor "api:<name>" (or "apprec-document:jwt:<name>"), the audit log. A
# longer name failed every such write on PostgreSQL (the column refuses it), as a 500.
MAX_CLIENT_NAME_CHARS = 100


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


def hash_key(key: str) -> str:
    """Keys are long random strings, so a plain SHA-256 is enough (no guessing to slow down)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _info(row: ApiClientRow) -> ClientInfo:
    return ClientInfo(
        row.name, tuple(row.scopes), tuple(row.her_ids), row.created_at, row.revoked_at
    )


_CLIENT_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_CLIENT_NAME_CHARS}}}")


def add_client(
    store: Store,
    name: str,
    scopes: Sequence[str],
    her_ids: Sequence[str],
    *,
    own_her_ids: Collection[str] = (),
) -> tuple[ClientInfo, str]:
    """Make a client; return it and its key. The key is not stored and cannot be shown again.

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
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiClientRow(
        name=name,
        key_hash=hash_key(key),
        scopes=sorted(set(scopes)),
        her_ids=checked,
        created_at=utcnow(),
    )
    with store.unit_of_work() as uow:
        uow.session.add(row)
        try:
            uow.commit()
        except IntegrityError:
            raise ClientError("exists", f"a client named {name!r} exists already") from None
        return _info(row), key


def list_clients(store: Store) -> list[ClientInfo]:
    with store.unit_of_work() as uow:
        rows = uow.session.scalars(select(ApiClientRow).order_by(ApiClientRow.name))
        return [_info(row) for row in rows]


def revoke_client(store: Store, name: str) -> ClientInfo:
    with store.unit_of_work() as uow:
        row = uow.session.scalars(select(ApiClientRow).where(ApiClientRow.name == name)).first()
        if row is None:
            raise ClientError("not-found", f"no client named {name!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        end_webhooks_of(uow, name, at=row.revoked_at)  # they end with the client
        uow.commit()
        return _info(row)


def _find_by_hash(store: Store, key_hash: str) -> ClientInfo | None:
    """The active client whose key hashes to ``key_hash``, or None."""
    with store.unit_of_work() as uow:
        row = uow.session.scalars(
            select(ApiClientRow).where(ApiClientRow.key_hash == key_hash)
        ).first()
        if row is None or row.revoked_at is not None:
            return None
        return _info(row)


class ClientCache:
    """Active clients by key hash, kept ``seconds`` or until this process changes a client."""

    def __init__(
        self,
        store: Store,
        *,
        seconds: float = KEY_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.seconds = seconds
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[ClientInfo, int, float]] = {}

    def _generation(self) -> int:
        return changes.generation(self.store.database.url, changes.CLIENT_TABLES)

    def size(self) -> int:
        with self._lock:
            return len(self._entries)

    def find(self, key: str) -> ClientInfo | None:
        """The active client holding ``key``, or None (read from the store when not kept)."""
        key_hash = hash_key(key)
        generation = self._generation()
        with self._lock:
            entry = self._entries.get(key_hash)
        if entry is not None and entry[1] == generation and entry[2] > self.monotonic():
            return entry[0]
        client = _find_by_hash(self.store, key_hash)
        if client is not None:
            with self._lock:
                if len(self._entries) >= KEY_CACHE_ENTRIES:
                    self._entries.clear()
                # the generation read BEFORE the lookup: a change committed meanwhile voids it
                self._entries[key_hash] = (client, generation, self.monotonic() + self.seconds)
        return client
