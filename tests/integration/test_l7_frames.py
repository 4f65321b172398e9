"""The frame mode of tcp-lb over real sockets: dubbo, framed-int32 and a user processor.

The backends are small asyncio servers written here (not on vproxy code) that parse
real dubbo headers (16 bytes, magic 0xdabb) or 4-byte lengths, and tag every response
with their own name, so the tests see which backend answered what.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from helpers import Backend, LoopThread, rss_kib, wait_until
from tls_certs import CertAuthority
from vproxy import HealthCheckConfig, ServerGroup, TcpLB, Upstream
from vproxy.app.l7.base import L7Limits
from vproxy.app.l7.frames import FrameMode
from vproxy.component.cert_key import CertKey
from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import ErrorReply
from vproxy.net.event_loop import EventLoopGroup
from vproxy.processor.base import (
    BackendContext,
    ConnectionInfo,
    Frame,
    FrontendContext,
    InOrderBackend,
    InOrderFrontend,
    Processor,
    ReceiveBuffer,
    register_processor,
    unregister_processor,
)

ElgFactory = Callable[..., EventLoopGroup]

SLOW_CHECKS = HealthCheckConfig(1000, 60_000, 1, 2)
"""The first check runs at once (servers come UP), the next one after the test: no
health-check connection races the backends' shutdown."""

DUBBO_HEADER = struct.Struct(">HBBQi")
MAGIC = 0xDABB
HESSIAN2 = 0x02
F_REQ, F_TWO_WAY, F_EVENT = 0x80, 0x40, 0x20


# -- wire helpers ------------------------------------------------------------------------


def h2str(text: str) -> bytes:
    """A short hessian2 string (fewer than 32 characters)."""
    raw = text.encode()
    return bytes([len(raw)]) + raw


def dubbo(flag: int, rid: int, body: bytes, status: int = 0) -> bytes:
    return DUBBO_HEADER.pack(MAGIC, flag, status, rid, len(body)) + body


def dubbo_call(rid: int, payload: bytes) -> bytes:
    body = h2str("2.0.2") + h2str("com.example.Echo") + h2str("0.0.0") + h2str("echo") + payload
    return dubbo(F_REQ | F_TWO_WAY | HESSIAN2, rid, body)


def framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


class Reader:
    """Blocking reads of whole messages from a client socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError(f"closed with {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def dubbo(self) -> tuple[int, int, int, bytes]:
        """(flag, status, request id, body) of the next dubbo message."""
        magic, flag, status, rid, length = DUBBO_HEADER.unpack(self.exact(16))
        assert magic == MAGIC
        return flag, status, rid, self.exact(length)

    def framed(self) -> bytes:
        (length,) = struct.unpack(">i", self.exact(4))
        return self.exact(length)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Read until the peer closes; True if it did within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send while the caller reads (a pipelining client that never deadlocks)."""
    t = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    t.start()
    return t


# -- fake backends -----------------------------------------------------------------------


class FakeBackend:
    """A dubbo or framed-int32 server tagging each response ``TAG:`` + request payload.

    ``hold``: read requests but never answer. ``gate``: answer only once ``release()``
    was called. ``readonly_after``: after answering the N-th request, send dubbo's
    readonly event on that connection. ``per_conn[i]`` counts the requests of the
    i-th connection (health checks show up as zeros); ``eof[i]`` says whether the
    proxy closed it.
    """

    def __init__(
        self,
        lt: LoopThread,
        kind: str,
        tag: str,
        *,
        hold: bool = False,
        gated: bool = False,
        readonly_after: int | None = None,
        big_response: int = 0,
    ) -> None:
        self.lt = lt
        self.kind = kind
        self.tag = tag.encode()
        self.hold = hold
        self.readonly_after = readonly_after
        self.big_response = big_response
        self.requests = 0
        self.events = 0
        self.per_conn: list[int] = []
        self.eof: list[bool] = []
        self.gate: asyncio.Event | None = lt.run(self._make_event()) if gated else None
        self.backend = Backend(lt, self.handle)

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.backend.address

    @property
    def data_conns(self) -> int:
        return sum(1 for n in self.per_conn if n)

    def release(self) -> None:
        gate = self.gate
        assert gate is not None
        self.lt.loop.call_soon_threadsafe(gate.set)

    def stop(self) -> None:
        self.backend.stop()

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        index = len(self.per_conn)
        self.per_conn.append(0)
        self.eof.append(False)
        answers: asyncio.Queue[bytes] = asyncio.Queue()
        writer = asyncio.ensure_future(self._write(answers, w))
        try:
            while True:
                try:
                    reply = await self._one(r, index)
                except asyncio.IncompleteReadError as exc:
                    self.eof[index] = not exc.partial
                    return
                if reply is not None:
                    answers.put_nowait(reply)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            w.transport.abort()  # do not wait to flush answers nobody reads

    async def _write(self, answers: asyncio.Queue[bytes], w: asyncio.StreamWriter) -> None:
        while True:
            reply = await answers.get()
            if self.gate is not None:
                await self.gate.wait()
            if self.big_response:  # made here: the queue must not hold them all
                reply = framed(self.tag + b":" + b"x" * self.big_response)
            w.write(reply)
            await w.drain()
            answers.task_done()

    async def _one(self, r: asyncio.StreamReader, index: int) -> bytes | None:
        if self.kind == "framed-int32":
            (length,) = struct.unpack(">i", await r.readexactly(4))
            payload = await r.readexactly(length)
            self.per_conn[index] += 1
            self.requests += 1
            if self.hold:
                return None
            return framed(self._answer(payload))
        magic, flag, _status, rid, length = DUBBO_HEADER.unpack(await r.readexactly(16))
        if magic != MAGIC:
            raise asyncio.IncompleteReadError(b"bad magic", None)
        body = await r.readexactly(length)
        if flag & F_EVENT:
            self.events += 1
            return None
        self.per_conn[index] += 1
        self.requests += 1
        if self.hold or not flag & F_TWO_WAY:
            return None
        reply = dubbo(HESSIAN2, rid, self._answer(body), status=20)
        if self.readonly_after is not None and self.requests == self.readonly_after:
            reply += dubbo(F_REQ | F_EVENT | HESSIAN2, 0, b"\x01R")
        return reply

    def _answer(self, payload: bytes) -> bytes:
        return self.tag + b":" + payload


# -- the load balancer -------------------------------------------------------------------


class HasAddress(Protocol):
    @property
    def address(self) -> tuple[str, int]: ...


class Rig:
    """A tcp-lb in a frame mode over some backends, one server group."""

    def __init__(
        self,
        elg_factory: ElgFactory,
        protocol: str,
        backends: Sequence[HasAddress],
        weights: list[int] | None = None,
        *,
        health: HealthCheckConfig | None = None,
        cert_keys: list[CertKey] | None = None,
        timeout: int = 60_000,
        l7_limits: L7Limits | None = None,
    ) -> None:
        self.welg = elg_factory("w", 1)
        self.group = ServerGroup(
            "g",
            health_check=health or SLOW_CHECKS,
            event_loop_group=self.welg,
        )
        for i, (b, w) in enumerate(zip(backends, weights or [10] * len(backends), strict=True)):
            self.group.add(f"s{i}", b.address, weight=w)
        upstream = Upstream("u")
        upstream.add(self.group)
        self.lb = TcpLB(
            "frames",
            ("127.0.0.1", 0),
            upstream,
            acceptor_elg=elg_factory("a", 1),
            worker_elg=self.welg,
            protocol=protocol,
            cert_keys=cert_keys or (),
            timeout=timeout,
        )
        if l7_limits is not None:
            self.lb.l7_limits = l7_limits
        self.lb.start()
        wait_until(lambda: len(self.group.healthy_servers) == len(backends))

    @property
    def mode(self) -> FrameMode:
        mode = self.lb.mode
        assert isinstance(mode, FrameMode)
        return mode

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(self.lb.address, timeout=timeout)

    def stop(self) -> None:
        stop_and_wait(self.lb)


def stop_and_wait(lb: TcpLB) -> None:
    """Stop ``lb`` and wait until its client and backend connections are all gone (so no
    transport is left open when its loop stops)."""
    lb.stop(close_sessions=True)
    wait_until(lambda: not lb.l7_sessions)
    mode = lb.mode
    assert isinstance(mode, FrameMode)
    wait_until(lambda: not mode.backend_connections())


@pytest.fixture
def rigs(loop_kind: str, elg_factory: ElgFactory) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(*args: object, **kwargs: object) -> Rig:
        rig = Rig(elg_factory, *args, **kwargs)  # type: ignore[arg-type]
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop()


def dubbo_roundtrip(rig: Rig, ids: list[int], payload: Callable[[int], bytes]) -> dict[int, bytes]:
    """Pipeline one call per id (send all, then read); return the body per id."""
    with rig.connect() as c:
        sender = send_in_background(c, b"".join(dubbo_call(i, payload(i)) for i in ids))
        reader = Reader(c)
        got: dict[int, bytes] = {}
        for _ in ids:
            flag, status, rid, body = reader.dubbo()
            assert (flag, status) == (HESSIAN2, 20)
            assert rid not in got, "two responses for one id"
            got[rid] = body
        sender.join(10)
    return got


def tag_counts(bodies: list[bytes]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for body in bodies:
        tag = body.split(b":", 1)[0]
        counts[tag] = counts.get(tag, 0) + 1
    return counts


def assert_wrr_share(counts: dict[bytes, int], weights: dict[bytes, int], total: int) -> None:
    scale = sum(weights.values())
    for tag, w in weights.items():
        assert abs(counts.get(tag, 0) - total * w / scale) <= 2, (counts, weights)


# -- the acceptance tests ----------------------------------------------------------------


def test_dubbo_1000_pipelined_matched_by_id_and_spread_by_weight(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "dubbo", f"b{i}") for i in range(3)]
    rig = rigs("dubbo", backends, [1, 2, 3])
    rng = random.Random(7)
    ids = list({rng.getrandbits(64) for _ in range(1000)})  # unrelated ids, any order
    assert len(ids) == 1000

    def payload(i: int) -> bytes:
        return b"call-%d" % i

    got = dubbo_roundtrip(rig, ids, payload)
    assert set(got) == set(ids)
    for rid, body in got.items():
        assert body.split(b":", 1)[1].endswith(payload(rid)), rid
    assert_wrr_share(tag_counts(list(got.values())), {b"b0": 1, b"b1": 2, b"b2": 3}, 1000)
    assert [b.data_conns for b in backends] == [1, 1, 1]


def test_framed_1000_pipelined_in_order_and_spread_by_weight(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "framed-int32", f"b{i}") for i in range(3)]
    rig = rigs("framed-int32", backends, [3, 2, 1])
    payloads = [b"frame-%d-" % i + os.urandom(i % 50) for i in range(1000)]
    with rig.connect() as c:
        sender = send_in_background(c, b"".join(framed(p) for p in payloads))
        reader = Reader(c)
        bodies = [reader.framed() for _ in payloads]
        sender.join(10)
    for p, body in zip(payloads, bodies, strict=True):
        assert body.split(b":", 1)[1] == p
    assert_wrr_share(tag_counts(bodies), {b"b0": 3, b"b1": 2, b"b2": 1}, 1000)
    assert sum(b.requests for b in backends) == 1000


@pytest.mark.parametrize("protocol", ["dubbo", "framed-int32"])
def test_frames_split_byte_by_byte_and_many_per_segment(
    rigs: Callable[..., Rig], backend_loop: LoopThread, protocol: str
) -> None:
    backends = [FakeBackend(backend_loop, protocol, f"b{i}") for i in range(3)]
    rig = rigs(protocol, backends)

    def encode(i: int) -> bytes:
        return dubbo_call(i, b"p%d" % i) if protocol == "dubbo" else framed(b"p%d" % i)

    def check(reader: Reader, ids: range) -> None:
        if protocol == "dubbo":
            got = {}
            for _ in ids:
                _, _, rid, body = reader.dubbo()
                got[rid] = body
            assert sorted(got) == list(ids)
            assert all(body.endswith(b"p%d" % rid) for rid, body in got.items())
        else:
            for i in ids:
                assert reader.framed().split(b":", 1)[1] == b"p%d" % i

    with rig.connect() as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(c)
        for byte in b"".join(encode(i) for i in range(4)):  # one byte per segment
            c.send(bytes([byte]))
            time.sleep(0.001)
        check(reader, range(4))
        c.sendall(b"".join(encode(i) for i in range(4, 304)))  # many per segment
        check(reader, range(4, 304))
        # a frame cut in the middle of its header, the rest with the next frames
        data = b"".join(encode(i) for i in range(304, 310))
        c.sendall(data[:3])
        time.sleep(0.05)
        c.sendall(data[3:])
        check(reader, range(304, 310))


@pytest.mark.parametrize("protocol", ["dubbo", "framed-int32"])
@pytest.mark.parametrize("length", [-1, 2**31 - 1], ids=["negative", "2^31-1"])
def test_bad_length_closes_without_allocating_others_served(
    rigs: Callable[..., Rig], backend_loop: LoopThread, protocol: str, length: int
) -> None:
    backends = [FakeBackend(backend_loop, protocol, "b0")]
    rig = rigs(protocol, backends)
    encode = (lambda i: dubbo_call(i, b"ok")) if protocol == "dubbo" else (lambda i: framed(b"ok"))
    bad = (
        DUBBO_HEADER.pack(MAGIC, F_REQ | F_TWO_WAY | HESSIAN2, 0, 1, length)
        if protocol == "dubbo"
        else struct.pack(">i", length)
    )
    rss_before = rss_kib(os.getpid())
    with rig.connect() as good:
        good_reader = Reader(good)
        for round_ in range(5):
            with rig.connect() as c:
                c.sendall(bad + b"\x00" * 64)
                assert closed_by_peer(c), "a bad length must close the connection"
            good.sendall(encode(round_))  # the other client is still served
            if protocol == "dubbo":
                assert good_reader.dubbo()[2] == round_
            else:
                assert good_reader.framed() == b"b0:ok"
    assert rss_kib(os.getpid()) - rss_before < 64 * 1024
    assert backends[0].requests == 5  # nothing of the bad frames reached the backend


def test_clients_share_pooled_backend_connections(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "dubbo", f"b{i}") for i in range(3)]
    rig = rigs("dubbo", backends)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            ids = list(range(300))  # every client uses the same ids: they collide
            got = dubbo_roundtrip(rig, ids, lambda i: b"client-%d-call-%d" % (n, i))
            assert sorted(got) == ids
            for rid, body in got.items():
                assert body.endswith(b"echoclient-%d-call-%d" % (n, rid)), (n, rid, body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert sum(b.requests for b in backends) == 12 * 300
    # one worker loop: one shared connection per server carried every client's frames
    assert [b.data_conns for b in backends] == [1, 1, 1]
    assert len(rig.mode.backend_connections()) == 3


def test_dubbo_heartbeat_answered_by_the_proxy(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "dubbo", "b0")]
    rig = rigs("dubbo", backends)
    with rig.connect() as c:
        reader = Reader(c)
        heartbeat = dubbo(F_REQ | F_TWO_WAY | F_EVENT | HESSIAN2, 77, b"N")
        c.sendall(heartbeat + dubbo_call(78, b"after") + heartbeat)
        got = [reader.dubbo() for _ in range(3)]
    by_id: dict[int, list[tuple[int, int, bytes]]] = {}
    for flag, status, rid, body in got:
        by_id.setdefault(rid, []).append((flag, status, body))
    assert by_id[77] == [(F_EVENT | HESSIAN2, 20, b"N")] * 2
    assert by_id[78] == [(HESSIAN2, 20, b"b0:" + dubbo_call(0, b"after")[16:])]
    assert backends[0].events == 0  # heartbeats are not forwarded


def test_dubbo_readonly_event_drains_that_connection(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backend = FakeBackend(backend_loop, "dubbo", "b0", readonly_after=3)
    rig = rigs("dubbo", [backend])
    with rig.connect() as c:
        reader = Reader(c)
        for i in range(6):  # one at a time: the readonly event comes with answer 3
            c.sendall(dubbo_call(i, b"x"))
            assert reader.dubbo()[2] == i
    data = [i for i, n in enumerate(backend.per_conn) if n]
    assert [backend.per_conn[i] for i in data] == [3, 3]
    wait_until(lambda: backend.eof[data[0]])  # the proxy closed the drained connection
    assert not backend.eof[data[1]]


def test_backend_killed_closes_its_waiting_clients_and_others_take_over(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    victim = FakeBackend(backend_loop, "dubbo", "b0", hold=True)
    others = [FakeBackend(backend_loop, "dubbo", f"b{i}") for i in (1, 2)]
    # slow health checks: the kill is found by the proxy's own connects, not by them
    rig = rigs("dubbo", [victim, *others])
    with rig.connect() as waiting:
        waiting.sendall(b"".join(dubbo_call(i, b"w") for i in range(6)))
        reader = Reader(waiting)
        answered = {reader.dubbo()[2] for _ in range(4)}  # 2 of 6 are held by b0
        wait_until(lambda: victim.requests == 2)
        victim.stop()
        assert closed_by_peer(waiting)
    assert len(answered) == 4
    assert rig.group.get("s0").healthy  # not noticed by health checks yet
    got = dubbo_roundtrip(rig, list(range(100)), lambda i: b"after-%d" % i)
    assert sorted(got) == list(range(100))
    assert set(tag_counts(list(got.values()))) == {b"b1", b"b2"}
    assert rig.group.get("s0").connect_failures >= 1


def test_no_backend_closes_the_client_and_counts(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backend = FakeBackend(backend_loop, "framed-int32", "b0")
    rig = rigs("framed-int32", [backend])
    backend.stop()
    before = rig.lb.proxy.failed_no_backend
    with rig.connect() as c:
        c.sendall(framed(b"anyone?"))
        assert closed_by_peer(c)
    assert rig.lb.proxy.failed_no_backend == before + 1
    wait_until(lambda: not rig.lb.l7_sessions)


def test_backend_breaking_the_protocol_closes_the_clients_waiting_on_it(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(16)
        w.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await w.drain()
        await r.read()

    bad = Backend(backend_loop, garbage)
    good = FakeBackend(backend_loop, "dubbo", "b1")
    rig = rigs("dubbo", [bad, good])
    with rig.connect() as c:
        c.sendall(dubbo_call(1, b"a") + dubbo_call(2, b"b"))  # equal weights: one each
        assert closed_by_peer(c)  # after the good answer, maybe
    wait_until(lambda: len(rig.mode.backend_connections()) == 1)
    rig.group.update_server("s0", weight=0)
    got = dubbo_roundtrip(rig, list(range(50)), lambda i: b"again")
    assert set(tag_counts(list(got.values()))) == {b"b1"}
    assert good.data_conns == 1  # the good connection was kept


def test_max_pipelined_bounds_frames_in_flight(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "framed-int32", f"b{i}", gated=True) for i in range(2)]
    rig = rigs("framed-int32", backends, l7_limits=L7Limits(max_pipelined=5))
    with rig.connect() as c:
        sender = send_in_background(c, b"".join(framed(b"%d" % i) for i in range(200)))
        wait_until(lambda: sum(b.requests for b in backends) == 5)
        time.sleep(0.3)
        assert sum(b.requests for b in backends) == 5  # the rest wait in the proxy
        for b in backends:
            b.release()
        reader = Reader(c)
        assert [reader.framed().split(b":", 1)[1] for _ in range(200)] == [
            b"%d" % i for i in range(200)
        ]
        sender.join(10)


def test_client_that_never_reads_is_closed_at_the_outbound_bound(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "framed-int32", "b0", big_response=1 << 20)]
    rig = rigs("framed-int32", backends)
    rss_before = rss_kib(os.getpid())
    with rig.connect() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        c.sendall(b"".join(framed(b"%d" % i) for i in range(64)))  # 64 MiB of answers
        # the session ended (counted at its end), not merely not started yet
        wait_until(lambda: rig.lb.closed_bytes_from_client > 0, timeout=20)
        assert not rig.lb.l7_sessions
    bound = rig.lb.out_buffer_size + rig.mode.processor.limits.max_frame_size
    assert (rss_kib(os.getpid()) - rss_before) * 1024 < bound + 24 * 2**20


def test_idle_client_and_idle_pooled_backend_are_closed(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backend = FakeBackend(backend_loop, "framed-int32", "b0")
    rig = rigs("framed-int32", [backend], timeout=400)
    with rig.connect() as c:
        c.sendall(framed(b"hi"))
        assert Reader(c).framed() == b"b0:hi"
        t0 = time.monotonic()
        assert closed_by_peer(c, timeout=5)
        assert 0.3 < time.monotonic() - t0 < 3
    conn = next(i for i, n in enumerate(backend.per_conn) if n)
    wait_until(lambda: backend.eof[conn], timeout=5)
    wait_until(lambda: not rig.mode.backend_connections())


def test_framed_int32_behind_tls(
    rigs: Callable[..., Rig], backend_loop: LoopThread, tmp_path: Path
) -> None:
    ca = CertAuthority(tmp_path / "pki")
    leaf = ca.issue("a", ["a.test"])
    ck = CertKey("ck-a", [str(leaf.cert), str(ca.intermediate_path)], str(leaf.key))
    backends = [FakeBackend(backend_loop, "framed-int32", f"b{i}") for i in range(3)]
    rig = rigs("framed-int32", backends, cert_keys=[ck])
    ctx = ssl.create_default_context(cafile=str(ca.root_path))
    with (
        rig.connect() as raw,
        ctx.wrap_socket(raw, server_hostname="a.test") as c,
    ):
        payloads = [b"tls-%d" % i for i in range(300)]
        c.sendall(b"".join(framed(p) for p in payloads))
        reader = Reader(c)
        bodies = [reader.framed() for _ in payloads]
    assert [b.split(b":", 1)[1] for b in bodies] == payloads
    assert set(tag_counts(bodies)) == {b"b0", b"b1", b"b2"}


# -- a user processor over real sockets ----------------------------------------------------


class _LineFrontend(InOrderFrontend):
    __slots__ = ()

    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        return buffer.take_until(b"\n", 1024)

    def make_frame(self, message: bytes, stream_id: int) -> Frame:
        return Frame(message, stream_id=stream_id)


class _LineBackend(InOrderBackend):
    __slots__ = ()

    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        return buffer.take_until(b"\n", 1024)


class _LineProcessor(Processor):
    __slots__ = ()

    def new_frontend(self, info: ConnectionInfo) -> FrontendContext:
        return _LineFrontend()

    def new_backend(self, info: ConnectionInfo) -> BackendContext:
        return _LineBackend()


@pytest.fixture
def line_protocol() -> Iterator[str]:
    name = "test-lines"
    register_processor(name, _LineProcessor)
    yield name
    unregister_processor(name)


def test_user_registered_processor(
    rigs: Callable[..., Rig], backend_loop: LoopThread, line_protocol: str
) -> None:
    def upper_lines(tag: bytes) -> Callable[..., object]:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while line := await r.readline():
                w.write(tag + line.upper())
                await w.drain()

        return handler

    backends = [Backend(backend_loop, upper_lines(b"%d " % i)) for i in range(2)]
    rig = rigs(line_protocol, backends)
    with rig.connect() as c:
        c.sendall(b"".join(b"line %d\n" % i for i in range(100)))
        f = c.makefile("rb")
        got = [f.readline() for _ in range(100)]
        f.close()
    assert [g.split(b" ", 1)[1] for g in got] == [b"LINE %d\n" % i for i in range(100)]
    assert {g[:1] for g in got} == {b"0", b"1"}


# -- the control plane -----------------------------------------------------------------------


def test_add_tcp_lb_protocol_dubbo_through_the_executor(backend_loop: LoopThread) -> None:
    backends = [FakeBackend(backend_loop, "dubbo", f"b{i}") for i in range(2)]
    app = Application.create_default()
    try:
        ex = Executor(app)
        lines = [
            "add server-group rpc timeout 1000 period 60000 up 1 down 2",
            *(
                f"add server s{i} to server-group rpc address 127.0.0.1:{b.address[1]} weight 10"
                for i, b in enumerate(backends)
            ),
            "add upstream rpcs",
            "add server-group rpc to upstream rpcs weight 10",
            "add tcp-lb rpc-lb address 127.0.0.1:0 upstream rpcs protocol dubbo",
        ]
        for line in lines:
            r = ex.execute_line(line, Origin.STDIO)
            assert not isinstance(r, ErrorReply), f"{line}: {r}"
        lb = app.tcp_lbs["rpc-lb"]
        assert lb.protocol == "dubbo"
        group = app.server_groups["rpc"]
        wait_until(lambda: len(group.healthy_servers) == 2)
        with socket.create_connection(lb.address, timeout=10) as c:
            c.sendall(b"".join(dubbo_call(i, b"cp-%d" % i) for i in range(50)))
            reader = Reader(c)
            got = {}
            for _ in range(50):
                _, _, rid, body = reader.dubbo()
                got[rid] = body
        assert sorted(got) == list(range(50))
        assert set(tag_counts(list(got.values()))) == {b"b0", b"b1"}
        config = ex.execute_line("System: list config", Origin.STDIO)
        assert "protocol dubbo" in str(config)
        stop_and_wait(lb)
    finally:
        app.close()


def test_client_half_close_still_gets_its_answers(
    rigs: Callable[..., Rig], backend_loop: LoopThread
) -> None:
    backends = [FakeBackend(backend_loop, "framed-int32", f"b{i}") for i in range(2)]
    rig = rigs("framed-int32", backends)
    with rig.connect() as c:
        c.sendall(b"".join(framed(b"%d" % i) for i in range(50)))
        c.shutdown(socket.SHUT_WR)
        reader = Reader(c)
        assert [reader.framed().split(b":", 1)[1] for _ in range(50)] == [
            b"%d" % i for i in range(50)
        ]
        assert closed_by_peer(c)  # then the proxy closes


def test_dubbo_service_name_is_the_upstream_hint(
    loop_kind: str, backend_loop: LoopThread, elg_factory: ElgFactory
) -> None:
    echo = FakeBackend(backend_loop, "dubbo", "echo")
    other = FakeBackend(backend_loop, "dubbo", "other")
    welg = elg_factory("w", 1)
    upstream = Upstream("u")
    groups = []
    for name, b in (("com.example.Echo", echo), ("others", other)):
        g = ServerGroup(name, health_check=SLOW_CHECKS, event_loop_group=welg)
        g.add("s", b.address)
        upstream.add(g)
        groups.append(g)
    lb = TcpLB(
        "hint",
        ("127.0.0.1", 0),
        upstream,
        acceptor_elg=elg_factory("a", 1),
        worker_elg=welg,
        protocol="dubbo",
    ).start()
    try:
        wait_until(lambda: all(g.healthy_servers for g in groups))
        with socket.create_connection(lb.address, timeout=10) as c:
            c.sendall(b"".join(dubbo_call(i, b"h") for i in range(40)))
            reader = Reader(c)
            tags = {reader.dubbo()[3].split(b":", 1)[0] for _ in range(40)}
        assert tags == {b"echo"}  # the interface name picked its group every time
        assert other.requests == 0
    finally:
        stop_and_wait(lb)
