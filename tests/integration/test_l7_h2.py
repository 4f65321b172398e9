"""The ``h2`` mode of tcp-lb over real sockets: h2load, curl, raw frames, floods, memory.

Backends are tests/h2_backend.py (python-hyper h2 on plain asyncio), in their own
processes so that they do not share the proxy's GIL. The proxy runs in the test process,
except where its memory is measured (``vproxy simple ... protocol h2`` in a subprocess).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes, Settings

from h2_backend import ThreadBackend
from helpers import ROOT, rss_kib, vproxy_process, wait_until
from tls_certs import CertAuthority
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.app.l7.base import L7Limits
from vproxy.component.cert_key import CertKey
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BLOCK = b"\x82\x86\x84\x01\x06a.test"  # GET http / a.test, no dynamic-table insertion
ENHANCE_YOUR_CALM = 11


# -- backends and proxies ----------------------------------------------------------------


@dataclass
class BackendProc:
    ident: str
    proc: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture(scope="module")
def backends() -> Iterator[list[BackendProc]]:
    out: list[BackendProc] = []
    try:
        for i in range(3):
            p = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "h2_backend.py"), f"b{i}"],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert p.stdout is not None
            line = p.stdout.readline()
            out.append(BackendProc(f"b{i}", p, int(line.split()[1])))
        yield out
    finally:
        for b in out:
            b.proc.terminate()
            b.proc.wait(10)
            if b.proc.stdout is not None:
                b.proc.stdout.close()


def make_lb(
    elg_factory: ElgFactory,
    groups: dict[str, list[tuple[str, int]]],
    *,
    timeout: int = 60_000,
    cert_keys: list[CertKey] | None = None,
    limits: L7Limits | None = None,
) -> TcpLB:
    welg = elg_factory("w", 1)
    ups = Upstream("u")
    made = []
    for name, addrs in groups.items():
        # Checks run on the worker loop that h2load saturates: tolerate late answers.
        health = HealthCheckConfig(timeout=3000, period=300, up=1, down=5)
        g = ServerGroup(name, health_check=health, event_loop_group=welg)
        for i, a in enumerate(addrs):
            g.add(f"{name}-s{i}", a)
        ups.add(g)
        made.append(g)
    lb = TcpLB(
        "h2lb",
        ("127.0.0.1", 0),
        ups,
        acceptor_elg=elg_factory("a", 1),
        worker_elg=welg,
        protocol="h2",
        timeout=timeout,
        cert_keys=cert_keys or [],
    )
    if limits is not None:
        lb.l7_limits = limits
    lb.start()
    for g in made:
        if g.servers and any(_listening(s.address) for s in g.servers):
            wait_until(lambda g=g: bool(g.healthy_servers))
    return lb


def _listening(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def lb3(elg_factory: ElgFactory, backends: list[BackendProc]) -> Iterator[TcpLB]:
    lb = make_lb(elg_factory, {"g": [b.address for b in backends]})
    yield lb
    lb.stop(close_sessions=True)


def stats(b: BackendProc, which: int = 0) -> int:
    """Requests (``which=0``, counting this one) or resets (1) the backend received."""
    c = H2Client(b.port)
    try:
        r = c.get("/stats")
        return int(r.body.split()[which])
    finally:
        c.close()


# -- a small blocking h2 client ----------------------------------------------------------


@dataclass
class Result:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    length: int = 0
    sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    reset: int | None = None
    ended: bool = False

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    """Blocking h2 client on a real socket, with flow control (uploads and downloads)."""

    def __init__(
        self,
        port: int,
        *,
        sock: socket.socket | ssl.SSLSocket | None = None,
        window: int | None = None,
    ) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=20)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        if window:
            self.conn.local_settings = Settings(
                client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.conn.initiate_connection()
        if window:
            self.conn.increment_flow_control_window(window - 65535)
        self.results: dict[int, Result] = {}
        self.uploads: dict[int, memoryview] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def start(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        authority: str = "x.test",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *(extra or []),
        ]
        self.conn.send_headers(sid, fields, end_stream=body is None)
        self.results[sid] = Result()
        if body is not None:
            self.uploads[sid] = memoryview(body)
        self._upload()
        self.flush()
        return sid

    def _upload(self) -> None:
        for sid, rest in list(self.uploads.items()):
            while rest:
                n = min(
                    self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size,
                    len(rest),
                )
                if n <= 0:
                    break
                self.conn.send_data(sid, rest[:n].tobytes())
                rest = rest[n:]
            if rest:
                self.uploads[sid] = rest
            else:
                self.conn.end_stream(sid)
                del self.uploads[sid]

    def wait(self, sids: list[int], *, read_size: int = 65536, delay: float = 0.0) -> None:
        while not all(self.results[s].done for s in sids):
            if self.closed:
                raise ConnectionError("connection closed before the streams ended")
            self.pump(read_size)
            if delay:
                time.sleep(delay)

    def pump(self, read_size: int = 65536) -> None:
        data = self.sock.recv(read_size)
        if not data:
            self.closed = True
            return
        for ev in self.conn.receive_data(data):
            r = self.results.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, ResponseReceived) and r is not None:
                r.headers = dict(ev.headers)
                r.status = int(r.headers[b":status"])
            elif isinstance(ev, DataReceived) and r is not None:
                r.length += len(ev.data)
                r.sha.update(ev.data)
                if len(r.body) < 1 << 20:
                    r.body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, TrailersReceived) and r is not None:
                r.trailers = dict(ev.headers)
            elif isinstance(ev, StreamEnded) and r is not None:
                r.ended = True
            elif isinstance(ev, StreamReset) and r is not None:
                r.reset = int(ev.error_code)
            elif isinstance(ev, ConnectionTerminated):
                self.goaway = ev
            elif isinstance(ev, WindowUpdated):
                pass
        self._upload()
        self.flush()

    def get(self, path: str, **kw: object) -> Result:
        sid = self.start(path, **kw)  # type: ignore[arg-type]
        self.wait([sid])
        return self.results[sid]


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, sid) + payload


def read_until_goaway(sock: socket.socket, timeout: float = 10) -> tuple[int, int]:
    """Read frames until a GOAWAY: (last_stream_id, error_code)."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        while len(buf) >= 9:
            hi, lo, ftype, _, _ = struct.unpack_from(">HBBBL", buf)
            n = (hi << 8) | lo
            if len(buf) < 9 + n:
                break
            if ftype == 7:
                last, code = struct.unpack_from(">LL", buf, 9)
                return last & 0x7FFFFFFF, code
            buf = buf[9 + n :]
        data = sock.recv(65536)
        if not data:
            raise AssertionError("closed without GOAWAY")
        buf += data


def h2load(url: str, *args: str, timeout: float = 120) -> str:
    exe = shutil.which("h2load")
    assert exe, "h2load (nghttp2-client) is required"
    out = subprocess.run([exe, *args, url], capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


def h2load_counts(text: str) -> tuple[int, int, float]:
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", text)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text)
    assert m, text
    assert rps, text
    return int(m.group(1)), int(m.group(2)), float(rps.group(1))


# -- load and clients --------------------------------------------------------------------


@pytest.mark.slow
def test_h2load_20000_requests_over_three_backends(lb3: TcpLB, backends: list[BackendProc]) -> None:
    before = [stats(b) for b in backends]
    text = h2load(f"http://127.0.0.1:{lb3.address[1]}/", "-n", "20000", "-c", "10", "-m", "10")
    total, ok, rps = h2load_counts(text)
    assert (total, ok) == (20000, 20000), (lb3.proxy.failed_no_backend, text)
    shares = [stats(b) - n - 1 for b, n in zip(backends, before, strict=True)]
    assert sum(shares) == 20000, shares
    assert all(s > 20000 / 3 * 0.8 for s in shares), shares  # wrr over equal weights
    print(f"h2load through h2 mode: {rps} req/s; shares {shares}")


def test_curl_prior_knowledge_forwarding_headers_and_trailers(lb3: TcpLB) -> None:
    port = lb3.address[1]
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-H",
            "x-forwarded-for: 10.9.8.7",
            f"http://127.0.0.1:{port}/trailers",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert text.startswith("http/2 200")
    assert "x-seen-xff: 10.9.8.7, 127.0.0.1" in text
    port_seen = re.search(r"x-seen-client-port: (\d+)", text)
    assert port_seen
    assert 0 < int(port_seen.group(1)) < 65536
    assert re.search(r"x-trailer: b\d", text), text  # trailers passed through


def test_curl_over_tls_with_alpn_h2(
    tmp_path: Path, elg_factory: ElgFactory, backends: list[BackendProc]
) -> None:
    ca = CertAuthority(tmp_path / "pki")
    leaf = ca.issue("a", ["a.test"])
    ck = CertKey("ck", [str(leaf.cert), str(ca.intermediate_path)], str(leaf.key))
    lb = make_lb(elg_factory, {"g": [backends[0].address]}, cert_keys=[ck])
    try:
        port = lb.address[1]
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-i",
                "--max-time",
                "10",
                "--http2",
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
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("HTTP/2 200"), out.stdout
        assert out.stdout.endswith("b0")
        assert "x-seen-authority: a.test:" in out.stdout
    finally:
        lb.stop(close_sessions=True)


def test_authority_hint_picks_the_server_group(
    elg_factory: ElgFactory, backends: list[BackendProc]
) -> None:
    lb = make_lb(
        elg_factory,
        {"a.test": [backends[0].address], "b.test": [backends[1].address]},
    )
    try:
        c = H2Client(lb.address[1])
        for _ in range(5):
            assert c.get("/", authority="a.test:8080").body == b"b0"
            assert c.get("/", authority="www.b.test").body == b"b1"
        c.close()
    finally:
        lb.stop(close_sessions=True)


def test_no_healthy_backend_gets_503(elg_factory: ElgFactory) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    addr = dead.getsockname()
    dead.close()
    lb = make_lb(elg_factory, {"g": [addr]})
    try:
        c = H2Client(lb.address[1])
        r = c.get("/")
        assert r.status == 503
        r = c.get("/", method="POST", body=b"x" * 100_000)  # the body is refused too
        assert r.status == 503
        assert c.get("/").status == 503  # the connection goes on
        c.close()
    finally:
        lb.stop(close_sessions=True)


# -- resets, cuts, bodies, flow control ----------------------------------------------------


def test_backend_reset_and_cut_reach_only_their_stream(
    elg_factory: ElgFactory, backends: list[BackendProc]
) -> None:
    lb = make_lb(
        elg_factory,
        {"a.test": [backends[0].address], "b.test": [backends[1].address]},
    )
    try:
        c = H2Client(lb.address[1])
        slow = c.start("/slow/400", authority="b.test")
        reset = c.start("/reset", authority="b.test")
        cut = c.start("/cut", authority="a.test")
        c.wait([slow, reset, cut])
        assert c.results[reset].reset == 2  # INTERNAL_ERROR from the backend
        assert c.results[cut].status == 200  # headers had gone out: reset, not 502
        assert c.results[cut].reset is not None
        assert c.results[slow].status == 200
        assert c.results[slow].body == b"b1"
        # the client connection is fine, and a new backend connection replaces the cut one
        assert c.get("/", authority="a.test").body == b"b0"
        c.close()
    finally:
        lb.stop(close_sessions=True)


def test_client_reset_reaches_the_backend(lb3: TcpLB, backends: list[BackendProc]) -> None:
    before = sum(stats(b, 1) for b in backends)
    c = H2Client(lb3.address[1])
    sid = c.start("/slow/2000")
    time.sleep(0.3)
    c.conn.reset_stream(sid)
    c.flush()
    assert c.get("/").status == 200  # the connection goes on
    wait_until(lambda: sum(stats(b, 1) for b in backends) == before + 1, timeout=5)
    c.close()


def test_large_post_arrives_intact(lb3: TcpLB) -> None:
    body = hashlib.sha256(b"seed").digest() * (32 * 1024 * 1024 // 32)
    c = H2Client(lb3.address[1])
    r = c.get("/sha256", method="POST", body=body)
    assert r.status == 200
    assert r.body.decode() == f"{hashlib.sha256(body).hexdigest()} {len(body)}"
    echo = c.get("/echo", method="POST", body=body[: 4 * 1024 * 1024])
    assert echo.sha.hexdigest() == hashlib.sha256(body[: 4 * 1024 * 1024]).hexdigest()
    c.close()


# -- in a subprocess: floods and memory -----------------------------------------------------


@pytest.fixture
def proxy_proc(backends: list[BackendProc]) -> Iterator[int]:
    with vproxy_process(
        "simple",
        "bind",
        "0",
        "address",
        "127.0.0.1",
        "backend",
        ",".join(f"127.0.0.1:{b.port}" for b in backends),
        "protocol",
        "h2",
    ) as vp:

        def ready() -> bool:
            try:
                c = H2Client(vp.port)
                ok = c.get("/").status == 200
                c.close()
                return ok
            except (OSError, KeyError):
                return False

        wait_until(ready, timeout=15, interval=0.2)
        yield vp.port
        assert "Traceback" not in vp.stderr_text


def _pid_of(port: int) -> int:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    m = re.search(r"pid=(\d+)", out.stdout)
    assert m, out.stdout
    return int(m.group(1))


def test_rapid_reset_flood_gets_goaway_while_others_work(proxy_proc: int) -> None:
    port = proxy_proc
    pid = _pid_of(port)
    rss0 = rss_kib(pid)
    results: dict[str, str] = {}

    def normal() -> None:
        results["h2load"] = h2load(f"http://127.0.0.1:{port}/", "-n", "600", "-c", "2", "-m", "2")

    t = threading.Thread(target=normal)
    t.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(PREFACE + frame(4, 0, 0))
    sent = 0
    pairs = b"".join(
        frame(1, 0x5, 2 * i + 1, BLOCK) + frame(3, 0, 2 * i + 1, b"\x00\x00\x00\x08")
        for i in range(20_000)
    )
    step = len(pairs) // 200
    try:
        for i in range(0, len(pairs), step):
            sock.sendall(pairs[i : i + step])
            sent = i + step
    except OSError:
        pass  # closed by the proxy: what we want
    last, code = read_until_goaway(sock)
    sock.close()
    assert code == ENHANCE_YOUR_CALM
    assert last < 2 * 2000, last  # stopped well before the 20,000th stream
    t.join(60)
    total, ok, _ = h2load_counts(results["h2load"])
    assert (total, ok) == (600, 600), results["h2load"]
    assert rss_kib(pid) - rss0 < 30_000
    del sent


def test_continuation_flood_gets_goaway(proxy_proc: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_proc), timeout=10)
    data = PREFACE + frame(4, 0, 0) + frame(1, 0x1, 1, BLOCK[:3]) + frame(9, 0, 1) * 10_000
    try:
        sock.sendall(data)
    except OSError:
        pass
    _, code = read_until_goaway(sock)
    assert code == ENHANCE_YOUR_CALM
    sock.close()


def test_oversized_header_lists_are_refused(proxy_proc: int) -> None:
    # more fields than max_headers (100): 431 on that stream, the connection goes on
    c = H2Client(proxy_proc)
    many = [(f"x-f{i}".encode(), b"v") for i in range(150)]
    assert c.get("/", extra=many).status == 431
    assert c.get("/").status == 200
    # a header list over max_head_size (32 KiB): the connection is refused
    big = [(b"x-big", b"v" * 40_000)]
    sid = c.start("/", extra=big)
    with pytest.raises((ConnectionError, OSError)):
        c.wait([sid])
    assert c.goaway is not None
    assert c.goaway.error_code in (ENHANCE_YOUR_CALM, 9)  # ENHANCE_YOUR_CALM, COMPRESSION
    c.close()


def test_slow_reader_of_64_mib_keeps_proxy_memory_flat(proxy_proc: int) -> None:
    pid = _pid_of(proxy_proc)
    rss0 = rss_kib(pid)
    size = 64 * 1024 * 1024
    c = H2Client(proxy_proc, window=2**31 - 1)  # TCP, not h2 windows, slows it down
    sid = c.start(f"/bytes/{size}")
    peak = rss0
    n = 0
    while not c.results[sid].done:
        c.pump(16384)
        n += 1
        if n % 64 == 0:
            time.sleep(0.002)
            peak = max(peak, rss_kib(pid))
    r = c.results[sid]
    assert r.length == size
    c.close()
    assert peak - rss0 < 20_000, (rss0, peak)


def test_garbage_and_silence_get_goaway(proxy_proc: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_proc), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _, code = read_until_goaway(sock)
    assert code == 1  # PROTOCOL_ERROR
    sock.close()


def test_head_deadline_and_idle_timeout(
    elg_factory: ElgFactory, backends: list[BackendProc]
) -> None:
    lb = make_lb(
        elg_factory,
        {"g": [backends[0].address]},
        timeout=600,
        limits=L7Limits(head_timeout=300),
    )
    try:
        silent = socket.create_connection(("127.0.0.1", lb.address[1]), timeout=5)
        t0 = time.monotonic()
        read_until_goaway(silent)
        assert time.monotonic() - t0 < 2
        silent.close()
        c = H2Client(lb.address[1])
        assert c.get("/").status == 200
        t0 = time.monotonic()
        while not c.closed:
            c.pump()
        assert c.goaway is not None
        assert c.goaway.error_code == 0
        assert time.monotonic() - t0 < 3
        c.close()
        wait_until(lambda: not lb.l7_sessions, timeout=5)
    finally:
        lb.stop(close_sessions=True)


def test_backend_goaway_finishes_owed_streams_and_retries_refused_ones(
    elg_factory: ElgFactory,
) -> None:
    # As nginx does every keepalive_requests requests: GOAWAY naming the last stream it
    # will answer, with later streams already in flight.
    backend = ThreadBackend("g", goaway_after=50)
    lb = make_lb(elg_factory, {"g": [backend.address]})
    try:
        text = h2load(f"http://127.0.0.1:{lb.address[1]}/", "-n", "1000", "-c", "2", "-m", "20")
        total, ok, _ = h2load_counts(text)
        assert (total, ok) == (1000, 1000), text
        assert "1000 2xx" in text, text
        assert backend.stats["connections"] >= 10  # a fresh connection after each GOAWAY
        assert backend.stats.get("refused", 0) > 0  # some streams were refused, then retried
    finally:
        lb.stop(close_sessions=True)
        backend.close()
