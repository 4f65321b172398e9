"""2,000 idle connections plus 200 clients that never read, against a tcp-lb process.

A normal client must still be served, the proxy's memory must stay bounded, and every
one of those connections must be closed by the idle timeout. The memory figures this
test prints are the ones docs/performance.md quotes ("memory per idle connection").
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time

import pytest

from helpers import Backend, LoopThread, fd_count, rss_kib, vproxy_process, wait_until

IDLE = 2000
NEVER_READ = 200
TIMEOUT_MS = 6000  # opening all of them must take less than this
FLOOD = b"flood\n"
#: RSS the proxy may gain for the idle sessions, per session (KiB): measured 2.4 KiB
#: (docs/performance.md); the bound leaves room for allocator noise.
IDLE_KIB_BOUND = 8
#: RSS it may gain for a client that never reads (KiB): at most one window of the
#: response held in the process (256 KiB) when the socket buffers are full.
NEVER_READ_KIB_BOUND = 300


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} descriptors, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _child_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class FloodBackend:
    """Echo, except after ``flood``: write without end (the client never reads)."""

    def __init__(self, lt: LoopThread) -> None:
        self.written = 0
        self.backend = Backend(lt, self.handler)

    async def handler(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            if data == FLOOD:
                chunk = b"x" * 65536
                while True:
                    w.write(chunk)
                    self.written += len(chunk)
                    await w.drain()
            w.write(data)
            await w.drain()

    def wait_stalled(self, timeout: float) -> None:
        """Wait until the floods stopped moving: every buffer on the way is full."""
        deadline = time.monotonic() + timeout
        last = -1
        while self.written != last:
            assert time.monotonic() < deadline, "the floods never stalled"
            last = self.written
            time.sleep(0.5)


def _echo(addr: tuple[str, int], timeout: float = 3) -> bool:
    try:
        with socket.create_connection(addr, timeout=timeout) as c:
            c.sendall(b"ping")
            return c.recv(4) == b"ping"
    except OSError:
        return False


_TCP_ESTABLISHED = 1


def _all_closed(socks: list[socket.socket], deadline: float) -> int:
    """Wait until the proxy closed every socket (FIN or reset: the client side left
    ESTABLISHED); return how many it did not. Reads nothing: a never-reading client
    must stay one."""
    left = list(socks)
    while left and time.monotonic() < deadline:
        left = [
            s
            for s in left
            if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == _TCP_ESTABLISHED
        ]
        if left:
            time.sleep(0.2)
    return len(left)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_idle_and_never_reading_clients(backend_loop: LoopThread) -> None:
    total = IDLE + NEVER_READ
    _raise_nofile(2 * total + 1000)  # clients here, plus the backend's side of each
    flood = FloodBackend(backend_loop)
    backend = flood.backend
    t_start = time.monotonic()
    clients: list[socket.socket] = []
    with vproxy_process(
        "simple",
        "bind",
        "0",
        "address",
        "127.0.0.1",
        "backend",
        f"127.0.0.1:{backend.port}",
        "timeout",
        str(TIMEOUT_MS),
        preexec=_child_nofile,
    ) as vp:
        addr = ("127.0.0.1", vp.port)
        try:
            wait_until(lambda: _echo(addr), 10, 0.1)
            time.sleep(0.3)
            fds0, rss0 = fd_count(vp.pid), rss_kib(vp.pid)

            def sessions_up(n: int) -> None:
                # Each session holds its client and its backend socket once connected;
                # batches of 50 keep within the test backend's accept backlog.
                wait_until(lambda: fd_count(vp.pid) >= fds0 + 2 * n, 10, 0.01)

            t_open = time.monotonic()
            for i in range(IDLE):
                clients.append(socket.create_connection(addr, timeout=5))
                if i % 50 == 49:
                    sessions_up(i + 1)
            rss_idle = rss_kib(vp.pid)
            assert time.monotonic() - t_open < TIMEOUT_MS / 1000, "opening took too long"
            per_idle = (rss_idle - rss0) / IDLE
            print(
                f"\nproxy RSS {rss0} KiB -> {rss_idle} KiB with {IDLE} idle sessions: "
                f"{per_idle:.2f} KiB each"
            )
            assert per_idle < IDLE_KIB_BOUND

            for i in range(NEVER_READ):
                c = socket.create_connection(addr, timeout=5)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.sendall(FLOOD)
                clients.append(c)
                if i % 50 == 49:
                    sessions_up(IDLE + i + 1)
            # Once the responses filled every buffer on the way (while they do, the
            # test's own backend is the busy part), a normal client is served at once
            # while all 2,200 connections are held.
            flood.wait_stalled(30)
            t0 = time.monotonic()
            assert _echo(addr)
            assert time.monotonic() - t0 < 1.0
            rss_full = rss_kib(vp.pid)
            per_stalled = (rss_full - rss_idle) / NEVER_READ
            print(
                f"proxy RSS {rss_full} KiB with {NEVER_READ} never-reading clients on top: "
                f"{per_stalled:.1f} KiB each"
            )
            assert rss_full - rss0 < IDLE * IDLE_KIB_BOUND + NEVER_READ * NEVER_READ_KIB_BOUND

            # The idle timeout closes every one of them (nothing moves any more): the
            # proxy holds none of their descriptors, and each idle client sees the
            # close. (A never-reading client cannot see it: the FIN waits behind the
            # bytes it does not read, in the kernel, no longer in the proxy.)
            deadline = time.monotonic() + 2 * TIMEOUT_MS / 1000 + 10
            wait_until(lambda: fd_count(vp.pid) <= fds0 + 2, deadline - time.monotonic(), 0.2)
            left = _all_closed(clients[:IDLE], deadline)
            assert left == 0, f"{left} idle connections were not closed by the idle timeout"
            assert _echo(addr)
        finally:
            for c in clients:
                c.close()
    backend.stop()
    assert time.monotonic() - t_start < 60
