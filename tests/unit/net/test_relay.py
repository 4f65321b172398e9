"""vproxy.net._relay: one relay step (read, then write) in C, on socket pairs.

The helper is built with the compiled modules (tests/unit/test_build.py fails when the
test command's install lacks it); the pure-Python run has none, and its relay is
recv_into and os.write (tests/integration/test_relay_socket_mode.py runs both).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

if os.environ.get("VPROXY_PURE_PYTHON"):
    pytest.skip("the pure-Python install has no C helpers", allow_module_level=True)

from helpers import TCPI_SEGS_IN, tcp_info_u32
from vproxy.net import connection
from vproxy.net._relay import relay


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """client -> (src  relay  dst) -> server, all non-blocking."""
    client, src = socket.socketpair()
    dst, server = socket.socketpair()
    for s in (client, src, dst, server):
        s.setblocking(False)
    yield client, src, dst, server
    for s in (client, src, dst, server):
        s.close()


def decode(r: int) -> tuple[int, int]:
    """(read, written) of a short write's result."""
    c = -r - 2
    return c & 0xFFFFFFFF, c >> 32


def test_the_connection_uses_it() -> None:
    assert connection._relay is relay


def test_relays_what_there_is(pairs: tuple[socket.socket, ...]) -> None:
    client, src, dst, server = pairs
    window = memoryview(bytearray(64))
    assert relay(src.fileno(), dst.fileno(), window) == -1  # nothing yet
    client.sendall(b"hello")
    assert relay(src.fileno(), dst.fileno(), window) == 5
    assert server.recv(100) == b"hello"
    client.sendall(b"x" * 100)  # more than the window: two steps
    assert relay(src.fileno(), dst.fileno(), window) == 64
    assert relay(src.fileno(), dst.fileno(), window) == 36
    assert server.recv(1000) == b"x" * 100
    client.shutdown(socket.SHUT_WR)
    assert relay(src.fileno(), dst.fileno(), window) == 0  # the FIN


def test_short_write_says_how_much_was_read_and_written(pairs: tuple[socket.socket, ...]) -> None:
    client, src, dst, _ = pairs
    # fill dst's way to the server until a write would block
    while True:
        try:
            dst.send(b"f" * 65536)
        except BlockingIOError:
            break
    window = memoryview(bytearray(4096))
    client.sendall(b"y" * 4096)
    r = relay(src.fileno(), dst.fileno(), window)
    assert r <= -2
    assert decode(r) == (4096, 0)  # read it all, the peer took none of it
    assert bytes(window) == b"y" * 4096  # still in the window for the caller to keep


def test_partial_write_is_counted() -> None:
    """A write that takes some of the bytes: read and written are both told."""
    client, src = socket.socketpair()
    dst, server = socket.socketpair()
    try:
        for s in (client, src, dst, server):
            s.setblocking(False)
        dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent = 0
        while True:  # fill, then free a little room by reading some at the server
            try:
                sent += dst.send(b"f" * 1024)
            except BlockingIOError:
                break
        window = memoryview(bytearray(1 << 20))
        client.sendall(b"z" * 200_000)
        got = 0
        while got < 3000:
            got += len(server.recv(3000 - got))
        r = relay(src.fileno(), dst.fileno(), window)
        assert r <= -2
        n, w = decode(r)
        assert n == 200_000
        assert 0 < w < n
        arrived = b""
        while True:
            try:
                arrived += server.recv(1 << 20)
            except BlockingIOError:
                break
        assert arrived == b"f" * (sent - got) + b"z" * w  # exactly what it said it wrote
    finally:
        for s in (client, src, dst, server):
            s.close()


@pytest.mark.parametrize("more", [True, False], ids=["msg-more", "plain"])
def test_with_msg_more_the_bytes_wait_for_the_fin(more: bool) -> None:
    """With ``MSG_MORE`` the step's bytes wait in the kernel for the shutdown that
    follows and arrive with the FIN in one segment; without, in two."""
    client, src = socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        dst = socket.create_connection(lsock.getsockname())
        server, _ = lsock.accept()
    try:
        for s in (dst, server):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.05)  # the handshake's last ACK is in
        before = tcp_info_u32(server, TCPI_SEGS_IN)
        client.sendall(b"response")
        flags = (socket.MSG_MORE,) if more else ()
        assert relay(src.fileno(), dst.fileno(), memoryview(bytearray(64)), *flags) == 8
        if more:
            with pytest.raises(BlockingIOError):
                server.recv(100)  # held for the FIN
        dst.shutdown(socket.SHUT_WR)
        server.setblocking(True)
        server.settimeout(5)
        got = b""
        while chunk := server.recv(100):
            got += chunk
        assert got == b"response"
        assert tcp_info_u32(server, TCPI_SEGS_IN) - before == (1 if more else 2)
    finally:
        for s in (client, src, dst, server):
            s.close()


def test_errors_raise_oserror_with_the_errno(pairs: tuple[socket.socket, ...]) -> None:
    client, src, dst, server = pairs
    window = memoryview(bytearray(64))
    server.close()
    client.sendall(b"abc")
    with pytest.raises(OSError, match=r"Broken pipe|reset") as exc:  # write to a closed peer
        relay(src.fileno(), dst.fileno(), window)
    assert exc.value.errno in (errno.EPIPE, errno.ECONNRESET)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError, match="Bad file descriptor") as exc:
        relay(r, dst.fileno(), window)
    assert exc.value.errno == errno.EBADF


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((1, 2), TypeError, "takes 3 or 4 arguments (2 given)"),
        ((1, 2, memoryview(bytearray(1)), 0, 0), TypeError, "takes 3 or 4 arguments (5 given)"),
        ((1, 2, memoryview(bytearray(1)), -1), ValueError, "bad send flags -1"),
        ((1, 2, memoryview(bytearray(1)), "x"), TypeError, "integer"),
        ((-1, 2, memoryview(bytearray(1))), ValueError, "src_fd must be a file descriptor"),
        ((1, 1 << 40, memoryview(bytearray(1))), ValueError, "dst_fd must be a file descriptor"),
        (("1", 2, memoryview(bytearray(1))), TypeError, "integer"),
        ((1, 2, memoryview(b"read-only")), BufferError, "not writable"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[object, ...], error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        relay(*args)  # type: ignore[arg-type]
