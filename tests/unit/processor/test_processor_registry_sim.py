"""A pure-Python proxy over the processor interface, and the base building blocks' tests.

:class:`SimProxy` drives any :class:`~vproxy.processor.base.Processor` the way the real
proxy does (docs/processors.md), without sockets: clients feed their frontend contexts,
frames go to simulated backend connections, the servers behind them answer, responses
are routed back by ``origin``. The dubbo and framed-int32 tests import it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from vproxy.processor.base import (
    BackendContext,
    ConnectionInfo,
    Draining,
    Frame,
    FrontendContext,
    InOrderBackend,
    InOrderFrontend,
    Limits,
    LocalProtocolError,
    PendingRequest,
    Processor,
    ProtocolError,
    ReceiveBuffer,
    RemoteProtocolError,
    Response,
)


class Server(Protocol):
    """The application behind one backend connection."""

    def receive(self, data: bytes) -> None:
        """Bytes the proxy wrote to this connection."""

    def respond(self, rng: random.Random) -> bytes:
        """Bytes the server writes now (may be empty)."""


@dataclass
class SimClient:
    fe: FrontendContext
    received: bytearray = field(default_factory=bytearray)
    backend: int | None = None


def random_chunks(data: bytes, rng: random.Random, max_len: int = 64) -> list[bytes]:
    """Cut ``data`` at random places (pieces of 1..max_len bytes)."""
    out = []
    i = 0
    while i < len(data):
        n = rng.randint(1, max_len)
        out.append(data[i : i + n])
        i += n
    return out


class SimProxy:
    """Clients -> frontend contexts -> chosen backend contexts -> servers, and back."""

    def __init__(
        self,
        processor: Processor,
        servers: list[Server],
        rng: random.Random,
        clients: int = 1,
        pick: Callable[[Frame], int] | None = None,
    ) -> None:
        self.rng = rng
        self.servers = servers
        self.backends: list[BackendContext] = [
            processor.new_backend(ConnectionInfo(remote=("10.0.0.1", 9000 + i)))
            for i in range(len(servers))
        ]
        self.clients = [
            SimClient(processor.new_frontend(ConnectionInfo(remote=("192.0.2.1", 40000 + i))))
            for i in range(clients)
        ]
        self.notices: list[tuple[int, Draining]] = []
        self.frames: list[tuple[int, int, Frame]] = []  # (client, backend, frame)
        self._pick = pick or (lambda _frame: rng.randrange(len(servers)))

    def from_client(self, c: int, data: bytes) -> None:
        client = self.clients[c]
        for frame in client.fe.receive_data(data):
            if frame.new_backend or client.backend is None:
                client.backend = self._pick(frame)
            be = self.backends[client.backend]
            be.send_frame(frame, origin=c)
            self.frames.append((c, client.backend, frame))
            self.servers[client.backend].receive(be.data_to_send())
        client.received += client.fe.data_to_send()

    def from_backend(self, b: int, data: bytes) -> None:
        be = self.backends[b]
        for event in be.receive_data(data):
            if isinstance(event, Response):
                assert isinstance(event.origin, int)
                client = self.clients[event.origin]
                client.fe.receive_response(event)
                client.received += client.fe.data_to_send()
            else:
                self.notices.append((b, event))
        reply = be.data_to_send()
        if reply:
            self.servers[b].receive(reply)

    def pump(self, rounds: int = 1) -> None:
        """Let every server answer some of what it has, cut at random."""
        for _ in range(rounds):
            order = list(range(len(self.servers)))
            self.rng.shuffle(order)
            for b in order:
                for chunk in random_chunks(self.servers[b].respond(self.rng), self.rng):
                    self.from_backend(b, chunk)

    def drain(self, limit: int = 10_000) -> None:
        """Pump until no backend has anything outstanding."""
        for _ in range(limit):
            if not any(be.outstanding for be in self.backends):
                return
            self.pump()
        raise AssertionError("backends never answered everything")


# -- a toy in-order protocol to test the base classes with --------------------------


class _LineFrontend(InOrderFrontend):
    __slots__ = ()

    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        return buffer.take_until(b"\n", 100)


class _LineBackend(InOrderBackend):
    __slots__ = ()

    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        return buffer.take_until(b"\n", 100)


class _Lines(Processor):
    __slots__ = ()

    def new_frontend(self, info: ConnectionInfo) -> FrontendContext:
        return _LineFrontend()

    def new_backend(self, info: ConnectionInfo) -> BackendContext:
        return _LineBackend()


class _UpperServer:
    """Answers each line upper-cased, in order, a random number at a time."""

    def __init__(self) -> None:
        self.buf = b""
        self.queue: list[bytes] = []

    def receive(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        self.queue.extend(line.upper() + b"\n" for line in lines)

    def respond(self, rng: random.Random) -> bytes:
        n = rng.randint(0, len(self.queue))
        out, self.queue = self.queue[:n], self.queue[n:]
        return b"".join(out)


def test_in_order_many_clients_many_backends_keep_each_clients_order() -> None:
    rng = random.Random(7)
    sim = SimProxy(_Lines(), [_UpperServer() for _ in range(3)], rng, clients=4)
    expected: list[bytes] = [b"" for _ in range(4)]
    for i in range(400):
        c = rng.randrange(4)
        line = b"c%d-req%d\n" % (c, i)
        expected[c] += line.upper()
        for chunk in random_chunks(line, rng, 5):
            sim.from_client(c, chunk)
        if rng.random() < 0.3:
            sim.pump()
    sim.drain()
    assert [bytes(c.received) for c in sim.clients] == expected
    assert len({b for _, b, _ in sim.frames}) == 3  # really spread
    assert all(c.fe.waiting == 0 for c in sim.clients)


def test_in_order_frontend_holds_responses_until_earlier_ones_come() -> None:
    fe = _LineFrontend()
    frames = fe.receive_data(b"a\nb\nc\n")
    assert [f.stream_id for f in frames] == [0, 1, 2]
    assert fe.waiting == 3
    fe.receive_response(Response("x", 2, b"C\n"))
    fe.receive_response(Response("x", 1, b"B\n"))
    assert fe.data_to_send() == b""
    fe.receive_response(Response("x", 0, b"A\n"))
    assert fe.data_to_send() == b"A\nB\nC\n"
    assert fe.waiting == 0


@pytest.mark.parametrize("stream_id", [None, -1, 3, 99])
def test_in_order_frontend_refuses_a_response_for_no_request(stream_id: int | None) -> None:
    fe = _LineFrontend()
    fe.receive_data(b"a\nb\nc\n")
    with pytest.raises(LocalProtocolError):
        fe.receive_response(Response(None, stream_id, b"x\n"))


def test_in_order_frontend_refuses_a_second_response() -> None:
    fe = _LineFrontend()
    fe.receive_data(b"a\nb\n")
    fe.receive_response(Response(None, 1, b"B\n"))
    with pytest.raises(LocalProtocolError):
        fe.receive_response(Response(None, 1, b"B\n"))
    fe.receive_response(Response(None, 0, b"A\n"))
    with pytest.raises(LocalProtocolError):
        fe.receive_response(Response(None, 0, b"A\n"))


def test_in_order_backend_fifo_and_pending() -> None:
    be = _LineBackend()
    be.send_frame(Frame(b"a\n", stream_id=5), origin="c1")
    be.send_frame(Frame(b"note\n", expects_response=False), origin="c1")
    be.send_frame(Frame(b"b\n", stream_id=0), origin="c2")
    assert be.data_to_send() == b"a\nnote\nb\n"
    assert be.pending() == [PendingRequest("c1", 5), PendingRequest("c2", 0)]
    assert be.outstanding == 2
    assert be.receive_data(b"A\nB") == [Response("c1", 5, b"A\n")]
    assert be.receive_data(b"\n") == [Response("c2", 0, b"B\n")]
    assert be.outstanding == 0
    with pytest.raises(RemoteProtocolError, match="no request outstanding"):
        be.receive_data(b"surprise\n")


def test_errors_stick_and_carry_the_events_before_them() -> None:
    be = _LineBackend()
    be.send_frame(Frame(b"a\n", stream_id=0), origin=1)
    with pytest.raises(RemoteProtocolError) as info:
        be.receive_data(b"A\nB\n")
    assert info.value.events == (Response(1, 0, b"A\n"),)
    with pytest.raises(RemoteProtocolError):
        be.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="broken"):
        be.send_frame(Frame(b"x\n"), origin=1)

    fe = _LineFrontend()
    with pytest.raises(RemoteProtocolError) as info2:
        fe.receive_data(b"ok\n" + b"x" * 200)
    assert [e.data for e in info2.value.events if isinstance(e, Frame)] == [b"ok\n"]
    with pytest.raises(RemoteProtocolError) as again:
        fe.receive_data(b"fine\n")
    assert again.value is not info2.value
    assert again.value.message == info2.value.message


def test_sticky_error_keeps_a_custom_subclass() -> None:
    class Oops(RemoteProtocolError):
        def __init__(self) -> None:
            super().__init__("oops", wire=b"bye")

    class Fe(FrontendContext):
        def on_data(self, data: bytes, out: list[Frame]) -> None:
            raise Oops()

    fe = Fe()
    with pytest.raises(Oops) as first:
        fe.receive_data(b"x")
    assert first.value.wire == b"bye"
    with pytest.raises(Oops) as second:
        fe.receive_data(b"x")
    assert second.value.message == "oops"


# -- ReceiveBuffer -----------------------------------------------------------------


def test_receive_buffer_take_peek_and_compaction() -> None:
    buf = ReceiveBuffer()
    assert buf.peek(4) == b""
    buf.feed(b"hello")
    assert buf.peek(2) == b"he"
    assert buf.peek(99) == b"hello"
    assert buf.take(2) == b"he"
    buf.feed(b" world")
    assert len(buf) == 9
    assert buf.take(9) == b"llo world"
    assert len(buf) == 0
    with pytest.raises(LocalProtocolError):
        buf.take(1)
    with pytest.raises(LocalProtocolError):
        buf.take(-1)


@pytest.mark.parametrize(
    ("chunks", "delimiter", "limit", "expected"),
    [
        ([b"ab\ncd\n"], b"\n", 10, [b"ab\n", b"cd\n"]),
        ([b"a", b"b", b"\r", b"\n", b"c\r\n"], b"\r\n", 10, [b"ab\r\n", b"c\r\n"]),
        ([b"abc\r", b"\r\n"], b"\r\n", 10, [b"abc\r\r\n"]),
        ([b"\n\n"], b"\n", 0, [b"\n", b"\n"]),
        ([b"12345\n"], b"\n", 5, [b"12345\n"]),
        ([b"1234", b"5", b"\n"], b"\n", 5, [b"12345\n"]),
    ],
)
def test_receive_buffer_take_until(
    chunks: list[bytes], delimiter: bytes, limit: int, expected: list[bytes]
) -> None:
    buf = ReceiveBuffer()
    got = []
    for chunk in chunks:
        buf.feed(chunk)
        while (line := buf.take_until(delimiter, limit)) is not None:
            got.append(line)
    assert got == expected


@pytest.mark.parametrize("chunks", [[b"123456"], [b"1", b"2", b"3", b"4", b"5", b"6"]])
def test_receive_buffer_take_until_limit(chunks: list[bytes]) -> None:
    buf = ReceiveBuffer()
    with pytest.raises(RemoteProtocolError, match="within 5 bytes"):  # noqa: PT012
        for chunk in chunks:
            buf.feed(chunk)
            buf.take_until(b"\n", 5)


def test_receive_buffer_take_until_refuses_empty_delimiter() -> None:
    buf = ReceiveBuffer()
    with pytest.raises(LocalProtocolError):
        buf.take_until(b"", 5)


def test_protocol_error_hierarchy() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    err = RemoteProtocolError("x")
    assert (err.message, err.wire, err.events) == ("x", b"", ())


def test_limits_defaults() -> None:
    assert Limits().max_frame_size == 16 * 1024 * 1024
