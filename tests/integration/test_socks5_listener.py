"""The socks5 server over loopback: curl and python-socks, raw reply codes, deadlines."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from helpers import Backend, LoopThread, http_handler, id_handler, wait_until
from vproxy import HealthCheckConfig, ServerGroup, Upstream
from vproxy.app.socks5_server import Socks5Server
from vproxy.component.security_group import SecurityGroup, SecurityGroupRule
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]
HC = HealthCheckConfig(timeout=300, period=100, up=1, down=2)


class World:
    """Backends on IPv4 and IPv6, a group with a host annotation, a socks5 server."""

    def __init__(
        self,
        lt: LoopThread,
        elg_factory: ElgFactory,
        health_check: HealthCheckConfig = HC,
        **kw: object,
    ) -> None:
        self.v4 = Backend(lt, http_handler("v4"))
        self.v6 = Backend(lt, http_handler("v6"), host="::1")
        self.named = Backend(lt, http_handler("named"))
        welg = elg_factory("w", 1)
        g = ServerGroup("plain", health_check=health_check, event_loop_group=welg)
        g.add("v4", self.v4.address)
        g.add("v6", self.v6.address)
        named = ServerGroup(
            "named",
            health_check=health_check,
            event_loop_group=welg,
            annotations={"host": "svc.test"},
        )
        named.add("n", self.named.address)
        self.ups = Upstream("u")
        self.ups.add(g, 10)
        self.ups.add(named, 1)
        self.groups = (g, named)
        self.s5 = Socks5Server(
            "s5",
            ("127.0.0.1", 0),
            self.ups,
            acceptor_elg=elg_factory("a", 1),
            worker_elg=welg,
            **kw,  # type: ignore[arg-type]
        ).start()
        wait_until(lambda: all(len(x.healthy_servers) == len(x.servers) for x in self.groups))

    @property
    def port(self) -> int:
        return self.s5.address[1]


@pytest.fixture
def world(backend_loop: LoopThread, elg_factory: ElgFactory) -> Iterator[World]:
    w = World(backend_loop, elg_factory)
    yield w
    w.s5.stop(close_sessions=True)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("curl")
    assert exe, "curl must be installed (the test command installs it)"
    return subprocess.run(
        [exe, "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


def test_curl_by_ipv4_ipv6_and_domain(world: World) -> None:
    proxy = f"127.0.0.1:{world.port}"
    r = curl("--socks5-hostname", proxy, f"http://127.0.0.1:{world.v4.port}/")
    assert (r.returncode, r.stdout) == (0, "v4"), r.stderr
    r = curl("--socks5-hostname", proxy, f"http://[::1]:{world.v6.port}/")
    assert (r.returncode, r.stdout) == (0, "v6"), r.stderr
    r = curl("--socks5-hostname", proxy, f"http://svc.test:{world.named.port}/")
    assert (r.returncode, r.stdout) == (0, "named"), r.stderr
    r = curl("--socks5", proxy, f"http://127.0.0.1:{world.v4.port}/")  # curl resolves
    assert (r.returncode, r.stdout) == (0, "v4"), r.stderr


def test_deny_non_backend_by_default(world: World, backend_loop: LoopThread) -> None:
    other = Backend(backend_loop, http_handler("other"))
    r = curl("--socks5-hostname", f"127.0.0.1:{world.port}", f"http://127.0.0.1:{other.port}/")
    assert r.returncode != 0
    assert other.connections == 0
    world.s5.update(allow_non_backend=True)
    r = curl("--socks5-hostname", f"127.0.0.1:{world.port}", f"http://127.0.0.1:{other.port}/")
    assert (r.returncode, r.stdout) == (0, "other"), r.stderr


def test_auth_with_curl_and_python_socks(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    w = World(backend_loop, elg_factory, users={"alice": "s3cret"})
    try:
        url = f"http://127.0.0.1:{w.v4.port}/"
        r = curl("-x", f"socks5h://alice:s3cret@127.0.0.1:{w.port}", url)
        assert (r.returncode, r.stdout) == (0, "v4"), r.stderr
        r = curl("-x", f"socks5h://alice:wrong@127.0.0.1:{w.port}", url)
        assert r.returncode != 0
        r = curl("-x", f"socks5h://127.0.0.1:{w.port}", url)  # no credentials
        assert r.returncode != 0

        from python_socks.sync import Proxy

        for host, port, want in (
            ("127.0.0.1", w.v4.port, b"v4"),
            ("::1", w.v6.port, b"v6"),
            ("svc.test", w.named.port, b"named"),
        ):
            p = Proxy.from_url(f"socks5://alice:s3cret@127.0.0.1:{w.port}", rdns=True)
            sock = p.connect(dest_host=host, dest_port=port, timeout=5)
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).endswith(want)
            finally:
                sock.close()
    finally:
        w.s5.stop(close_sessions=True)


# -- raw bytes ------------------------------------------------------------------------
def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def req(cmd: int, atyp: int, addr: bytes, port: int) -> bytes:
    return bytes([5, cmd, 0, atyp]) + addr + struct.pack(">H", port)


def v4(ip: str) -> bytes:
    return socket.inet_aton(ip)


def test_raw_reply_codes(world: World, backend_loop: LoopThread) -> None:
    p = world.port
    cases = [
        # (bytes sent, expected reply prefix)
        (b"\x05\x01\x02", b"\x05\xff"),  # only user/pass offered, none required
        (b"\x05\x01\x00" + req(2, 1, v4("127.0.0.1"), world.v4.port), b"\x05\x00\x05\x07"),
        (b"\x05\x01\x00" + b"\x05\x01\x00\x09", b"\x05\x00\x05\x08"),
        (b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), 1), b"\x05\x00\x05\x02"),  # not a backend
    ]
    for sent, want in cases:
        with raw(p) as s:
            s.sendall(sent)
            full = 2 if want == b"\x05\xff" else 2 + 10  # method reply + request reply
            got = recv_exact(s, full)
            assert got.startswith(want), (sent, got)
            if full == 12:  # refusals carry ATYP 01 and the zero address
                assert got[6:] == b"\x00" * 6
            assert closed(s)


def test_refused_target_gives_05(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    w = World(backend_loop, elg_factory, allow_non_backend=True)
    try:
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        with raw(w.port) as s:
            s.sendall(b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), port))
            assert recv_exact(s, 12)[:4] == b"\x05\x00\x05\x05"
            assert closed(s)
        with raw(w.port) as s:  # a name that does not resolve: host unreachable
            name = b"no-such-host.invalid"
            s.sendall(b"\x05\x01\x00" + req(1, 3, bytes([len(name)]) + name, 80))
            assert recv_exact(s, 4) == b"\x05\x00\x05\x04"
    finally:
        w.s5.stop(close_sessions=True)


def test_byte_at_a_time_and_combined_segment(world: World) -> None:
    hello = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    msg = b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), world.v4.port)
    with raw(world.port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in msg:
            s.send(bytes([b]))
            time.sleep(0.002)
        assert recv_exact(s, 2) == b"\x05\x00"
        reply = recv_exact(s, 10)
        assert reply[:4] == b"\x05\x00\x00\x01"
        s.sendall(hello)
        assert s.recv(4096).endswith(b"v4")
    with raw(world.port) as s:  # greeting + request + payload in one segment
        s.sendall(msg + hello)
        data = b""
        while not data.endswith(b"v4"):
            chunk = s.recv(4096)
            assert chunk
            data += chunk
        assert data.startswith(b"\x05\x00\x05\x00\x00\x01")


def test_request_payload_and_fin_before_the_reply(world: World) -> None:
    """Bytes and a FIN sent right behind the CONNECT reach the backend, in order."""
    hello = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    msg = b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), world.v4.port)
    for split in (False, True):
        with raw(world.port) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if split:  # request, then payload in its own segment, then the FIN
                s.sendall(msg)
                s.sendall(hello)
            else:
                s.sendall(msg + hello)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            assert data.startswith(b"\x05\x00\x05\x00\x00\x01")
            assert data.endswith(b"v4"), data
    wait_until(lambda: not world.s5.sessions)
    assert world.s5.bytes_from_clients == 2 * len(hello)


def test_a_target_reset_reaches_the_client_as_a_reset(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    """A target that resets after part of its answer: the client gets the part, then
    a reset (not a clean end that would pass a cut stream for a whole one)."""

    async def part_then_reset(r, w):  # type: ignore[no-untyped-def]
        await r.readexactly(1)
        w.write(b"part")
        await w.drain()
        await asyncio.sleep(0.05)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    target = Backend(backend_loop, part_then_reset)
    w = World(backend_loop, elg_factory, allow_non_backend=True)
    try:
        with raw(w.port) as s:
            s.sendall(b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), target.port) + b"Q")
            assert recv_exact(s, 12)[:4] == b"\x05\x00\x05\x00"
            assert recv_exact(s, 4) == b"part"
            with pytest.raises(ConnectionResetError):
                s.recv(100)
        wait_until(lambda: not w.s5.sessions)
    finally:
        w.s5.stop(close_sessions=True)


def test_bytes_sent_while_the_connect_is_pending(world: World) -> None:
    """A slow connect: what the client sends meanwhile (more than is kept while
    connecting) and its FIN reach the target once connected, all and in order."""
    world.s5.update(allow_non_backend=True)
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(0)
    # Fill the accept queue: the proxy's SYN is then dropped until it has room
    # (and the SYN is sent again about 1 s later).
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(target.getsockname())
        fillers.append(f)
    time.sleep(0.1)
    payload = bytes(range(256)) * 512  # 128 KiB: more than MAX_EARLY_BYTES
    try:
        with raw(world.port) as s:
            s.sendall(b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), target.getsockname()[1]))
            assert recv_exact(s, 2) == b"\x05\x00"
            time.sleep(0.2)  # the proxy is connecting now
            s.setblocking(False)
            sent = 0
            deadline = time.monotonic() + 2
            while sent < len(payload) and time.monotonic() < deadline:
                try:
                    sent += s.send(payload[sent:])
                except BlockingIOError:
                    time.sleep(0.01)
            s.setblocking(True)
            target.settimeout(5)
            for _ in fillers:  # make room: the proxy's next SYN gets in
                target.accept()[0].close()
            conn, _ = target.accept()
            with conn:
                conn.settimeout(5)
                while sent < len(payload):
                    sent += s.send(payload[sent:])
                s.shutdown(socket.SHUT_WR)
                assert recv_exact(s, 10)[:2] == b"\x05\x00"
                got = b""
                while chunk := conn.recv(65536):
                    got += chunk
                assert got == payload
    finally:
        target.close()
        for f in fillers:
            f.close()


def test_255_byte_domain(world: World) -> None:
    name = (b"a" * 63 + b".") * 3 + b"b" * 62 + b".svc.test"
    name = name[-255:]
    assert len(name) == 255
    with raw(world.port) as s:
        s.sendall(b"\x05\x01\x00" + req(1, 3, bytes([255]) + name, world.named.port))
        assert recv_exact(s, 4) == b"\x05\x00\x05\x00"  # subdomain of svc.test: a backend


def test_truncated_request_closed_at_deadline(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    w = World(backend_loop, elg_factory, handshake_timeout=500)
    try:
        with raw(w.port) as s:
            s.sendall(b"\x05\x01\x00\x05\x01")  # half a request, then silence
            assert recv_exact(s, 2) == b"\x05\x00"  # the method reply comes at once
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(1)  # nothing before the deadline
            s.settimeout(5)
            t0 = time.monotonic()
            assert closed(s)
            assert time.monotonic() - t0 < 1.0
    finally:
        w.s5.stop(close_sessions=True)


def test_bad_auth_status_then_close(backend_loop: LoopThread, elg_factory: ElgFactory) -> None:
    w = World(backend_loop, elg_factory, users={"u": "p"})
    try:
        with raw(w.port) as s:
            s.sendall(b"\x05\x01\x02" + b"\x01\x01u\x01x")
            assert recv_exact(s, 2) == b"\x05\x02"
            status = recv_exact(s, 2)
            assert status[0] == 1
            assert status[1] != 0
            assert closed(s)
    finally:
        w.s5.stop(close_sessions=True)


def test_security_group_closes_before_reading(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    secg = SecurityGroup("sg", default_allow=True)
    secg.add_rule(SecurityGroupRule("deny-lo", "127.0.0.0/8", "TCP", 1, 65535, allow=False))
    # one health check at the start, then none for a minute: the backend's count moves
    # only if the denied client got a connection to it
    once = HealthCheckConfig(timeout=300, period=60_000, up=1, down=2)
    w = World(backend_loop, elg_factory, health_check=once, security_group=secg)
    try:
        wait_until(lambda: w.v4.connections == 1)  # that check, seen by the backend
        with raw(w.port) as s:
            try:
                s.sendall(b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), w.v4.port))
            except OSError:
                pass
            assert closed(s)
        assert w.s5.denied == 1
        time.sleep(0.1)
        assert w.v4.connections == 1  # no backend connection for the denied client
    finally:
        w.s5.stop(close_sessions=True)


def test_relay_after_handshake_is_id_exact(
    backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    echo = Backend(backend_loop, id_handler("e"))
    welg = elg_factory("w", 1)
    g = ServerGroup("g", health_check=HC, event_loop_group=welg)
    g.add("e", echo.address)
    u = Upstream("u")
    u.add(g)
    s5 = Socks5Server("s", ("127.0.0.1", 0), u, acceptor_elg=elg_factory("a", 1), worker_elg=welg)
    s5.start()
    try:
        wait_until(lambda: bool(g.healthy_servers))
        with raw(s5.address[1]) as s:
            s.sendall(b"\x05\x01\x00" + req(1, 1, v4("127.0.0.1"), echo.port))
            assert recv_exact(s, 12)[:6] == b"\x05\x00\x05\x00\x00\x01"
            assert recv_exact(s, 2) == b"e\n"
            blob = bytes(range(256)) * 4000
            s.sendall(blob)
            assert recv_exact(s, len(blob)) == blob
            wait_until(lambda: s5.bytes_from_clients == len(blob))
        wait_until(lambda: not s5.sessions)
        assert s5.bytes_from_clients == len(blob)
        assert s5.bytes_from_servers == len(blob) + 2
        assert g.get("e").closed_bytes_out == len(blob)
    finally:
        s5.stop(close_sessions=True)
