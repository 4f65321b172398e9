"""tcp-lb over real loopback sockets: balancing, health, half-close, run-time changes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from helpers import (
    Backend,
    LoopThread,
    echo_handler,
    fd_count,
    id_handler,
    read_ident,
    wait_until,
)
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]
FAST_HC = HealthCheckConfig(timeout=300, period=100, up=1, down=2)


def make_lb(
    elg_factory: ElgFactory,
    backends: list[Backend],
    *,
    method: str = "wrr",
    weights: list[int] | None = None,
    hc: HealthCheckConfig = FAST_HC,
    workers: int = 1,
    **options: int,
) -> tuple[TcpLB, ServerGroup]:
    aelg = elg_factory("acceptor", 1)
    welg = elg_factory("worker", workers)
    group = ServerGroup("sg", method=method, health_check=hc, event_loop_group=welg)
    for i, b in enumerate(backends):
        group.add(f"s{i}", b.address, weight=(weights[i] if weights else 10))
    ups = Upstream("ups")
    ups.add(group, 10)
    lb = TcpLB("lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg, **options)
    lb.start()
    wait_until(lambda: len(group.healthy_servers) == len(backends), 10)
    return lb, group


@contextlib.contextmanager
def running(lb: TcpLB) -> Iterator[TcpLB]:
    try:
        yield lb
    finally:
        lb.stop(close_sessions=True)


def test_relay_round_trip(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    b = Backend(backend_loop, id_handler("a"))
    lb, _ = make_lb(elg_factory, [b])
    with running(lb), socket.create_connection(lb.address, timeout=5) as c:
        f = c.makefile("rb")
        assert f.readline() == b"a\n"
        for size in (1, 100, 70_000):
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            c.sendall(payload)
            got = f.read(len(payload))
            assert got == payload
        f.close()


def test_wrr_weights_split_600_connections(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    bs = [Backend(backend_loop, id_handler(f"b{i}")) for i in range(3)]
    lb, _ = make_lb(elg_factory, bs, weights=[1, 2, 3])
    with running(lb):
        seen = Counter(read_ident(lb.address) for _ in range(600))
    # ±2% of 600 is ±12 connections; smooth WRR is exact here.
    for ident, want in (("b0", 100), ("b1", 200), ("b2", 300)):
        assert abs(seen[ident] - want) <= 12, seen
    assert sum(b.connections for b in bs) >= 600


def test_wlc_prefers_least_loaded(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    bs = [Backend(backend_loop, id_handler(f"b{i}")) for i in range(3)]
    lb, group = make_lb(elg_factory, bs, method="wlc")
    held: list[tuple[socket.socket, str]] = []
    with running(lb):
        try:
            # Six held connections spread 2/2/2: each pick takes the least loaded.
            for _ in range(6):
                held.append(hold_ident(lb.address))
            assert Counter(ident for _, ident in held) == {"b0": 2, "b1": 2, "b2": 2}
            # Free b0 entirely: the next two new connections must both go to b0.
            for c, ident in held:
                if ident == "b0":
                    c.close()
            held = [(c, i) for c, i in held if i != "b0"]
            wait_until(lambda: group.get("s0").active == 0)
            for _ in range(2):
                held.append(hold_ident(lb.address))
                assert held[-1][1] == "b0"
            assert sorted(s.active for s in group.servers) == [2, 2, 2]
        finally:
            for c, _ in held:
                c.close()


def hold_ident(addr: tuple[str, int]) -> tuple[socket.socket, str]:
    """Connect, read the ident line, keep the connection open."""
    c = socket.create_connection(addr, timeout=5)
    data = b""
    while not data.endswith(b"\n"):
        chunk = c.recv(100)
        assert chunk
        data += chunk
    return c, data.decode().strip()


def test_source_hash_sticky_and_minimal_remap(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    bs = [Backend(backend_loop, id_handler(f"b{i}")) for i in range(4)]
    lb, group = make_lb(elg_factory, bs, method="source")
    clients = [f"127.0.0.{i}" for i in range(1, 41)]
    with running(lb):
        first = {c: read_ident(lb.address, source=c) for c in clients}
        again = {c: read_ident(lb.address, source=c) for c in clients}
        assert first == again
        assert len(set(first.values())) >= 3  # 40 clients spread over the servers
        group.remove("s1")
        after = {c: read_ident(lb.address, source=c) for c in clients}
    for c in clients:
        if first[c] == "b1":
            assert after[c] != "b1"
        else:
            assert after[c] == first[c], f"{c} moved from {first[c]} to {after[c]}"


def test_health_down_up_edges_and_no_traffic_to_dead(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    hc = HealthCheckConfig(timeout=200, period=100, up=2, down=3)
    bs = [Backend(backend_loop, id_handler(f"b{i}")) for i in range(2)]
    lb, group = make_lb(elg_factory, bs, hc=hc)
    events: list[tuple[str, bool, float]] = []
    group.add_health_listener(lambda s, up: events.append((s.name, up, time.monotonic())))
    with running(lb):
        t0 = time.monotonic()
        bs[1].stop()
        budget = (hc.down * hc.period + hc.timeout) / 1000 + 0.5  # + slack
        wait_until(lambda: not group.get("s1").healthy, budget)
        assert time.monotonic() - t0 <= budget
        before = bs[0].connections
        idents = [read_ident(lb.address) for _ in range(20)]
        assert set(idents) == {"b0"}
        assert bs[0].connections - before >= 20  # plus health checks
        time.sleep(0.5)
        assert [(n, up) for n, up, _ in events] == [("s1", False)]  # exactly one DOWN
        bs[1].start()
        t1 = time.monotonic()
        wait_until(lambda: group.get("s1").healthy, (hc.up * hc.period + hc.timeout) / 1000 + 0.5)
        assert time.monotonic() - t1 >= (hc.up - 1) * hc.period / 1000 - 0.05
        time.sleep(0.3)
        assert [(n, up) for n, up, _ in events] == [("s1", False), ("s1", True)]
        assert {read_ident(lb.address) for _ in range(10)} == {"b0", "b1"}


def test_dead_server_not_yet_detected_fails_over(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    """A refused connect is retried on the next server at once."""
    hc = HealthCheckConfig(timeout=300, period=60_000, up=1, down=3)  # checks too slow to help
    bs = [Backend(backend_loop, id_handler(f"b{i}")) for i in range(2)]
    lb, group = make_lb(elg_factory, bs, hc=hc)
    with running(lb):
        bs[1].stop()  # still marked UP
        t0 = time.monotonic()
        idents = [read_ident(lb.address) for _ in range(10)]
        assert set(idents) == {"b0"}
        assert time.monotonic() - t0 < 2
        assert group.get("s1").connect_failures >= 4


def test_blackholed_server_costs_at_most_connect_timeout(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    """A server that never answers SYN: the client waits ~ the connect timeout, no more."""
    # A listener with a full accept queue drops further SYNs: a loopback black hole.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            f.connect(hole.getsockname())
        fillers.append(f)
    time.sleep(0.2)
    good = Backend(backend_loop, id_handler("good"))
    hc = HealthCheckConfig(timeout=400, period=60_000, up=1, down=3)
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    group = ServerGroup("sg", health_check=hc)  # no checks: we set health by hand
    s_hole = group.add("hole", hole.getsockname(), weight=10)
    s_good = group.add("good", good.address, weight=10)
    group.set_healthy(s_hole, True)
    group.set_healthy(s_good, True)
    ups = Upstream("u")
    ups.add(group)
    lb = TcpLB("lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg).start()
    try:
        worst = 0.0
        for _ in range(4):
            t0 = time.monotonic()
            assert read_ident(lb.address, timeout=5) == "good"
            worst = max(worst, time.monotonic() - t0)
        assert worst < hc.timeout / 1000 + 0.5
        assert s_hole.connect_failures >= 1
    finally:
        lb.stop(close_sessions=True)
        hole.close()
        for f in fillers:
            f.close()


def test_half_close_both_directions(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    async def request_then_reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        req = await r.read()  # until the client's FIN arrives
        w.write(b"got " + str(len(req)).encode() + b" bytes\n" + b"z" * 200_000)
        await w.drain()

    async def server_speaks_first(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"banner" * 50_000)
        await w.drain()
        w.write_eof()  # we are done talking, still listening
        got = await r.read()
        w.transport.get_extra_info("socket")  # keep the transport alive until here
        results.append(got)

    results: list[bytes] = []
    b1 = Backend(backend_loop, request_then_reply)
    lb, group = make_lb(elg_factory, [b1])
    with running(lb):
        _half_close_round(lb, group, Backend(backend_loop, server_speaks_first), results)


def _half_close_round(lb: TcpLB, group: ServerGroup, b2: Backend, results: list[bytes]) -> None:
    with socket.create_connection(lb.address, timeout=10) as c:
        c.sendall(b"q" * 123_456)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        assert data == b"got 123456 bytes\n" + b"z" * 200_000

    group.add("s9", b2.address, weight=10)
    group.update_server("s0", weight=0)
    wait_until(lambda: group.get("s9").healthy)
    with socket.create_connection(lb.address, timeout=10) as c:
        data = b""
        while chunk := c.recv(65536):  # server's FIN arrives after its data
            data += chunk
        assert data == b"banner" * 50_000
        c.sendall(b"after-eof" * 10_000)  # our direction still works
        c.shutdown(socket.SHUT_WR)
        wait_until(lambda: b"after-eof" * 10_000 in results)


def test_no_fd_leak_after_1000_sessions(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    b = Backend(backend_loop, echo_handler)
    lb, _ = make_lb(elg_factory, [b])
    with running(lb):
        for _ in range(20):  # warm-up
            with socket.create_connection(lb.address, timeout=5) as c:
                c.sendall(b"x")
                assert c.recv(1) == b"x"
        wait_until(lambda: not lb.sessions)
        time.sleep(0.1)
        base = fd_count()
        for i in range(1000):
            with socket.create_connection(lb.address, timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
                if i % 2:
                    c.shutdown(socket.SHUT_WR)
        wait_until(lambda: not lb.sessions, 10)
        wait_until(lambda: fd_count() <= base, 5)
        assert lb.accepted >= 1020


def test_idle_timeout_closes_session(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    b = Backend(backend_loop, echo_handler)
    lb, _ = make_lb(elg_factory, [b], timeout=300)
    with running(lb), socket.create_connection(lb.address, timeout=5) as c:
        c.sendall(b"hi")
        assert c.recv(2) == b"hi"
        t0 = time.monotonic()
        assert c.recv(10) == b""  # closed by the proxy
        assert 0.2 < time.monotonic() - t0 < 2.0
        wait_until(lambda: not lb.sessions)


class Streamer:
    """A client connection that keeps echoing numbered messages, checking each."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.sock.recv(100)  # the ident line
        self.count = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                msg = f"{self.count:010d}".encode() * 100
                self.sock.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = self.sock.recv(len(msg) - len(got))
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk
                if got != msg:
                    raise AssertionError("corrupt echo")
                self.count += 1
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sock.close()


def test_run_time_changes_leave_streams_alone(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    bs = [Backend(backend_loop, id_handler(f"b{i}")) for i in range(3)]
    lb, group = make_lb(elg_factory, bs[:2], workers=2)
    with running(lb):
        streams = [Streamer(lb.address) for _ in range(50)]
        try:
            time.sleep(0.3)
            group.add("s2", bs[2].address, weight=5)
            wait_until(lambda: group.get("s2").healthy)
            group.update_server("s0", weight=1)
            group.set_method("wlc")
            lb.worker_elg.add("extra")
            time.sleep(0.2)
            group.remove("s1")  # sessions on it go on
            group.set_method("source")
            lb.worker_elg.remove(lb.worker_elg.loops[0].name)  # retire a busy loop
            lb.update(in_buffer_size=4096, out_buffer_size=4096, timeout=60_000)
            new = [Streamer(lb.address) for _ in range(5)]
            time.sleep(0.5)
            marks = [s.count for s in streams + new]
            time.sleep(0.5)
            for s, before in zip(streams + new, marks, strict=True):
                assert s.error is None, s.error
                assert s.count > before, "a stream stalled"
        finally:
            for s in streams:
                s.finish()
            for s in locals().get("new", []):
                s.finish()
        assert all(s.error is None for s in streams)


def test_removed_tcp_lb_stops_accepting_sessions_finish(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    b = Backend(backend_loop, id_handler("a"))
    lb, _ = make_lb(elg_factory, [b])
    c = socket.create_connection(lb.address, timeout=5)
    try:
        assert c.recv(2) == b"a\n"
        lb.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(lb.address, timeout=2)
        c.sendall(b"still here")
        assert c.recv(100) == b"still here"
    finally:
        c.close()
    wait_until(lambda: not lb.sessions)


def test_several_lbs_at_once(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    b1 = Backend(backend_loop, id_handler("one"))
    b2 = Backend(backend_loop, id_handler("two"))
    lb1, _ = make_lb(elg_factory, [b1])
    lb2, _ = make_lb(elg_factory, [b2])
    with running(lb1), running(lb2):
        assert read_ident(lb1.address) == "one"
        assert read_ident(lb2.address) == "two"


def test_no_backend_closes_client(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    group = ServerGroup("empty")
    ups = Upstream("u")
    ups.add(group)
    lb = TcpLB("lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg).start()
    with running(lb), socket.create_connection(lb.address, timeout=5) as c:
        assert c.recv(10) == b""
    assert lb.proxy.failed_no_backend == 1
