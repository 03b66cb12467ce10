"""Runs the folder integration in its own process for the crash tests, and can kill itself
(SIGKILL, as kill -9) at a named point: ``after-submit`` (the message is stored, the file not
yet moved), ``before-move`` (the row says sent, the file is still in the outbox),
``in-own-folder`` (the row says sent, the file is in the server's own folder on its way to
sent/) or ``after-inbox-write`` (both inbox files are in place, the row recording them is not).

usage: python folder_child.py CONFIG OUTBOX INBOX CRASH_POINT CRASH_ON_CALL
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from meldingstjener.bootstrap import build_engine
from meldingstjener.config import FolderSettings, load_settings
from meldingstjener.integration import folder, outbox_moves


def die_on(call: int, real):  # type: ignore[no-untyped-def]
    count = 0

    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        if count == call and wrapped.point == "before":  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(*args, **kwargs)
        if count == call and wrapped.point == "after":  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapped


def main() -> None:
    config, outbox, inbox, point, call = sys.argv[1:6]
    ctx = build_engine(load_settings(Path(config)))
    settings = FolderSettings(
        outbox_dir=Path(outbox) if outbox != "-" else None,
        inbox_dir=Path(inbox) if inbox != "-" else None,
        poll_interval_seconds=0.05,
        settle_seconds=0,
    )
    if point == "after-submit":
        folder.submit = die_on(int(call), folder.submit)  # type: ignore[assignment]
        folder.submit.point = "after"  # type: ignore[attr-defined]
    elif point == "before-move":
        folder.move_out = die_on(int(call), folder.move_out)  # type: ignore[assignment]
        folder.move_out.point = "before"  # type: ignore[attr-defined]
    elif point == "in-own-folder":
        moving = die_on(int(call), outbox_moves.move_to_free_name)
        moving.point = "before"  # type: ignore[attr-defined]
        outbox_moves.move_to_free_name = moving  # type: ignore[assignment]
    elif point == "after-inbox-write":
        # each message puts two files in place, the sidecar and then the document
        wrapped = die_on(2 * int(call), folder.publish)
        wrapped.point = "after"  # type: ignore[attr-defined]
        folder.publish = wrapped  # type: ignore[assignment]
    integration = folder.FolderIntegration(ctx, settings)
    print("ready", flush=True)
    integration.run(threading.Event())


if __name__ == "__main__":
    main()
