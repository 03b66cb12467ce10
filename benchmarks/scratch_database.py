"""A PostgreSQL database of a benchmark's own, made for one run and dropped after it (even when
the run fails), so that runs leave nothing behind and never meet another's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


@contextmanager
def scratch_postgres(url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server of ``url`` (whose database is used only
    to make and drop it), in ``url``'s form (its driver kept)."""
    name = f"mt_bench_{uuid.uuid4().hex[:10]}"
    admin = url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
