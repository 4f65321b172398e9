"""Access logs over loopback: a scripted set of sessions through a tcp-lb and a socks5
server, then every JSON line must carry exactly the expected fields (bytes, backend,
client port); plus reopening after rotation, the bounded queue, and the CLI words."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, Backend, LoopThread, echo_handler, id_handler, wait_until
from vproxy.app.access_log import AccessLog, format_entry
from vproxy.component.server_group import Server
from vproxy.control.application import Application
from vproxy.control.command import parse
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import OK

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIELDS = [
    "time",
    "listener_kind",
    "listener",
    "client",
    "backend",
    "backend_address",
    "target",
    "bytes_from_client",
    "bytes_from_server",
    "duration_ms",
    "reason",
]


class World:
    def __init__(self, lt: LoopThread, log_path: Path) -> None:
        # "b0" says its name then echoes: the server side sends 3 bytes more.
        self.b0 = Backend(lt, id_handler("b0"))
        self.outside = Backend(lt, echo_handler)  # in no upstream: socks5 non-backend
        self.app = Application.create_default()
        self.log = AccessLog(log_path)
        self.app.set_access_log(self.log)
        self.executor = Executor(self.app)
        for line in (
            "add server-group g0 timeout 500 period 200 up 1 down 2",
            f"add server b0 to server-group g0 address 127.0.0.1:{self.b0.port}",
            "add upstream u0",
            "add server-group g0 to upstream u0 weight 10",
            "add tcp-lb lb0 address 127.0.0.1:0 upstream u0",
            "add socks5-server s5 address 127.0.0.1:0 upstream u0 allow-non-backend",
            # A group whose only server never comes UP: sessions end without a backend.
            "add server-group dead timeout 200 period 200 up 1 down 1",
            "add server d0 to server-group dead address 127.0.0.1:1",
            "add upstream nowhere",
            "add server-group dead to upstream nowhere weight 10",
            "add tcp-lb lb-dead address 127.0.0.1:0 upstream nowhere",
        ):
            reply = self.executor.execute(parse(line), Origin.STDIO)
            assert reply == OK, (line, reply)
        wait_until(lambda: len(self.app.server_groups["g0"].healthy_servers) == 1)

    def address(self, name: str) -> tuple[str, int]:
        listener = self.app.tcp_lbs.get(name) or self.app.socks5_servers[name]
        return listener.address


@pytest.fixture
def world(loop_kind: str, backend_loop: LoopThread, tmp_path: Path) -> Iterator[World]:
    w = World(backend_loop, tmp_path / "access.log")
    try:
        yield w
    finally:
        w.app.close()


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_lines(path: Path, n: int) -> list[dict[str, Any]]:
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= n, timeout=10)
    lines = read_lines(path)
    assert len(lines) == n, lines
    return lines


def via_lb(address: tuple[str, int], payload: bytes) -> int:
    """One session: read the ident line, send, half-close, read to EOF; its port."""
    with socket.create_connection(address, timeout=10) as s:
        port = s.getsockname()[1]
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    assert bytes(got) == b"b0\n" + payload
    return int(port)


def via_socks5(address: tuple[str, int], target: tuple[str, int], payload: bytes) -> int:
    """A socks5 CONNECT (no auth) to ``target``, then an echo of ``payload``; its port."""
    with socket.create_connection(address, timeout=10) as s:
        port = s.getsockname()[1]
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + struct.pack("!H", target[1]))
        reply = b""
        while len(reply) < 10:
            reply += s.recv(10 - len(reply))
        assert reply[:2] == b"\x05\x00", reply
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    assert bytes(got) == payload
    return int(port)


def check_common(line: dict[str, Any], started: float) -> None:
    assert list(line) == FIELDS
    assert ISO_UTC.match(line["time"]), line["time"]
    end = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
    assert started - 1 <= end <= time.time() + 1
    assert isinstance(line["duration_ms"], float | int)
    assert 0 <= line["duration_ms"] < 10_000


def test_lines_match_the_scripted_sessions(world: World, tmp_path: Path) -> None:
    started = time.time()
    lb = world.address("lb0")
    b0 = f"127.0.0.1:{world.b0.port}"
    outside = ("127.0.0.1", world.outside.port)
    expected: dict[int, dict[str, Any]] = {}

    for size in (0, 10, 100_000):
        port = via_lb(lb, b"z" * size)
        expected[port] = {
            "listener_kind": "tcp-lb",
            "listener": "lb0",
            "backend": "b0",
            "backend_address": b0,
            "target": None,
            "bytes_from_client": size,
            "bytes_from_server": size + 3,
            "reason": "closed",
        }
    port = via_socks5(world.address("s5"), outside, b"q" * 777)
    expected[port] = {
        "listener_kind": "socks5-server",
        "listener": "s5",
        "backend": None,
        "backend_address": None,
        "target": f"127.0.0.1:{world.outside.port}",
        "bytes_from_client": 777,
        "bytes_from_server": 777,
        "reason": "closed",
    }
    # A socks5 CONNECT to a server of the upstream is logged with its backend.
    with socket.create_connection(world.address("s5"), timeout=10) as s:
        port = s.getsockname()[1]
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(
            b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", world.b0.port)
        )
        assert s.recv(10)[:2] == b"\x05\x00"
        s.shutdown(socket.SHUT_WR)
        assert s.recv(3) == b"b0\n"
        while s.recv(100):
            pass
    expected[port] = {
        "listener_kind": "socks5-server",
        "listener": "s5",
        "backend": "b0",
        "backend_address": b0,
        "target": b0,
        "bytes_from_client": 0,
        "bytes_from_server": 3,
        "reason": "closed",
    }
    # No healthy server: accepted, then closed without a backend.
    with socket.create_connection(world.address("lb-dead"), timeout=10) as s:
        port = s.getsockname()[1]
        assert s.recv(1) == b""
    expected[port] = {
        "listener_kind": "tcp-lb",
        "listener": "lb-dead",
        "backend": None,
        "backend_address": None,
        "target": None,
        "bytes_from_client": 0,
        "bytes_from_server": 0,
        "reason": "error",
    }

    lines = wait_lines(tmp_path / "access.log", len(expected))
    by_port = {int(line["client"].rsplit(":", 1)[1]): line for line in lines}
    assert set(by_port) == set(expected)
    for port, want in expected.items():
        line = by_port[port]
        check_common(line, started)
        assert line["client"] == f"127.0.0.1:{port}"
        got = {k: v for k, v in line.items() if k not in ("time", "client", "duration_ms")}
        assert got == want, port
    wait_until(lambda: world.log.written == len(expected))  # (counted after the flush)
    assert world.log.dropped == 0


def test_reopen_after_rotation(world: World, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    via_lb(world.address("lb0"), b"one")
    wait_lines(path, 1)
    rotated = tmp_path / "access.log.1"
    path.rename(rotated)
    world.log.reopen()
    wait_until(path.exists)  # reopened at once, without waiting for traffic
    port = via_lb(world.address("lb0"), b"two!")
    [line] = wait_lines(path, 1)
    assert line["client"] == f"127.0.0.1:{port}"
    assert line["bytes_from_client"] == 4
    assert len(read_lines(rotated)) == 1


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "a.log", capacity=4)
    log.close()  # the writer is gone: nothing drains the queue any more
    server = Server("s", "127.0.0.1", 9, 1, None)
    for i in range(10):
        log.session_ended("tcp-lb", "lb", ("127.0.0.1", 1000 + i), server, None, 1, 2, 0.5)
    assert log.pending == 4
    assert log.dropped == 6


def test_format_entry_ipv6_and_unknown_duration() -> None:
    server = Server("s", "::1", 8080, 1, None)
    line = json.loads(
        format_entry((0.0, "tcp-lb", "lb", ("::1", 5555, 0, 0), server, None, 1, 2, None))
    )
    assert line == {
        "time": "1970-01-01T00:00:00.000Z",
        "listener_kind": "tcp-lb",
        "listener": "lb",
        "client": "[::1]:5555",
        "backend": "s",
        "backend_address": "[::1]:8080",
        "target": None,
        "bytes_from_client": 1,
        "bytes_from_server": 2,
        "duration_ms": None,
        "reason": "closed",
    }


# ---------------------------------------------------------------- the command line

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_simple_accesslog_writes_a_line_per_session(
    backend_loop: LoopThread, tmp_path: Path
) -> None:
    b = Backend(backend_loop, id_handler("b0"))
    log_path = tmp_path / "simple.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vproxy", "simple", "bind", "0", "address", "127.0.0.1"),
            *("backend", f"127.0.0.1:{b.port}", "accesslog", str(log_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
        assert m, first
        assert f"access log (JSON lines) -> {log_path}" in proc.stdout.readline().decode()
        lb = ("127.0.0.1", int(m.group(1)))

        def served() -> bool:
            try:
                return via_lb(lb, b"hi") > 0
            except (OSError, AssertionError):
                return False

        # (until the backend's first health check, sessions end without a backend)
        wait_until(served, timeout=15, interval=0.1)

        def logged() -> list[dict[str, Any]]:
            text = log_path.read_text() if log_path.exists() else ""
            return [x for x in map(json.loads, text.splitlines()) if x["reason"] == "closed"]

        wait_until(logged, timeout=10)
        [line] = logged()
        assert line["bytes_from_client"] == 2
        assert line["bytes_from_server"] == 5
        assert line["backend"] == "backend0"
        assert line["backend_address"] == f"127.0.0.1:{b.port}"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


@pytest.mark.parametrize(
    "words",
    [
        ["simple", "bind", "0", "backend", "127.0.0.1:1", "accesslog"],
        ["accessLog"],
    ],
)
def test_accesslog_needs_a_value(words: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vproxy", *words],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"vproxy: {words[-1]} needs a file path, stdout or off"


def test_unwritable_access_log_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "no" / "such" / "dir" / "a.log"
    for words in (
        ["simple", "bind", "0", "backend", "127.0.0.1:1", "accesslog", str(bad)],
        ["accessLog", str(bad), "noLoadLast", "noSave", "noStdIOController"],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "vproxy", *words],
            capture_output=True,
            text=True,
            timeout=30,
            env=ENV,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 1, out
        assert out.stderr.strip() == (
            f"vproxy: cannot open access log {bad}: No such file or directory"
        )
