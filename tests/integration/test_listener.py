"""What a tcp-lb and a socks5-server share (vproxy.app.listener): the same checks of
their common options, each kind with its own error type, all-or-nothing updates, and
moving accepting to another acceptor event-loop group while running."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from helpers import (
    Backend,
    LoopThread,
    config_lines,
    execute_ok,
    id_handler,
    read_ident,
    socks5_connect,
    wait_until,
)
from vproxy.app.listener import Listener, ListenerError
from vproxy.app.socks5_server import Socks5Server, Socks5ServerError
from vproxy.app.tcp_lb import TcpLB, TcpLBError
from vproxy.component.upstream import Upstream
from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import ErrorReply
from vproxy.net.event_loop import EventLoopGroup

KINDS = [(TcpLB, TcpLBError), (Socks5Server, Socks5ServerError)]

BAD_OPTIONS = [
    ({"in_buffer_size": 1}, "in-buffer-size must be 256..16777216, got 1"),
    ({"out_buffer_size": 1 << 30}, "out-buffer-size must be 256..16777216"),
    ({"timeout": 0}, "timeout must be 1..86400000 ms, got 0"),
    ({"handshake_timeout": 0}, "handshake-timeout must be 1..3600000 ms, got 0"),
    ({"half_closed_timeout": 86_400_001}, "half-closed-timeout must be 1..86400000 ms"),
    ({"max_connections": -1}, "max-connections"),
]


@pytest.mark.parametrize(("cls", "error"), KINDS, ids=["tcp-lb", "socks5-server"])
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=lambda v: str(v)[:24])
def test_both_kinds_refuse_the_same_options_each_with_its_own_error(
    elg_factory: Callable[[str, int], EventLoopGroup],
    cls: type[Listener],
    error: type[ListenerError],
    options: dict[str, Any],
    message: str,
) -> None:
    elg = elg_factory("g", 1)
    make: Any = cls
    with pytest.raises(error, match=message):
        make("l", ("127.0.0.1", 0), Upstream("u"), acceptor_elg=elg, worker_elg=elg, **options)
    listener = make("l", ("127.0.0.1", 0), Upstream("u"), acceptor_elg=elg, worker_elg=elg)
    before = _options(listener)
    # One good change and one bad one: the update is refused whole.
    with pytest.raises(error, match=message):
        listener.update(**{"upstream": Upstream("other"), "in_buffer_size": 4096, **options})
    assert _options(listener) == before


def _options(listener: Listener) -> dict[str, object]:
    # (compiled classes have no __dict__: the options by name)
    names = [n for o, _ in BAD_OPTIONS for n in o] + ["upstream", "acceptor_elg", "worker_elg"]
    return {n: getattr(listener, n) for n in names}


def _through(kind: str, listener: Listener, backend: tuple[str, int]) -> str:
    """The backend's ident line, read through the listener."""
    if kind == "tcp-lb":
        return read_ident(listener.address)
    with socks5_connect(listener.address, backend) as c:
        c.settimeout(5)
        return c.recv(100).decode().strip()


@pytest.mark.parametrize("kind", ["tcp-lb", "socks5-server"])
def test_update_acceptor_elg_moves_accepting(
    app: Application, backend_loop: LoopThread, kind: str
) -> None:
    ex = Executor(app)
    b = Backend(backend_loop, id_handler("moved"))
    for line in (
        "add event-loop-group a1",
        "add event-loop a1-0 to event-loop-group a1",
        "add event-loop-group a2",
        "add event-loop a2-0 to event-loop-group a2",
        "add event-loop-group w",
        "add event-loop w0 to event-loop-group w",
        "add server-group sg timeout 500 period 60000 up 1 down 2 event-loop-group w",
        f"add server s to server-group sg address 127.0.0.1:{b.port} weight 10",
        "add upstream u",
        "add server-group sg to upstream u weight 10",
        f"add {kind} l address 127.0.0.1:0 upstream u acceptor-elg a1 event-loop-group w",
    ):
        execute_ok(ex, line)
    listener: Listener = (app.tcp_lbs if kind == "tcp-lb" else app.socks5_servers)["l"]
    wait_until(lambda: app.server_groups["sg"].get("s").healthy)
    ss = listener.server_sock
    assert ss is not None
    a1, a2 = app.event_loop_groups["a1"], app.event_loop_groups["a2"]
    assert ss.el in a1.loops
    assert _through(kind, listener, b.address) == "moved"

    # A group without loops is refused, and nothing moves.
    execute_ok(ex, "add event-loop-group empty")
    r = ex.execute_line(f"update {kind} l acceptor-elg empty", Origin.STDIO)
    assert isinstance(r, ErrorReply)
    assert "has no event-loop" in r.message
    assert listener.acceptor_elg is a1
    assert ss.el in a1.loops

    execute_ok(ex, f"update {kind} l acceptor-elg a2")
    wait_until(lambda: ss.el in a2.loops)
    assert listener.acceptor_elg is a2
    assert "acceptor-elg a2" in "\n".join(config_lines(ex))
    # The old group can go: accepting no longer depends on it.
    execute_ok(ex, "remove event-loop a1-0 from event-loop-group a1")
    for _ in range(3):
        assert _through(kind, listener, b.address) == "moved"
    assert listener.accepted == 4
    # The listening socket stayed the same: the port did not change.
    with socket.create_connection(listener.address, timeout=5):
        pass
    wait_until(lambda: not listener.sessions)  # ended before the backend stops
