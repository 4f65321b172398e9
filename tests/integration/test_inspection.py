"""Security groups on a tcp-lb, exact statistics and force-remove by regex, via commands."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from helpers import Backend, LoopThread, echo_handler, wait_until
from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import Array, ErrorReply, Integer, Reply, String


@pytest.fixture
def ex(backend_loop: LoopThread) -> Iterator[tuple[Executor, Backend]]:
    app = Application.create_default()
    e = Executor(app)
    b = Backend(backend_loop, echo_handler)
    for line in (
        "add server-group g timeout 300 period 100 up 1 down 2",
        f"add server s to server-group g address 127.0.0.1:{b.port}",
        "add upstream u",
        "add server-group g to upstream u",
    ):
        run(e, line)
    wait_until(lambda: app.server_groups["g"].get("s").healthy)
    yield e, b
    app.close()


def run(e: Executor, line: str) -> Reply:
    r = e.execute_line(line, Origin.STDIO)
    assert not isinstance(r, ErrorReply), f"{line}: {r}"
    return r


def lb_port(e: Executor, name: str) -> int:
    return e.app.tcp_lbs[name].address[1]


def echo(port: int, host: str = "127.0.0.1", size: int = 10) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as c:
            c.sendall(b"x" * size)
            got = b""
            while len(got) < size:
                chunk = c.recv(size - len(got))
                if not chunk:
                    return False
                got += chunk
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("rules", "default", "v4_ok", "v6_ok"),
    [
        ([], "allow", True, True),
        ([], "deny", False, False),
        (["127.0.0.1/32 deny"], "allow", False, True),
        (["::1/128 deny"], "allow", True, False),
        (["0.0.0.0/0 deny"], "allow", False, True),
        (["::/0 deny"], "allow", True, False),
        (["127.0.0.1/32 allow", "0.0.0.0/0 deny"], "deny", True, False),
        (["::ffff:127.0.0.1/128 deny"], "allow", False, True),  # mapped form of a v4 rule
    ],
)
def test_security_group_on_tcp_lb(
    ex: tuple[Executor, Backend], rules: list[str], default: str, v4_ok: bool, v6_ok: bool
) -> None:
    e, b = ex
    run(e, f"add security-group sg default {default}")
    for i, rule in enumerate(rules):
        net, action = rule.split()
        run(
            e,
            f"add security-group-rule r{i} to security-group sg network {net} "
            f"protocol TCP port-range 1,65535 default {action}",
        )
    run(e, "add tcp-lb v4 address 127.0.0.1:0 upstream u security-group sg")
    run(e, "add tcp-lb v6 address [::1]:0 upstream u security-group sg")
    before = b.connections
    assert echo(lb_port(e, "v4")) is v4_ok
    assert echo(lb_port(e, "v6"), "::1") is v6_ok
    denied = [not v4_ok, not v6_ok].count(True)
    assert e.app.tcp_lbs["v4"].denied + e.app.tcp_lbs["v6"].denied == denied
    # a denied client never caused a backend connection (health checks aside)
    sessions = [v4_ok, v6_ok].count(True)
    wait_until(lambda: b.connections - before >= sessions)


def test_exact_counters_and_force_remove_by_regex(ex: tuple[Executor, Backend]) -> None:
    e, _ = ex
    run(e, "add tcp-lb lb address 127.0.0.1:0 upstream u")
    port = lb_port(e, "lb")
    sizes = [1000, 2345, 77]
    for n in sizes:
        assert echo(port, size=n)
    lb = e.app.tcp_lbs["lb"]
    wait_until(lambda: not lb.sessions)
    total = sum(sizes)
    ss = f"127.0.0.1:{port}"
    assert run(e, f"list bytes-in in server-sock {ss} in tcp-lb lb") == Integer(total)
    assert run(e, f"list bytes-out in server-sock {ss} in tcp-lb lb") == Integer(total)
    assert run(e, f"list accepted-conn-count in server-sock {ss} in tcp-lb lb") == Integer(3)
    assert run(e, "list bytes-in in server s in server-group g") == Integer(total)
    assert run(e, "list bytes-out in server s in server-group g") == Integer(total)

    # three held connections; force-remove exactly the one whose client port matches
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        for c in held:
            c.sendall(b"hi")
            assert c.recv(2) == b"hi"
        wait_until(lambda: len(lb.sessions) == 3)
        victim = held[1].getsockname()[1]
        conns = run(e, "list connection in tcp-lb lb")
        assert isinstance(conns, Array)
        names = [x.value for x in conns.items if isinstance(x, String)]
        assert len(names) == 6  # client side and backend side of each session
        regex = rf"^127\.0\.0\.1:{victim}(?!\d)"
        assert sum(1 for n in names if re.search(regex, n)) == 1
        run(e, f"force-remove conn /{regex}/ from tcp-lb lb")
        held[1].settimeout(5)
        assert held[1].recv(10) == b""
        wait_until(lambda: len(lb.sessions) == 2)
        for c in (held[0], held[2]):
            c.sendall(b"ok")
            assert c.recv(2) == b"ok"
        alive = next(n for n in names if n.startswith(f"127.0.0.1:{held[0].getsockname()[1]}/"))
        r = run(e, f"list bytes-in in connection {alive} in tcp-lb lb")
        assert r == Integer(4)  # "hi" then "ok" from that client
    finally:
        for c in held:
            c.close()
