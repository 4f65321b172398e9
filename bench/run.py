#!/usr/bin/env python3
"""Side-by-side benchmark: vproxy vs haproxy (tcp and http modes) vs nginx stream.

Every target fronts the same two backends on loopback: an nginx serving a tiny
static HTTP response (measured with wrk, h2load and ``s5load``, a small C client
built here with gcc) and an ``iperf3 -s`` server (measured with iperf3). Runs are
interleaved (for each run, every target does every test it supports) so that
machine noise spreads evenly; the median over runs is reported. The tests that open
a connection per request run after all runs of the others: the ~100k sockets each
of them leaves in TIME_WAIT expire together 60 s later, and that slowed whatever
test ran then by up to 30% (see bench/README.md).

Rows: L4 keep-alive, ``Connection: close`` and iperf3 (all targets); a new
connection per request through vproxy's socks5-server (others: the same client
without socks5, one plain TCP connection per request); L7 HTTP/1.1 keep-alive
(vproxy ``protocol http/1.x`` vs haproxy ``mode http``) and h2 (vproxy
``protocol h2`` vs haproxy ``bind ... proto h2``). A row vproxy cannot serve
(the mode is not accepted) is reported as n/a.

Traffic goes to 127.0.0.1 only. Every process started here is stopped by pid in
a ``finally`` block (also on SIGINT/SIGTERM) and the temp dirs are removed.

Stdlib only, except the plot (matplotlib, installed with pip when missing; the
tables do not depend on it). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
HOST = "127.0.0.1"
ALL_TARGETS = ("direct", "haproxy", "nginx-stream", "vproxy")
PROXIES = ("haproxy", "nginx-stream", "vproxy")
TESTS = ("wrk-keepalive", "wrk-close", "iperf3", "s5-close", "l7-http1", "l7-h2")
#: tests that open a connection per request (they run last: see the module's doc)
CHURN_TESTS = frozenset({"wrk-close", "s5-close"})
TEST_TITLES = {
    "wrk-keepalive": "HTTP keep-alive, wrk -t1 -c64 (req/s)",
    "wrk-close": "HTTP Connection: close, wrk -t1 -c64 (req/s)",
    "iperf3": "iperf3 single stream (Gbit/s)",
    "s5-close": "new connection per request, s5load -c64: vproxy via socks5 CONNECT (req/s)",
    "l7-http1": "L7 HTTP/1.1 keep-alive, wrk -t1 -c64 (req/s)",
    "l7-h2": "L7 h2, h2load -t1 -c16 -m8 (req/s)",
}
#: what serves each test on a target (a listener "kind": port and process)
TEST_KIND = {
    "wrk-keepalive": "http",
    "wrk-close": "http",
    "iperf3": "iperf",
    "s5-close": "socks5",
    "l7-http1": "http1",
    "l7-h2": "h2",
}
#: targets each test runs on (haproxy has no socks5: it gets the same client, plain TCP)
TEST_TARGETS = {
    "s5-close": ("direct", "haproxy", "nginx-stream", "vproxy"),
    "l7-http1": ("haproxy", "vproxy"),
    "l7-h2": ("haproxy", "vproxy"),
}
#: in --quick, the rows beyond L4 run on haproxy and vproxy only (to stay under 2 minutes)
QUICK_TARGETS = ("haproxy", "vproxy")
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
APT_PACKAGES = ["haproxy", "nginx-light", "libnginx-mod-stream", "wrk", "iperf3", "nghttp2-client"]
S5LOAD_SRC = REPO / "bench" / "s5load.c"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MICRO = "\u00b5"  # micro sign, for "µs"


class BenchError(Exception):
    """A target or a measurement failed; the message says why."""


class Interrupted(Exception):
    """SIGTERM received."""


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- /proc


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime in ticks) of one process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data.rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def process_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _read_stat(int(entry))
        if st is not None:
            children.setdefault(st[0], []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in out or not Path(f"/proc/{pid}").exists():
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        st = _read_stat(pid)
        if st is not None:
            total += st[1]
    return total / CLK_TCK


def tree_peak_rss_kib(root: int) -> int:
    """Sum of VmHWM (peak resident set) over the process tree, in KiB."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# --------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    | " + line for line in lines[-n:]) or "    | (empty log)"


class ProcessManager:
    """Starts processes in their own session; stops exactly those pids (and their children)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        keep_stdin_open: bool = False,
    ) -> Proc:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as logf:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if keep_stdin_open else subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # a terminal ^C reaches us only; we stop them in order
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> None:
        if proc not in self.procs:
            return
        self.procs.remove(proc)
        tree = process_tree(proc.pid) if proc.alive() else []
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                proc.popen.wait(timeout)
        # Workers that outlived their master (should not happen): kill them by pid.
        deadline = time.monotonic() + timeout
        for pid in tree[1:]:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if proc.popen.stdin:
            proc.popen.stdin.close()

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                log(f"!! could not stop {proc.name} (pid {proc.pid}): {exc}")


# ---------------------------------------------------------------------- readiness


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_probe(port: int, timeout: float = 2.0) -> bool:
    """One full HTTP request through the port: True if the backend's answer comes back."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200") and b"hello" in data


def socks5_probe(port: int, backend_port: int, timeout: float = 2.0) -> bool:
    """One HTTP request through a socks5 CONNECT to the backend: True if it came back."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"\x05\x01\x00")
            if s.recv(2) != b"\x05\x00":
                return False
            s.sendall(
                b"\x05\x01\x00\x01" + socket.inet_aton(HOST) + backend_port.to_bytes(2, "big")
            )
            reply = b""
            while len(reply) < 10:
                chunk = s.recv(10 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            if reply[1] != 0:
                return False
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200")


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise BenchError(
                f"{proc.name} exited with code {proc.popen.returncode} before {what}\n"
                + proc.log_tail()
            )
        time.sleep(0.1)
    tail = ("\n" + proc.log_tail()) if proc is not None else ""
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


# ------------------------------------------------------------------------ configs


def nginx_needs_stream_module() -> bool:
    out = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    return "--with-stream=dynamic" in out or "--with-stream" not in out


def nofile_limit() -> int:
    """Raise our soft fd limit to the hard one (children inherit it) and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def maxconn() -> int:
    # Two fds per proxied connection plus slack; far above the 64 connections used.
    return max(256, min(20000, (nofile_limit() - 200) // 2))


def nginx_common(tmp: Path) -> str:
    return f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile_limit()};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {maxconn()}; multi_accept on; }}
"""


def nginx_backend_conf(tmp: Path, http_port: int, h2_port: int) -> str:
    return (
        nginx_common(tmp)
        + f"""http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {{
        listen {HOST}:{http_port} reuseport backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
    http2_max_requests 10000000;
    server {{
        listen {HOST}:{h2_port} http2 reuseport backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "hello\\n";
        }}
    }}
}}
"""
    )


def nginx_stream_conf(tmp: Path, listen: list[tuple[int, int]]) -> str:
    head = f"load_module {STREAM_MODULE};\n" if nginx_needs_stream_module() else ""
    servers = "".join(
        f"""    server {{
        listen {HOST}:{port} backlog=4096;
        proxy_pass {HOST}:{backend};
    }}
"""
        for port, backend in listen
    )
    return (
        head
        + nginx_common(tmp)
        + f"""stream {{
    proxy_connect_timeout 5s;
    proxy_timeout 120s;
{servers}}}
"""
    )


def haproxy_conf(
    listen: list[tuple[int, int]], http: list[tuple[int, int, bool]] | None = None
) -> str:
    """tcp-mode listeners ``(port, backend)``; http-mode ones ``(port, backend, h2)``."""
    blocks = "".join(
        f"""
listen l{port}
    bind {HOST}:{port}
    server s1 {HOST}:{backend}
"""
        for port, backend in listen
    )
    blocks += "".join(
        f"""
listen l{port}
    mode http
    bind {HOST}:{port}{" proto h2" if h2 else ""}
    timeout http-keep-alive 120s
    server s1 {HOST}:{backend}{" proto h2" if h2 else ""}
"""
        for port, backend, h2 in http or []
    )
    return f"""global
    nbthread 1
    maxconn {maxconn()}

defaults
    mode tcp
    maxconn {maxconn()}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
{blocks}"""


# ------------------------------------------------------------------------ targets


@dataclass
class Target:
    name: str
    http_port: int
    iperf_port: int
    http_proc: Proc | None = None  # the process (tree) that carries the wrk traffic
    iperf_proc: Proc | None = None  # the process (tree) that carries the iperf3 traffic
    procs: list[Proc] = field(default_factory=list)
    failed: str | None = None
    # Listeners beyond http/iperf, by kind (see TEST_KIND): port and process.
    ports: dict[str, int] = field(default_factory=dict)
    kind_procs: dict[str, Proc] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)  # kind -> why it cannot run

    def port(self, kind: str) -> int:
        return {"http": self.http_port, "iperf": self.iperf_port}.get(kind) or self.ports[kind]

    def proc(self, kind: str) -> Proc | None:
        if kind == "http":
            return self.http_proc
        if kind == "iperf":
            return self.iperf_proc
        return self.kind_procs.get(kind)

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise BenchError(
                    f"{p.name} (pid {p.pid}) exited with code {p.popen.returncode}\n" + p.log_tail()
                )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="vproxy-bench-"))
        self.pm = ProcessManager(self.tmp)
        self.backend_http = 0
        self.backend_iperf = 0
        self.backend_h2 = 0
        self.backend_nginx: Proc | None = None
        self.targets: dict[str, Target] = {}
        self.failures: list[str] = []
        self.raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.rss_kib: dict[str, dict[str, int]] = {}
        # what vproxy reports it runs on: event loop, compiled or pure Python
        self.vproxy_loop: str | None = None
        self.s5load: Path | None = None  # the compiled client, None if it cannot be built
        self.notes: list[str] = []  # why a row is n/a

    def tests_for(self, t: Target) -> list[str]:
        """The tests ``t`` runs: L4 everywhere, the others where they have a meaning."""
        out = []
        for test in TESTS:
            if test not in self.args.tests:
                continue
            allowed = TEST_TARGETS.get(test)
            if allowed is not None:
                if t.name not in allowed:
                    continue
                if self.args.quick and t.name not in QUICK_TARGETS:
                    continue
                if TEST_KIND[test] in t.na:
                    continue
                if test == "s5-close" and self.s5load is None:
                    continue
            out.append(test)
        return out

    def row_na(self, name: str, test: str) -> bool:
        """``name`` cannot run ``test`` here (a missing mode or tool; not a failure)."""
        t = self.targets.get(name)
        if test == "s5-close" and self.s5load is None:
            return True
        return t is not None and TEST_KIND[test] in t.na

    def build_s5load(self) -> None:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            self.notes.append("s5-close: no C compiler (gcc) to build bench/s5load.c")
            return
        out = self.tmp / "s5load"
        res = subprocess.run(
            [gcc, "-O2", "-o", str(out), str(S5LOAD_SRC)], capture_output=True, text=True
        )
        if res.returncode != 0:
            self.notes.append(f"s5-close: s5load did not build: {res.stderr.strip()[-200:]}")
            return
        self.s5load = out

    # -- setup -------------------------------------------------------------------

    def start_backends(self) -> None:
        d = self.tmp / "backend"
        d.mkdir()
        self.backend_http = free_port()
        self.backend_h2 = free_port()  # h2c (prior knowledge), for the h2 rows
        conf = d / "nginx.conf"
        conf.write_text(nginx_backend_conf(d, self.backend_http, self.backend_h2))
        self.backend_nginx = self.pm.start(
            "backend-nginx", ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        )
        wait_until(
            lambda: http_probe(self.backend_http), 10, "the nginx backend", self.backend_nginx
        )
        self.backend_iperf = free_port()
        iperf = self.pm.start(
            "backend-iperf3", ["iperf3", "-s", "-B", HOST, "-p", str(self.backend_iperf)]
        )
        wait_until(lambda: port_accepts(self.backend_iperf), 10, "the iperf3 server", iperf)
        log(f"backends: nginx http {HOST}:{self.backend_http}, iperf3 {HOST}:{self.backend_iperf}")

    def start_target(self, name: str) -> Target:
        if name == "direct":
            return Target(
                name, self.backend_http, self.backend_iperf, ports={"socks5": self.backend_http}
            )
        t = Target(name, free_port(), free_port())
        self.targets[name] = t  # registered first so a failure is still reported per target
        listen = [(t.http_port, self.backend_http), (t.iperf_port, self.backend_iperf)]
        if name == "haproxy":
            t.ports = {"http1": free_port(), "h2": free_port(), "socks5": t.http_port}
            http = [(t.ports["http1"], self.backend_http, False)]
            http.append((t.ports["h2"], self.backend_h2, True))
            cfg = self.tmp / "haproxy.cfg"
            cfg.write_text(haproxy_conf(listen, http))
            p = self.pm.start("haproxy", ["haproxy", "-db", "-f", str(cfg)])
            t.procs = [p]
            t.http_proc = t.iperf_proc = p
            t.kind_procs = {"http1": p, "h2": p, "socks5": p}
            timeout = 10.0
        elif name == "nginx-stream":
            d = self.tmp / "nginx-stream"
            d.mkdir()
            conf = d / "nginx.conf"
            conf.write_text(nginx_stream_conf(d, listen))
            p = self.pm.start(
                "nginx-stream",
                ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)],
            )
            t.procs = [p]
            t.http_proc = t.iperf_proc = p
            t.ports = {"socks5": t.http_port}
            t.kind_procs = {"socks5": p}
            timeout = 10.0
        elif name == "vproxy":
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO / "src") + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
            )
            # Keep vproxy's auto-saved state (~/.vproxy) out of the real home directory.
            home = self.tmp / "vproxy-home"
            home.mkdir()
            env["HOME"] = str(home)
            extra = shlex.split(self.args.vproxy_args)
            procs = []
            for kind, port, backend in (
                ("http", t.http_port, self.backend_http),
                ("iperf", t.iperf_port, self.backend_iperf),
            ):
                argv = [self.args.python, "-m", "vproxy", "simple", "bind", str(port)]
                argv += ["backend", f"{HOST}:{backend}", "address", HOST, *extra]
                procs.append(
                    self.pm.start(f"vproxy-{kind}", argv, cwd=REPO, env=env, keep_stdin_open=True)
                )
            t.procs = procs
            t.http_proc, t.iperf_proc = procs
            timeout = 30.0  # servers start DOWN until the first health check passes
            self._start_vproxy_extra(t, env, extra)
        else:
            raise BenchError(f"unknown target {name}")
        assert t.http_proc is not None
        assert t.iperf_proc is not None
        wait_until(lambda: http_probe(t.http_port), timeout, f"{name} to proxy HTTP", t.http_proc)
        wait_until(lambda: port_accepts(t.iperf_port), timeout, f"{name} iperf3 port", t.iperf_proc)
        if name == "vproxy":
            # the start-up line may come a moment after the port answers
            m = None
            for _ in range(50):
                banner = t.http_proc.log_path.read_text()
                m = re.search(r"listening on \S+ -> \S+ \(([\w ,]+)\)", banner)
                if m:
                    break
                time.sleep(0.1)
            self.vproxy_loop = m.group(1) if m else "?"
            self._wait_vproxy_extra(t)
        elif name == "haproxy":
            wait_until(lambda: http_probe(t.ports["http1"]), timeout, "haproxy mode http", p)
            wait_until(lambda: port_accepts(t.ports["h2"]), timeout, "haproxy h2 port", p)
        log(
            f"{name}: http {HOST}:{t.http_port}, iperf3 {HOST}:{t.iperf_port}, pids "
            + ",".join(str(p.pid) for p in t.procs)
        )
        return t

    def _start_vproxy_extra(self, t: Target, env: dict[str, str], extra: list[str]) -> None:
        """The socks5-server and the L7 tcp-lbs, one process each (started, not waited for)."""
        for kind, protocol, backend in (
            ("http1", "http/1.x", self.backend_http),
            ("h2", "h2", self.backend_h2),
        ):
            port = free_port()
            argv = [self.args.python, "-m", "vproxy", "simple", "bind", str(port)]
            argv += ["backend", f"{HOST}:{backend}", "address", HOST]
            argv += ["protocol", protocol, *extra]
            t.ports[kind] = port
            t.kind_procs[kind] = self.pm.start(
                f"vproxy-{kind}", argv, cwd=REPO, env=env, keep_stdin_open=True
            )
        port = free_port()
        conf = self.tmp / "vproxy-socks5.conf"
        conf.write_text(
            "add server-group backend timeout 1000 period 2000 up 1 down 2 method wrr\n"
            f"add server backend0 to server-group backend address {HOST}:{self.backend_http}"
            " weight 10\n"
            "add upstream backend\n"
            "add server-group backend to upstream backend weight 10\n"
            f"add socks5-server s5 address {HOST}:{port} upstream backend"
            " acceptor-elg (worker-elg)\n"
        )
        argv = [self.args.python, "-m", "vproxy", "load", str(conf)]
        argv += ["noLoadLast", "noSave", "noStdIOController"]
        t.ports["socks5"] = port
        t.kind_procs["socks5"] = self.pm.start(
            "vproxy-socks5", argv, cwd=REPO, env=env, keep_stdin_open=True
        )

    def _wait_vproxy_extra(self, t: Target) -> None:
        """Wait for the extra listeners; one that cannot serve makes its rows n/a."""
        probes: dict[str, Callable[[int], bool]] = {
            "http1": http_probe,
            "h2": port_accepts,
            "socks5": lambda port: socks5_probe(port, self.backend_http),
        }
        for kind, probe in probes.items():
            p = t.kind_procs[kind]
            port = t.ports[kind]
            try:
                wait_until(lambda: probe(port), 30, f"vproxy {kind}", p)  # noqa: B023
            except BenchError as exc:
                why = str(exc).splitlines()
                detail = [ln.strip(" |") for ln in why[1:] if ln.strip(" |")]
                t.na[kind] = why[0] + (f" ({detail[-1]})" if detail else "")
                self.notes.append(f"vproxy {kind}: n/a: {t.na[kind]}")
                log(f"!! vproxy {kind}: n/a: {t.na[kind]}")
                self.pm.stop(p)
                t.procs = [x for x in t.procs if x is not p]
                continue
            if p not in t.procs:
                t.procs.append(p)

    # -- measurements ------------------------------------------------------------

    def _cpu(self, t: Target, which: str) -> float | None:
        p = t.http_proc if which == "http" else t.iperf_proc
        return tree_cpu_seconds(p.pid) if p is not None else None

    def _backend_cpu(self) -> float:
        assert self.backend_nginx is not None
        return tree_cpu_seconds(self.backend_nginx.pid)

    def _kind_cpu(self, t: Target, kind: str) -> float | None:
        p = t.proc(kind)
        return tree_cpu_seconds(p.pid) if p is not None else None

    def run_wrk(self, t: Target, close: bool, duration: int, kind: str = "http") -> dict[str, Any]:
        port = t.port(kind)
        wait_until(lambda: http_probe(port), 10, f"{t.name} HTTP port")
        argv = ["wrk", "-t1", "-c64", f"-d{duration}s", "--latency"]
        if close:
            argv += ["-H", "Connection: close"]
        argv.append(f"http://{HOST}:{port}/")
        cpu0, bcpu0 = self._kind_cpu(t, kind), self._backend_cpu()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        cpu1, bcpu1 = self._kind_cpu(t, kind), self._backend_cpu()
        if res.returncode != 0:
            raise BenchError(f"wrk failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        out = parse_wrk(res.stdout)
        out["backend_cpu_s"] = round(bcpu1 - bcpu0, 4)
        if cpu0 is not None and cpu1 is not None:
            out["proxy_cpu_s"] = round(cpu1 - cpu0, 4)
            if out["requests"]:
                out["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / out["requests"]
        out["value"] = out["rps"]
        return out

    def run_iperf(self, t: Target, duration: int) -> dict[str, Any]:
        last = ""
        for attempt in range(3):
            wait_until(lambda: port_accepts(t.iperf_port), 10, f"{t.name} iperf3 port")
            argv = ["iperf3", "-c", HOST, "-p", str(t.iperf_port), "-t", str(duration), "-J"]
            cpu0 = self._cpu(t, "iperf")
            try:
                res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
            except subprocess.TimeoutExpired:
                last = "iperf3 client timed out"
                continue
            cpu1 = self._cpu(t, "iperf")
            try:
                data = json.loads(res.stdout)
            except json.JSONDecodeError:
                data = {}
            if res.returncode == 0 and "error" not in data:
                bps = float(data["end"]["sum_received"]["bits_per_second"])
                secs = float(data["end"]["sum_received"].get("seconds") or duration)
                out: dict[str, Any] = {"value": bps / 1e9, "bits_per_second": bps}
                out["retransmits"] = data["end"].get("sum_sent", {}).get("retransmits")
                if cpu0 is not None and cpu1 is not None:
                    out["proxy_cpu_s"] = round(cpu1 - cpu0, 4)
                    out["proxy_cpu_pct"] = (cpu1 - cpu0) * 100 / secs
                return out
            last = data.get("error") or res.stderr.strip()[-300:] or f"exit {res.returncode}"
            log(f"   iperf3 attempt {attempt + 1} failed: {last}; retrying")
            time.sleep(1.0)
        raise BenchError(f"iperf3 failed: {last}")

    def run_s5load(self, t: Target, duration: int) -> dict[str, Any]:
        """A new connection per request: via socks5 CONNECT on vproxy, plain TCP elsewhere."""
        assert self.s5load is not None
        kind = "socks5"
        port = t.port(kind)
        mode = "socks5" if t.name == "vproxy" else "plain"
        argv = [str(self.s5load), mode, HOST, str(port), HOST, str(self.backend_http)]
        argv += ["64", str(duration)]
        cpu0 = self._kind_cpu(t, kind)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        cpu1 = self._kind_cpu(t, kind)
        if res.returncode != 0:
            raise BenchError(f"s5load failed ({res.returncode}): {res.stderr.strip()[-300:]}")
        kv = dict(x.split("=", 1) for x in res.stdout.split())
        out: dict[str, Any] = {
            "mode": mode,
            "requests": int(kv["requests"]),
            "socket_errors": int(kv["errors"]),
            "non_2xx": 0,
            "rps": float(kv["rps"]),
            "client_cpu_s": float(kv["client_cpu_s"]),
        }
        if cpu0 is not None and cpu1 is not None:
            out["proxy_cpu_s"] = round(cpu1 - cpu0, 4)
            if out["requests"]:
                out["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / out["requests"]
        out["value"] = out["rps"]
        return out

    def run_h2load(self, t: Target, duration: int) -> dict[str, Any]:
        kind = "h2"
        port = t.port(kind)
        argv = ["h2load", "-t1", "-c16", "-m8", "-D", str(duration), f"http://{HOST}:{port}/"]
        cpu0 = self._kind_cpu(t, kind)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        cpu1 = self._kind_cpu(t, kind)
        out = parse_h2load(res.stdout)
        if res.returncode != 0 and not out.get("requests"):
            raise BenchError(f"h2load failed ({res.returncode}): {res.stderr.strip()[-300:]}")
        if cpu0 is not None and cpu1 is not None:
            out["proxy_cpu_s"] = round(cpu1 - cpu0, 4)
            if out["requests"]:
                out["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / out["requests"]
        out["value"] = out["rps"]
        return out

    def measure(self, t: Target, test: str, duration: int) -> dict[str, Any]:
        t.check_alive()
        if test == "wrk-keepalive":
            r = self.run_wrk(t, False, duration)
        elif test == "wrk-close":
            r = self.run_wrk(t, True, duration)
        elif test == "s5-close":
            r = self.run_s5load(t, duration)
        elif test == "l7-http1":
            r = self.run_wrk(t, False, duration, kind="http1")
        elif test == "l7-h2":
            r = self.run_h2load(t, duration)
        else:
            r = self.run_iperf(t, duration)
        t.check_alive()
        for kind, p in (("http", t.http_proc), ("iperf", t.iperf_proc)):
            if p is not None:
                rss = self.rss_kib.setdefault(t.name, {})
                rss[kind] = max(rss.get(kind, 0), tree_peak_rss_kib(p.pid))
        return r

    # -- main loop ---------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        self.start_backends()
        self.build_s5load()
        order: list[Target] = []
        for name in a.only:
            try:
                t = self.start_target(name)
            except (BenchError, OSError) as exc:
                msg = f"{name}: FAILED to start: {exc}"
                log(f"!! {msg}")
                self.failures.append(msg)
                if name in self.targets:
                    for p in self.targets[name].procs:
                        self.pm.stop(p)
                    self.targets[name].procs = []
                    self.targets[name].failed = str(exc).splitlines()[0]
                continue
            self.targets[name] = t
            order.append(t)
        if not order:
            raise BenchError("no target could be started")
        # Warm-up (not measured): first-use costs, page faults, connection pools.
        for t in order:
            try:
                self.run_wrk(t, False, 1)
            except (BenchError, subprocess.TimeoutExpired) as exc:
                log(f"!! {t.name}: warm-up failed: {exc}")
        # First every run of the tests on steady connections, then every run of those
        # that churn connections (whose TIME_WAIT sockets expire 60 s later).
        for churn in (False, True):
            self.run_phase(order, churn)

    def run_phase(self, order: list[Target], churn: bool) -> None:
        """Every run of the tests of one phase (churning connections or not)."""
        a = self.args
        for run in range(a.runs):
            # Rotate the order each run so no target always goes first or last.
            k = run % len(order)
            for t in order[k:] + order[:k]:
                if t.failed:
                    continue
                for test in self.tests_for(t):
                    if (test in CHURN_TESTS) != churn:
                        continue
                    try:
                        r = self.measure(t, test, a.duration)
                    except (BenchError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
                        msg = f"{t.name} {test} run {run + 1}: FAILED: {exc}"
                        log(f"!! {msg}")
                        self.failures.append(msg)
                        if any(not p.alive() for p in t.procs):
                            t.failed = str(exc).splitlines()[0]
                            log(f"!! {t.name}: process died, skipping its remaining tests")
                            break
                        continue
                    r["run"] = run + 1
                    self.raw.setdefault(t.name, {}).setdefault(test, []).append(r)
                    log(f"[run {run + 1}/{a.runs}] {t.name:13s} {test:14s} {describe(test, r)}")

    def cleanup(self) -> None:
        self.pm.stop_all()
        if self.args.keep_tmp:
            log(f"temp dir kept: {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------ parsing


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"bad wrk time {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise BenchError(f"cannot parse wrk output:\n{out[-800:]}")
    r: dict[str, Any] = {"requests": int(m.group(1)), "rps": float(rps.group(1))}
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in errs.groups()) if errs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    lat = re.search(r"Latency\s+([\d.]+\w+)", out)
    if lat:
        r["latency_avg_ms"] = _ms(lat.group(1))
    for pct in ("50", "99"):
        p = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+\w+)", out, re.M)
        if p:
            r[f"latency_p{pct}_ms"] = _ms(p.group(1))
    return r


def parse_h2load(out: str) -> dict[str, Any]:
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    reqs = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored",
        out,
    )
    if not rps or not reqs:
        raise BenchError(f"cannot parse h2load output:\n{out[-800:]}")
    status = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    ok = int(reqs.group(2))
    return {
        "rps": float(rps.group(1)) * (ok / int(reqs.group(1)) if int(reqs.group(1)) else 0),
        "requests": ok,
        "socket_errors": int(reqs.group(3)) + int(reqs.group(4)),
        # with -D, streams still open at the end count as done but have no status
        "non_2xx": sum(int(g) for g in status.groups()) if status else 0,
    }


def describe(test: str, r: dict[str, Any]) -> str:
    if test == "iperf3":
        s = f"{r['value']:8.2f} Gbit/s"
        if "proxy_cpu_pct" in r:
            s += f"   proxy cpu {r['proxy_cpu_pct']:5.1f}%"
        return s
    s = f"{r['value']:10,.0f} req/s"
    if "cpu_us_per_req" in r:
        s += f"   proxy cpu {r['cpu_us_per_req']:6.1f} {MICRO}s/req"
    if r.get("socket_errors") or r.get("non_2xx"):
        s += f"   (socket errors {r['socket_errors']}, non-2xx {r['non_2xx']})"
    return s


# ------------------------------------------------------------------------ reports


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def spread_pct(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    if len(vals) < 2 or not statistics.median(vals):
        return None
    return (max(vals) - min(vals)) / 2 / statistics.median(vals) * 100


def fmt(test: str, v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if test == "iperf3" else f"{v:,.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def machine_info(python: str) -> dict[str, Any]:
    uv = subprocess.run(
        [python, "-c", "import uvloop; print(uvloop.__version__)"],
        capture_output=True,
        text=True,
    )
    pyver = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    ).stdout.strip()

    def version(argv: list[str], pat: str) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        m = re.search(pat, res.stdout + res.stderr)
        return m.group(1) if m else "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": pyver,
        "python_executable": python,
        "uvloop": uv.stdout.strip() if uv.returncode == 0 else None,
        "haproxy": version(["haproxy", "-v"], r"version (\S+)"),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
        "iperf3": version(["iperf3", "-v"], r"iperf (\S+)"),
    }


def build_report(b: Bench, machine: dict[str, Any], started: str, cmdline: str) -> str:
    a = b.args
    targets = list(a.only)
    lines = [
        "# Benchmark: vproxy vs haproxy vs nginx stream",
        "",
        f"- date: {started}",
        f"- command: `{cmdline}`",
        f"- machine: {machine['nproc']} CPUs ({machine['cpu']}), kernel {machine['kernel']}, "
        f"python {machine['python']}, uvloop "
        f"{'present (' + machine['uvloop'] + ')' if machine['uvloop'] else 'absent'}"
        + (f"; vproxy runs on {b.vproxy_loop}" if b.vproxy_loop else ""),
        f"- tools: haproxy {machine['haproxy']}, nginx {machine['nginx']}, wrk {machine['wrk']}, "
        f"iperf3 {machine['iperf3']}",
        f"- load average (1/5/15 min): before the run {'/'.join(machine['loadavg_start'])} "
        "(well above 0 means something else was busy: expect noise), after "
        f"{'/'.join(machine['loadavg_end'])} (includes this run)",
        f"- {a.runs} interleaved runs of {a.duration}s per test; medians shown; "
        "± is half the min-max range over runs, in % of the median",
        "- order: every run of the tests on steady connections first, then every run of "
        "wrk-close and s5-close (the TIME_WAIT sockets they leave expire together 60 s "
        "later and slow whatever runs then: bench/README.md)",
        "- everything on loopback; proxies: 1 worker/thread each; backend: nginx (1 worker) "
        '`return 200 "hello\\n"` and `iperf3 -s`',
        "- s5-close: `bench/s5load.c` (one thread, epoll, 64 connections, each request a new "
        "TCP connection; HTTP/1.1 `Connection: close`). vproxy: socks5 greeting + CONNECT to "
        "the nginx backend through its socks5-server, then the request; the other targets: the "
        "same client and request without socks5 (their tcp listener). The client is a limit "
        "too: its CPU seconds are in latest.json (`client_cpu_s`).",
        "- L7 rows: vproxy `simple ... protocol http/1.x` and `protocol h2` (h2c, prior "
        "knowledge) vs haproxy `mode http` and `bind ... proto h2`; http/1.x: both to the same "
        "nginx over HTTP/1.1; h2: both to the same nginx over h2c (`server ... proto h2`: h2 on "
        "both sides, as vproxy's h2 mode); n/a where vproxy did not start with that protocol",
        "",
        "## Throughput (higher is better)",
        "",
    ]
    header = ["test", *targets, "vproxy/haproxy", "vproxy/direct"]
    rows = []
    for test in TESTS:
        row = [TEST_TITLES[test]]
        meds: dict[str, float | None] = {}
        for name in targets:
            rs = b.raw.get(name, {}).get(test, [])
            meds[name] = median_of(rs, "value")
            sp = spread_pct(rs, "value")
            cell = fmt(test, meds[name])
            if meds[name] is None and b.row_na(name, test):
                cell = "n/a"
            if sp is not None:
                cell += f" ±{sp:.0f}%"
            row.append(cell)
        row.append(ratio(meds.get("vproxy"), meds.get("haproxy")))
        row.append(ratio(meds.get("vproxy"), meds.get("direct")))
        rows.append(row)
    lines += [md_table(header, rows), ""]

    proxies = [t for t in targets if t in PROXIES]
    if proxies:
        lines += [
            "## Proxy CPU cost (lower is better)",
            "",
            f"CPU time (user+sys, summed over the proxy's process tree) per request, in {MICRO}s; "
            "for iperf3, % of one core during the transfer. The backend's own cost is not "
            "included.",
            "",
        ]
        header = ["test", *proxies, "vproxy/haproxy"]
        rows = []
        for test in TESTS:
            key, unit = (
                ("proxy_cpu_pct", "% CPU")
                if test == "iperf3"
                else (
                    "cpu_us_per_req",
                    f"{MICRO}s/req",
                )
            )
            meds = {p: median_of(b.raw.get(p, {}).get(test, []), key) for p in proxies}
            row = [f"{test} ({unit})"]
            row += [
                f"{meds[p]:.1f}" if meds[p] is not None else ("n/a" if b.row_na(p, test) else "—")
                for p in proxies
            ]
            row.append(ratio(meds.get("vproxy"), meds.get("haproxy")))
            rows.append(row)
        lines += [md_table(header, rows), ""]

        lines += [
            "## Peak memory (lower is better)",
            "",
            "Peak RSS (VmHWM summed over the process tree) of the instance carrying the wrk "
            "traffic (64 connections) and of the one carrying iperf3, in MiB. haproxy and "
            "nginx serve both from one instance (same number twice); vproxy runs one "
            "`simple` instance per backend.",
            "",
        ]
        header = ["", *proxies, "vproxy/haproxy"]
        rows = []
        for kind, title in (("http", "wrk instance"), ("iperf", "iperf3 instance")):
            vals = {p: b.rss_kib.get(p, {}).get(kind) for p in proxies}
            row = [title]
            row += [f"{kib / 1024:.1f}" if (kib := vals[p]) else "—" for p in proxies]
            row.append(ratio(vals.get("vproxy"), vals.get("haproxy")))
            rows.append(row)
        lines += [md_table(header, rows), ""]

    lines += goals_section(b)
    if b.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in b.notes], ""]
    warn = []
    for name in targets:
        for test in ("wrk-keepalive", "wrk-close", "s5-close", "l7-http1", "l7-h2"):
            for r in b.raw.get(name, {}).get(test, []):
                if r.get("socket_errors") or r.get("non_2xx"):
                    warn.append(
                        f"- {name} {test} run {r['run']}: {r['socket_errors']} socket errors, "
                        f"{r['non_2xx']} non-2xx responses"
                    )
    if b.failures or warn:
        lines += ["## Failures and warnings", ""]
        for f in b.failures:
            first, *rest = f.splitlines()
            detail = [ln.strip(" |") for ln in rest if ln.strip(" |") not in ("", "(empty log)")]
            lines.append(f"- {first}" + (f" (last log line: `{detail[-1]}`)" if detail else ""))
        lines += [*warn, ""]
    return "\n".join(lines)


#: (label, goal): checked against this run's medians (vproxy / haproxy, same run)
GOALS = (
    ("L4 keep-alive req/s", 1.15),
    ("L4 keep-alive CPU/req (lower is better)", 1.0),
    ("L4 `Connection: close` req/s", 0.9),
    ("L4 iperf3 Gbit/s", 1.4),
    ("socks5, new tunnel per request, req/s vs haproxy wrk-close", 0.7),
    ("L7 HTTP/1.1 keep-alive req/s", 0.7),
    ("L7 h2 req/s", 0.6),
)


def _med(b: Bench, name: str, test: str, key: str = "value") -> float | None:
    return median_of(b.raw.get(name, {}).get(test, []), key)


def goal_ratios(b: Bench) -> list[tuple[str, float, float | None]]:
    """(label, goal, vproxy/haproxy ratio or None) for every goal."""

    def r(a: float | None, c: float | None) -> float | None:
        return a / c if a is not None and c else None

    v, h = "vproxy", "haproxy"
    vals = [
        r(_med(b, v, "wrk-keepalive"), _med(b, h, "wrk-keepalive")),
        r(
            _med(b, v, "wrk-keepalive", "cpu_us_per_req"),
            _med(b, h, "wrk-keepalive", "cpu_us_per_req"),
        ),
        r(_med(b, v, "wrk-close"), _med(b, h, "wrk-close")),
        r(_med(b, v, "iperf3"), _med(b, h, "iperf3")),
        r(_med(b, v, "s5-close"), _med(b, h, "wrk-close")),
        r(_med(b, v, "l7-http1"), _med(b, h, "l7-http1")),
        r(_med(b, v, "l7-h2"), _med(b, h, "l7-h2")),
    ]
    return [(label, goal, val) for (label, goal), val in zip(GOALS, vals, strict=True)]


def goals_section(b: Bench) -> list[str]:
    rows = []
    for label, goal, val in goal_ratios(b):
        lower = "lower is better" in label
        if val is None:
            verdict, cell = "not measured", "—"
        else:
            met = val < goal if lower else val >= goal
            verdict, cell = ("met" if met else "not met"), f"{val:.2f}"
        rows.append([label, f"{'<' if lower else '≥'} {goal:.2f}", cell, verdict])
    rss = b.rss_kib.get("vproxy", {}).get("http")
    rows.append(
        [
            "peak RSS of the tcp-lb serving 64 connections (MiB)",
            "≤ 40",
            f"{rss / 1024:.1f}" if rss else "—",
            ("met" if rss / 1024 <= 40 else "not met") if rss else "not measured",
        ]
    )
    return [
        "## Goals (vproxy / haproxy, this run)",
        "",
        md_table(["goal", "target", "this run", ""], rows),
        "",
    ]


def write_plot(b: Bench, path: Path) -> str | None:
    """A PNG of vproxy / haproxy per test (throughput and CPU per unit); None if done."""
    try:
        import matplotlib
    except ImportError:
        log("matplotlib missing: installing it with pip for the plot")
        res = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            return f"no plot: pip could not install matplotlib ({res.stderr.strip()[-200:]})"
        try:
            import matplotlib
        except ImportError:
            return "no plot: matplotlib not importable after pip install"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests, thr, cpu = [], [], []
    for test in TESTS:
        ref = "wrk-close" if test == "s5-close" else test
        v, h = _med(b, "vproxy", test), _med(b, "haproxy", ref)
        key = "proxy_cpu_pct" if test == "iperf3" else "cpu_us_per_req"
        vc, hc = _med(b, "vproxy", test, key), _med(b, "haproxy", ref, key)
        tests.append(test + ("\n(vs haproxy\nwrk-close)" if test == "s5-close" else ""))
        thr.append(v / h if v is not None and h else 0.0)
        cpu.append(vc / hc if vc is not None and hc else 0.0)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = range(len(tests))
    ax.bar([x - 0.2 for x in xs], thr, 0.4, label="throughput (higher is better)")
    ax.bar([x + 0.2 for x in xs], cpu, 0.4, label="CPU per request / per bit (lower is better)")
    for x, (t, c) in enumerate(zip(thr, cpu, strict=True)):
        if not t and not c:
            ax.text(x, 0.05, "n/a", ha="center")
    goals = {"wrk-keepalive": 1.15, "wrk-close": 0.9, "iperf3": 1.4, "s5-close": 0.7}
    goals |= {"l7-http1": 0.7, "l7-h2": 0.6}
    gx = [x - 0.2 for x, test in enumerate(TESTS) if test in goals]
    gy = [goals[test] for test in TESTS if test in goals]
    ax.scatter(gx, gy, marker="_", s=600, color="black", label="throughput goal", zorder=3)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(xs), tests, fontsize=8)
    ax.set_ylabel("vproxy / haproxy (same run)")
    ax.set_title(f"vproxy vs haproxy 2.6, one worker each, medians of {b.args.runs} runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def ensure_tools() -> None:
    missing = [b for b in ("haproxy", "nginx", "wrk", "iperf3", "h2load") if not shutil.which(b)]
    if not STREAM_MODULE.exists() and shutil.which("nginx") and nginx_needs_stream_module():
        missing.append(str(STREAM_MODULE))
    if not missing:
        return
    log(f"missing: {', '.join(missing)}; installing {' '.join(APT_PACKAGES)}")
    if os.geteuid() != 0:
        raise BenchError("not root: install them with apt-get install -y " + " ".join(APT_PACKAGES))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", *APT_PACKAGES]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Side-by-side L4 benchmark: vproxy tcp-lb vs haproxy vs nginx stream "
        "(loopback only).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs (2 runs x 2s; rows beyond L4 on haproxy and vproxy only): under 2 minutes",
    )
    p.add_argument("--duration", type=int, help="seconds per measurement (default 8, quick 2)")
    p.add_argument("--runs", type=int, help="interleaved runs; median is reported (3, quick 2)")
    p.add_argument(
        "--only",
        default=",".join(ALL_TARGETS),
        help=f"comma-separated targets among {','.join(ALL_TARGETS)} (default: all)",
    )
    p.add_argument(
        "--tests",
        default=",".join(TESTS),
        help=f"comma-separated tests among {','.join(TESTS)} (default: all)",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter for vproxy")
    p.add_argument("--vproxy-args", default="", help="extra arguments for `vproxy simple`")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.{md,json} go")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    a = p.parse_args(argv)
    a.only = [t.strip() for t in a.only.split(",") if t.strip()]
    bad = [t for t in a.only if t not in ALL_TARGETS]
    if bad or not a.only:
        p.error(f"unknown target(s) {bad}; choose among {','.join(ALL_TARGETS)}")
    a.tests = [t.strip() for t in a.tests.split(",") if t.strip()]
    bad = [t for t in a.tests if t not in TESTS]
    if bad or not a.tests:
        p.error(f"unknown test(s) {bad}; choose among {','.join(TESTS)}")
    if a.duration is None:
        a.duration = 2 if a.quick else 8
    if a.runs is None:
        a.runs = 2 if a.quick else 3
    if a.duration < 1 or a.runs < 1:
        p.error("--duration and --runs must be >= 1")
    return a


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    # ^C must interrupt us even when started with SIGINT ignored (e.g. a background job).
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    cmdline = " ".join(shlex.quote(x) for x in ["python3", "bench/run.py", *(argv or sys.argv[1:])])
    per_run = 3 * len(args.only) + sum(
        len(
            [
                t
                for t in args.only
                if t in TEST_TARGETS[x] and (not args.quick or t in QUICK_TARGETS)
            ]
        )
        for x in TEST_TARGETS
    )
    est = per_run * args.runs * (args.duration + 0.6) + 5 * len(args.only)
    log(
        f"targets {','.join(args.only)}; {args.runs} runs x {args.duration}s; "
        f"estimated {est / 60:.1f} min"
    )
    ensure_tools()
    machine = machine_info(args.python)
    machine["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    bench = Bench(args)
    rc = 0
    with sigterm_as_exception():
        try:
            bench.run()
        except (KeyboardInterrupt, Interrupted):
            log("!! interrupted: stopping everything, writing partial results")
            bench.failures.append("interrupted")
            rc = 130
        except BenchError as exc:
            log(f"!! {exc}")
            bench.failures.append(str(exc))
            rc = 1
        finally:
            bench.cleanup()

    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report = build_report(bench, machine, started, cmdline)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(report)
    raw = {
        "date": started,
        "command": cmdline,
        "machine": machine,
        "vproxy_loop": bench.vproxy_loop,
        "config": {"duration_s": args.duration, "runs": args.runs, "targets": args.only},
        "failures": bench.failures,
        "medians": {
            test: {
                name: median_of(bench.raw.get(name, {}).get(test, []), "value")
                for name in args.only
            }
            for test in TESTS
        },
        "peak_rss_kib": bench.rss_kib,
        "goals": {label: val for label, _, val in goal_ratios(bench)},
        "notes": bench.notes,
        "raw": bench.raw,
    }
    (args.out / "latest.json").write_text(json.dumps(raw, indent=2) + "\n")
    if "vproxy" in args.only and "haproxy" in args.only:
        try:
            why = write_plot(bench, args.out / "latest.png")
        except Exception as exc:  # the plot is an extra: never lose the tables to it
            why = f"no plot: {exc}"
        if why:
            log(why)
    print()
    print(report)
    log(f"written: {args.out / 'latest.md'}, {args.out / 'latest.json'}")
    if rc == 0 and bench.failures:
        rc = 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
