"""max-connections of tcp-lb and socks5-server, and the limit parameters as commands."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from helpers import (
    Backend,
    LoopThread,
    config_lines,
    echo_handler,
    execute_ok,
    socks5_connect,
    wait_until,
)
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.app.accept_gate import AcceptGate, SharedCounts
from vproxy.app.l7.base import L7Limits
from vproxy.app.socks5_server import Socks5Server
from vproxy.app.tcp_lb import TcpLBError
from vproxy.control.application import Application
from vproxy.control.command import parse
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import ErrorReply
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]


class CountingBackend:
    """An echo backend that counts the connections it accepted (not health checks)."""

    def __init__(self, lt: LoopThread) -> None:
        self.accepted = 0
        self.checks = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.accepted += 1
            await echo_handler(r, w)

        self.backend = Backend(lt, handler)

    @property
    def connections(self) -> int:
        return self.accepted - self.checks


def _upstream(elg: EventLoopGroup, addr: tuple[str, int]) -> Upstream:
    g = ServerGroup("g", health_check=HealthCheckConfig(500, 60_000, 1, 2), event_loop_group=elg)
    g.add("s0", addr)
    u = Upstream("u")
    u.add(g)
    wait_until(lambda: bool(g.healthy_servers))
    return u


def _echo(c: socket.socket, msg: bytes = b"ping") -> bool:
    c.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = c.recv(len(msg) - len(got))
        if not chunk:
            return False
        got += chunk
    return got == msg


def _closed_at_once(c: socket.socket) -> float:
    """Seconds until the proxy closed ``c`` (without sending anything to it)."""
    t0 = time.monotonic()
    c.settimeout(5)
    try:
        data = c.recv(1)
    except ConnectionResetError:
        data = b""
    assert data == b"", f"the refused connection got {data!r}"
    return time.monotonic() - t0


@pytest.fixture
def lb_parts(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> tuple[CountingBackend, EventLoopGroup, EventLoopGroup, Upstream]:
    backend = CountingBackend(backend_loop)
    aelg, welg = elg_factory("a", 1), elg_factory("w", 2)
    ups = _upstream(welg, backend.backend.address)  # one health check, then none for 60 s
    wait_until(lambda: backend.accepted >= 1)
    backend.checks = backend.accepted
    return backend, aelg, welg, ups


def test_tcp_lb_refuses_connection_over_max_at_accept(
    loop_kind: str, lb_parts: tuple[CountingBackend, EventLoopGroup, EventLoopGroup, Upstream]
) -> None:
    backend, aelg, welg, ups = lb_parts
    lb = TcpLB(
        "lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg, max_connections=3
    ).start()
    clients: list[socket.socket] = []
    try:
        for _ in range(3):
            c = socket.create_connection(lb.address, timeout=5)
            clients.append(c)
            assert _echo(c)
        assert backend.connections == 3
        extra = socket.create_connection(lb.address, timeout=5)
        assert _closed_at_once(extra) < 1.0
        extra.close()
        assert lb.refused == 1
        assert backend.connections == 3  # no backend connect for the refused one
        assert all(_echo(c, b"still") for c in clients)  # the others keep working

        clients.pop().close()
        wait_until(lambda: len(lb.sessions) == 2)
        c = socket.create_connection(lb.address, timeout=5)
        clients.append(c)
        assert _echo(c, b"again")
        assert lb.refused == 1

        lb.update(max_connections=1)  # lower: nothing is closed, new ones are refused
        assert all(_echo(c, b"kept") for c in clients)
        extra = socket.create_connection(lb.address, timeout=5)
        assert _closed_at_once(extra) < 1.0
        extra.close()
        assert lb.refused == 2
    finally:
        for c in clients:
            c.close()
        lb.stop(close_sessions=True)
        # sessions end on their loops: let them, before the backend stops
        wait_until(lambda: not lb.sessions)


def test_tcp_lb_burst_never_exceeds_max(
    lb_parts: tuple[CountingBackend, EventLoopGroup, EventLoopGroup, Upstream],
) -> None:
    """Many connections at once: the sessions started never exceed the limit."""
    backend, aelg, welg, ups = lb_parts
    lb = TcpLB(
        "lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg, max_connections=10
    ).start()
    clients = []
    try:
        for _ in range(60):  # before any session could start, most of them
            clients.append(socket.create_connection(lb.address, timeout=5))
        wait_until(lambda: lb.refused + len(lb.sessions) == 60)
        assert len(lb.sessions) == 10
        assert lb.refused == 50
        wait_until(lambda: backend.connections == 10)
        time.sleep(0.2)
        assert backend.connections == 10
    finally:
        for c in clients:
            c.close()
        lb.stop(close_sessions=True)


def test_gate_counts_a_session_starting_on_another_loop_once(elg_factory: ElgFactory) -> None:
    """A hand-off that registered its session but has not ended yet: admit() waits
    for it to end and counts the session once (counting it as both live and in
    flight refused connections under the limit when the machine was busy)."""
    sessions: set[int] = set()
    gate = AcceptGate("t", lambda: len(sessions))
    el = elg_factory("w", 1).next()
    registered, release = threading.Event(), threading.Event()

    def start() -> None:
        sessions.add(1)  # registered ...
        registered.set()
        release.wait(5)  # ... and still starting (connecting, say)

    gate.hand_off(el, start)
    assert registered.wait(5)
    assert gate.in_flight == 1
    result: list[bool] = []
    with socket.socket() as a:
        t = threading.Thread(target=lambda: result.append(gate.admit(a, 2)))
        t.start()
        t.join(0.2)
        assert t.is_alive()  # waits for the hand-off to end
        release.set()
        t.join(5)
    assert result == [True]  # 1 live < 2, not 1 live + 1 in flight
    assert gate.in_flight == 0
    assert gate.refused == 0
    with socket.socket() as c:
        sessions.add(2)
        assert not gate.admit(c, 2)  # 2 live: refused and closed
        assert c.fileno() == -1
    assert gate.refused == 1


@pytest.fixture
def counts_fd() -> Iterator[int]:
    fd = SharedCounts.create(3)
    yield fd
    os.close(fd)


def test_gates_of_three_processes_share_one_limit(counts_fd: int) -> None:
    """Three gates on one row of one table, as the three processes of ``workers 3``
    (each maps the table itself): the limit holds over their sum."""
    lives = [0, 0, 0]
    gates = []
    for column in range(3):
        gate = AcceptGate(f"p{column}", lambda c=column: lives[c])  # type: ignore[misc]
        gate.share(SharedCounts(counts_fd, 3, column), row=5)
        gates.append(gate)
    other_row = AcceptGate("other", lambda: 0)
    other_row.share(SharedCounts(counts_fd, 3, 0), row=6)

    def admit(column: int) -> bool:
        with socket.socket() as s:
            ok = gates[column].admit(s, 4)
            if ok:
                lives[column] += 1  # the session starts
            return ok

    assert [admit(0), admit(1), admit(2), admit(0)] == [True] * 4
    assert not admit(1)  # 4 over the three: full
    assert not admit(2)
    assert [g.refused for g in gates] == [0, 1, 1]
    with socket.socket() as s:
        assert other_row.admit(s, 4)  # another listener's row is its own

    lives[0] = 0  # both of process 0's sessions end: the others learn it when it publishes
    assert not admit(1)
    gates[0].publish()
    assert [admit(1), admit(2)] == [True, True]
    assert not admit(0)

    # a listener that stops counting with the others leaves 0 behind, then is alone
    gates[2].share(None)
    assert gates[2].row == -1
    assert SharedCounts(counts_fd, 3, 0).others(5) == lives[1]
    assert admit(0)
    assert admit(0)  # 2 (process 1) + 2 = 4
    assert not admit(0)


def test_a_dead_process_column_and_a_free_row_are_cleared(counts_fd: int) -> None:
    master = SharedCounts(counts_fd, 3, 0)
    worker = SharedCounts(counts_fd, 3, 2)
    worker.set(7, 40)
    worker.set(8, 2)
    master.set(7, 1)
    assert (master.others(7), master.others(8)) == (40, 2)
    master.clear_column(2)  # the worker died: its sessions with it
    assert (master.others(7), master.others(8), worker.others(7)) == (0, 0, 1)
    master.clear_row(7)  # no listener on row 7 any more
    assert worker.others(7) == 0
    with pytest.raises(ValueError, match="column 3 of 3"):
        SharedCounts(counts_fd, 3, 3)


def test_socks5_refuses_connection_over_max_at_accept(
    loop_kind: str, lb_parts: tuple[CountingBackend, EventLoopGroup, EventLoopGroup, Upstream]
) -> None:
    backend, aelg, welg, ups = lb_parts
    target = backend.backend.address
    s5 = Socks5Server(
        "s5", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg, max_connections=2
    ).start()
    clients: list[socket.socket] = []
    try:
        for _ in range(2):
            c = socks5_connect(s5.address, target)
            clients.append(c)
            assert _echo(c)
        extra = socket.create_connection(s5.address, timeout=5)
        assert _closed_at_once(extra) < 1.0  # no method-selection reply either
        extra.close()
        assert s5.refused == 1
        assert backend.connections == 2
        assert all(_echo(c, b"still") for c in clients)
        clients.pop().close()
        wait_until(lambda: len(s5.sessions) == 1)
        c = socks5_connect(s5.address, target)
        clients.append(c)
        assert _echo(c, b"again")
    finally:
        for c in clients:
            c.close()
        s5.stop(close_sessions=True)


# -- the parameters as commands -------------------------------------------------------


LIMIT_WORDS = (
    "max-connections 7 handshake-timeout 1500 request-head-timeout 2500 max-head-size 4096 "
    "max-headers 20 max-concurrent-streams 30 max-pipelined 4"
)


def test_limit_params_add_update_detail_and_round_trip(app: Application) -> None:
    ex = Executor(app)
    execute_ok(ex, "add upstream u")
    execute_ok(ex, f"add tcp-lb lb address 127.0.0.1:0 upstream u protocol http/1.x {LIMIT_WORDS}")
    execute_ok(ex, "add socks5-server s5 address 127.0.0.1:0 upstream u max-connections 9")
    lb = app.tcp_lbs["lb"]
    assert lb.max_connections == 7
    assert lb.handshake_timeout == 1500
    assert lb.l7_limits == L7Limits(2500, 4096, 20, 30, 4)
    [d] = ex.detail(parse("list-detail tcp-lb lb"))  # type: ignore[arg-type]
    assert d["max-connections"] == 7
    assert d["request-head-timeout"] == 2500
    assert d["max-pipelined"] == 4
    assert d["refused"] == 0
    [d5] = ex.detail(parse("list-detail socks5-server s5"))  # type: ignore[arg-type]
    assert (d5["max-connections"], d5["handshake-timeout"], d5["refused"]) == (9, 10_000, 0)

    before = lb.l7_limits
    execute_ok(ex, "update tcp-lb lb max-headers 50 max-connections 8")
    assert lb.l7_limits == L7Limits(2500, 4096, 50, 30, 4)
    assert lb.l7_limits is not before  # replaced, never mutated
    assert lb.max_connections == 8
    execute_ok(ex, "update socks5-server s5 handshake-timeout 700")
    assert app.socks5_servers["s5"].handshake_timeout == 700

    lines = config_lines(ex)
    lb_line = next(x for x in lines if x.startswith("add tcp-lb"))
    for word in ("max-connections 8", "max-headers 50", "request-head-timeout 2500"):
        assert word in lb_line
    fresh = Application.create_default()
    try:
        ex2 = Executor(fresh)
        for line in lines:
            execute_ok(
                ex2,
                line.replace(":" + str(lb.address[1]), ":0").replace(
                    ":" + str(app.socks5_servers["s5"].address[1]), ":0"
                ),
            )
        assert fresh.tcp_lbs["lb"].l7_limits == lb.l7_limits
        assert fresh.tcp_lbs["lb"].max_connections == 8
        assert fresh.socks5_servers["s5"].handshake_timeout == 700
        assert fresh.socks5_servers["s5"].max_connections == 9
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("max-connections 0", "max-connections"),
        ("max-head-size 100", "max-head-size"),
        ("max-headers 10001", "max-headers"),
        ("request-head-timeout 0", "request-head-timeout"),
        ("max-concurrent-streams -1", "max-concurrent-streams"),
        ("max-pipelined x", "max-pipelined"),
        ("handshake-timeout 3600001", "handshake-timeout"),
    ],
)
def test_bad_limit_changes_nothing(app: Application, words: str, message: str) -> None:
    ex = Executor(app)
    execute_ok(ex, "add upstream u")
    execute_ok(ex, "add tcp-lb lb address 127.0.0.1:0 upstream u max-connections 5")
    before = config_lines(ex)
    # A valid change next to the bad one is not applied either.
    r = ex.execute_line(f"update tcp-lb lb timeout 1234 {words}", Origin.STDIO)
    assert isinstance(r, ErrorReply)
    assert message in r.message
    assert config_lines(ex) == before
    r = ex.execute_line(f"add tcp-lb lb2 address 127.0.0.1:0 upstream u {words}", Origin.STDIO)
    assert isinstance(r, ErrorReply)
    assert "lb2" not in app.tcp_lbs


def test_library_api_validates_limits(elg_factory: ElgFactory) -> None:
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    u = Upstream("u")
    with pytest.raises(TcpLBError, match="max-connections"):
        TcpLB("x", ("127.0.0.1", 0), u, acceptor_elg=aelg, worker_elg=welg, max_connections=0)
    lb = TcpLB("x", ("127.0.0.1", 0), u, acceptor_elg=aelg, worker_elg=welg)
    with pytest.raises(TcpLBError, match="max_headers"):
        lb.update(timeout=5, l7_limits=L7Limits(max_headers=0))
    assert lb.timeout != 5  # all-or-nothing
    assert lb.l7_limits == L7Limits()


def test_refused_counter_in_metrics(app: Application, backend_loop: LoopThread) -> None:
    ex = Executor(app)
    b = Backend(backend_loop, echo_handler)
    execute_ok(ex, "add server-group g timeout 500 period 60000 up 1 down 2")
    execute_ok(ex, f"add server s to server-group g address 127.0.0.1:{b.port}")
    execute_ok(ex, "add upstream u")
    execute_ok(ex, "add server-group g to upstream u")
    execute_ok(ex, "add tcp-lb lb address 127.0.0.1:0 upstream u max-connections 1")
    lb = app.tcp_lbs["lb"]
    wait_until(lambda: bool(app.server_groups["g"].healthy_servers))
    with socket.create_connection(lb.address, timeout=5) as c:
        assert _echo(c)
        with socket.create_connection(lb.address, timeout=5) as extra:
            _closed_at_once(extra)
    text = ex.metrics_text().decode()
    assert "vproxy_listener_refused_connections_total{address=" in text
    line = next(x for x in text.splitlines() if x.startswith("vproxy_listener_refused_conn"))
    assert line.endswith(" 1.0")
    assert "vproxy_listener_max_connections{" in text


# -- half-closed sessions ---------------------------------------------------------------


class HalfClosedBackend:
    """Reads until the client's FIN, then optionally trickles bytes, then holds the
    connection open (sending nothing, never closing) until the test ends."""

    def __init__(self, lt: LoopThread, trickle: int = 0) -> None:
        self.done = threading.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while await r.read(65536):
                pass
            for _ in range(trickle):  # the other direction is still in use
                await asyncio.sleep(0.2)
                w.write(b"t")
                await w.drain()
            await asyncio.to_thread(self.done.wait, 30)

        self.backend = Backend(lt, handler)

    def stop(self) -> None:
        self.done.set()
        self.backend.stop()


def _half_close_and_wait(c: socket.socket) -> tuple[bytes, float]:
    """Send a FIN, read until the proxy closes; the bytes and the seconds it took."""
    c.sendall(b"request")
    c.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    c.settimeout(8)
    got = b""
    while chunk := c.recv(100):
        got += chunk
    return got, time.monotonic() - t0


def test_half_closed_session_closed_by_its_own_timeout(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    hb = HalfClosedBackend(backend_loop)
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    ups = _upstream(welg, hb.backend.address)
    lb = TcpLB(
        "lb",
        ("127.0.0.1", 0),
        ups,
        acceptor_elg=aelg,
        worker_elg=welg,
        timeout=20_000,
        half_closed_timeout=500,
    ).start()
    try:
        with socket.create_connection(lb.address, timeout=5) as c:
            got, took = _half_close_and_wait(c)
        assert got == b""
        assert 0.4 < took < 3.0, took  # the idle timeout (20 s) would take far longer
        wait_until(lambda: not lb.sessions)
    finally:
        lb.stop(close_sessions=True)
        hb.stop()


def test_half_closed_session_lives_while_the_other_direction_moves(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    hb = HalfClosedBackend(backend_loop, trickle=8)  # a byte every 200 ms for 1.6 s
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    ups = _upstream(welg, hb.backend.address)
    lb = TcpLB(
        "lb",
        ("127.0.0.1", 0),
        ups,
        acceptor_elg=aelg,
        worker_elg=welg,
        timeout=20_000,
        half_closed_timeout=500,
    ).start()
    try:
        with socket.create_connection(lb.address, timeout=5) as c:
            got, took = _half_close_and_wait(c)
        assert got == b"t" * 8
        assert 1.6 < took < 4.0, took
    finally:
        lb.stop(close_sessions=True)
        hb.stop()


def test_half_closed_socks5_session_closed_by_its_own_timeout(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    hb = HalfClosedBackend(backend_loop)
    aelg, welg = elg_factory("a", 1), elg_factory("w", 1)
    ups = _upstream(welg, hb.backend.address)
    s5 = Socks5Server(
        "s5",
        ("127.0.0.1", 0),
        ups,
        acceptor_elg=aelg,
        worker_elg=welg,
        timeout=20_000,
        half_closed_timeout=500,
    ).start()
    try:
        with socks5_connect(s5.address, hb.backend.address) as c:
            got, took = _half_close_and_wait(c)
        assert got == b""
        assert 0.4 < took < 3.0, took
        wait_until(lambda: not s5.sessions)
    finally:
        s5.stop(close_sessions=True)
        hb.stop()


def test_half_closed_timeout_defaults_to_min_of_timeout_and_a_minute(
    elg_factory: ElgFactory,
) -> None:
    from vproxy.net.connection import HALF_CLOSED_TIMEOUT_MS, Session

    el = elg_factory("w", 1).next()
    short = Session(el, ("127.0.0.1", 1), 256, 256, 1500, lambda s: None)
    long = Session(el, ("127.0.0.1", 1), 256, 256, 900_000, lambda s: None)
    assert short.half_closed_timeout == 1500
    assert long.half_closed_timeout == HALF_CLOSED_TIMEOUT_MS == 60_000
