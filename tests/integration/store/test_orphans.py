"""The sweep of payload files nothing refers to, on SQLite and PostgreSQL: a file written for a
unit of work that never committed goes (after the grace period); every file a message or a
receipt refers to stays, and so does a file too young to judge."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from meldingstjener.store.orphans import sweep
from meldingstjener.store.payloads import PayloadRef
from meldingstjener.store.tables import MessageRow, ReceiptRow
from meldingstjener.store.uow import Store

DAY = 24 * 3600.0
COMMAND = [sys.executable, "-m", "meldingstjener", "--config"]


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


def test_a_move_stopped_by_a_file_already_there_records_what_it_moved(tmp_path: Path) -> None:
    # The review: `sweep --move-to` stopped at a file of the same name already there before
    # the orphan-files event was recorded: the files moved before it went unsaid.
    from meldingstjener.bootstrap import open_store
    from meldingstjener.config import load_settings
    from meldingstjener.devsites import prepare_sites
    from meldingstjener.store.identity import claim_payload_directory
    from meldingstjener.store.tables import EventRow

    gp, _ = prepare_sites(tmp_path / "sites")
    settings = load_settings(gp.config_path)
    store = open_store(settings)
    claim_payload_directory(store)
    for n in range(3):
        aged(store, store.payloads.put(b"a body of a message the restore lost" * (n + 1)), DAY)
    walked = list(store.payloads.files(modified_before=time.time()))
    aside = tmp_path / "aside"
    last = aside / walked[-1].path.relative_to(store.payloads.root)
    last.parent.mkdir(parents=True)
    last.write_bytes(b"moved there by an earlier run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MELDINGSTJENER_")}
    done = subprocess.run(
        [*COMMAND, str(gp.config_path), "sweep", "--older-than", "0", "--move-to", str(aside)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "exists already" in done.stderr and "2 file(s) moved before it" in done.stderr
    assert store.payloads.path(walked[-1].key or "").exists()  # left where it was
    with store.unit_of_work() as uow:
        [said] = uow.session.scalars(
            select(EventRow.detail).where(EventRow.code == "orphan-files")
        ).all()
    store.database.dispose()
    assert said.startswith("moved 2 payload file(s)")
