"""The API key check's cache: a revocation by this process counts at once, one by another process
(written here with the plain database driver, as the operator's CLI in its own process would)
within the cache's seconds, and keys that match no client are never kept."""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.engine import make_url

from meldingstjener.api.clients import ClientCache, add_client, revoke_client
from meldingstjener.store.uow import Store


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _revoke_from_outside(store: Store, name: str) -> None:
    url = make_url(store.database.url)
    sql = "UPDATE api_clients SET revoked_at = CURRENT_TIMESTAMP WHERE name = "
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        with sqlite3.connect(url.database) as connection:
            connection.execute(sql + "?", (name,))
        return
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(sql + "%s", (name,))


def test_revocation_by_this_process_counts_at_once(store: Store) -> None:
    cache = ClientCache(store, seconds=3600, monotonic=FakeMonotonic())
    _, key = add_client(store, "epj", ["send"], ["8100001"])
    found = cache.find(key)
    assert found is not None and found.name == "epj"
    revoke_client(store, "epj")
    assert cache.find(key) is None


def test_revocation_by_another_process_counts_when_the_time_runs_out(store: Store) -> None:
    clock = FakeMonotonic()
    cache = ClientCache(store, seconds=5, monotonic=clock)
    _, key = add_client(store, "epj", ["send"], ["8100001"])
    assert cache.find(key) is not None
    _revoke_from_outside(store, "epj")
    clock.now += 4
    assert cache.find(key) is not None  # still within the cache's time
    clock.now += 2
    assert cache.find(key) is None


def test_a_key_made_after_a_miss_is_found(store: Store) -> None:
    cache = ClientCache(store, seconds=3600, monotonic=FakeMonotonic())
    assert cache.find("mtk_not-a-key") is None
    _, key = add_client(store, "late", ["receive"], ["8100001"])
    assert cache.find(key) is not None
    assert cache.find("mtk_not-a-key") is None


def test_unknown_keys_fill_no_memory(store: Store) -> None:
    cache = ClientCache(store, seconds=3600, monotonic=FakeMonotonic())
    for attempt in range(50):
        assert cache.find(f"mtk_guess-{attempt}") is None
    assert cache.size() == 0
