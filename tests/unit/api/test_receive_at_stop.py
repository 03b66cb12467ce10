"""``POST /ebms`` at a stop: a receive still waiting for a thread when the request is cancelled
is never begun (503 at once); one under way is waited for ``RECEIVE_AFTER_STOP_SECONDS`` and
then answered 503, its commit refused from then on; one whose commit is under way is not given
up. Real threads and a real event loop; the receives are held by events, not by sleeps."""

from __future__ import annotations

import asyncio
import threading

import pytest
from starlette.responses import Response

from meldingstjener.api import app

WAIT = 60.0  # the most a step waits: a receive waited for without end fails the test


def test_a_cancelled_receive_is_answered_and_one_still_queued_never_runs() -> None:
    threads = app._DaemonThreads(1, "test-ebms")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def held() -> Response:
        started.set()
        release.wait(WAIT)
        ran.append("held")
        return Response(status_code=200)

    def queued() -> Response:
        ran.append("queued")
        return Response(status_code=200)

    async def scenario() -> tuple[Response | None, Response | None, app._Awaited]:
        awaited = app._Awaited()
        running = asyncio.create_task(app._to_the_end(held, awaited, threads))
        waiting = asyncio.create_task(app._to_the_end(queued, app._Awaited(), threads))
        await asyncio.to_thread(started.wait, WAIT)
        running.cancel()  # as uvicorn's graceful period ends
        waiting.cancel()
        answers = await asyncio.wait_for(asyncio.gather(running, waiting), WAIT)
        return answers[0], answers[1], awaited

    try:
        given_up, never_begun, awaited = asyncio.run(scenario())
    finally:
        release.set()
    assert given_up is not None and given_up.status_code == 503
    assert never_begun is None
    with pytest.raises(app._GivenUp):  # its commit, when it comes to it, is not made
        awaited.commit()
    assert "queued" not in ran


def test_a_receive_whose_commit_is_under_way_is_not_given_up() -> None:
    awaited = app._Awaited()
    awaited.commit()
    assert awaited.give_up() == app.COMMITTING
    awaited.commit()  # still its own to finish


def test_a_call_answered_while_it_committed_begins_nothing_more() -> None:
    # a call of the API runs several transactions: the one committing ends as it began, and
    # none begins after its request was answered 503
    call = app._Awaited()
    call.begin()
    call.commit()
    assert call.give_up() == app.COMMITTING
    with pytest.raises(app._GivenUp):
        call.begin()


def test_a_call_may_be_given_up_again_when_its_next_transaction_begins() -> None:
    # a read's commit, then a write that waits for another's lock: given up, it is not made
    call = app._Awaited()
    call.begin()
    call.commit()
    call.begin()
    assert call.give_up() == app.WORKING
    with pytest.raises(app._GivenUp):
        call.commit()


def test_a_call_answered_after_its_answer_began_is_told_cut_short_not_answered_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the client had the start of its answer: no 503 is sent, and the log does not say one was
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    call = app._Awaited()
    scope = {"type": "http", "method": "GET", "path": "/api/messages"}
    asyncio.run(app._answer_cut_short(call, True, scope, receive, send))  # type: ignore[arg-type]
    assert sent == []
    assert "GET /api/messages under way at the stop was cut short after its answer began" in (
        caplog.text
    )
    assert "503" not in caplog.text
    with pytest.raises(app._GivenUp):  # given up all the same: nothing of it begins
        call.begin()
