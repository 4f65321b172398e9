"""The socket-mode relay: exact byte counts, bounded buffering, forced closes, fallbacks.

Backends here are plain threads on blocking sockets (no asyncio), and servers are
marked healthy by hand (no health checks), so that nothing but the relay is timed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from helpers import (
    ROOT,
    TCPI_SEGS_IN,
    TCPI_UNACKED,
    fd_count,
    manual_tcp_lb,
    tcp_info_u32,
    vproxy_process,
    wait_until,
)
from vproxy import ServerGroup, TcpLB
from vproxy.net import connection, splice
from vproxy.net.connection import BULK_PIPE, MAX_CUTS, MIN_WINDOW, PROMOTE_AFTER_READS, Session
from vproxy.net.event_loop import EventLoopGroup

ElgFactory = Callable[..., EventLoopGroup]
MiB = 1 << 20


def _pattern(n: int, seed: int) -> bytes:
    block = bytes((i * 7 + seed) % 256 for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


class ThreadBackend:
    """A listener whose every connection runs ``handler(conn)`` in its own thread."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.handler = handler
        self.errors: list[BaseException] = []
        self.conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.lsock.getsockname()[:2]
        return host, port

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the proxy closed or reset it: what some tests do on purpose
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.lsock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)
        self._accepting.join(10)


def _recv_all(sock: socket.socket) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(MiB)
    view = memoryview(buf)
    while k := sock.recv_into(buf):
        h.update(view[:k])
        n += k
    return n, h.hexdigest()


def _send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def relay(
    elg_factory: ElgFactory, backend: ThreadBackend, workers: int = 1
) -> Iterator[tuple[TcpLB, ServerGroup]]:
    try:
        with manual_tcp_lb(elg_factory, [backend.address], workers) as (lb, group):
            yield lb, group
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("up", "down"),
    [(100, 300), (0, 5000), (3 * MiB + 17, 5 * MiB + 3)],
    ids=["small", "one-way", "bulk"],
)
def test_byte_counts_exact_and_data_intact(
    loop_kind: str, elg_factory: ElgFactory, up: int, down: int
) -> None:
    sent_down = _pattern(down, 1)
    got_up: dict[str, object] = {}

    def handler(conn: socket.socket) -> None:
        t = threading.Thread(target=_send_all, args=(conn, sent_down))
        t.start()
        got_up["n"], got_up["hash"] = _recv_all(conn)
        t.join()

    backend = ThreadBackend(handler)
    with relay(elg_factory, backend) as (lb, group):
        ended: list[tuple[int, int, bool, bool]] = []
        hook = lb.proxy.on_session_closed

        def record(s: Session) -> None:
            ended.append((s.front.bytes_in, s.back.bytes_in, s.front.spliced, s.back.spliced))
            if hook is not None:
                hook(s)

        lb.proxy.on_session_closed = record
        sent_up = _pattern(up, 2)
        with socket.create_connection(lb.address, timeout=30) as c:
            t = threading.Thread(target=_send_all, args=(c, sent_up))
            t.start()
            n, digest = _recv_all(c)
            t.join()
        wait_until(lambda: ended and got_up, 10)
        assert (n, digest) == (down, hashlib.sha256(sent_down).hexdigest())
        assert got_up == {"n": up, "hash": hashlib.sha256(sent_up).hexdigest()}
        front_in, back_in, front_spliced, back_spliced = ended[0]
        assert (front_in, back_in) == (up, down)  # exact, copy or splice
        s0 = group.get("s0")
        assert (s0.closed_bytes_out, s0.closed_bytes_in) == (up, down)
        if up > 2 * MIN_WINDOW:  # bulk both ways: large reads switch to splice
            assert front_spliced == back_spliced == splice.SPLICE_AVAILABLE
        assert not backend.errors


def test_backpressure_holds_at_most_one_window(loop_kind: str, elg_factory: ElgFactory) -> None:
    """A backend that does not read: the proxy stops reading the client."""
    release = threading.Event()
    received: list[tuple[int, str]] = []

    def handler(conn: socket.socket) -> None:
        release.wait(30)
        received.append(_recv_all(conn))

    backend = ThreadBackend(handler)
    with relay(elg_factory, backend) as (lb, _):
        c = socket.create_connection(lb.address, timeout=30)
        c.setblocking(False)
        digest = hashlib.sha256()
        sent = 0
        block = _pattern(MiB, 3)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 0.5 and sent < 256 * MiB:
            try:
                k = c.send(block)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            digest.update(block[:k])
            sent += k
            idle_since = time.monotonic()
        # Socket buffers on the way hold a few MiB; the proxy itself one window, or
        # one grown pipe (a splice that took a whole pipe grows it to BULK_PIPE).
        assert sent < 64 * MiB, f"{sent} bytes accepted: nothing pushed back"
        (session,) = lb.sessions
        held = session.el.call(lambda: session.front.piped + len(session.front.backlog or b""))
        assert held <= max(lb.in_buffer_size, BULK_PIPE)
        release.set()
        c.setblocking(True)
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""  # the backend closes after reading everything
        c.close()
        wait_until(lambda: received, 10)
        assert received[0] == (sent, digest.hexdigest())


def test_a_fast_stream_grows_its_pipe(loop_kind: str, elg_factory: ElgFactory) -> None:
    """A splice that takes a whole pipe at once (the client is faster than the
    backend) grows the direction's pipe to BULK_PIPE; the bytes arrive intact."""
    data = _pattern(32 * MiB, 5)
    go, done = threading.Event(), threading.Event()
    received: list[str] = []

    def handler(conn: socket.socket) -> None:
        go.wait(30)  # the socket buffers on the way fill meanwhile
        h, left = hashlib.sha256(), len(data)
        while left and (chunk := conn.recv(min(left, MiB))):
            h.update(chunk)
            left -= len(chunk)
        received.append(h.hexdigest())
        done.wait(30)

    backend = ThreadBackend(handler)
    with relay(elg_factory, backend) as (lb, _):
        with socket.create_connection(lb.address, timeout=30) as c:
            t = threading.Thread(target=c.sendall, args=(data,))
            t.start()
            wait_until(lambda: lb.sessions and next(iter(lb.sessions)).front.bytes_in > MiB)
            (session,) = lb.sessions
            time.sleep(0.2)
            go.set()
            t.join(30)
            wait_until(lambda: received, 30)

            def pipe_size() -> int:
                pipe = session.front.pipe
                return pipe.size if pipe is not None else 0

            size = session.el.call(pipe_size)  # the session is still open
            done.set()
            assert c.recv(1) == b""
        assert received == [hashlib.sha256(data).hexdigest()]
        assert size == (BULK_PIPE if splice.SPLICE_AVAILABLE else 0)
    assert not backend.errors


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def _round_trips(c: socket.socket, n: int) -> None:
    for i in range(n):
        msg = b"%08d" % i * 8
        c.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = c.recv(len(msg) - len(got))
            assert chunk, "closed early"
            got += chunk
        assert got == msg


def test_last_bytes_leave_with_the_fin(loop_kind: str, elg_factory: ElgFactory) -> None:
    """A backend's answer and its FIN in one segment reach the client in one segment
    too: the relay writes bytes that precede a FIN with ``MSG_MORE``, and the shutdown
    right after sends them with the FIN."""
    asked, go = threading.Event(), threading.Event()

    def handler(conn: socket.socket) -> None:
        if conn.recv(1) != b"Q":
            return  # a health check
        asked.set()
        go.wait(10)
        conn.send(b"the answer", socket.MSG_MORE)
        conn.shutdown(socket.SHUT_WR)  # the answer and the FIN in one segment
        while conn.recv(100):
            pass

    backend = ThreadBackend(handler)
    with relay(elg_factory, backend) as (lb, _):
        for _ in range(3):
            asked.clear()
            go.clear()
            with socket.create_connection(lb.address, timeout=10) as c:
                c.sendall(b"Q")
                assert asked.wait(10)
                wait_until(lambda c=c: tcp_info_u32(c, TCPI_UNACKED) == 0)  # "Q" is acked
                before = tcp_info_u32(c, TCPI_SEGS_IN)
                go.set()
                got = b""
                while chunk := c.recv(100):
                    got += chunk
                assert got == b"the answer"
                assert tcp_info_u32(c, TCPI_SEGS_IN) - before == 1
            wait_until(lambda: not lb.sessions)
    assert not backend.errors


def test_remembered_slices_carry_each_read(loop_kind: str, elg_factory: ElgFactory) -> None:
    """Messages of more lengths than a window remembers slices for, each length with
    new bytes each time: every echo is the message just sent."""
    backend = ThreadBackend(_echo)
    with relay(elg_factory, backend) as (lb, _), socket.create_connection(lb.address, 10) as c:
        for rnd in range(3):
            for length in range(1, MAX_CUTS * 2 + 5):
                msg = bytes((length * 31 + rnd * 7 + i) % 256 for i in range(length))
                c.sendall(msg)
                got = b""
                while len(got) < length:
                    chunk = c.recv(length - len(got))
                    assert chunk, "closed early"
                    got += chunk
                assert got == msg, (rnd, length)
    assert not backend.errors


def test_long_lived_sessions_end_cleanly(loop_kind: str, elg_factory: ElgFactory) -> None:
    """Sessions long enough to be handed to the loop's own watch, closed by either side."""
    backend = ThreadBackend(_echo)
    with relay(elg_factory, backend) as (lb, _):
        with socket.create_connection(lb.address, timeout=10) as c:  # warm-up
            _round_trips(c, 2)
        wait_until(lambda: not lb.sessions)
        base = fd_count()
        clients = [socket.create_connection(lb.address, timeout=10) for _ in range(8)]
        for c in clients:
            _round_trips(c, PROMOTE_AFTER_READS + 40)
        for i, c in enumerate(clients):
            if i % 2:
                c.shutdown(socket.SHUT_WR)  # half-close: the echo backend closes after
                assert c.recv(10) == b""
            c.close()
        wait_until(lambda: not lb.sessions, 10)
        wait_until(lambda: fd_count() <= base, 5)
    assert not backend.errors


def test_promoted_sockets_read_through_fileio(loop_kind: str, elg_factory: ElgFactory) -> None:
    """A long-lived session reads with ``FileIO.readinto`` (cheaper than
    ``recv_into``) when the C relay step is not there: bytes still flow, a wake-up with
    nothing to read (``None``; -1 from the C step) changes nothing, and a reset ends
    the session."""
    backend = ThreadBackend(_echo)
    with relay(elg_factory, backend) as (lb, _), socket.create_connection(lb.address, 10) as c:
        _round_trips(c, PROMOTE_AFTER_READS + 5)
        (sess,) = lb.sessions
        assert isinstance(sess, Session)
        sides = (sess.front, sess.back)
        fileio = [isinstance(getattr(x._recv_into, "__self__", None), io.FileIO) for x in sides]
        assert fileio == [connection._relay is None] * 2
        # as if epoll had said readable and another reader had taken the bytes
        assert sess.el.call(lambda: [x._on_readable() for x in sides])
        assert not sess.closed
        _round_trips(c, 3)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # a reset: the read raises ConnectionResetError
        wait_until(lambda: not lb.sessions, 10)
    assert not backend.errors


@pytest.mark.parametrize("reader", ["short", "promoted"])
def test_a_reset_is_passed_on_as_a_reset(
    loop_kind: str, elg_factory: ElgFactory, reader: str
) -> None:
    """A backend that resets mid-answer makes the client see a reset, not a clean
    end: a truncated stream must not pass for a complete one. What came before the
    reset arrives first."""
    rounds = 3 if reader == "short" else PROMOTE_AFTER_READS + 5

    def handler(conn: socket.socket) -> None:
        if conn.recv(1) != b"Q":
            return  # a health check
        for _ in range(rounds):
            conn.sendall(b"part")
            if conn.recv(1) != b"n":
                return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, no FIN

    backend = ThreadBackend(handler)
    with relay(elg_factory, backend) as (lb, _), socket.create_connection(lb.address, 10) as c:
        c.sendall(b"Q")
        for _ in range(rounds):
            assert c.recv(4) == b"part"
            c.sendall(b"n")
        with pytest.raises(ConnectionResetError):
            c.recv(100)
        wait_until(lambda: not lb.sessions, 10)
    assert not backend.errors


def test_force_close_and_forced_retire_release_everything(
    loop_kind: str, elg_factory: ElgFactory
) -> None:
    backend = ThreadBackend(_echo)
    with relay(elg_factory, backend, workers=2) as (lb, _):
        for _ in range(2):  # warm-up: both loops make their watcher
            with socket.create_connection(lb.address, timeout=10) as c:
                _round_trips(c, 1)
        wait_until(lambda: not lb.sessions)
        base = fd_count()
        clients = [socket.create_connection(lb.address, timeout=10) for _ in range(6)]
        for c in clients:
            _round_trips(c, 3)
        doomed = lb.worker_elg.loops[0]
        on_doomed = {s for s in lb.sessions if s.el is doomed}
        assert 0 < len(on_doomed) < 6
        lb.worker_elg.remove(doomed.name, force_close_sessions=True)
        wait_until(lambda: not (on_doomed & set(lb.sessions)), 10)
        doomed.join(10)
        assert not doomed.alive
        alive = 0
        for c in clients:
            try:
                _round_trips(c, 1)
                alive += 1
            except (AssertionError, OSError):
                pass
        assert alive == 6 - len(on_doomed)
        lb.proxy.close_sessions()
        wait_until(lambda: not lb.sessions, 10)
        for c in clients:
            c.close()
        wait_until(lambda: fd_count() <= base, 5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "env",
    [
        {"VPROXY_SPLICE": "0"},
        {"VPROXY_FD_WATCHER": "loop"},
        {"VPROXY_EVENT_LOOP": "asyncio", "VPROXY_FD_WATCHER": "loop", "VPROXY_SPLICE": "0"},
    ],
    ids=["copy-only", "loop-watcher", "asyncio-plain"],
)
def test_fallbacks_relay_byte_exact(env: dict[str, str]) -> None:
    size = 24 * MiB
    sent_down = _pattern(size, 4)
    sent_up = _pattern(size, 5)
    got_up: list[tuple[int, str]] = []

    def handler(conn: socket.socket) -> None:
        kind = conn.recv(1)  # health checks send nothing
        if kind == b"P":
            conn.sendall(b"K")
        elif kind == b"H":
            t = threading.Thread(target=_send_all, args=(conn, sent_down))
            t.start()
            got_up.append(_recv_all(conn))
            t.join()

    def probe(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"P")
                return c.recv(1) == b"K"
        except OSError:  # no backend yet: closed (or reset: "P" was unread)
            return False

    backend = ThreadBackend(handler)
    host, port = backend.address
    try:
        with vproxy_process(
            "simple", "bind", "0", "address", "127.0.0.1", "backend", f"{host}:{port}", env=env
        ) as vp:
            wait_until(lambda: probe(vp.port), 15, 0.1)  # DOWN until the first health check
            with socket.create_connection(("127.0.0.1", vp.port), timeout=30) as c:
                c.sendall(b"H")
                t = threading.Thread(target=_send_all, args=(c, sent_up))
                t.start()
                got_down = _recv_all(c)
                t.join()
            wait_until(lambda: got_up, 10)
    finally:
        backend.close()
    assert got_down == (size, hashlib.sha256(sent_down).hexdigest())
    assert got_up == [(size, hashlib.sha256(sent_up).hexdigest())]


@pytest.mark.skipif(connection._relay is None, reason="this run is on the fallback already")
def test_the_fallback_relay_passes_this_file() -> None:
    """This file again with the C relay step turned off (``VPROXY_C_RELAY=0``):
    ``recv_into``/``FileIO.readinto`` and ``os.write``, as where it was not built."""
    env = dict(os.environ, VPROXY_C_RELAY="0")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:benchmark",
            "-p",
            "no:xdist",
            __file__,
            "-k",
            "not the_fallback_relay",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = re.search(r"(\d+) passed", out.stdout)
    assert passed is not None, out.stdout[-2000:]
    assert int(passed.group(1)) >= 8, out.stdout[-2000:]
