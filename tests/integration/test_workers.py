"""``workers N`` as a user runs it: processes sharing one port, replication, restarts.

Real processes and sockets on 127.0.0.1. Which process accepted a connection is read
from ``/proc/PID/fd`` and ``/proc/net/tcp``: the established socket on the listener's
port is held by the process that accepted it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    Backend,
    LoopThread,
    VproxyProcess,
    children,
    echo_handler,
    http_handler,
    id_handler,
    read_ident,
    vproxy_process,
    wait_until,
)
from vproxy.control.openapi import openapi_document
from vproxy.control.workers import requests_migrate
from vproxy.net import reuseport
from vproxy.net.server_sock import bind_listener

PASSWORD = "s3cret"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def holders(pids: list[int], port: int, clients: list[socket.socket]) -> dict[int, int]:
    """For each client connection to local ``port``: the pid that accepted it, by the
    client's port (waits until every one is accepted)."""
    wanted = {c.getsockname()[1] for c in clients}
    found: dict[int, int] = {}

    def all_accepted() -> bool:
        by_inode = {i: pid for pid in pids for i in socket_inodes(pid)}
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].split(":")[1], 16) != port:
                continue
            client = int(f[2].split(":")[1], 16)
            if client in wanted and f[9] in by_inode:
                found[client] = by_inode[f[9]]
        return set(found) == wanted

    wait_until(all_accepted, 5)
    return found


def clients_of(pid: int, port: int) -> int:
    """Established connections to local ``port`` that process ``pid`` holds (accepted)."""
    inodes = socket_inodes(pid)
    held: set[str] = set()  # by inode: a read of /proc/net/tcp while other sockets come
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:  # and go can list
        f = line.split()  # one twice
        if f[3] == "01" and int(f[1].split(":")[1], 16) == port and f[9] in inodes:
            held.add(f[9])
    return len(held)


@contextlib.contextmanager
def held(port: int, n: int) -> Iterator[list[str]]:
    """``n`` connections through vproxy, each answered (ident read), kept open."""
    conns: list[socket.socket] = []
    idents: list[str] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            conns.append(s)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(100)
                assert chunk, "closed before the backend spoke"
                data += chunk
            idents.append(data.decode().strip())
        yield idents
    finally:
        for s in conns:
            s.close()


def accepted_by(pids: list[int], port: int, n: int = 50) -> tuple[dict[int, int], list[str]]:
    """Hold ``n`` connections (each answered); how many each pid accepted, the idents."""
    with held(port, n) as idents:
        counts = {p: clients_of(p, port) for p in pids}
    assert sum(counts.values()) == n, counts
    return counts, idents


def redis(port: int, *words: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "-a", PASSWORD, "--no-auth-warning", *words],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.strip()


def add_two_server_lb(ctl: int, a: Backend, b: Backend, checks: str) -> int:
    """Through redis-cli: group g (health ``checks``) of servers a and b, upstream u,
    tcp-lb lb on a free port; that port."""
    for line in (
        f"add server-group g {checks} method wrr",
        f"add server a to server-group g address 127.0.0.1:{a.port} weight 10",
        f"add server b to server-group g address 127.0.0.1:{b.port} weight 10",
        "add upstream u",
        "add server-group g to upstream u weight 10",
        "add tcp-lb lb address 127.0.0.1:0 upstream u",
    ):
        assert redis(ctl, *line.split()) == "OK", line
    detail = redis(ctl, "list-detail", "tcp-lb")
    m = re.search(r"127\.0\.0\.1:(\d+)", detail)
    assert m, detail
    port = int(m.group(1))
    assert port != 0
    return port


def start_two_server_lb(
    tmp_path: Path, backend_loop: LoopThread, workers: str, checks: str
) -> tuple[VproxyProcess, int, Backend, Backend]:
    """Backends a and b (each says its name), a vproxy with ``workers`` and a
    resp-controller (its port is ``vproxy.port``), and through it
    :func:`add_two_server_lb`: (vproxy, the tcp-lb's port, a, b)."""
    a = Backend(backend_loop, id_handler("a"))
    b = Backend(backend_loop, id_handler("b"))
    vp = start_full(tmp_path, "resp-controller", "127.0.0.1:0", PASSWORD, "workers", workers)
    try:
        return vp, add_two_server_lb(vp.port, a, b, checks), a, b
    except BaseException:
        vp.stop()
        raise


def start_full(tmp_path: Path, *words: str) -> VproxyProcess:
    return VproxyProcess(
        "noLoadLast",
        "noSave",
        "noStdIOController",
        *words,
        env={"HOME": str(tmp_path)},
    )


def read_until(vp: VproxyProcess, pattern: str, timeout: float = 15) -> re.Match[bytes]:
    assert vp.proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = vp.proc.stdout.readline()
        assert line, "vproxy closed its output"
        m = re.search(pattern.encode(), line)
        if m:
            return m
    raise AssertionError(f"{pattern!r} not printed")


SIMPLE_BAD = ["simple", "bind", "0", "backend", "1.2.3.4:5"]


def test_workers_word_is_checked() -> None:
    for bad in ("0", "65", "x"):
        out = subprocess.run(
            [sys.executable, "-m", "vproxy", *SIMPLE_BAD, "workers", bad],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
        )
        assert out.returncode == 2
        assert "workers" in out.stderr


def test_simple_workers_share_the_port_and_a_killed_worker_comes_back(
    backend_loop: LoopThread,
) -> None:
    a = Backend(backend_loop, id_handler("a"))
    b = Backend(backend_loop, id_handler("b"))
    backends = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
    words = ["simple", "bind", "0", "address", "127.0.0.1", "backend", backends, "workers", "2"]
    with vproxy_process(*words) as vp:
        (worker,) = children(vp.pid)
        pids = [vp.pid, worker]
        assert {read_ident(("127.0.0.1", vp.port)) for _ in range(100)} == {"a", "b"}
        gained, idents = accepted_by(pids, vp.port)
        assert set(idents) == {"a", "b"}
        assert all(g >= 2 for g in gained.values()), gained  # both processes accept

        # kill -9 the worker under load: the master keeps serving
        ok_after_kill = 0
        failures = 0
        killed = threading.Event()
        stop = threading.Event()

        def load() -> None:
            nonlocal ok_after_kill, failures
            while not stop.is_set():
                try:
                    read_ident(("127.0.0.1", vp.port), timeout=2)
                    if killed.is_set():
                        ok_after_kill += 1
                except OSError:
                    failures += 1

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.3)
            os.kill(worker, signal.SIGKILL)
            killed.set()
            wait_until(lambda: ok_after_kill >= 50, 10)
            wait_until(lambda: children(vp.pid) not in ([], [worker]), 15)
        finally:
            stop.set()
            t.join(10)
        (new_worker,) = children(vp.pid)
        assert new_worker != worker
        assert not alive(worker)

        def new_worker_serves() -> bool:
            gained, _ = accepted_by([vp.pid, new_worker], vp.port, 30)
            return gained[new_worker] >= 2

        wait_until(new_worker_serves, 20, 0.2)
        gained, idents = accepted_by([vp.pid, new_worker], vp.port)
        assert all(g >= 2 for g in gained.values()), gained
        assert set(idents) == {"a", "b"}
    assert "worker 1 restarted" in vp.stderr_text
    assert "was killed by signal 9" in vp.stderr_text
    # what happened to the connections queued for it, as the kernel is set
    said = "connections queued for it, if any, were reset" in vp.stderr_text
    assert said is (requests_migrate() is False and not migration_program_loads())
    for pid in (vp.pid, worker, new_worker):
        assert not alive(pid)


def stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (state T)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(s == "T" for s in states)


def migration_program_loads() -> bool:
    """Whether a process here can load the SO_REUSEPORT migration program."""
    with contextlib.closing(bind_listener("127.0.0.1", 0, reuse_port=True)) as s:
        return reuseport.attach(s)


@pytest.mark.skipif(os.geteuid() != 0, reason="the migration program needs CAP_BPF")
@pytest.mark.parametrize("program", [True, False], ids=["program", "turned-off"])
def test_connections_queued_for_a_dying_worker_are_served_by_the_others(
    backend_loop: LoopThread, program: bool
) -> None:
    """A worker that cannot accept (stopped) while 60 clients connect, then killed:
    the connections queued for it are handed to the master (the SO_REUSEPORT
    migration program), whatever net.ipv4.tcp_migrate_req says; none is reset.
    With the program turned off (and the sysctl at 0) those are reset."""
    if not program and requests_migrate() is not False:
        pytest.skip("net.ipv4.tcp_migrate_req migrates them here anyway")
    a = Backend(backend_loop, id_handler("a"))
    words = ["simple", "bind", "0", "address", "127.0.0.1", "backend", f"127.0.0.1:{a.port}"]
    env = {} if program else {"VPROXY_REUSEPORT_MIGRATE": "0"}
    with vproxy_process(*words, "workers", "2", env=env) as vp:
        (worker,) = children(vp.pid)
        wait_until(lambda: accepted_by([vp.pid, worker], vp.port)[0][worker] >= 2, 10)
        os.kill(worker, signal.SIGSTOP)
        wait_until(lambda: stopped(worker), 5)  # every thread: none accepts any more
        clients = [socket.create_connection(("127.0.0.1", vp.port), timeout=10) for _ in range(60)]
        try:
            time.sleep(1)  # the master answers its share; the stopped worker's wait
            queued = len([c for c in clients if not select.select([c], [], [], 0)[0]])
            assert queued >= 5, queued  # the kernel's hash gave the worker some
            os.kill(worker, signal.SIGKILL)
            idents = []
            for c in clients:
                try:
                    idents.append(c.recv(10))
                except ConnectionResetError:
                    idents.append(b"reset")
            if program:
                assert idents == [b"a\n"] * 60, (queued, Counter(idents))
            else:
                assert idents.count(b"reset") == queued, (queued, Counter(idents))
        finally:
            for c in clients:
                c.close()
        # the master saw the death (its warning is read once it stopped)
        wait_until(lambda: children(vp.pid) not in ([], [worker]), 15)
    said = "connections queued for it, if any, were reset" in vp.stderr_text
    assert said is not program


def test_commands_replicate_to_every_worker(tmp_path: Path, backend_loop: LoopThread) -> None:
    vp, port, a, _b = start_two_server_lb(
        tmp_path, backend_loop, "2", "timeout 500 period 200 up 1 down 2"
    )
    try:
        ctl = vp.port
        (worker,) = children(vp.pid)
        pids = [vp.pid, worker]

        def both_backends_in_both() -> bool:
            gained, idents = accepted_by(pids, port)
            return set(idents) == {"a", "b"} and all(g >= 2 for g in gained.values())

        wait_until(both_backends_in_both, 10, 0.2)

        # drain b: in every process
        assert redis(ctl, "update", "server", "b", "in", "server-group", "g", "weight", "0") == "OK"
        gained, idents = accepted_by(pids, port, 60)
        assert all(g >= 2 for g in gained.values()), gained
        assert set(idents) == {"a"}

        # refused commands change nothing, here or in the worker
        config = redis(ctl, "list", "config")
        taken = f"127.0.0.1:{a.port}"  # a backend's port: bound without SO_REUSEPORT
        assert "cannot listen" in redis(
            ctl, "add", "tcp-lb", "lb2", "address", taken, "upstream", "u"
        )
        assert "not found" in redis(ctl, "add", "server-group", "nope", "to", "upstream", "u")
        # SO_REUSEPORT would let a second listener share lb's port: refused as with one process
        mine = f"127.0.0.1:{port}"
        assert "cannot listen" in redis(
            ctl, "add", "tcp-lb", "lb4", "address", mine, "upstream", "u"
        )
        assert redis(ctl, "list", "config") == config
        assert children(vp.pid) == [worker]  # not restarted: it never saw them

        # the counters add up over both processes
        def accepted() -> int:
            where = ["in", "server-sock", f"127.0.0.1:{port}", "in", "tcp-lb", "lb"]
            return int(redis(ctl, "list", "accepted-conn-count", *where))

        before = accepted()
        gained, idents = accepted_by(pids, port, 60)
        assert set(idents) == {"a"}
        assert all(g >= 2 for g in gained.values()), gained
        assert accepted() - before == 60
    finally:
        vp.stop()
    assert "restarting" not in vp.stderr_text
    assert not alive(worker)


def test_metrics_sum_the_bytes_of_every_worker(tmp_path: Path, backend_loop: LoopThread) -> None:
    echo = Backend(backend_loop, echo_handler)
    conf = tmp_path / "start.conf"
    conf.write_text(
        "add server-group g timeout 500 period 200 up 1 down 2 method wrr\n"
        f"add server e to server-group g address 127.0.0.1:{echo.port} weight 10\n"
        "add upstream u\n"
        "add server-group g to upstream u weight 10\n"
        "add tcp-lb lb address 127.0.0.1:0 upstream u\n"
    )
    vp = start_full(tmp_path, "load", str(conf), "http-controller", "127.0.0.1:0", "workers", "2")
    try:
        port = vp.port  # the tcp-lb from the file, printed first
        http = int(read_until(vp, r"http-controller listening on 127\.0\.0\.1:(\d+)").group(1))
        (worker,) = children(vp.pid)
        pids = [vp.pid, worker]
        sizes = [1000 * i + 7 for i in range(1, 41)]
        conns = []
        for size in sizes:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            conns.append(s)
            s.sendall(b"x" * size)
            got = 0
            while got < size:
                chunk = s.recv(65536)
                assert chunk
                got += len(chunk)
            assert got == size
        gained = {p: clients_of(p, port) for p in pids}
        for s in conns:
            s.close()
        assert all(g >= 2 for g in gained.values()), gained  # both carried some

        def scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
                text = r.read().decode()
            out = {}
            for name in ("bytes_in", "bytes_out", "accepted_connections"):
                m = re.search(rf'^vproxy_listener_{name}_total{{[^}}]*listener="lb"[^}}]*}} (\S+)$',
                              text, re.M)  # fmt: skip
                assert m, name
                out[name] = float(m.group(1))
            m = re.search(r'^vproxy_server_bytes_in_total{[^}]*server="e"[^}]*} (\S+)$', text, re.M)
            assert m
            out["server_bytes_in"] = float(m.group(1))
            return out

        want = {
            "bytes_in": sum(sizes),
            "bytes_out": sum(sizes),
            "accepted_connections": len(sizes),
            "server_bytes_in": sum(sizes),
        }
        wait_until(lambda: scrape() == want, 10, 0.2)
    finally:
        vp.stop()
    assert not alive(worker)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_outlives_the_master(backend_loop: LoopThread, sig: signal.Signals) -> None:
    a = Backend(backend_loop, id_handler("a"))
    words = ["simple", "bind", "0", "address", "127.0.0.1", "backend", f"127.0.0.1:{a.port}"]
    with vproxy_process(*words, "workers", "3") as vp:
        workers = children(vp.pid)
        assert len(workers) == 2
        assert read_ident(("127.0.0.1", vp.port)) == "a"
        with held(vp.port, 20):
            os.kill(vp.pid, sig)
            vp.proc.wait(15)
        if sig is signal.SIGTERM:
            assert vp.proc.returncode == 0
        wait_until(lambda: not any(alive(p) for p in workers), 10)


def test_only_the_master_checks_health_and_every_worker_follows(
    tmp_path: Path, backend_loop: LoopThread
) -> None:
    """One process checks (the check traffic of one), the workers take its UP/DOWN
    edges, and a restarted worker gets the current flags with the configuration."""
    vp, port, a, b = start_two_server_lb(
        tmp_path, backend_loop, "3", "timeout 500 period 100 up 1 down 1"
    )
    try:
        ctl = vp.port
        workers = children(vp.pid)
        assert len(workers) == 2
        pids = [vp.pid, *workers]

        def served(want: set[str], pids: list[int]) -> bool:
            """Every process in ``pids`` accepted some of 60 connections, and the
            backends that answered them are ``want``."""
            try:
                gained, idents = accepted_by(pids, port, 60)
            except (AssertionError, OSError):  # a connection closed unanswered
                return False
            return set(idents) == want and all(g >= 2 for g in gained.values())

        wait_until(lambda: served({"a", "b"}, pids), 10, 0.2)

        # the check traffic of one process: a check per 100 ms, not one per process
        before = a.connections
        time.sleep(3.0)
        checks = a.connections - before
        assert 15 <= checks <= 45, checks  # 30 expected; three processes would make 90

        # b goes down: the master's DOWN edge reaches every process
        b.stop()
        wait_until(lambda: served({"a"}, pids), 10, 0.2)

        # a worker killed now comes back with a UP and b DOWN at once: the replay
        # carries the flags, as it has no check of its own to learn them
        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: len(children(vp.pid)) == 2 and workers[0] not in children(vp.pid), 15)
        new_pids = [vp.pid, *children(vp.pid)]
        wait_until(lambda: served({"a"}, new_pids), 15, 0.2)

        # b comes back: UP everywhere, the restarted worker included
        b.start()
        wait_until(lambda: served({"a", "b"}, new_pids), 10, 0.2)

        # a removed and added again while its port is closed: DOWN in every process
        a.stop()
        assert redis(ctl, "remove", "server", "a", "from", "server-group", "g") == "OK"
        line = f"add server a to server-group g address 127.0.0.1:{a.port} weight 10"
        assert redis(ctl, *line.split()) == "OK"
        time.sleep(0.5)  # five check periods
        assert served({"b"}, new_pids)
    finally:
        vp.stop()
    assert re.search(r"worker \d restarted", vp.stderr_text)
    assert "did not apply" not in vp.stderr_text  # no edge was refused by a worker
    for pid in (vp.pid, *workers):
        assert not alive(pid)


def try_hold(port: int, attempts: int) -> list[socket.socket]:
    """``attempts`` connections one after another; those answered, kept open (the
    others were closed by a listener at its limit)."""
    kept = []
    for _ in range(attempts):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        if data:
            kept.append(s)
        else:
            s.close()
    return kept


def test_max_connections_holds_over_every_process(tmp_path: Path, backend_loop: LoopThread) -> None:
    """Each process adds the others' live sessions (shared memory) before admitting,
    so a limit of 10 is 10 over the processes, not 10 in each."""
    vp, port, _a, _b = start_two_server_lb(
        tmp_path, backend_loop, "2", "timeout 500 period 200 up 1 down 2"
    )
    held_socks: list[socket.socket] = []
    try:
        ctl = vp.port
        (worker,) = children(vp.pid)
        wait_until(lambda: set(accepted_by([vp.pid, worker], port, 20)[1]) == {"a", "b"}, 10)
        where = ["tcp-lb", "lb", "max-connections"]
        assert redis(ctl, "update", *where, "10") == "OK"

        # 40 attempts, one at a time (so no two admissions race): the hash of the
        # ports sends about half to each process, and 10 are served in all
        held_socks += try_hold(port, 40)
        assert len(held_socks) == 10

        # sessions that end are seen by the other process within a publication
        for s in held_socks[:4]:
            s.close()
        del held_socks[:4]
        time.sleep(0.5)  # five publications
        held_socks += try_hold(port, 30)
        assert len(held_socks) == 10

        # a higher limit, replicated, holds over both as well
        assert redis(ctl, "update", *where, "15") == "OK"
        held_socks += try_hold(port, 30)
        assert len(held_socks) == 15

        # a listener removed and another added: its row starts empty
        for s in held_socks:
            s.close()
        held_socks.clear()
        assert redis(ctl, "remove", "tcp-lb", "lb") == "OK"
        line = f"add tcp-lb lb2 address 127.0.0.1:{port} upstream u max-connections 6"
        assert redis(ctl, *line.split()) == "OK"
        held_socks += try_hold(port, 30)
        assert len(held_socks) == 6
    finally:
        for s in held_socks:
            s.close()
        vp.stop()
    assert "did not apply" not in vp.stderr_text
    assert not alive(worker)


def test_controllers_never_share_a_port(tmp_path: Path) -> None:
    """Only the master runs controllers, and they bind without ``SO_REUSEPORT``: a
    second one on the first one's address fails at start, as with one process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    out = subprocess.run(
        [sys.executable, "-m", "vproxy", "noLoadLast", "noSave", "noStdIOController",
         "resp-controller", addr, PASSWORD, "http-controller", addr, "workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path),
             "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on {addr}: Address already in use" in out.stderr


def test_sessions_of_every_process_are_listed_and_closed(
    tmp_path: Path, backend_loop: LoopThread
) -> None:
    """``list``/``list-detail`` of sessions and connections show every process's, and
    ``force-remove`` closes one wherever it runs."""
    vp, port, _a, _b = start_two_server_lb(
        tmp_path, backend_loop, "2", "timeout 500 period 200 up 1 down 2"
    )
    try:
        ctl = vp.port
        (worker,) = children(vp.pid)
        wait_until(lambda: set(accepted_by([vp.pid, worker], port, 20)[1]) == {"a", "b"}, 10)
        where = ["in", "tcp-lb", "lb"]
        source = ["from", "tcp-lb", "lb"]
        wait_until(lambda: redis(ctl, "list", "session", *where) == "", 5)
        socks = try_hold(port, 20)
        assert len(socks) == 20
        try:
            gained = {p: clients_of(p, port) for p in (vp.pid, worker)}
            assert all(g >= 2 for g in gained.values()), gained  # both hold some
            names = redis(ctl, "list", "session", *where).splitlines()
            assert len(names) == 20
            by_port = {}
            for s in socks:
                mine = f"127.0.0.1:{s.getsockname()[1]}/"
                (name,) = [n for n in names if n.startswith(mine)]
                by_port[s.getsockname()[1]] = name
            details = redis(ctl, "list-detail", "session", *where).splitlines()
            assert sorted(d.split(" ->", 1)[0] for d in details) == sorted(names)
            assert len(redis(ctl, "list", "connection", *where).splitlines()) == 40
            one = by_port[socks[0].getsockname()[1]]

            # each closed by name, wherever it runs; the client sees its end
            for s in socks:
                name = by_port[s.getsockname()[1]]
                assert redis(ctl, "force-remove", "session", name, *source) == "OK"
                s.settimeout(5)
                try:
                    assert s.recv(100) == b""
                except ConnectionResetError:
                    pass
            wait_until(lambda: redis(ctl, "list", "session", *where) == "", 5)
            assert "not found" in redis(ctl, "force-remove", "session", one, *source)
        finally:
            for s in socks:
                s.close()
    finally:
        vp.stop()
    assert "did not" not in vp.stderr_text
    assert not alive(worker)


def scrape(http: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed: sample name -> label set -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def validate_status(st: Any) -> None:
    """``/api/v1/status`` as the OpenAPI document describes it."""
    schema = openapi_document(bearer=False)["components"]["schemas"]["Status"]
    assert isinstance(schema, dict)
    jsonschema.validate(st, schema)


def by_worker(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(labels)["worker"]: v for labels, v in samples.items()}


def status(http: int) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/status", timeout=5) as r:
        return json.loads(r.read())


def test_sessions_of_every_process_are_summed_and_each_process_is_shown(
    tmp_path: Path, backend_loop: LoopThread
) -> None:
    """With 20 connections held over both processes, the event-loop gauges,
    ``list-detail event-loop`` and the dashboard's status count all 20; the
    ``vproxy_worker_*`` families show each process's share, and a worker killed
    is counted as restarted and is up again once replaced."""
    a = Backend(backend_loop, id_handler("a"))
    b = Backend(backend_loop, id_handler("b"))
    vp = start_full(tmp_path, "resp-controller", "127.0.0.1:0", PASSWORD,
                    "http-controller", "127.0.0.1:0", "workers", "2")  # fmt: skip
    try:
        ctl = vp.port
        http = int(read_until(vp, r"http-controller listening on 127\.0\.0\.1:(\d+)").group(1))
        port = add_two_server_lb(ctl, a, b, "timeout 500 period 200 up 1 down 2")
        (worker,) = children(vp.pid)
        wait_until(lambda: set(accepted_by([vp.pid, worker], port, 20)[1]) == {"a", "b"}, 10)

        def counted(n: int, pids: list[int]) -> None:
            """Every figure counts the ``n`` sessions held, each process its own."""
            held_by = {str(i): clients_of(p, port) for i, p in enumerate(pids)}
            assert sum(held_by.values()) == n
            m = scrape(http)
            assert sum(m["vproxy_event_loop_sessions"].values()) == n
            assert by_worker(m["vproxy_worker_sessions"]) == held_by
            assert by_worker(m["vproxy_worker_up"]) == {"0": 1, "1": 1}
            (active,) = m["vproxy_listener_active_sessions"].values()
            assert active == n
            # how the kernel spread the connections: each process's own count, at
            # least what it holds now, and together the listener's count
            accepted = by_worker(m["vproxy_worker_accepted_total"])
            assert all(accepted[k] >= held_by[k] > 0 for k in held_by), (accepted, held_by)
            (total,) = m["vproxy_listener_accepted_connections_total"].values()
            if pids[1] == worker:  # (a killed worker's count left its slot with it)
                assert sum(accepted.values()) == total
            st = status(http)
            validate_status(st)
            assert st["sessions_total"] == n
            procs = {str(p["worker"]): p for p in st["processes"]}
            assert {k: p["sessions"] for k, p in procs.items()} == held_by
            assert all(p["up"] and p["accepted"] >= held_by[k] for k, p in procs.items()), procs
            (lb,) = st["listeners"]
            assert lb["sessions"] == n
            assert sum(el["sessions"] for el in st["event_loops"]) == n
            detail = redis(ctl, "list-detail", "event-loop", "in", "event-loop-group",
                           "(worker-elg)")  # fmt: skip
            assert re.fullmatch(rf"\(worker-el\) -> sessions {n}", detail), detail

        socks = try_hold(port, 20)
        try:
            assert len(socks) == 20
            held_by = [clients_of(p, port) for p in (vp.pid, worker)]
            assert all(h > 0 for h in held_by), held_by  # both processes hold some
            counted(20, [vp.pid, worker])
        finally:
            for s in socks:
                s.close()
        wait_until(lambda: sum(scrape(http)["vproxy_event_loop_sessions"].values()) == 0, 5)
        assert by_worker(scrape(http)["vproxy_worker_restarts_total"]) == {"0": 0, "1": 0}

        # a worker killed: counted as restarted, up again once replaced
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: by_worker(scrape(http)["vproxy_worker_restarts_total"])["1"] == 1, 15)
        wait_until(lambda: by_worker(scrape(http)["vproxy_worker_up"])["1"] == 1, 15, 0.1)
        (new_worker,) = children(vp.pid)
        assert new_worker != worker
        wait_until(lambda: set(accepted_by([vp.pid, new_worker], port, 20)[1]) == {"a", "b"}, 10)
        socks = try_hold(port, 20)
        try:
            assert len(socks) == 20
            counted(20, [vp.pid, new_worker])
        finally:
            for s in socks:
                s.close()
        assert by_worker(scrape(http)["vproxy_worker_restarts_total"]) == {"0": 0, "1": 1}
    finally:
        vp.stop()
    for pid in (vp.pid, worker, new_worker):
        assert not alive(pid)


def l7_exchange(pids: list[int], port: int, request: bytes) -> tuple[int, bytes]:
    """One request on a new connection to ``port``: the pid that accepted it, and
    everything vproxy answered until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        (pid,) = holders(pids, port, [s]).values()
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return pid, out


def l7_counts(http: int) -> dict[str, float]:
    """The L7 counters of listener web: responses by code class, and ``refused``."""
    m = scrape(http)
    out = {dict(k)["code"]: v for k, v in m["vproxy_listener_http_responses_total"].items()}
    (out["refused"],) = m["vproxy_listener_http_refused_requests_total"].values()
    return out


def test_l7_counters_sum_over_every_worker(tmp_path: Path, backend_loop: LoopThread) -> None:
    """60 requests on new connections over both processes: the response counter of
    the http/1.x listener grows by exactly 60 in class 2xx; 30 malformed requests
    (two Host fields) by exactly 30 refused requests and 30 responses in 4xx."""
    a = Backend(backend_loop, http_handler("a"))
    conf = tmp_path / "start.conf"
    conf.write_text(
        "add server-group g timeout 500 period 200 up 1 down 2 method wrr\n"
        f"add server a to server-group g address 127.0.0.1:{a.port} weight 10\n"
        "add upstream u\n"
        "add server-group g to upstream u weight 10\n"
        "add tcp-lb web address 127.0.0.1:0 upstream u protocol http/1.x\n"
    )
    vp = start_full(tmp_path, "load", str(conf), "http-controller", "127.0.0.1:0", "workers", "2")
    good = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    try:
        port = vp.port
        http = int(read_until(vp, r"http-controller listening on 127\.0\.0\.1:(\d+)").group(1))
        (worker,) = children(vp.pid)
        pids = [vp.pid, worker]

        def both_serve() -> bool:  # the server is UP in both (the worker follows the edge)
            answers = [l7_exchange(pids, port, good) for _ in range(10)]
            return {p for p, _ in answers} == set(pids) and all(
                out.startswith(b"HTTP/1.1 200 ") for _, out in answers
            )

        wait_until(both_serve, 15, 0.1)
        before = l7_counts(http)

        served: Counter[int] = Counter()
        for _ in range(60):
            pid, out = l7_exchange(pids, port, good)
            assert out.startswith(b"HTTP/1.1 200 "), out
            assert out.endswith(b"a"), out
            served[pid] += 1
        assert all(served[p] >= 5 for p in pids), served  # both processes answered some
        want = {**before, "2xx": before["2xx"] + 60}
        wait_until(lambda: l7_counts(http) == want, 5, 0.1)

        refused: Counter[int] = Counter()
        for _ in range(30):
            pid, out = l7_exchange(pids, port, bad)
            assert out.startswith(b"HTTP/1.1 400 "), out
            refused[pid] += 1
        assert all(refused[p] >= 2 for p in pids), refused
        want = {**want, "4xx": want["4xx"] + 30, "refused": want["refused"] + 30}
        wait_until(lambda: l7_counts(http) == want, 5, 0.1)

        # a worker killed: what it counted stays in the sums
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: by_worker(scrape(http)["vproxy_worker_restarts_total"])["1"] == 1, 15)
        assert l7_counts(http) == want
        wait_until(lambda: by_worker(scrape(http)["vproxy_worker_up"])["1"] == 1, 15, 0.1)
        assert l7_counts(http) == want
    finally:
        vp.stop()
    assert not alive(worker)


def start_with_console(tmp_path: Path, console: list[str], *words: str) -> VproxyProcess:
    """A vproxy (``words``) whose console reads the lines ``console`` from a file."""
    path = tmp_path / "console.txt"
    path.write_text("".join(line + "\n" for line in console))
    fd = os.open(path, os.O_RDONLY)
    try:
        return VproxyProcess(
            "noLoadLast", "noSave", *words,
            env={"HOME": str(tmp_path)},
            preexec=lambda: os.dup2(fd, 0),  # stdin: a regular file, read to its end
        )  # fmt: skip
    finally:
        os.close(fd)


def test_scrapes_at_once_each_see_their_own_sums(tmp_path: Path, backend_loop: LoopThread) -> None:
    """Four http-controllers on four control loops, eight threads scraping /metrics
    at once: with connections held over both processes, every scrape shows the exact
    count in each summed gauge and each process's own share; then, while the
    worker's connections are closed one by one, every scrape still agrees with
    itself (the listener gauge is the sum of the per-process sessions)."""
    a = Backend(backend_loop, id_handler("a"))
    conf = tmp_path / "start.conf"
    conf.write_text(
        "add event-loop c1 to event-loop-group (control-elg)\n"
        "add event-loop c2 to event-loop-group (control-elg)\n"
        "add event-loop c3 to event-loop-group (control-elg)\n"
        "add server-group g timeout 500 period 200 up 1 down 2 method wrr\n"
        f"add server a to server-group g address 127.0.0.1:{a.port} weight 10\n"
        "add upstream u\n"
        "add server-group g to upstream u weight 10\n"
        "add tcp-lb lb address 127.0.0.1:0 upstream u\n"
        # a scrape that takes a while (many samples): scrapes overlap more
        "add server-group many timeout 500 period 3600000 up 1 down 1 method wrr\n"
        + "".join(
            f"add server m{i} to server-group many address 127.0.0.2:{10000 + i} weight 1\n"
            for i in range(100)
        )
    )
    console = [f"System: add http-controller h{i} address 127.0.0.1:0" for i in (1, 2, 3)]
    vp = start_with_console(tmp_path, console, "load", str(conf),
                            "http-controller", "127.0.0.1:0", "workers", "2")  # fmt: skip
    socks: list[socket.socket] = []
    try:
        port = vp.port
        first = int(read_until(vp, r"http-controller listening on 127\.0\.0\.1:(\d+)").group(1))

        def controllers() -> list[int]:
            found = status(first)["controllers"]
            return [int(c["address"].rsplit(":", 1)[1]) for c in found]

        wait_until(lambda: len(controllers()) == 4, 10, 0.1)  # the console added three
        https = controllers()
        (worker,) = children(vp.pid)
        pids = [vp.pid, worker]
        wait_until(lambda: set(accepted_by(pids, port, 20)[1]) == {"a"}, 10)
        socks = try_hold(port, 120)
        assert len(socks) == 120
        owner = holders(pids, port, socks)
        held_by = {"0": 0, "1": 0}
        for pid in owner.values():
            held_by[str(pids.index(pid))] += 1
        assert all(n >= 10 for n in held_by.values()), held_by

        def scrapers(check: Any) -> list[str]:
            """8 threads, 20 scrapes each, two threads per controller: what failed."""
            errors: list[str] = []

            def run(http: int) -> None:
                for _ in range(20):
                    try:
                        check(scrape(http))
                    except Exception as exc:  # reported below, with the others
                        errors.append(f"{type(exc).__name__}: {exc}")

            threads = [threading.Thread(target=run, args=(h,)) for h in https * 2]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return errors

        def exact(m: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> None:
            assert sum(m["vproxy_event_loop_sessions"].values()) == 120
            (active,) = m["vproxy_listener_active_sessions"].values()
            assert active == 120
            assert by_worker(m["vproxy_worker_sessions"]) == held_by
            assert by_worker(m["vproxy_worker_up"]) == {"0": 1, "1": 1}
            assert by_worker(m["vproxy_worker_restarts_total"]) == {"0": 0, "1": 0}

        def settled() -> bool:  # every session counted (accepted, relayed) everywhere
            try:
                exact(scrape(https[0]))
            except AssertionError:
                return False
            return True

        wait_until(settled, 5, 0.1)
        assert scrapers(exact) == []

        # the worker's figures change between two scrapes: each still adds up
        def consistent(m: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> None:
            (active,) = m["vproxy_listener_active_sessions"].values()
            mine = by_worker(m["vproxy_worker_sessions"])
            assert mine["0"] == held_by["0"], mine  # the master's sessions do not change
            assert active == mine["0"] + mine["1"], (active, mine)

        stop = threading.Event()

        def close_the_workers() -> None:
            for s in socks:
                if owner[s.getsockname()[1]] == worker and not stop.wait(0.01):
                    s.close()

        closer = threading.Thread(target=close_the_workers)
        closer.start()
        try:
            errors = scrapers(consistent)
        finally:
            stop.set()
            closer.join(10)
        assert errors == []
    finally:
        for s in socks:
            s.close()
        vp.stop()
    assert "gave no statistics" not in vp.stderr_text
    assert not alive(worker)
