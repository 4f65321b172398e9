"""reuseport: a SO_REUSEPORT listener that closes hands its queued connections to the
others of its group (the BPF program), and new connections are spread as before."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from vproxy.net import reuseport
from vproxy.net.server_sock import bind_listener

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="loading a BPF program needs CAP_BPF (the test command runs as root)"
)


@pytest.fixture
def group() -> Iterator[list[socket.socket]]:
    """Two listeners of one SO_REUSEPORT group on a free port, both with the program."""
    first = bind_listener("127.0.0.1", 0, reuse_port=True)
    second = bind_listener("127.0.0.1", first.getsockname()[1], reuse_port=True)
    yield [first, second]
    first.close()
    second.close()


def accept_all(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_the_program_loads_and_is_attached(group: list[socket.socket]) -> None:
    assert reuseport.migrating()
    before = len(os.listdir("/proc/self/fd"))
    assert reuseport.attach(group[0])  # again: a new program replaces the group's
    assert len(os.listdir("/proc/self/fd")) == before  # and no descriptor stays open


def test_a_closing_listener_hands_its_queue_to_the_other(group: list[socket.socket]) -> None:
    first, second = group
    clients = [socket.create_connection(first.getsockname(), timeout=5) for _ in range(40)]
    try:
        first.close()  # what a dying worker's listener does
        assert accept_all(second) == 40  # all of them, the first one's queue included
        for c in clients:  # none was reset: each sees the clean close of accept_all
            assert c.recv(1) == b""
    finally:
        for c in clients:
            c.close()


def test_new_connections_are_still_spread(group: list[socket.socket]) -> None:
    first, second = group
    clients = [socket.create_connection(first.getsockname(), timeout=5) for _ in range(200)]
    try:
        a, b = accept_all(first), accept_all(second)
        assert a + b == 200
        assert min(a, b) >= 50, (a, b)  # the kernel's hash, not one socket taking all
    finally:
        for c in clients:
            c.close()
