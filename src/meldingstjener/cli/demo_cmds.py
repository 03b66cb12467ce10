"""``meldingstjener demo``: two servers on loopback exchanging messages, with nothing to set up.

A GP office and a hospital (with a service under it, as service-based addressing requires) get
development certificates from one development CA, start as two real server processes, exchange a
question and its answer, and then show what happens when the hospital is down: the GP's server
retries and delivers when the hospital is back. Both message logs are printed at the end. The
command exits 0 only if every step worked.
"""

from __future__ import annotations

import functools
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meldingstjener.cli.app import app
from meldingstjener.cli.engine_cmds import exit_on_sigterm

if TYPE_CHECKING:
    from rich.console import Console

    from meldingstjener.engine.context import EngineContext


@functools.cache
def _console() -> Console:
    """The demo's console, made when the demo runs (not when the command line is imported)."""
    from rich.console import Console

    console = Console()
    if console.width < 110:  # the logs need room; a pipe or a narrow terminal would squeeze them
        console = Console(width=110)
    return console


class DemoFailed(Exception):
    pass


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")


@app.command("demo")
def demo(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Keep the demo's data, keys and logs in this directory."),
    ] = None,
) -> None:
    """Run two servers on loopback and exchange messages between them; exits 0 if all worked."""
    # Stopped (a CI job's time-out, a kill), the demo stops its two servers and removes its
    # directory, and exits as a shell reports a process SIGTERM ended (128 + 15): with the
    # default action it died at once, its servers left running and its directory left behind.
    previous = signal.getsignal(signal.SIGTERM)
    exit_on_sigterm(128 + signal.SIGTERM)
    try:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            _run(keep)
            return
        with tempfile.TemporaryDirectory(prefix="meldingstjener-demo-") as directory:
            _run(Path(directory))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(root: Path) -> None:
    from meldingstjener.bootstrap import build_engine
    from meldingstjener.config import load_settings
    from meldingstjener.devsites import RunningServer, dialog_note, dialog_question, prepare_sites
    from meldingstjener.engine.outbound import submit
    from meldingstjener.formats import build_dialog_svar, read_msghead
    from meldingstjener.model import Direction

    console = _console()
    console.rule("[bold]meldingstjener demo")
    gp_site, hospital_site = prepare_sites(
        root, retry_interval_seconds=2, retries=10, persist_duration_seconds=120
    )
    console.print(
        f"GP office  [bold]{gp_site.name}[/] HER-id {gp_site.organisation_her_id} "
        f"on {gp_site.endpoint}\n"
        f"Hospital   [bold]{hospital_site.name}[/] HER-id {hospital_site.organisation_her_id}, "
        f"service {hospital_site.service_name} HER-id {hospital_site.address_her_id} "
        f"on {hospital_site.endpoint}\n"
        f"Development certificates from one test CA in {root / 'pki'}"
    )
    gp_server = RunningServer(gp_site, root / "gp.log")
    hospital_server = RunningServer(hospital_site, root / "hospital.log")
    gp: EngineContext = build_engine(load_settings(gp_site.config_path))
    hospital: EngineContext = build_engine(load_settings(hospital_site.config_path))

    def status(ctx: EngineContext, message_id: str) -> str:
        with ctx.store.unit_of_work() as uow:
            row = uow.messages.get(message_id)
            return "" if row is None else row.status

    def acknowledged(ctx: EngineContext, message_id: str, timeout: float = 30.0) -> float:
        return _wait(
            lambda: status(ctx, message_id) == "transport-acknowledged",
            f"the transport receipt for {message_id}",
            timeout,
        )

    failed = False
    try:
        console.print("\n[bold]1.[/] Starting both servers")
        hospital_server.start()
        gp_server.start()
        console.print("   both answer on /health")

        console.print("\n[bold]2.[/] The GP office asks the hospital's service a question")
        question_id = submit(
            gp,
            dialog_question(gp_site, hospital_site, "Er pasienten innkalt til time?"),
            actor="demo",
        )
        seconds = acknowledged(gp, question_id)
        console.print(
            f"   DIALOG_FORESPORSEL {question_id[:8]}: transport receipt (Acknowledgment) "
            f"arrived after {seconds * 1000:.0f} ms"
        )

        console.print("\n[bold]3.[/] The hospital answers; the answer points at the question")
        with gp.store.unit_of_work() as uow:
            sent = uow.messages.get(question_id)
            assert sent is not None
        with hospital.store.unit_of_work() as uow:
            received = uow.messages.by_ebxml_id(Direction.INBOUND, str(sent.ebxml_message_id))
            if received is None:
                raise DemoFailed("the hospital has no record of the question")
        question = read_msghead(hospital.store.payloads.read_bytes(str(received.payload_ref)))
        answer = build_dialog_svar(question, answer_text="Ja, time er sendt pasienten.")
        answer_id = submit(hospital, answer, actor="demo")
        seconds = acknowledged(hospital, answer_id)
        with gp.store.unit_of_work() as uow:
            answers = uow.messages.by_msg_id(Direction.INBOUND, read_msghead(answer).msg_id)
        if not answers or answers[0].conversation_ref_to_parent != question.msg_id:
            raise DemoFailed("the answer did not arrive pointing at the question")
        console.print(
            f"   DIALOG_SVAR {answer_id[:8]}: Acknowledgment after {seconds * 1000:.0f} ms; "
            f"its ConversationRef points at the question's MsgId {question.msg_id[:8]}"
        )

        console.print("\n[bold]4.[/] The hospital goes down; the GP office sends a note")
        hospital_server.stop()
        note_id = submit(
            gp, dialog_note(gp_site, hospital_site, "Pasienten har fått ny medisin."), actor="demo"
        )

        def attempts() -> int:
            with gp.store.unit_of_work() as uow:
                row = uow.messages.get(note_id)
                return 0 if row is None else row.attempts

        _wait(lambda: status(gp, note_id) == "retrying" and attempts() >= 2, "two attempts")
        console.print(
            f"   DIALOG_NOTAT {note_id[:8]}: status [yellow]retrying[/], "
            f"{attempts()} attempts failed, an alert says the partner is unreachable"
        )
        console.print("   The hospital comes back")
        hospital_server.start()
        seconds = acknowledged(gp, note_id)
        console.print(
            f"   DIALOG_NOTAT {note_id[:8]}: delivered on attempt {attempts()}, "
            f"Acknowledgment {seconds:.1f} s after the hospital came back"
        )

        console.print("\n[bold]5.[/] The message logs")
        _print_log("GP office", gp)
        _print_log("Hospital", hospital)
    except DemoFailed as exc:
        failed = True
        console.print(f"\n[bold red]demo failed:[/] {exc}  (logs in {root})")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this short
        gp_server.stop()
        hospital_server.stop()
        gp.store.database.dispose()
        hospital.store.database.dispose()
    if failed:
        raise typer.Exit(1)
    console.print("\n[bold green]Every step worked.[/]")


def _print_log(title: str, ctx: EngineContext) -> None:
    from rich.table import Table

    from meldingstjener.store.uow import LogFilter

    console = _console()
    table = Table(title=title, title_justify="left")
    for column in ("time", "message", "dir", "type", "from → to", "event"):
        table.add_column(column, no_wrap=column != "event")
    with ctx.store.unit_of_work() as uow:
        rows = uow.messages.log(LogFilter())
    for event, message in rows:
        change = (
            f"{event.from_status or '·'} → {event.to_status}" if event.to_status else event.kind
        )
        table.add_row(
            event.at.strftime("%H:%M:%S.%f")[:-3],
            message.id[:8] if message else "-",
            message.direction if message else "",
            (message.msg_type or "") if message else "",
            f"{message.from_her_id} → {message.to_her_id}" if message else "",
            change + (f" ({event.code})" if event.code else ""),
        )
    console.print(table)
