"""Accepting: a batch takes what the accept queue holds, however many that is.

On Linux a round accepts as many connections as TCP_INFO says are queued (no
accept that fails with EAGAIN); these tests queue connections while the acceptor
loop is held, then check that every one is accepted, exactly once, in fewer and
in more than one batch.
"""

from __future__ import annotations

import _socket
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from helpers import wait_until
from vproxy.net.event_loop import EventLoopGroup
from vproxy.net.server_sock import (
    ACCEPT_BATCH,
    ServerSock,
    accept_queue_length,
    bind_listener,
)

ElgFactory = Callable[..., EventLoopGroup]


def test_accept_queue_length() -> None:
    with bind_listener("127.0.0.1", 0) as lsock:
        assert accept_queue_length(lsock) == 0
        clients = [socket.create_connection(lsock.getsockname(), timeout=5) for _ in range(3)]
        try:
            wait_until(lambda: accept_queue_length(lsock) == 3, 5)
            lsock.setblocking(True)
            lsock.accept()[0].close()
            assert accept_queue_length(lsock) == 2
        finally:
            for c in clients:
                c.close()


@pytest.mark.parametrize("count", [1, 5, ACCEPT_BATCH + 7])
def test_every_queued_connection_is_accepted_once(
    loop_kind: str, elg_factory: ElgFactory, count: int
) -> None:
    accepted: list[tuple[_socket.socket, Any]] = []
    ss = ServerSock(
        "s",
        bind_listener("127.0.0.1", 0),
        elg_factory("a", 1),
        lambda s, a: accepted.append((s, a)),
    )
    clients: list[socket.socket] = []
    try:
        ss.start()
        el = ss.acceptor_elg.loops[0]
        hold = threading.Event()
        el.call_soon(hold.wait, 10)  # the loop is busy: connections queue up
        clients = [socket.create_connection(ss.address, timeout=5) for _ in range(count)]
        hold.set()
        wait_until(lambda: len(accepted) == count, 10)
        assert ss.accepted == count
        ports = sorted(a[1] for _, a in accepted)
        assert ports == sorted(c.getsockname()[1] for c in clients)
        for sock, _ in accepted:
            assert not sock.getblocking()
        # and the next one, alone, too
        clients.append(socket.create_connection(ss.address, timeout=5))
        wait_until(lambda: len(accepted) == count + 1, 10)
    finally:
        ss.close()
        for sock, _ in accepted:
            sock.close()
        for c in clients:
            c.close()
