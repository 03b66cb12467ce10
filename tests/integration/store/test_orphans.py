"""The sweep of payload files nothing refers to, on SQLite and PostgreSQL: a file written for a
unit of work that never committed goes (after the grace period); every file a message or a
receipt refers to stays, and so does a file too young to judge."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from meldingstjener.store.orphans import sweep
from meldingstjener.store.payloads import PayloadRef
from meldingstjener.store.tables import MessageRow, ReceiptRow
from meldingstjener.store.uow import Store

DAY = 24 * 3600.0


def aged(store: Store, ref: PayloadRef, seconds: float) -> PayloadRef:
    """Make a file look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(store.payloads.path(ref.key), (then, then))
    return ref


def test_only_unreferenced_files_past_the_grace_period_are_removed(store: Store) -> None:
    payloads = store.payloads
    payload, wire, ack = (aged(store, payloads.put(b"<x/>" * n), 2 * DAY) for n in (1, 2, 3))
    with store.unit_of_work() as uow:  # a message and its receipt refer to three files
        row = uow.messages.add(
            MessageRow(
                direction="in",
                ebxml_message_id="e-1@x",
                from_her_id="8100001",
                to_her_id="8200002",
                payload_ref=payload.key,
                wire_ref=wire.key,
            ),
            actor="t",
        )
        uow.receipts.add(
            ReceiptRow(message_id=row.id, kind="acknowledgment", direction="out", wire_ref=ack.key)
        )
        uow.commit()
    # what a crash between the file and the commit leaves behind: a file and an unkept spool
    crashed = aged(store, payloads.put(b"decrypted content"), 2 * DAY)
    spool = payloads.spool()
    spool.write(b"half a body")
    old = time.time() - 2 * DAY
    os.utime(spool, (old, old))
    fresh = payloads.put(b"a unit of work still in flight")

    dry = sweep(store, dry_run=True)
    assert sorted(str(f.path) for f in dry.orphans) == sorted(
        [str(payloads.path(crashed.key)), os.fspath(spool)]
    )
    assert dry.examined == 5 and payloads.exists(crashed.key)  # the young file was not looked at

    report = sweep(store)
    assert (len(report.orphans), report.temporaries) == (2, 1)
    assert report.orphan_bytes == len(b"decrypted content") + len(b"half a body")
    assert not payloads.exists(crashed.key) and not os.path.exists(spool)
    for kept in (payload, wire, ack, fresh):
        assert payloads.exists(kept.key)
    # the next sweep looks only at what was written since
    assert sweep(store, since=report.swept_until).examined == 0
    assert sweep(store, grace=timedelta(0)).examined == 4  # all four files still there


def test_many_files_are_checked_in_batches(
    store: Store,
) -> None:
    # more files than one reference query takes, half of them referred to
    refs = [aged(store, store.payloads.put(b"%d" % n), 2 * DAY) for n in range(1_200)]
    with store.unit_of_work() as uow:
        for number, ref in enumerate(refs[::2]):
            uow.messages.add(
                MessageRow(
                    direction="out",
                    ebxml_message_id=f"e-{number}@x",
                    from_her_id="8100001",
                    to_her_id="8200002",
                    payload_ref=ref.key,
                ),
                actor="t",
            )
        uow.commit()
    report = sweep(store)
    assert report.examined == 1_200
    assert sorted(f.key or "" for f in report.orphans) == sorted(r.key for r in refs[1::2])
    assert all(store.payloads.exists(r.key) for r in refs[::2])
