"""How a stopping ``serve`` process ends (cli/engine_cmds.py ``_end_without_threads_left``): at
once while request threads of the API still wait (for the database, most likely), naming them
and the webhook calls it cuts; and not so for other threads, which the process waits for. A
real process each time: ``os._exit`` is what is tested."""

from __future__ import annotations

import subprocess
import sys
import textwrap

WAIT = 60.0

SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading, time

    from meldingstjener.cli.engine_cmds import API_REQUEST_THREAD, _end_without_threads_left
    from meldingstjener.integration import webhooks

    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
    kind = sys.argv[1]

    def wait_for_stdin():
        sys.stdin.readline()
        print("the other thread ended", flush=True)

    if kind == "api":
        held = threading.Event()
        # a request thread of the API waiting (as for the database), and a webhook call
        threading.Thread(target=held.wait, name=API_REQUEST_THREAD).start()

        calling_now = threading.Event()

        def calling():
            with webhooks._UNDER_WAY:
                calling_now.set()
                held.wait()

        threading.Thread(target=calling, name="webhook-call-0", daemon=True).start()
        calling_now.wait()
    else:
        threading.Thread(target=wait_for_stdin, name="not-the-api").start()
    try:
        raise SystemExit(0)  # as the stop ends serve
    except SystemExit:
        _end_without_threads_left(time.monotonic())
    print("the stop returned", flush=True)
    """
)


def _run(kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=WAIT
    )


def test_a_request_thread_of_the_api_still_waiting_ends_the_process_and_is_named() -> None:
    ended = _run("api")
    assert ended.returncode == 0, ended.stderr
    assert "the stop returned" not in ended.stdout  # ended at once
    assert "1 request thread(s) of the API still wait at the end of the stop" in ended.stdout
    assert (
        "1 webhook call(s) still under way at the end of the stop are cut short: each is made "
        "again, with the same delivery id" in ended.stdout
    )


def test_another_thread_still_running_is_waited_for() -> None:
    # Not a request of the API: the process is not cut short for it (a webhook call the
    # forced end cut, and the log blamed the database); it ends when the thread does, which
    # is let go only once the stop has returned.
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "other"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        first = process.stdout.readline()  # the stop's return, or the end of a process cut
        if first == "the stop returned\n":
            process.stdin.write("go\n")
            process.stdin.flush()
        rest = process.stdout.read()
        code = process.wait(WAIT)
    assert first == "the stop returned\n", first + rest
    assert rest == "the other thread ended\n"
    assert code == 0


HELD_CALLS = textwrap.dedent(
    """
    import threading

    from meldingstjener.integration.webhooks import WebhookDispatcher

    started = threading.Semaphore(0)

    class CallsThatDoNotEnd(WebhookDispatcher):
        def __init__(self):  # no store: only the round's threads are looked at
            pass

        def _deliver_to(self, hook_id, now):  # a webhook's calls, under way for ever
            started.release()
            threading.Event().wait()

    round = CallsThatDoNotEnd()._in_parallel
    threading.Thread(target=round, args=([1, 2], None, 2), name="webhooks", daemon=True).start()
    started.acquire()
    started.acquire()
    print("the process ends", flush=True)
    """
)


def test_webhook_calls_under_way_do_not_hold_the_end_of_the_process() -> None:
    # The round's calls ran in concurrent.futures' threads, which the interpreter joins as it
    # ends: a call may take 2 x timeout_seconds (20 s by default), past a service manager's
    # grace period. A call cut is made again under its delivery id once its claim runs out.
    ended = subprocess.run(
        [sys.executable, "-c", HELD_CALLS], capture_output=True, text=True, timeout=WAIT
    )
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout == "the process ends\n"


def test_a_request_thread_of_the_api_is_one_anyio_names_so() -> None:
    # The stop knows the API's request threads by the name anyio gives its worker threads
    # (FastAPI runs each sync route in one): a release of anyio naming them otherwise would
    # leave the stop waiting for them, up to SQLite's busy timeout.
    import threading

    import anyio
    import anyio.to_thread

    from meldingstjener.cli.engine_cmds import _is_api_request_thread

    async def ask() -> bool:
        return await anyio.to_thread.run_sync(
            lambda: _is_api_request_thread(threading.current_thread())
        )

    assert anyio.run(ask)
