"""The connect of a webhook call (meldingstjener.integration.webhook_http): the connect time-out
is one deadline for the look-up of the host and the connects to its addresses, each step given
what is left of it, not the time-out again."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from meldingstjener.integration.webhook_http import webhook_client
from meldingstjener.integration.webhook_targets import TargetPolicy

CONNECT_TIMEOUT = 1.0
ANSWERED_AFTER = 0.7  # the name server's: most of the connect time-out
HOST = "slow.hooks.test"
ADDRESSES = ("127.0.0.2", "127.0.0.3")


@contextmanager
def _not_answering() -> Iterator[int]:
    """A port with a listener on each of ADDRESSES whose queue of connections not yet taken is
    full (its one place taken, never accepted): a connect there waits for an answer that does
    not come, as one to a host that drops it does."""
    port = 0  # the first one's, chosen by the system
    with ExitStack() as held:
        for address in ADDRESSES:
            listener = held.enter_context(socket.socket())
            listener.bind((address, port))
            listener.listen(0)
            port = listener.getsockname()[1]
            held.enter_context(socket.create_connection((address, port), timeout=5))
        yield port


def test_a_slow_look_up_leaves_the_connects_only_what_is_left_of_the_time_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The look-up had the whole connect time-out, then each address the whole time-out again:
    # 0.7 s, then 1 s for each of two addresses that do not answer, 2.7 s in all
    real = socket.getaddrinfo

    def slow_name_server(host: str, port: Any, *args: Any) -> Any:
        if host != HOST:
            return real(host, port, *args)
        threading.Event().wait(ANSWERED_AFTER)  # a name server that answers late
        return [info for address in ADDRESSES for info in real(address, port, *args)]

    monkeypatch.setattr(socket, "getaddrinfo", slow_name_server)
    policy = TargetPolicy(allow_http=True, allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with _not_answering() as port, webhook_client(CONNECT_TIMEOUT, policy) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            client.get(f"http://{HOST}:{port}/hook")
        took = time.monotonic() - started
    assert ANSWERED_AFTER < took < CONNECT_TIMEOUT + 0.5, took
