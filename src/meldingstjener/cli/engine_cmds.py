"""Commands that run the server or hand it work: ``serve`` and ``send``."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from meldingstjener.cli.app import app, closed_at_end, settings_from
from meldingstjener.cli.logging_setup import configure_logging

if TYPE_CHECKING:
    from meldingstjener.engine.context import EngineContext
    from meldingstjener.engine.mail_channel import MailCollectorThread
    from meldingstjener.store.uow import ClaimedJob, Store

# A stop fits in a service manager's grace period before SIGKILL (Docker's is 10 s): requests
# still open get up to GRACEFUL_SECONDS to finish (a stalled upload would otherwise hold the
# stop for ever); then the bodies still coming are answered 503, while a message whose receive
# began is stored and answered (under a second, most; a large one takes longer: README), and
# the threads get STOP_SECONDS in all. With the process's start and end, about 7 s; at 4 + 5 it
# was 10.0-10.8 s, and Docker's SIGKILL could cut the stop's record short.
GRACEFUL_SECONDS = 3
STOP_SECONDS = 3.0
# Of STOP_SECONDS, what the stop's last writes are given after the threads' end (they take
# milliseconds unless another's transaction holds the database).
LAST_WRITE_SECONDS = 0.5
# What the threads that end as the event loop ends are given after the stop's time (they end
# at once; those still running then wait for the database).
THREADS_ENDING_SECONDS = 0.5


@app.command("serve")
def serve(
    ctx: typer.Context,
    port: Annotated[
        int | None, typer.Option("--port", help="HTTP port (default: server.port, 8080).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default: server.host).")
    ] = None,
) -> None:
    """Run the server: the HTTP endpoint (POST /ebms, the API) and the workers."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError
    from uvicorn.config import LOGGING_CONFIG

    from meldingstjener.api.app import BodyPace, create_app
    from meldingstjener.bootstrap import build_engine, build_register_sync
    from meldingstjener.config import ConfigError
    from meldingstjener.engine import housekeeping, inbox_watch, register_sync
    from meldingstjener.engine.context import Handoff
    from meldingstjener.engine.worker import Worker
    from meldingstjener.integration.folder_checks import missing_folders
    from meldingstjener.store.database import Database
    from meldingstjener.store.identity import PayloadDirectoryNotOurs, claim_payload_directory
    from meldingstjener.store.instance_lock import InstanceTaken, lock_instance
    from meldingstjener.store.opening import database_failed

    settings = settings_from(ctx, server_port=port)
    configure_logging(settings.logging.level, json_lines=settings.logging.json_lines)
    # A port in use is the common mistake (a second serve started by hand or by a service
    # manager): said plainly before anything else is done.
    listen = host or settings.server.host
    problem = _port_taken(listen, settings.server.port)
    if problem is not None:
        typer.echo(
            f"cannot listen on {listen}:{settings.server.port} ({problem}); is another "
            "meldingstjener serve running there? Nothing was started.",
            err=True,
        )
        raise typer.Exit(2)
    # The instance's name is this process's while it holds the lock, so the claims the name
    # still has in the store are a dead predecessor's: taken back, not left to their lease.
    # Taken before the store is opened: a twin (perhaps of a newer version, or with another
    # configuration) must not migrate the store or write its partners before it is refused.
    name = settings.server.instance
    try:
        name_lock = lock_instance(Database(settings.database_url), name)
    except InstanceTaken as taken:
        typer.echo(f"{taken}. Nothing was started.", err=True)
        raise typer.Exit(2) from None
    except (SQLAlchemyError, OSError) as exc:
        raise database_failed(settings.database_url, exc) from None
    try:
        engine = build_engine(settings)
        # only serve runs the register's sync: other commands need no HelseID key
        engine.register_sync = build_register_sync(settings)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    try:  # one payload directory for every serve of a store (store/identity.py)
        claim_payload_directory(engine.store)
    except PayloadDirectoryNotOurs as refused:
        typer.echo(f"{refused}. Nothing was started.", err=True)
        raise typer.Exit(2) from None
    for problem in missing_folders(settings.folder):  # said at once, not only in an alert
        typer.echo(f"warning: {problem}", err=True)
    instance = f"{name}/"
    with engine.store.unit_of_work() as uow:
        released = uow.jobs.release_claims(instance)
        housekeeping.schedule_sweep(engine, uow)
        inbox_watch.schedule_check(engine, uow)
        register_sync.schedule_register_sync(engine, uow)
        uow.commit()
    if released:
        logging.getLogger(__name__).warning(
            "took back %d job(s) claimed by this instance before a restart", released
        )
    from meldingstjener.engine.certificates import check_certificates

    check_certificates(engine)  # then daily, as a job
    stop = threading.Event()
    from meldingstjener.engine.clock_watch import start_clock_watch
    from meldingstjener.engine.instances import start_heartbeat, start_name_keeper
    from meldingstjener.engine.mail_channel import start_mail_collector
    from meldingstjener.integration import start_integrations

    threads: list[threading.Thread] = []
    collector = None
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again under the
    # handler it found: with the default one the process would die there, before the workers,
    # the collector and the heartbeat are stopped below. This handler ends it as SystemExit
    # (from here on: a SIGTERM while the threads start stops them too).
    exit_on_sigterm()
    try:
        threads.append(start_heartbeat(engine, name, stop))
        threads.append(start_name_keeper(engine, name_lock, stop))
        clock_watch = start_clock_watch(engine, name, stop)
        if clock_watch is not None:
            threads.append(clock_watch)
        lease = timedelta(seconds=settings.workers.lease_seconds)
        run = run_prefix(instance)
        if settings.workers.count > 0:
            # its name starts with the instance's, so a restart takes its claims back too
            engine.handoff = Handoff(
                f"{run}handoff", lease, settings.workers.claim_batch * settings.workers.count
            )
        for number in range(settings.workers.count):
            worker = Worker(
                engine,
                f"{run}{number}",
                batch=settings.workers.claim_batch,
                lease=lease,
                poll_interval=settings.workers.poll_interval_seconds,
            )
            thread = threading.Thread(target=worker.run, args=(stop,), name=f"worker-{number}")
            thread.daemon = True
            thread.start()
            threads.append(thread)
        collector = start_mail_collector(engine, settings, stop)
        threads += start_integrations(engine, settings, stop)
        application = create_app(
            engine,
            max_request_bytes=settings.server.max_request_bytes,
            api_settings=settings.api,
            webhook_settings=settings.webhooks,
            body_pace=BodyPace(
                settings.server.body_grace_seconds, settings.server.min_body_bytes_per_second
            ),
        )
        typer.echo(
            f"meldingstjener serving HER-id(s) {', '.join(sorted(engine.own_her_ids))} "
            f"on http://{listen}:{settings.server.port} ({settings.environment}, "
            f"{engine.store.database.dialect}, {settings.workers.count} worker(s))"
        )
        uvicorn.run(
            application,
            host=listen,
            port=settings.server.port,
            log_level=settings.logging.level.lower(),
            # uvicorn's own configuration gives its loggers text handlers; without it their
            # records reach ours (the JSON lines)
            log_config=None if settings.logging.json_lines else LOGGING_CONFIG,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            # h11 refuses a request head over 16 KB (400); the faster httptools parser takes
            # headers of any size into memory, from anyone, before any check of ours
            http="h11",
            limit_concurrency=settings.server.max_connections,
            forwarded_allow_ips=settings.server.forwarded_allow_ips,
        )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this short
        stopped_by = _stop_serving(engine, name, stop, collector, threads)
        name_lock.release()
        _end_without_threads_left(stopped_by)


def _stop_serving(
    engine: EngineContext,
    name: str,
    stop: threading.Event,
    collector: MailCollectorThread | None,
    threads: list[threading.Thread],
) -> float:
    """Stop the threads, all within ``STOP_SECONDS`` (a service manager kills after its own
    grace period: ten seconds is Docker's, of which uvicorn's graceful shutdown may have taken
    ``GRACEFUL_SECONDS``), and record the stop first, so that it is recorded even when that
    comes. Returns when the stop's time ends (``time.monotonic()``)."""
    deadline = time.monotonic() + STOP_SECONDS
    stop.set()
    engine.wakeup.wake_all()
    recorded = _record_stop(engine, name, deadline - LAST_WRITE_SECONDS)
    if collector is not None:
        collector.collect_now(wait=False)  # wakes it so it sees the stop
    for thread in [*([collector] if collector is not None else []), *threads]:
        thread.join(timeout=max(0.0, deadline - LAST_WRITE_SECONDS - time.monotonic()))
    # Jobs handed over to the workers and not taken are given back, as the workers give back
    # the rest of their batches. A job still running is left to its lease (or to this
    # instance's restart): crash safety covers what a stop cut short. Then a last poll of the
    # collector or the clock watch may have raised this instance's alert after the stop was
    # recorded: resolved once more.
    if not recorded:
        return deadline  # the database is held by another's transaction: these would wait too
    handed = engine.wakeup.take_handed(engine.wakeup.handed_count())
    if not _within(functools.partial(_last_writes, engine, name, handed), deadline):
        logging.getLogger(__name__).warning(
            "the stop's last writes (jobs handed over given back, this instance's alerts "
            "resolved) did not end within the stop's %.0f s: the database is held by "
            "another's transaction; the jobs are left to their leases",
            STOP_SECONDS,
        )
    return deadline


def _end_without_threads_left(until: float) -> None:
    """End the process at once when request threads of the API still run at ``until``: one
    waiting for the database (SQLite's busy timeout is 30 s) would otherwise hold the end of
    the process past a service manager's grace period, as the interpreter waits for threads
    that are not daemons. Its call was answered 503 and given up (api/app.py): the database
    rolls back what it had not committed, as after a crash. No other thread ends the process
    so: the server's own are daemons, and webhook calls still under way end with it (said in
    the log: each is made again). Not when an error ends ``serve``: Python ends it with its
    traceback."""
    from meldingstjener.integration.webhooks import calls_under_way

    left = [thread for thread in threading.enumerate() if _is_api_request_thread(thread)]
    # idle threads of the request pool end as the event loop ends: a moment given them
    until = max(until, time.monotonic() + THREADS_ENDING_SECONDS)
    for thread in left:
        thread.join(timeout=max(0.0, until - time.monotonic()))
    waiting = sum(thread.is_alive() for thread in left)
    log = logging.getLogger(__name__)
    cut = calls_under_way()
    if cut:
        log.warning(
            "%d webhook call(s) still under way at the end of the stop are cut short: each is "
            "made again, with the same delivery id, once its claim runs out",
            cut,
        )
    code = _exit_code(sys.exc_info()[1])
    if not waiting or code is None:
        return
    log.warning(
        "%d request thread(s) of the API still wait at the end of the stop (for the database, "
        "most likely): the process ends without them, and what they had not committed is "
        "rolled back",
        waiting,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# The name of the threads the API's synchronous work (routes, dependencies) runs in: Starlette
# hands it to anyio's worker threads, which are not daemons
API_REQUEST_THREAD = "AnyIO worker thread"


def _is_api_request_thread(thread: threading.Thread) -> bool:
    return thread.name == API_REQUEST_THREAD and not thread.daemon and thread.is_alive()


def _exit_code(ending: BaseException | None) -> int | None:
    """The exit status of a process that ``ending`` ends (None: returned), or None for an error
    (not a stop)."""
    if ending is None:
        return 0
    if isinstance(ending, SystemExit):
        return ending.code if isinstance(ending.code, int) else (0 if ending.code is None else 1)
    if isinstance(ending, KeyboardInterrupt):
        return 130  # as the shell reports an end by SIGINT
    return None


def _last_writes(engine: EngineContext, name: str, handed: list[ClaimedJob]) -> None:
    from meldingstjener.engine.worker import release_unstarted

    release_unstarted(engine, handed)
    _stopped(engine, name)


def _record_stop(engine: EngineContext, name: str, until: float) -> bool:
    """Mark this instance stopped, given up at ``until`` (``time.monotonic()``): whether that
    ended in time (recorded, or failed with a log line). It waits while another's transaction
    holds the database locked (SQLite's busy timeout is 30 s), and the stop must end within a
    service manager's grace period."""
    if _within(functools.partial(_stopped, engine, name), until):
        return True
    logging.getLogger(__name__).warning(
        "could not record this stop within the stop's %.0f s: the database is held by "
        "another's transaction. The process ends with instance %s not marked stopped; the "
        "next beats of the other instances take it for gone once it has been silent long "
        "enough (instance-gone), unless it starts again first",
        STOP_SECONDS,
        name,
    )
    return False


def _stopped(engine: EngineContext, name: str) -> None:
    from meldingstjener.engine.instances import stopped

    try:
        stopped(engine, name)
    except Exception as exc:  # the database may be what stopped us
        logging.getLogger(__name__).warning("could not record this stop: %s", exc)


def _within(call: Callable[[], None], until: float) -> bool:
    """Run ``call`` in a daemon thread, waited for until ``until`` (``time.monotonic()``):
    whether it ended by then. Past it the thread is left to its wait (for a database lock):
    the process's end does not wait for a daemon thread, and the database rolls back what it
    had not committed, as after a crash."""
    thread = threading.Thread(target=call, name="stop-writes", daemon=True)
    thread.start()
    thread.join(timeout=max(0.0, until - time.monotonic()))
    return not thread.is_alive()


def exit_on_sigterm(code: int = 0) -> None:
    """From now on a SIGTERM (a service manager's stop, a CI job's time-out) ends this process
    as ``SystemExit(code)``, so that its ``finally`` blocks stop what it started (threads, child
    processes); the default action ends it at once and leaves them running."""

    def _exit_after_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(code)

    signal.signal(signal.SIGTERM, _exit_after_sigterm)


@app.command("send")
def send(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The business message (MsgHead XML or AppRec).")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="Receiver HER-id for the envelope (default: from the message)."),
    ] = None,
    test: Annotated[
        bool,
        typer.Option(
            "--test",
            help="A test message (onboarding steps 4 and 5): may go to a partner in testing or "
            "verified-inactive. The MsgHead must say ProcessingStatus D (a MsgHead with D is "
            "one without --test too); one with P or none is refused, never rewritten.",
        ),
    ] = False,
) -> None:
    """Submit a fagmelding for sending; print its message id. The server sends it."""
    settings = settings_from(ctx)  # first: a configuration error is said before the imports
    from meldingstjener.bootstrap import build_engine, open_store
    from meldingstjener.config import ConfigError
    from meldingstjener.engine.errors import SubmitRejected
    from meldingstjener.engine.outbound import submit
    from meldingstjener.store.payloads import CHUNK

    try:
        source = file.open("rb")
    except OSError as exc:
        typer.echo(f"cannot read {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    payloads = None
    try:
        # The server's store, never a new one: run from another directory with a relative
        # data_dir (a cron job, an EPJ's script) a new store would take the message, and no
        # server would ever send it. Nor is the schema migrated under the running servers.
        store = closed_at_end(ctx, open_store(settings, create=False, migrate=False))
        engine = build_engine(settings, store=store)
        # a snapshot in the payload store, copied in pieces: a 35 MB file is never held whole,
        # and it becomes the stored payload by a rename
        payloads = engine.store.payloads
        with source, payloads.spool() as payload:
            # read and written in turn: a failure of each is told apart (the file given, exit
            # 2; the payload directory, a full disk, exit 3, as for the store's other troubles)
            while True:
                try:
                    chunk = source.read(CHUNK)
                except OSError as exc:
                    typer.echo(f"cannot read {file}: {exc.strerror}", err=True)
                    raise typer.Exit(2) from None
                if not chunk:
                    break
                payload.write(chunk)
            message_id = submit(engine, payload, to_her_id=to, actor="cli:send", test_message=test)
    except OSError as exc:
        if payloads is None:
            raise  # opening the store: bootstrap's own error, not this one's
        typer.echo(
            f"cannot write the payload directory {payloads.root}: "
            f"{exc.strerror or type(exc).__name__}",
            err=True,
        )
        raise typer.Exit(3) from None
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    except SubmitRejected as rejected:
        typer.echo(f"refused ({rejected.code}): {rejected.message}", err=True)
        for problem in rejected.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(message_id)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        earlier = _sent_before(engine.store, message_id)
    except SQLAlchemyError as exc:
        # the message is stored and will be sent: a failed look for earlier copies must not
        # end the command as failed (a script that retries on failure would send it again)
        earlier = [
            "warning: could not look for earlier messages of the same MsgId "
            f"({type(exc).__name__}); {message_id} is stored and will be sent"
        ]
    for line in earlier:
        typer.echo(line, err=True)


# how many earlier messages of one MsgId the warning of ``send`` names
_EARLIER_NAMED = 5


def _sent_before(store: Store, message_id: str) -> list[str]:
    """The warning of ``send`` when the document's MsgHead MsgId was sent to the same receiver
    before (a document sent twice by hand): the receiver stores it again as a message of its
    own, unrelated to the first but by its MsgId. The earlier messages by id and status, oldest
    first; nothing when there are none. Only a warning: the new message is stored and will be
    sent (it may be meant: the first given up, or an AppRec answering it lost)."""
    from meldingstjener.store.uow import LogFilter

    with store.unit_of_work() as uow:
        sent = uow.messages.get(message_id)
        if sent is None or not sent.msg_id:
            return []
        same = uow.messages.search(LogFilter(msg_id=sent.msg_id, direction="out"))
        earlier = [m for m in same if m.id != sent.id and m.to_her_id == sent.to_her_id]
    if not earlier:
        return []
    named = ", ".join(f"{m.id} ({m.status})" for m in earlier[:_EARLIER_NAMED])
    more = len(earlier) - _EARLIER_NAMED
    return [
        f"warning: the MsgId {sent.msg_id} was sent to {sent.to_her_id} before, as {named}"
        + (f" and {more} more" if more > 0 else "")
        + f"; {message_id} sends it again, and the receiver stores it as a new message "
        f"(`meldingstjener status {sent.msg_id}` shows each)"
    ]


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now, or None. (uvicorn binds it later; a process
    starting in between is not caught, two started by hand or by a service manager are.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def run_prefix(instance: str) -> str:
    """What this run's claims are stored under: the instance's prefix (``<name>/``: a restart
    takes back all of them) and a value of this run's own. With the instance's name alone, a
    process paused past its lock (a suspended VM) and its restart used the same worker names,
    and each took the other's claims for its own: the old one's lease keeper extended, and its
    finish ended, a claim of a job the new one was running."""
    return f"{instance}{secrets.token_hex(4)}/"
