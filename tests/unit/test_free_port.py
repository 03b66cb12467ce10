"""``free_port`` hands out a port that stays taken for other processes until its server binds it.

Tests on several xdist workers take ports at the same moment: a port only probed and let go could
be handed to another worker before the first one's server binds it ("address in use").
"""

from __future__ import annotations

import errno
import socket

import pytest

from meldingstjener.devsites import free_port


def test_a_port_handed_out_is_held_against_other_binds() -> None:
    port = free_port()
    with socket.socket() as other, pytest.raises(OSError) as refused:
        other.bind(("127.0.0.1", port))  # another process's bind, without SO_REUSEADDR
    assert refused.value.errno == errno.EADDRINUSE


def test_its_server_binds_and_listens_on_it() -> None:
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = server.accept()
            accepted.close()


def test_ports_handed_out_differ() -> None:
    ports = [free_port() for _ in range(32)]
    assert len(set(ports)) == len(ports)
