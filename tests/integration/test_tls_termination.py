"""TLS termination on a tcp-lb: per-SNI certificates, curl, deadlines for junk."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import Backend, LoopThread, wait_until
from tls_certs import CertAuthority
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.component.cert_key import CertKey
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]


async def answer_and_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """One HTTP/1.0-style answer, then close (s_client -ign_eof waits for our close)."""
    await r.readuntil(b"\r\n\r\n")
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nbehind-tls")
    await w.drain()


@pytest.fixture
def tls_lb(
    loop_kind: str, tmp_path: Path, backend_loop: LoopThread, elg_factory: ElgFactory
) -> Iterator[tuple[TcpLB, CertAuthority]]:
    ca = CertAuthority(tmp_path / "pki")
    cks = []
    for stem, names in (("a", ["a.test"]), ("b", ["b.test", "*.wild.test"])):
        leaf = ca.issue(stem, names)
        cks.append(
            CertKey(f"ck-{stem}", [str(leaf.cert), str(ca.intermediate_path)], str(leaf.key))
        )
    backend = Backend(backend_loop, answer_and_close)
    welg = elg_factory("w", 1)
    g = ServerGroup("g", health_check=HealthCheckConfig(300, 100, 1, 2), event_loop_group=welg)
    g.add("s", backend.address)
    u = Upstream("u")
    u.add(g)
    lb = TcpLB(
        "tls",
        ("127.0.0.1", 0),
        u,
        acceptor_elg=elg_factory("a", 1),
        worker_elg=welg,
        cert_keys=cks,
        handshake_timeout=700,
    ).start()
    wait_until(lambda: bool(g.healthy_servers))
    yield lb, ca
    lb.stop(close_sessions=True)


def s_client(port: int, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("openssl")
    assert exe
    return subprocess.run(
        [exe, "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args],
        input=stdin,
        capture_output=True,
        timeout=20,
    )


def test_each_sni_gets_its_certificate(tls_lb: tuple[TcpLB, CertAuthority]) -> None:
    lb, ca = tls_lb
    port = lb.address[1]
    req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for sni, cn in (("a.test", "a.test"), ("b.test", "b.test"), ("x.wild.test", "b.test")):
        out = s_client(port, "-servername", sni, "-CAfile", str(ca.root_path), stdin=req)
        text = out.stdout.decode(errors="replace")
        assert f"CN = {cn}" in text.split("Certificate chain", 1)[1].split("\n")[1], text[:2000]
        assert "Verify return code: 0 (ok)" in text
        assert text.rstrip().endswith("behind-tls") or "behind-tls" in text


def test_curl_through_tls_termination(tls_lb: tuple[TcpLB, CertAuthority]) -> None:
    lb, ca = tls_lb
    port = lb.address[1]
    curl = shutil.which("curl")
    assert curl
    out = subprocess.run(
        [
            curl,
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            str(ca.root_path),
            "--resolve",
            f"a.test:{port}:127.0.0.1",
            f"https://a.test:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (out.returncode, out.stdout) == (0, "behind-tls"), out.stderr


def _closed_within(port: int, payload: bytes, limit: float) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        if payload:
            s.sendall(payload)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        took = time.monotonic() - t0
    assert took < limit, f"{payload[:20]!r} kept open {took:.2f}s"
    return took


def test_junk_closed_within_deadline_while_others_served(
    tls_lb: tuple[TcpLB, CertAuthority],
) -> None:
    lb, ca = tls_lb
    port = lb.address[1]
    deadline = 0.7
    results: list[int] = []

    def good_clients() -> None:
        for _ in range(3):
            out = s_client(
                port,
                "-servername",
                "a.test",
                "-CAfile",
                str(ca.root_path),
                stdin=b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            results.append(int(b"behind-tls" in out.stdout))

    t = threading.Thread(target=good_clients)
    t.start()
    _closed_within(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", deadline + 1)  # plaintext
    _closed_within(port, os.urandom(300), deadline + 1)  # random bytes
    _closed_within(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", deadline + 1)  # cut hello
    took = _closed_within(port, b"", deadline + 1)  # silent: closed at the deadline
    assert took >= deadline - 0.2
    _closed_within(port, b"\x16\x03\x03\xff\xff", deadline + 1)  # 64 KB record header, stalled
    t.join(60)
    assert results == [1, 1, 1]
    wait_until(lambda: not lb.sessions, 5)


def test_old_tls_versions_refused(tls_lb: tuple[TcpLB, CertAuthority]) -> None:
    lb, _ = tls_lb
    for flag in ("-tls1", "-tls1_1"):
        out = s_client(
            lb.address[1], flag, "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "a.test"
        )
        text = out.stdout.decode(errors="replace")
        assert out.returncode != 0
        assert "Cipher is (NONE)" in text or "no protocols available" in out.stderr.decode()
