"""Socket mode, ``connect(client_first=True)``: the client's first bytes test the connect.

The tcp-lb reads what the client already sent right after ``connect()`` and writes it
to the backend: on loopback the handshake is over by then, so the session is linked
without waiting for the connect. These tests drive :class:`Session` on a real loop
with real sockets: bytes written before the connect is known, a client that waits
for the server to speak first, a refused connect (the bytes go to the next server),
a connect still in progress (a backend whose accept queue is full) and a client that
reset its connection. And through a tcp-lb: a backend that speaks first, and a dead
server among live ones while clients send before they are accepted.
"""

from __future__ import annotations

import _socket
import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from helpers import manual_tcp_lb, wait_until
from vproxy.net.connection import Session
from vproxy.net.event_loop import EventLoop, EventLoopGroup
from vproxy.net.server_sock import ACCEPTED_NODELAY, bind_listener

ElgFactory = Callable[..., EventLoopGroup]
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def loop(elg_factory: ElgFactory) -> EventLoop:
    return elg_factory("w", 1).next()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Where the test's clients connect; the test accepts them as vproxy would."""
    sock = bind_listener("127.0.0.1", 0)
    yield sock
    sock.close()


def _accept(listener: socket.socket) -> _socket.socket:
    """Accept the way ServerSock does: the C socket type, non-blocking."""
    select.select([listener], [], [], 5)
    fd, _ = listener._accept()  # type: ignore[attr-defined]
    sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    sock.setblocking(False)
    return sock


class Attempt:
    """One session and what its connect callbacks reported."""

    def __init__(self, loop: EventLoop, accepted: _socket.socket) -> None:
        self.loop = loop
        self.results: list[OSError | None] = []
        self.closed = threading.Event()
        self.session: Session = loop.call(
            lambda: Session(
                loop, ("127.0.0.1", 0), 16384, 16384, 10_000, self._closed, sock=accepted
            )
        )

    def _closed(self, session: Session) -> None:
        self.closed.set()

    def connect(self, address: tuple[str, int], timeout: float = 5.0) -> list[OSError | None]:
        """Connect with client_first; what on_done got before connect() returned."""

        def run() -> list[OSError | None]:
            self.session.connect(
                address[0], address[1], timeout, self.results.append, client_first=True
            )
            return list(self.results)

        return self.loop.call(run)

    def close(self) -> None:
        self.loop.call(self.session.abort)
        assert self.closed.wait(5)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_accepted_sockets_inherit_nodelay(listener: socket.socket) -> None:
    assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    with socket.create_connection(listener.getsockname()):
        accepted = _accept(listener)
        try:
            assert ACCEPTED_NODELAY
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            accepted.close()


def test_first_bytes_reach_the_backend_before_link(
    loop: EventLoop, listener: socket.socket
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as backend:
        synchronous = 0
        for _ in range(5):
            with socket.create_connection(listener.getsockname(), timeout=5) as client:
                client.sendall(REQUEST)
                time.sleep(0.01)  # the bytes are in the accepted socket's queue
                a = Attempt(loop, _accept(listener))
                early = a.connect(backend.getsockname())
                synchronous += early == [None]
                conn, _ = backend.accept()
                with conn:
                    conn.settimeout(5)
                    # Before link(): the bytes are there already (written in connect).
                    assert _recv_exactly(conn, len(REQUEST)) == REQUEST
                    wait_until(lambda: a.results == [None], 5)  # noqa: B023
                    loop.call(a.session.link)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    assert client.recv(100).endswith(b"ok")
                    client.sendall(b"more")
                    assert _recv_exactly(conn, 4) == b"more"
                    assert loop.call(lambda: a.session.front.bytes_in) == len(REQUEST) + 4  # noqa: B023
                    conn.shutdown(socket.SHUT_WR)
                    assert client.recv(10) == b""  # the FIN passed on
                client.close()
                assert a.closed.wait(5)
        # On loopback the handshake is over when connect() returns: the connect is
        # known at once (not watched) in the usual case.
        assert synchronous >= 1


def test_client_that_waits_for_the_server(loop: EventLoop, listener: socket.socket) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as backend,
        socket.create_connection(listener.getsockname(), timeout=5) as client,
    ):
        a = Attempt(loop, _accept(listener))
        assert a.connect(backend.getsockname()) == []  # nothing to send: connect watched
        wait_until(lambda: a.results == [None], 5)
        loop.call(a.session.link)
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(5)
            conn.sendall(b"220 hello\r\n")
            assert _recv_exactly(client, 11) == b"220 hello\r\n"
            client.sendall(b"HELO x\r\n")
            assert _recv_exactly(conn, 8) == b"HELO x\r\n"
        a.close()


def test_refused_connect_keeps_the_bytes_for_the_next_server(
    loop: EventLoop, listener: socket.socket
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as backend,
        socket.create_connection(listener.getsockname(), timeout=5) as client,
    ):
        client.sendall(REQUEST)
        time.sleep(0.01)
        a = Attempt(loop, _accept(listener))
        a.connect(("127.0.0.1", _dead_port()))
        wait_until(lambda: len(a.results) == 1, 5)
        err = a.results[0]
        assert isinstance(err, ConnectionRefusedError)
        a.connect(backend.getsockname())
        wait_until(lambda: len(a.results) == 2, 5)
        assert a.results[1] is None
        loop.call(a.session.link)
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(5)
            assert _recv_exactly(conn, len(REQUEST)) == REQUEST
        assert loop.call(lambda: a.session.front.bytes_in) == len(REQUEST)  # counted once
        a.close()


def test_connect_in_progress_sends_the_bytes_once_connected(
    loop: EventLoop, listener: socket.socket
) -> None:
    # A backend whose accept queue is full drops the SYN: the connect stays in
    # progress (the write finds it so) until a retransmitted SYN finds room.
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(0)
    filler = socket.create_connection(backend.getsockname())
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            client.sendall(REQUEST)
            time.sleep(0.01)
            a = Attempt(loop, _accept(listener))
            assert a.connect(backend.getsockname(), timeout=10) == []
            assert loop.call(lambda: a.session.front.backlog) is not None
            first, _ = backend.accept()  # the filler: room for the retransmitted SYN
            first.close()
            wait_until(lambda: a.results == [None], 10)
            loop.call(a.session.link)
            conn, _ = backend.accept()
            with conn:
                conn.settimeout(5)
                assert _recv_exactly(conn, len(REQUEST)) == REQUEST
                conn.sendall(b"ok")
                assert _recv_exactly(client, 2) == b"ok"
            a.close()
    finally:
        filler.close()
        backend.close()


def test_client_reset_before_connect_ends_the_session(
    loop: EventLoop, listener: socket.socket
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as backend:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        accepted = _accept(listener)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        select.select([accepted], [], [], 5)
        a = Attempt(loop, accepted)
        assert a.connect(backend.getsockname()) == []
        assert a.closed.wait(5)
        assert a.results == []  # on_done is not called for a closed session
        assert loop.call(lambda: a.session.back.sock) is None


# -- through a tcp-lb ----------------------------------------------------------------


def _serve(backend: socket.socket, handler: Callable[[socket.socket], None]) -> threading.Thread:
    def run() -> None:
        while True:
            try:
                conn, _ = backend.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    handler(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stop(backend: socket.socket, t: threading.Thread) -> None:
    with contextlib.suppress(OSError):
        backend.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    backend.close()
    t.join(5)
    assert not t.is_alive()


def test_tcp_lb_backend_that_speaks_first(loop_kind: str, elg_factory: ElgFactory) -> None:
    def greet(conn: socket.socket) -> None:
        conn.sendall(b"220 ready\r\n")
        conn.sendall(_recv_exactly(conn, 6).upper())

    backend = socket.create_server(("127.0.0.1", 0))
    t = _serve(backend, greet)
    try:
        with manual_tcp_lb(elg_factory, [backend.getsockname()]) as (lb, _):
            for _ in range(3):
                with socket.create_connection(lb.address, timeout=5) as c:
                    assert _recv_exactly(c, 11) == b"220 ready\r\n"
                    c.sendall(b"hello\n")
                    assert _recv_exactly(c, 6) == b"HELLO\n"
    finally:
        _stop(backend, t)


def test_tcp_lb_dead_server_gets_no_bytes_lost(loop_kind: str, elg_factory: ElgFactory) -> None:
    def echo(conn: socket.socket) -> None:
        conn.sendall(_recv_exactly(conn, len(REQUEST)))

    backend = socket.create_server(("127.0.0.1", 0))
    t = _serve(backend, echo)
    try:
        dead = ("127.0.0.1", _dead_port())
        with manual_tcp_lb(elg_factory, [dead, backend.getsockname()]) as (lb, group):
            acceptor = lb.acceptor_elg.loops[0]
            for _ in range(6):
                # Hold the acceptor until the client's bytes are in: the session
                # reads them right after its connect, refused or not.
                hold = threading.Event()
                acceptor.call_soon(hold.wait, 5)
                with socket.create_connection(lb.address, timeout=5) as c:
                    c.sendall(REQUEST)
                    time.sleep(0.01)
                    hold.set()
                    assert _recv_exactly(c, len(REQUEST)) == REQUEST
            assert group.get("s0").connect_failures >= 1
    finally:
        _stop(backend, t)
