"""Backend faults through a fault-injecting relay, descriptor exhaustion, long churn."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faults import Fault, FaultyRelay
from helpers import (
    Backend,
    LoopThread,
    echo_handler,
    fd_count,
    id_handler,
    read_ident,
    rss_kib,
    vproxy_process,
    wait_until,
)
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]


def _lb(
    elg_factory: ElgFactory, addrs: list[tuple[str, int]], hc: HealthCheckConfig, **kw: int
) -> tuple[TcpLB, ServerGroup]:
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    g = ServerGroup("g", health_check=hc, event_loop_group=welg)
    for i, a in enumerate(addrs):
        g.add(f"s{i}", a)
    u = Upstream("u")
    u.add(g)
    lb = TcpLB("lb", ("127.0.0.1", 0), u, acceptor_elg=aelg, worker_elg=welg, **kw).start()
    wait_until(lambda: len(g.healthy_servers) == len(addrs))
    return lb, g


def test_backend_cut_mid_response_closes_client(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    async def big(r, w):  # type: ignore[no-untyped-def]
        await r.read(1)
        w.write(b"r" * 1_000_000)
        await w.drain()
        await r.read()

    relay = FaultyRelay(backend_loop, Backend(backend_loop, big).address)
    lb, _ = _lb(elg_factory, [relay.address], HealthCheckConfig(300, 60_000, 1, 2))
    try:
        relay.fault = Fault("cut", cut_after=100_000)
        with socket.create_connection(lb.address, timeout=5) as c:
            c.sendall(b"go")
            got = 0
            t0 = time.monotonic()
            try:
                while chunk := c.recv(65536):
                    got += len(chunk)
            except ConnectionResetError:
                pass  # the reset is passed on: also fine
            assert got <= 100_000
            assert time.monotonic() - t0 < 3  # closed, never hung
        wait_until(lambda: not lb.sessions)
    finally:
        lb.stop(close_sessions=True)
        relay.stop()


def test_refused_connects_fail_over_within_connect_timeout(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    good = Backend(backend_loop, id_handler("good"))
    relay = FaultyRelay(backend_loop, Backend(backend_loop, id_handler("flaky")).address)
    hc = HealthCheckConfig(timeout=500, period=60_000, up=1, down=2)  # checks won't help
    lb, g = _lb(elg_factory, [relay.address, good.address], hc)
    try:
        relay.refuse()
        t0 = time.monotonic()
        idents = [read_ident(lb.address) for _ in range(10)]
        assert set(idents) == {"good"}
        assert time.monotonic() - t0 < 10 * hc.timeout / 1000
        assert g.get("s0").connect_failures >= 1  # the passive failure is counted
    finally:
        lb.stop(close_sessions=True)
        relay.stop()


def test_slow_backend_does_not_stall_others(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    echo = Backend(backend_loop, echo_handler)
    slow_relay = FaultyRelay(backend_loop, echo.address)
    fast = Backend(backend_loop, echo_handler)
    lb, g = _lb(
        elg_factory, [slow_relay.address, fast.address], HealthCheckConfig(300, 60_000, 1, 2)
    )
    try:
        slow_relay.fault = Fault("delay", delay=2.0)
        slow = socket.create_connection(lb.address, timeout=10)
        g.update_server("s0", weight=0)  # the rest go to the fast one
        slow.sendall(b"x")
        t0 = time.monotonic()
        for _ in range(20):
            with socket.create_connection(lb.address, timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
        assert time.monotonic() - t0 < 1.5
        assert slow.recv(1) == b"x"  # the slow one still completes
        slow.close()
    finally:
        lb.stop(close_sessions=True)
        slow_relay.stop()


def test_blackhole_backend_session_closed_by_idle_timeout(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    relay = FaultyRelay(backend_loop, ("127.0.0.1", 9))
    relay.fault = Fault("blackhole")
    lb, _ = _lb(elg_factory, [relay.address], HealthCheckConfig(300, 60_000, 1, 2), timeout=400)
    try:
        with socket.create_connection(lb.address, timeout=5) as c:
            c.sendall(b"hello?")
            t0 = time.monotonic()
            assert c.recv(10) == b""
            assert time.monotonic() - t0 < 2.5
    finally:
        lb.stop(close_sessions=True)
        relay.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def _echo_ok(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=2) as c:
            c.sendall(b"back")
            return c.recv(4) == b"back"
    except OSError:
        return False


@pytest.mark.slow
def test_emfile_backs_off_and_recovers(backend_loop: LoopThread) -> None:
    b = Backend(backend_loop, echo_handler)
    limit = 64
    with vproxy_process(
        "simple",
        "bind",
        "0",
        "address",
        "127.0.0.1",
        "backend",
        f"127.0.0.1:{b.port}",
        preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    ) as vp:
        wait_until(lambda: _echo_ok(("127.0.0.1", vp.port)), 10, 0.1)
        clients = []
        try:
            for _ in range(limit):  # each session needs two descriptors: exhaust them
                c = socket.create_connection(("127.0.0.1", vp.port), timeout=5)
                clients.append(c)
            time.sleep(1.0)
            cpu0 = _cpu_seconds(vp.pid)
            time.sleep(2.0)
            spent = _cpu_seconds(vp.pid) - cpu0
            assert spent < 0.5, f"accept loop spun: {spent:.2f}s CPU in 2s"
        finally:
            for c in clients:
                c.close()

        # descriptors free again: service resumes
        wait_until(lambda: _echo_ok(("127.0.0.1", vp.port)), 10, 0.2)
        assert vp.proc.poll() is None
    assert "pausing accepts" in vp.stderr_text  # accept really hit EMFILE and backed off


@pytest.mark.slow
def test_ten_thousand_cycles_leave_fds_and_rss_flat(backend_loop: LoopThread) -> None:
    b = Backend(backend_loop, echo_handler)
    with vproxy_process(
        "simple", "bind", "0", "address", "127.0.0.1", "backend", f"127.0.0.1:{b.port}"
    ) as vp:
        addr = ("127.0.0.1", vp.port)

        def cycles(n: int) -> None:
            for _ in range(n):
                with socket.create_connection(addr, timeout=5) as c:
                    c.sendall(b"ping")
                    assert c.recv(4) == b"ping"

        wait_until(lambda: _echo_ok(addr), 10, 0.1)  # the backend is checked UP
        cycles(500)  # warm-up: allocator pools, lazily created objects
        time.sleep(0.5)
        fds0, rss0 = fd_count(vp.pid), rss_kib(vp.pid)
        cycles(10_000)
        wait_until(lambda: fd_count(vp.pid) <= fds0, 10)
        rss1 = rss_kib(vp.pid)
        assert rss1 - rss0 < 4096, f"RSS grew {rss1 - rss0} KiB over 10,000 sessions"
