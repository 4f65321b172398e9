"""Every example line of SPEC §3.1, in order, through redis-cli and through the console.

The tcp-lb of the examples must then really forward traffic. Fixed ports of the
examples (8080, 18080, 18081) become free ones; the acceptor group "acceptor", which
no example creates, is created first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from helpers import ROOT, Backend, LoopThread, id_handler, read_ident, vproxy_process, wait_until

SPEC_LINES = [
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
    ("list-detail server in server-group ngx", "backend1 -> address 127.0.0.1:8080"),
    ("update server-group ngx method wlc", "OK"),
    ("update server backend1 in server-group ngx weight 5", "OK"),
    ("add security-group secg0 default allow", "OK"),
    (
        "add security-group-rule r0 to security-group secg0 network 10.0.0.0/8 protocol TCP "
        "port-range 22,22 default deny",
        "OK",
    ),
    (
        "add socks5-server s5 address 127.0.0.1:18081 upstream backend-groups "
        "security-group secg0 allow-non-backend",
        "OK",
    ),
    ("list connection in tcp-lb lb0", "LIST"),
    ("list bytes-in in server backend1 in server-group ngx", "INT"),
    ("force-remove conn /.*/ from el worker1 in elg worker", "OK"),
    ("remove server-group ngx from upstream backend-groups", "OK"),
]
PREAMBLE = [
    "add event-loop-group acceptor",
    "add event-loop acceptor1 to event-loop-group acceptor",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def substitute(line: str, backend: int, lb: int, s5: int) -> str:
    return (
        line.replace("127.0.0.1:8080", f"127.0.0.1:{backend}")
        .replace("127.0.0.1:18080", f"127.0.0.1:{lb}")
        .replace("127.0.0.1:18081", f"127.0.0.1:{s5}")
    )


def check(reply: str, want: str, backend: int) -> None:
    want = want.replace("127.0.0.1:8080", f"127.0.0.1:{backend}")
    if want == "INT":
        assert reply.strip().removeprefix("(integer) ").isdigit(), reply
    elif want == "LIST":
        assert "ERR" not in reply, reply
    else:
        assert want in reply, reply
        assert "ERR" not in reply, reply


@pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="needs redis-cli (test command installs it)"
)
def test_spec_lines_through_redis_cli(backend_loop: LoopThread, tmp_path: object) -> None:
    b = Backend(backend_loop, id_handler("ngx"))
    lb_port, s5_port = free_port(), free_port()
    env = {"HOME": str(tmp_path)}
    with vproxy_process(
        "noLoadLast",
        "noSave",
        "noStdIOController",
        "resp-controller",
        "127.0.0.1:0",
        "pw",
        env=env,
    ) as vp:

        def cli(line: str) -> str:
            out = subprocess.run(
                [
                    "redis-cli",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(vp.port),
                    "-a",
                    "pw",
                    "--no-auth-warning",
                    *shlex.split(line),
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert out.returncode == 0, out.stderr
            return out.stdout

        for line in PREAMBLE:
            assert cli(line).strip() == "OK"
        for line, want in SPEC_LINES[:7]:
            check(cli(substitute(line, b.port, lb_port, s5_port)), want, b.port)
        # the tcp-lb of the examples forwards traffic once the server is checked UP
        wait_until(lambda: _ident(lb_port) == "ngx", 15, 0.2)
        for line, want in SPEC_LINES[7:]:
            check(cli(substitute(line, b.port, lb_port, s5_port)), want, b.port)
        assert _ident(lb_port) == ""  # the group left the upstream: nothing to serve


def _ident(port: int) -> str:
    try:
        return read_ident(("127.0.0.1", port), timeout=2)
    except OSError:
        return ""


def test_spec_lines_through_the_console(backend_loop: LoopThread, tmp_path: object) -> None:
    b = Backend(backend_loop, id_handler("ngx"))
    lb_port, s5_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path)}
    p = subprocess.Popen(
        [sys.executable, "-m", "vproxy", "noLoadLast", "noSave"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert p.stdin is not None
    assert p.stdout is not None
    try:

        def console(line: str) -> str:
            assert p.stdin is not None
            assert p.stdout is not None
            p.stdin.write(line.encode() + b"\n")
            p.stdin.flush()
            return p.stdout.readline().decode()

        for line in PREAMBLE:
            assert console(line).strip() == "OK"
        for line, want in SPEC_LINES[:7]:
            check(console(substitute(line, b.port, lb_port, s5_port)), want, b.port)
        wait_until(lambda: _ident(lb_port) == "ngx", 15, 0.2)
        # Let the probing sessions end, so "list connection" answers one line.
        time.sleep(0.5)
        for line, want in SPEC_LINES[7:]:
            check(console(substitute(line, b.port, lb_port, s5_port)), want, b.port)
    finally:
        p.terminate()
        p.wait(10)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()
