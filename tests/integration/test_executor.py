"""The executor against a real application: SPEC examples, all-or-nothing, round trips."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (
    Backend,
    LoopThread,
    config_lines,
    execute_ok,
    id_handler,
    read_ident,
    wait_until,
)
from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import Array, ErrorReply, Integer, Reply, Status, String

SPEC_EXAMPLES = [
    # SPEC §3.1, in order. The acceptor group "acceptor" is not created by any example
    # line, so it is created first; 8080/18080/18081 become free ports.
    ("add event-loop-group worker", "OK"),
    ("add event-loop worker1 to event-loop-group worker", "OK"),
    (
        "add server-group ngx timeout 500 period 1000 up 2 down 3 method wrr "
        "event-loop-group worker",
        "OK",
    ),
    ("add server backend1 to server-group ngx address 127.0.0.1:8080 weight 10", "OK"),
    ("add upstream backend-groups", "OK"),
    ("add server-group ngx to upstream backend-groups weight 10", "OK"),
    (
        "add tcp-lb lb0 acceptor-elg acceptor event-loop-group worker address 127.0.0.1:18080 "
        "upstream backend-groups in-buffer-size 16384 out-buffer-size 16384",
        "OK",
    ),
    ("list-detail server in server-group ngx", "array"),
    ("update server-group ngx method wlc", "OK"),
    ("update server backend1 in server-group ngx weight 5", "OK"),
]
SPEC_TAIL = [
    ("list connection in tcp-lb lb0", "array"),
    ("list bytes-in in server backend1 in server-group ngx", "integer"),
    ("force-remove conn /.*/ from el worker1 in elg worker", "OK"),
    ("remove server-group ngx from upstream backend-groups", "OK"),
]


def kind(r: Reply) -> str:
    if isinstance(r, Status):
        return r.text
    return {Array: "array", Integer: "integer", String: "string"}.get(type(r), repr(r))


def test_spec_examples_in_order_then_traffic(app: Application, backend_loop: LoopThread) -> None:
    ex = Executor(app)
    b = Backend(backend_loop, id_handler("ngx"))
    execute_ok(ex, "add event-loop-group acceptor")
    execute_ok(ex, "add event-loop acceptor1 to event-loop-group acceptor")
    for line, want in SPEC_EXAMPLES:
        line = line.replace("127.0.0.1:8080", f"127.0.0.1:{b.port}")
        line = line.replace("127.0.0.1:18080", "127.0.0.1:0")
        r = ex.execute_line(line, Origin.STDIO)
        assert kind(r) == want, f"{line}: {r}"
    lb = app.tcp_lbs["lb0"]
    group = app.server_groups["ngx"]
    wait_until(lambda: group.get("backend1").healthy, 10)
    with socket.create_connection(lb.address, timeout=5) as c:
        assert c.recv(10) == b"ngx\n"
        wait_until(lambda: len(lb.sessions) == 1)
        r = ex.execute_line("list connection in tcp-lb lb0", Origin.STDIO)
        assert isinstance(r, Array)
        assert len(r.items) == 2  # client side and backend side
        # (counted right after the relay step wrote them: the client may be first)
        line = "list bytes-in in server backend1 in server-group ngx"
        wait_until(lambda: ex.execute_line(line, Origin.STDIO) == Integer(4))
        for line, want in SPEC_TAIL:
            assert kind(ex.execute_line(line, Origin.STDIO)) == want, line
        assert c.recv(10) == b""  # force-removed
    # The group left the upstream: a new client finds no backend and is closed.
    assert read_ident(lb.address) == ""


def test_errors_change_nothing(app: Application, backend_loop: LoopThread) -> None:
    ex = Executor(app)
    b = Backend(backend_loop, id_handler("x"))
    for line in BASE_STATE:
        execute_ok(ex, line.replace("PORT", str(b.port)))
    before = config_lines(ex)
    bad = BAD_COMMANDS + _generated_bad_commands()
    assert len(bad) >= 200
    for line in bad:
        r = ex.execute_line(line, Origin.STDIO)
        assert isinstance(r, ErrorReply), f"accepted: {line!r}"
        assert r.message, line
        assert config_lines(ex) == before, f"state changed by {line!r}"


BASE_STATE = [
    "add event-loop-group g1",
    "add event-loop l1 to event-loop-group g1",
    "add server-group sg1 timeout 500 period 60000 up 1 down 2 event-loop-group g1",
    "add server s1 to server-group sg1 address 127.0.0.1:PORT weight 10",
    "add server-group sg2 timeout 500 period 60000 up 1 down 2 method source",
    "add upstream u1",
    "add server-group sg1 to upstream u1 weight 5",
    "add security-group secg1 default allow",
    "add security-group-rule r1 to security-group secg1 network 10.0.0.0/8 "
    "port-range 22,22 default deny",
    "add tcp-lb lb1 address 127.0.0.1:0 upstream u1 security-group secg1",
]

BAD_COMMANDS = [
    "",
    "   ",
    "add",
    "add tcp-lb",
    "add tcp-lb lb1 address 127.0.0.1:0 upstream u1",  # duplicate
    "add tcp-lb lb2 address 127.0.0.1:0",  # missing upstream
    "add tcp-lb lb2 upstream u1",  # missing address
    "add tcp-lb lb2 address 127.0.0.1:0 upstream nope",  # missing ref
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 event-loop-group nope",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 acceptor-elg nope",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 in-buffer-size 1",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 in-buffer-size -5",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 in-buffer-size 99999999999",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 timeout 0",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 timeout abc",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 protocol h3",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 security-group nope",
    "add tcp-lb lb2 address 127.0.0.1:99999 upstream u1",
    "add tcp-lb lb2 address 127.0.0.1 upstream u1",
    "add tcp-lb lb2 address 300.0.0.1:80 upstream u1",
    "add tcp-lb lb2 address [::1:80 upstream u1",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 wieght 5",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 upstream u1",
    "add tcp-lb 'lb 2' address 127.0.0.1:0 upstream u1",
    'add tcp-lb "lb\\n2" address 127.0.0.1:0 upstream u1',
    "add tcp-lb lb\x002 address 127.0.0.1:0 upstream u1",
    "add tcp-lb 'unterminated address 127.0.0.1:0 upstream u1",
    'add tcp-lb "x" address 127.0.0.1:0 upstream u1 "',
    "add tcp-lb to address 127.0.0.1:0 upstream u1",
    "add server-group sg1 timeout 500 period 1000 up 1 down 2",  # duplicate
    "add server-group sg3 timeout 500 period 1000 up 1",  # missing down
    "add server-group sg3 timeout 0 period 1000 up 1 down 1",
    "add server-group sg3 timeout 500 period 1000 up 0 down 1",
    "add server-group sg3 timeout 500 period 1000 up 1 down 1 method rr",
    "add server-group sg3 timeout 500 period 1000 up 1 down 1 event-loop-group nope",
    "add server-group sg3 timeout 500 period 1000 up 1 down 1 annotations {bad json",
    "add server-group sg3 timeout 500 period 1000 up 1 down 1 annotations [1,2]",
    "add server-group sg1 to upstream u1 weight 5",  # already in
    "add server-group nope to upstream u1 weight 5",
    "add server-group sg2 to upstream nope weight 5",
    "add server-group sg2 to upstream u1 weight -1",
    "add server-group sg2 to upstream u1 weight 100000",
    "add server s1 to server-group sg1 address 127.0.0.1:1 weight 10",  # duplicate name
    "add server s2 to server-group sg1 address 127.0.0.1:0 weight 10",
    "add server s2 to server-group sg1 address 127.0.0.1:70000",
    "add server s2 to server-group sg1 weight 10",
    "add server s2 to server-group nope address 127.0.0.1:1",
    "add server s2 to server-group sg1 address 127.0.0.1:1 weight x",
    "add server s2 to upstream u1 address 127.0.0.1:1",
    "add server s2 address 127.0.0.1:1",
    "add server s2 to server-group sg1 address no-such-host.invalid:80",
    "add upstream u1",
    "add event-loop-group g1",
    "add event-loop l1 to event-loop-group g1",
    "add event-loop l2 to event-loop-group nope",
    "add event-loop (worker-el) to event-loop-group g1",
    "update tcp-lb nope timeout 5",
    "update tcp-lb lb1 address 127.0.0.1:1",
    "update tcp-lb lb1 upstream nope",
    "update tcp-lb lb1 in-buffer-size 3",
    "update tcp-lb lb1 protocol dubbo2",
    "update server-group nope method wlc",
    "update server-group sg1 method nope",
    "update server-group sg1 timeout -1",
    "update server s1 in server-group sg1 weight -3",
    "update server nope in server-group sg1 weight 3",
    "update server s1 in server-group nope weight 3",
    "update server-group sg2 in upstream u1 weight 3",  # not a member
    "update upstream u1 weight 3",
    "remove upstream u1",  # in use by lb1
    "remove upstream nope",
    "remove server-group sg1",  # in use by u1
    "remove server-group nope",
    "remove server-group sg2 from upstream u1",  # not a member
    "remove server s9 from server-group sg1",
    "remove event-loop-group g1",  # used by sg1
    "remove event-loop-group (worker-elg)",
    "remove event-loop-group nope",
    "remove event-loop l1 from event-loop-group g1",  # last loop of a used group
    "remove event-loop nope from event-loop-group g1",
    "remove tcp-lb nope",
    "list server in server-group nope",
    "list server-group in upstream nope",
    "list connection in tcp-lb nope",
    "list bytes-in in server nope in server-group sg1",
    "list-detail tcp-lb nope",
    "force-remove conn 127.0.0.1:1/127.0.0.1:2 from tcp-lb lb1",
    "frobnicate tcp-lb lb1",
    "add frobnicator f1",
    "add security-group sgz default maybe",
    "add security-group secg1 default allow",  # duplicate
    "remove security-group secg1",  # used by lb1
    "add security-group-rule r1 to security-group secg1 network 10.0.0.0/8 "
    "port-range 1,2 default deny",  # duplicate rule
    "add security-group-rule r2 to security-group nope network 10.0.0.0/8 "
    "port-range 1,2 default deny",
    "add security-group-rule r2 to security-group secg1 network 10.0.0.1/8 "
    "port-range 1,2 default deny",
    "add security-group-rule r2 to security-group secg1 network 10.0.0.0/8 "
    "port-range 5,2 default deny",
    "add security-group-rule r2 to security-group secg1 network 10.0.0.0/8 port-range 1,2",
    "remove security-group-rule nope from security-group secg1",
    "add socks5-server s5 address 127.0.0.1:0 upstream nope",
    "add socks5-server s5 address 127.0.0.1:0 upstream u1 security-group nope",
    "add socks5-server s5 address 127.0.0.1:0 upstream u1 allow-non-backend deny-non-backend",
    "update socks5-server nope timeout 5",
    "add cert-key ck cert /nonexistent key /nonexistent",
    "add cert-key ck cert /etc/hostname key /etc/hostname",
    "add tcp-lb lb2 address 127.0.0.1:0 upstream u1 cert-key nope",
    "System: frobnicate",
    "System: load /nonexistent/file",
    "System: save",
    "System: load",
]


def _generated_bad_commands() -> list[str]:
    """Valid base commands broken one way each: unknown keys, bad values, bad refs."""
    out: list[str] = []
    templates = [
        "add tcp-lb lbX address 127.0.0.1:0 upstream u1 {k} {v}",
        "add server-group sgX timeout 500 period 1000 up 1 down 1 {k} {v}",
        "add server sX to server-group sg1 address 127.0.0.1:1 {k} {v}",
        "update tcp-lb lb1 {k} {v}",
        "update server-group sg1 {k} {v}",
    ]
    bad_pairs = [
        ("wieght", "1"),
        ("timeout", "-1"),
        ("timeout", "1e3"),
        ("weight", "1.5"),
        ("in-buffer-size", "0"),
        ("out-buffer-size", "x"),
        ("method", "random"),
        ("upstream", "missing"),
        ("event-loop-group", "missing"),
        ("period", "0"),
        ("up", "-2"),
        ("down", "1000000000000"),
        ("address", "localhost"),
        ("protocol", "???"),
        ("annotations", "{1:2}"),
        ("", ""),
        ("allow-non-backend", ""),
        ("to", "upstream"),
        ("in", "tcp-lb lb1"),
        ("security-group", "x"),
        ("cert-key", "x"),
        ("acceptor-elg", "missing"),
    ]
    for t in templates:
        for k, v in bad_pairs:
            line = t.format(k=k, v=v).strip()
            out.append(line)
    return [line for line in out if not _valid_by_accident(line)]


def _valid_by_accident(line: str) -> bool:
    # "update server-group sg1 timeout 1e3"-style lines are all invalid; but a few
    # combinations are legitimately valid (e.g. a template with an empty pair).
    return line in {
        "add tcp-lb lbX address 127.0.0.1:0 upstream u1",
        "add server-group sgX timeout 500 period 1000 up 1 down 1",
        "add server sX to server-group sg1 address 127.0.0.1:1",
        "update tcp-lb lb1",
        "update server-group sg1",
    }


def test_system_commands_guarded_by_origin(app: Application, tmp_path: object) -> None:
    ex = Executor(app)
    for origin in (Origin.RESP, Origin.HTTP):
        assert isinstance(ex.execute_line("man", origin), String)  # help always works
        for line in ("System: list config", "System: save /tmp/x", "System: shutdown"):
            r = ex.execute_line(line, origin)
            assert isinstance(r, ErrorReply), line
            assert r.http_status == 403
    allowed = Executor(app, allow_system_in_non_stdio=True)
    for origin in (Origin.RESP, Origin.HTTP):
        assert isinstance(allowed.execute_line("System: list config", origin), Array)
        for line in (
            "System: save /tmp/vproxy-should-not-exist",
            "System: load /etc/passwd",
            "System: shutdown",
            "System: add resp-controller r0 address 127.0.0.1:0 password x",
        ):
            r = allowed.execute_line(line, origin)
            assert isinstance(r, ErrorReply), line
            assert r.http_status == 403
    assert not app.shutdown_requested.is_set()
    assert isinstance(ex.execute_line("System: list config", Origin.STDIO), Array)


names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@st.composite
def configurations(draw: st.DrawFn) -> list[str]:
    lines: list[str] = []
    elgs = draw(st.lists(names, max_size=2, unique=True))
    for g in elgs:
        lines.append(f"add event-loop-group g-{g}")
        for el in draw(st.lists(names, min_size=1, max_size=2, unique=True)):
            lines.append(f"add event-loop l-{g}-{el} to event-loop-group g-{g}")
    groups = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    ports = iter(range(20000, 30000))
    for sg in groups:
        hc = draw(
            st.tuples(
                *(st.integers(1, 5000) for _ in range(2)), st.integers(1, 9), st.integers(1, 9)
            )
        )
        method = draw(st.sampled_from(["wrr", "wlc", "source"]))
        elg = draw(st.sampled_from([*(f"g-{g}" for g in elgs), "(control-elg)"]))
        ann = draw(st.sampled_from(["", ' annotations {"host":"a.example"}']))
        lines.append(
            f"add server-group sg-{sg} timeout {hc[0]} period {hc[1] + 60000} up {hc[2]} "
            f"down {hc[3]} method {method} event-loop-group {elg}{ann}"
        )
        for s in draw(st.lists(names, max_size=3, unique=True)):
            w = draw(st.integers(0, 1000))
            host = f"127.0.0.{draw(st.integers(1, 9))}"
            lines.append(
                f"add server s-{s} to server-group sg-{sg} address {host}:{next(ports)} weight {w}"
            )
    ups = draw(st.lists(names, min_size=1, max_size=2, unique=True))
    for u in ups:
        lines.append(f"add upstream u-{u}")
        for sg in draw(st.lists(st.sampled_from(groups), max_size=3, unique=True)):
            lines.append(
                f"add server-group sg-{sg} to upstream u-{u} weight {draw(st.integers(0, 100))}"
            )
    secgs = draw(st.lists(names, max_size=2, unique=True))
    for g in secgs:
        lines.append(
            f"add security-group sg-{g} default {draw(st.sampled_from(['allow', 'deny']))}"
        )
        for r in draw(st.lists(names, max_size=3, unique=True)):
            net = draw(st.sampled_from(["10.0.0.0/8", "127.0.0.1/32", "::1/128", "0.0.0.0/0"]))
            lo = draw(st.integers(1, 65535))
            hi = draw(st.integers(lo, 65535))
            proto = draw(st.sampled_from(["TCP", "UDP"]))
            action = draw(st.sampled_from(["allow", "deny"]))
            lines.append(
                f"add security-group-rule r-{r} to security-group sg-{g} network {net} "
                f"protocol {proto} port-range {lo},{hi} default {action}"
            )
    if CERTS and draw(st.booleans()):
        lines.append(f"add cert-key ck1 cert {CERTS[0]} key {CERTS[1]}")
    for i in range(draw(st.integers(0, 2))):
        u = draw(st.sampled_from(ups))
        welg = draw(st.sampled_from([*(f"g-{g}" for g in elgs), "(worker-elg)"]))
        buf = draw(st.integers(256, 65536))
        secg = draw(st.sampled_from(["", *(f" security-group sg-{g}" for g in secgs)]))
        lines.append(
            f"add tcp-lb lb{i} address 127.0.0.1:0 upstream u-{u} event-loop-group {welg} "
            f"in-buffer-size {buf} out-buffer-size {buf * 2} timeout {draw(st.integers(1, 10**6))}"
            + secg
        )
    for i in range(draw(st.integers(0, 1))):
        u = draw(st.sampled_from(ups))
        flag = draw(st.sampled_from(["", " allow-non-backend", " deny-non-backend"]))
        secg = draw(st.sampled_from(["", *(f" security-group sg-{g}" for g in secgs)]))
        lines.append(f"add socks5-server s5-{i} address 127.0.0.1:0 upstream u-{u}{flag}{secg}")
    return lines


CERTS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from tls_certs import CertAuthority

    ca = CertAuthority(tmp_path_factory.mktemp("certs"))
    leaf = ca.issue("a", ["a.test"])
    CERTS[:] = [f"{leaf.cert},{ca.intermediate_path}", str(leaf.key)]
    yield
    CERTS.clear()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(configurations())
def test_list_config_round_trip(lines: list[str]) -> None:
    a = Application.create_default()
    try:
        ex_a = Executor(a)
        for line in lines:
            execute_ok(ex_a, line)
        saved = config_lines(ex_a)
    finally:
        a.close()
    b = Application.create_default()
    try:
        ex_b = Executor(b)
        ex_b.load_lines(enumerate(saved, 1), "A")
        assert config_lines(ex_b) == saved
    finally:
        b.close()
