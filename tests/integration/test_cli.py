"""The vproxy command line as a user runs it: simple, gen, hello, start-up errors."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, Backend, LoopThread, id_handler, read_ident, vproxy_process, wait_until
from vproxy.cli import build_simple, parse_simple
from vproxy.control.application import Application
from vproxy.control.executor import Executor

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def run_vproxy(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )


def test_simple_serves_traffic_over_two_backends(backend_loop: LoopThread) -> None:
    a = Backend(backend_loop, id_handler("a"))
    b = Backend(backend_loop, id_handler("b"))
    backends = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
    with vproxy_process("simple", "bind", "0", "address", "127.0.0.1", "backend", backends) as vp:
        seen: set[str] = set()

        def both() -> bool:
            seen.add(read_ident(("127.0.0.1", vp.port)))
            return seen >= {"a", "b"}

        wait_until(both, 15, 0.1)


def test_simple_gen_loads_to_the_same_state() -> None:
    words = ["bind", "18080", "backend", "127.0.0.1:8080,127.0.0.1:8081", "timeout", "5000"]
    out = run_vproxy("simple", *words, "gen")
    assert out.returncode == 0, out.stderr
    app_b = Application.create_default()
    try:
        # Port 18080 may be taken on a shared machine: serve the same config on port 0.
        gen = out.stdout.replace("0.0.0.0:18080", "127.0.0.1:0")
        ex_b = Executor(app_b)
        ex_b.load_lines(enumerate(gen.splitlines(), 1), "gen")
        args = parse_simple([*words, "address", "127.0.0.1"])
        args.port = 0
        app_a, ex_a = build_simple(args)
        try:
            assert _no_port(ex_a.config_lines()) == _no_port(ex_b.config_lines())
            assert len(ex_a.config_lines()) == 6
        finally:
            app_a.close()
    finally:
        app_b.close()


def _no_port(lines: list[str]) -> list[str]:
    """The tcp-lb's port is picked by the OS (port 0) on each side: compare the rest."""
    return [re.sub(r"(tcp-lb lb0 address 127\.0\.0\.1):\d+", r"\1:N", ln) for ln in lines]


def test_hello_once_shows_both_backends() -> None:
    out = run_vproxy("hello", "once")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: 2 backends answered" in out.stdout
    assert "backend-0" in out.stdout
    assert "backend-1" in out.stdout


def test_startup_errors_are_one_clear_line() -> None:
    out = run_vproxy("simple", "bind", "0", "backend", "nonsense")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("vproxy: backend: bad address 'nonsense'")
    out = run_vproxy("frobnicate")
    assert out.returncode == 2
    assert "unexpected word 'frobnicate'" in out.stderr
    with vproxy_process(
        "simple", "bind", "0", "address", "127.0.0.1", "backend", "127.0.0.1:1"
    ) as vp:
        out = run_vproxy(
            "simple", "bind", str(vp.port), "address", "127.0.0.1", "backend", "127.0.0.1:1"
        )
        assert out.returncode == 1
        assert f"cannot listen on 127.0.0.1:{vp.port}" in out.stderr
        assert "Traceback" not in out.stderr


def test_missing_load_file_refuses_to_start(tmp_path: object) -> None:
    out = run_vproxy("load", "/nonexistent/vproxy.conf", "noSave", "noStdIOController")
    assert out.returncode == 1
    assert "/nonexistent/vproxy.conf" in out.stderr
    assert "Traceback" not in out.stderr


def test_more_startup_errors_are_one_line_with_exit_1(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    conf = tmp_path / "bad-cert.conf"
    conf.write_text(f"add cert-key ck cert {tmp_path}/missing.pem key {tmp_path}/missing.key\n")
    try:
        cases = [
            (
                ["simple", "bind", str(port), "address", "127.0.0.1", "backend", "127.0.0.1:1"],
                f"vproxy: cannot listen on 127.0.0.1:{port}: Address already in use",
            ),
            (
                ["http-controller", f"127.0.0.1:{port}", "noLoadLast", "noSave"],
                f"vproxy: cannot listen on 127.0.0.1:{port}: Address already in use",
            ),
            (
                ["load", str(conf), "noSave", "noStdIOController"],
                f"vproxy: {conf}:1: cert-key ck: cannot read certificate file "
                f"{tmp_path}/missing.pem: No such file or directory (lines before it were applied)",
            ),
        ]
        for words, line in cases:
            out = run_vproxy(*words)
            assert out.returncode == 1, out
            assert out.stderr.strip() == line
    finally:
        taken.close()
