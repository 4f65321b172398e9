"""The http/1.x mode over real sockets: curl, wrk, aiohttp and raw clients (SPEC §2).

Three aiohttp backends answer with their own id. Checked: per-request balancing on
one keep-alive connection, forwarding headers, pipelining order, a 50 MiB chunked
upload streamed with bounded memory (proxy in a subprocess), WebSocket through the
upgrade, Expect: 100-continue, the smuggling table (400 and the backend sees
nothing), broken and truncated backend responses (502 / cut, never padded), 503 with
no backend, the head deadline (408), Host routing, TLS with ALPN, the ``http`` mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from helpers import Backend, LoopThread, rss_kib, vproxy_process, wait_until
from http_backend import HttpBackend
from tls_certs import CertAuthority
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.component.cert_key import CertKey
from vproxy.net.event_loop import EventLoopGroup

FAST_HC = HealthCheckConfig(timeout=500, period=100, up=1, down=2)


class Rig:
    """A tcp-lb in an L7 mode over some backends, on its own loops."""

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        protocol: str = "http/1.x",
        weights: list[int] | None = None,
        **options: object,
    ) -> None:
        self.aelg = EventLoopGroup("acceptor", loops=1)
        self.welg = EventLoopGroup("worker", loops=1)
        self.group = ServerGroup("sg", health_check=FAST_HC, event_loop_group=self.welg)
        for i, addr in enumerate(addresses):
            self.group.add(f"s{i}", addr, weight=weights[i] if weights else 10)
        self.ups = Upstream("ups")
        self.ups.add(self.group, 10)
        self.lb = TcpLB(
            "lb",
            ("127.0.0.1", 0),
            self.ups,
            acceptor_elg=self.aelg,
            worker_elg=self.welg,
            protocol=protocol,
            **options,  # type: ignore[arg-type]
        ).start()
        wait_until(lambda: len(self.group.healthy_servers) == len(addresses), 10)

    @property
    def port(self) -> int:
        return self.lb.address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.lb.stop(close_sessions=True)
        wait_until(lambda: not self.lb.sessions, 5)
        mode = self.lb.mode
        mode = getattr(mode, "http1", mode)
        wait_until(lambda: getattr(mode, "idle", 0) == 0, 5)
        self.group.close()
        self.aelg.close()
        self.welg.close()


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


@pytest.fixture
def backends(lt: LoopThread) -> Iterator[list[HttpBackend]]:
    bs = [HttpBackend(lt, f"b{i}") for i in range(3)]
    yield bs
    for b in bs:
        b.stop()


@pytest.fixture
def rig(backends: list[HttpBackend]) -> Iterator[Rig]:
    r = Rig([b.address for b in backends])
    yield r
    r.close()


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
    )


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, half-close, read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


# -- balancing and headers -----------------------------------------------------------


def test_one_keepalive_connection_spreads_requests_in_wrr_proportion(
    backends: list[HttpBackend],
) -> None:
    r = Rig([b.address for b in backends], weights=[10, 20, 30])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
        seen = []
        ports = set()
        for _ in range(60):
            conn.request("GET", "/x")
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200
            assert resp.getheader("X-Backend") == body
            seen.append(body)
            ports.add(conn.sock.getsockname()[1])
        conn.close()
        assert len(ports) == 1  # one client connection throughout
        assert Counter(seen) == {"b0": 10, "b1": 20, "b2": 30}
        assert len(r.lb.sessions) <= 1
    finally:
        r.close()


def test_curl_gets_forwarding_headers_and_reuses_its_connection(rig: Rig) -> None:
    out = curl(
        "-v", "-H", "X-Forwarded-For: 198.51.100.7", "-D", "-",
        "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
        f"{rig.url}/a", f"{rig.url}/b", f"{rig.url}/c",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    heads = [h for h in out.stdout.split("\n\n") if h.strip()]
    assert len(heads) == 3
    ids = [re.search(r"X-Backend: (\w+)", h).group(1) for h in heads]  # type: ignore[union-attr]
    assert sorted(ids) == ["b0", "b1", "b2"]
    for h in heads:
        assert "X-Seen-For: 198.51.100.7, 127.0.0.1" in h
        port = re.search(r"X-Seen-Port: (\d+)", h)
        assert port is not None
        assert 0 < int(port.group(1)) < 65536
    assert out.stderr.count("Re-using existing connection") == 2


def test_wrk_through_http1_mode_counts_every_response(rig: Rig) -> None:
    out = subprocess.run(
        ["wrk", "-t1", "-c8", "-d2s", f"{rig.url}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) requests in", out.stdout)
    assert m is not None, out.stdout
    total = int(m.group(1))
    assert total > 100
    assert "Non-2xx" not in out.stdout, out.stdout
    assert "Socket errors" not in out.stdout, out.stdout
    # Every response is counted as a 2xx (wrk may have some in flight when it stops).
    wait_until(lambda: not rig.lb.sessions, 10)
    assert total <= rig.lb.http_responses[2] <= total + 8


def test_pipelined_requests_are_answered_in_order_by_different_backends(rig: Rig) -> None:
    reqs = b"".join(
        b"GET /p%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (i, b"Connection: close\r\n" if i == 5 else b"")
        for i in range(6)
    )
    out = raw_exchange(rig.port, reqs)
    bodies = re.findall(rb"X-Backend: (\w+)", out)
    assert len(bodies) == 6
    assert out.count(b"HTTP/1.1 200 OK") == 6
    assert Counter(bodies) == {b"b0": 2, b"b1": 2, b"b2": 2}
    assert out.rstrip().endswith(bodies[-1])


def test_http10_request_is_answered_and_closed(rig: Rig) -> None:
    out = raw_exchange(rig.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") or out.startswith(b"HTTP/1.0 200")
    assert re.search(rb"\r\n\r\nb\d$", out)


def test_host_header_is_the_upstream_hint(lt: LoopThread, backends: list[HttpBackend]) -> None:
    welg = EventLoopGroup("w", loops=1)
    aelg = EventLoopGroup("a", loops=1)
    ga = ServerGroup("a.example.com", health_check=FAST_HC, event_loop_group=welg)
    ga.add("a0", backends[0].address, weight=10)
    gb = ServerGroup("b.example.com", health_check=FAST_HC, event_loop_group=welg)
    gb.add("b1", backends[1].address, weight=10)
    ups = Upstream("u")
    ups.add(ga, 10)
    ups.add(gb, 10)
    lb = TcpLB(
        "lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg, protocol="http/1.x"
    ).start()
    try:
        wait_until(lambda: ga.healthy_servers and gb.healthy_servers)
        conn = http.client.HTTPConnection("127.0.0.1", lb.address[1], timeout=10)
        for host, want in [("a.example.com", "b0"), ("b.example.com:8080", "b1")] * 3:
            conn.request("GET", "/", headers={"Host": host})
            assert conn.getresponse().read().decode() == want
        conn.close()
    finally:
        lb.stop(close_sessions=True)
        wait_until(lambda: lb.mode.idle == 0, 5)  # type: ignore[union-attr]
        for g in (ga, gb):
            g.close()
        aelg.close()
        welg.close()


# -- bodies ---------------------------------------------------------------------------


def test_chunked_upload_of_50_mib_streams_with_bounded_memory(
    lt: LoopThread, tmp_path: Path
) -> None:
    backend = HttpBackend(lt, "up")
    conf = tmp_path / "l7.conf"
    conf.write_text(
        "add upstream u\n"
        "add server-group g timeout 500 period 200 up 1 down 2\n"
        f"add server s0 to server-group g address 127.0.0.1:{backend.port} weight 10\n"
        "add server-group g to upstream u weight 10\n"
        "add tcp-lb web address 127.0.0.1:0 upstream u protocol http/1.x\n"
    )
    payload = tmp_path / "payload"
    block = os.urandom(1 << 20)
    with payload.open("wb") as f:
        for _ in range(50):
            f.write(block)
    want = hashlib.sha256(block * 50).hexdigest()
    try:
        with vproxy_process("load", str(conf), "noLoadLast", "noSave", "noStdIOController") as proc:
            time.sleep(0.6)  # the first health check
            before = rss_kib(proc.pid)
            peak = before
            stop = threading.Event()

            def watch() -> None:
                nonlocal peak
                while not stop.wait(0.05):
                    with contextlib.suppress(Exception):
                        peak = max(peak, rss_kib(proc.pid))

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                out = curl(
                    "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{payload}",
                    f"http://127.0.0.1:{proc.port}/upload", timeout=60,
                )  # fmt: skip
            finally:
                stop.set()
                watcher.join()
            assert out.returncode == 0, out.stderr
            got = json.loads(out.stdout)
            assert got == {"sha256": want, "length": 50 << 20, "backend": "up"}
            assert backend.requests[-1][2].get("Transfer-Encoding") == "chunked"
            # Streamed: the proxy never held more than a few windows of the body.
            assert peak - before < 16 * 1024, (before, peak)
    finally:
        backend.stop()


def test_expect_100_continue_upload(rig: Rig, tmp_path: Path) -> None:
    payload = tmp_path / "p"
    payload.write_bytes(os.urandom(300_000))
    out = curl(
        "-v", "-H", "Expect: 100-continue", "--data-binary", f"@{payload}", f"{rig.url}/upload"
    )
    assert out.returncode == 0, out.stderr
    assert "HTTP/1.1 100 Continue" in out.stderr
    got = json.loads(out.stdout)
    assert got["sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()


def test_slow_reader_of_a_large_response_is_served_with_bounded_buffers(rig: Rig) -> None:
    n = 32 << 20
    with socket.create_connection(("127.0.0.1", rig.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        got = 0
        time.sleep(1.0)  # the proxy must stop reading the backend meanwhile
        sessions = list(rig.lb.sessions)
        assert len(sessions) == 1
        # Bytes read from the backend so far stay near the windows (not the 32 MiB).
        assert sessions[0].back.bytes_in < 8 << 20
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        got = len(head) - head.index(b"\r\n\r\n") - 4
        while got < n:
            chunk = s.recv(1 << 20)
            assert chunk
            got += len(chunk)
        assert got == n


# -- upgrade --------------------------------------------------------------------------


def test_websocket_echo_through_the_upgrade(rig: Rig) -> None:
    async def run() -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{rig.url}/ws") as ws,
        ):
            out = []
            for i in range(5):
                await ws.send_str(f"m{i}")
                msg = await ws.receive(timeout=5)
                out.append(msg.data)
            await ws.send_bytes(b"\x00" * 100_000)
            msg = await ws.receive(timeout=5)
            assert msg.data == b"\x00" * 100_000
            return out

    got = asyncio.run(run())
    ident = got[0].split(":")[0]
    assert got == [f"{ident}:m{i}" for i in range(5)]


# -- refusals -------------------------------------------------------------------------

CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLING = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
    (CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    (CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    (CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
]  # fmt: skip


def test_smuggling_shapes_get_a_status_and_never_reach_the_backend(lt: LoopThread) -> None:
    seen: list[bytes] = []

    async def record(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            seen.append(data)

    backend = Backend(lt, record)
    r = Rig([backend.address])
    try:
        for raw, status in SMUGGLING:
            out = raw_exchange(r.port, raw)
            assert out.startswith(b"HTTP/1.1 %d " % status), (raw[:80], out[:80])
            assert b"Connection: close" in out
        # A good request on a fresh connection does reach it (the check is live).
        assert not seen, seen
        assert r.lb.l7_refused == len(SMUGGLING)
    finally:
        r.close()
        backend.stop()


def test_refusal_after_good_pipelined_requests_answers_them_first(rig: Rig) -> None:
    out = raw_exchange(
        rig.port,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    statuses = re.findall(rb"HTTP/1.1 (\d{3})", out)
    assert statuses == [b"200", b"200", b"400"]


def _raw_backend(lt: LoopThread, answer: bytes, close: bool = True) -> Backend:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(answer)
        await w.drain()
        if close:
            return
        await r.read()

    return Backend(lt, handler)


def test_truncated_backend_body_closes_the_client_after_those_bytes(lt: LoopThread) -> None:
    backend = _raw_backend(lt, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    r = Rig([backend.address])
    try:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        assert time.monotonic() - t0 < 3
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert body == b"0123456789"  # never padded
    finally:
        r.close()
        backend.stop()


def test_broken_backend_framing_gives_502_and_no_reuse(lt: LoopThread) -> None:
    backend = _raw_backend(
        lt,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        close=False,
    )
    r = Rig([backend.address])
    try:
        for _ in range(2):
            out = raw_exchange(r.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 502 ")
        # each request opened its own backend connection (+ health checks)
        assert backend.connections >= 2
        wait_until(lambda: r.group.servers[0].active == 0, 5)
    finally:
        r.close()
        backend.stop()


def test_no_healthy_backend_gives_503(lt: LoopThread) -> None:
    backend = HttpBackend(lt, "x")
    r = Rig([backend.address])
    try:
        backend.stop()
        wait_until(lambda: not r.group.healthy_servers, 5)
        out = raw_exchange(r.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503 ")
    finally:
        r.close()


def test_slow_head_gets_408_at_the_deadline_while_others_are_served(
    backends: list[HttpBackend],
) -> None:
    r = Rig([b.address for b in backends])
    try:
        r.lb.l7_limits = type(r.lb.l7_limits)(head_timeout=800)
        slow = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=5)
        for _ in range(5):
            slow.sendall(b"X: y\r\n")  # trickling bytes do not extend the deadline
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            time.sleep(0.1)
        out = b""
        while chunk := slow.recv(65536):
            out += chunk
        elapsed = time.monotonic() - t0
        assert out.startswith(b"HTTP/1.1 408 ")
        assert 0.5 < elapsed < 2.0
        slow.close()
        conn.close()
    finally:
        r.close()


# -- TLS and the http mode ------------------------------------------------------------


def test_tls_with_alpn_http11(backends: list[HttpBackend], tmp_path: Path) -> None:
    ca = CertAuthority(tmp_path)
    leaf = ca.issue("web", ["web.test"])
    ck = CertKey("ck", leaf.chain, str(leaf.key))
    r = Rig([b.address for b in backends], cert_keys=[ck])
    try:
        out = curl(
            "-v", "--cacert", str(ca.root_path), "--resolve", f"web.test:{r.port}:127.0.0.1",
            f"https://web.test:{r.port}/", f"https://web.test:{r.port}/",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "ALPN: server accepted http/1.1" in out.stderr
        assert re.fullmatch(r"b\db\d", out.stdout)
    finally:
        r.close()


def test_http_mode_serves_http11(backends: list[HttpBackend]) -> None:
    r = Rig([b.address for b in backends], protocol="http")
    try:
        out = curl(f"{r.url}/")
        assert out.returncode == 0, out
        assert re.fullmatch(r"b\d", out.stdout), out
    finally:
        r.close()


def test_bad_chunk_after_the_head_was_forwarded_drops_that_backend_connection(
    lt: LoopThread,
) -> None:
    seen: list[bytes] = []
    closed = threading.Event()

    async def record(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got = False
        while data := await r.read(65536):
            seen.append(data)
            got = True
        if got:  # not a health check's connection
            closed.set()

    backend = Backend(lt, record)
    r = Rig([backend.address])
    try:
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            s.sendall(CHUNKED + b"5\r\nhello\r\n")
            wait_until(lambda: b"hello" in b"".join(seen), 5)
            s.sendall(b"zz\r\n")  # not a chunk size
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        assert out.startswith(b"HTTP/1.1 400 ")
        assert closed.wait(5)  # the half-sent request's backend connection is gone
        assert b"zz" not in b"".join(seen)
    finally:
        r.close()
        backend.stop()


def test_slow_body_gets_408_while_a_slow_but_real_upload_goes_on(
    backends: list[HttpBackend],
) -> None:
    r = Rig([b.address for b in backends])
    try:
        r.lb.l7_limits = type(r.lb.l7_limits)(head_timeout=800)
        rudy = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        rudy.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        real = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        real.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 40000\r\n\r\n")
        t0 = time.monotonic()
        got = b""
        sent = 0
        rudy.setblocking(False)
        while time.monotonic() - t0 < 2.5:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                rudy.send(b"x")  # 5 bytes/s: far under the minimum rate
            with contextlib.suppress(BlockingIOError):
                got += rudy.recv(65536)
            real.sendall(b"y" * 2000)  # 10 kB/s: slow, but well over it
            sent += 2000
            time.sleep(0.2)
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert sent < 40000
        real.sendall(b"y" * (40000 - sent))
        resp = b""
        while b"}" not in resp:
            chunk = real.recv(65536)
            assert chunk
            resp += chunk
        assert resp.startswith(b"HTTP/1.1 200 ")
        assert b'"length": 40000' in resp
        rudy.close()
        real.close()
    finally:
        r.close()


@pytest.mark.parametrize("attack", ["-H", "-B"], ids=["slowloris", "slow-body"])
def test_slowhttptest_attack_is_cut_at_the_deadline_while_others_are_served(
    backends: list[HttpBackend], tmp_path: Path, attack: str
) -> None:
    r = Rig([b.address for b in backends])
    try:
        r.lb.l7_limits = type(r.lb.l7_limits)(head_timeout=1000)
        failures: list[str] = []
        latencies: list[float] = []
        stop = threading.Event()

        def normal_client() -> None:
            while not stop.wait(0.1):
                t0 = time.monotonic()
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=5)
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    resp.read()
                    conn.close()
                    if resp.status != 200:
                        failures.append(str(resp.status))
                except OSError as exc:
                    failures.append(repr(exc))
                latencies.append(time.monotonic() - t0)

        client = threading.Thread(target=normal_client)
        client.start()
        try:
            out = subprocess.run(
                ["slowhttptest", attack, "-c", "200", "-r", "200", "-i", "1", "-l", "6",
                 "-x", "10", "-s", "100000", "-p", "3", "-g", "-o", str(tmp_path / "slow"),
                 "-u", f"http://127.0.0.1:{r.port}/upload"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            stop.set()
            client.join()
        assert out.returncode == 0, out.stderr
        assert not failures, failures
        assert len(latencies) >= 5
        assert max(latencies) < 1.0, max(latencies)
        # The attack's connections were answered 408 at the deadline, not left to hang.
        assert "No open connections left" in out.stdout  # all were closed by the proxy
        assert r.lb.http_responses[4] >= 195, r.lb.http_responses  # 408 each
        rows = [x.split(",") for x in (tmp_path / "slow.csv").read_text().splitlines()]
        assert rows[0][:2] == ["Seconds", "Closed"]
        assert max(int(row[1]) for row in rows[1:]) >= 150, rows
        assert all(int(row[0]) <= 3 for row in rows[1:]), rows  # cut at ~1 s, not at -l 6
        wait_until(lambda: len(r.lb.sessions) == 0, 5)
    finally:
        r.close()


def test_refused_connect_fails_over_to_the_next_server_and_is_counted(
    backends: list[HttpBackend],
) -> None:
    # A server that refuses while its health check has not noticed yet (long period).
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_addr = dead.getsockname()
    dead.listen()
    slow_hc = HealthCheckConfig(timeout=500, period=60_000, up=1, down=2)
    welg = EventLoopGroup("w", loops=1)
    aelg = EventLoopGroup("a", loops=1)
    group = ServerGroup("g", health_check=slow_hc, event_loop_group=welg)
    group.add("dead", dead_addr, weight=10)
    group.add("live", backends[0].address, weight=10)
    ups = Upstream("u")
    ups.add(group, 10)
    lb = TcpLB(
        "lb", ("127.0.0.1", 0), ups, acceptor_elg=aelg, worker_elg=welg, protocol="http/1.x"
    ).start()
    try:
        wait_until(lambda: len(group.healthy_servers) == 2)
        dead.close()  # now refuses; still UP for a minute
        conn = http.client.HTTPConnection("127.0.0.1", lb.address[1], timeout=5)
        t0 = time.monotonic()
        for _ in range(10):
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.read() == b"b0"
        assert time.monotonic() - t0 < 3
        conn.close()
        dead_server = next(s for s in group.servers if s.name == "dead")
        assert dead_server.connect_failures >= 4  # every other request tried it first
        assert dead_server.healthy  # a passive failure, not a health verdict
    finally:
        lb.stop(close_sessions=True)
        wait_until(lambda: lb.mode.idle == 0, 5)  # type: ignore[union-attr]
        group.close()
        aelg.close()
        welg.close()


def test_usual_backend_response_goes_out_as_received_but_for_connection(
    lt: LoopThread,
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\n"
        b"Server: nginx/1.24.0\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
        b"Content-Type: text/html\r\n"
        b"Content-Length: 6\r\n"
        b"Connection: keep-alive\r\n"
        b"\r\n"
        b"hello\n"
    )

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await r.readuntil(b"\r\n\r\n")
                w.write(answer)
                await w.drain()

    backend = Backend(lt, handler)
    r = Rig([backend.address])
    try:
        kept = answer.replace(b"Connection: keep-alive\r\n", b"")
        with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
            for _ in range(3):
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                out = b""
                while len(out) < len(kept):
                    chunk = s.recv(65536)
                    assert chunk
                    out += chunk
                assert out == kept
        closing = raw_exchange(r.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert closing == kept.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    finally:
        r.close()
        backend.stop()
