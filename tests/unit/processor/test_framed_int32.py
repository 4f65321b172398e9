"""Tests for the framed-int32 processor (vproxy.processor.framed_int32)."""

from __future__ import annotations

import itertools
import random
import struct
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_processor_registry_sim import SimProxy, random_chunks

from vproxy.processor.base import (
    ConnectionInfo,
    Frame,
    FrontendContext,
    Limits,
    ProtocolError,
    RemoteProtocolError,
    Response,
    get_processor,
)
from vproxy.processor.framed_int32 import (
    FramedInt32Backend,
    FramedInt32Frontend,
    FramedInt32Processor,
    encode_frame,
)

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROPERTY = settings(max_examples=300, deadline=None, database=None)

INFO = ConnectionInfo()


def frame(payload: bytes) -> bytes:
    """Encode independently of the module under test."""
    return struct.pack(">I", len(payload)) + payload


def frontend(max_frame_size: int = 1024) -> FrontendContext:
    return FramedInt32Processor(Limits(max_frame_size)).new_frontend(INFO)


def feed_all(fe: FrontendContext, chunks: Iterable[bytes]) -> tuple[list[bytes], str | None]:
    got: list[bytes] = []
    for chunk in chunks:
        try:
            got.extend(f.data for f in fe.receive_data(chunk))
        except ProtocolError as exc:
            got.extend(e.data for e in exc.events if isinstance(e, Frame))
            return got, exc.message
    return got, None


def one_by_one(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- tables ------------------------------------------------------------------------

VALID: list[tuple[bytes, list[bytes]]] = [
    (b"", []),
    (frame(b""), [frame(b"")]),
    (frame(b"x"), [frame(b"x")]),
    (
        frame(b"hello") + frame(b"") + frame(b"\x00" * 300),
        [frame(b"hello"), frame(b""), frame(b"\x00" * 300)],
    ),
    (frame(b"a" * 1024), [frame(b"a" * 1024)]),  # exactly the limit
    (frame(b"ab") + b"\x00\x00", [frame(b"ab")]),  # a partial next frame waits
    (frame(b"\xff\xff\xff\xff"), [frame(b"\xff\xff\xff\xff")]),  # payload bytes are data
]


@pytest.mark.parametrize(("data", "expected"), VALID)
@pytest.mark.parametrize("cut", ["whole", "bytes", "pairs"])
def test_valid_streams(data: bytes, expected: list[bytes], cut: str) -> None:
    chunks = {
        "whole": [data],
        "bytes": one_by_one(data),
        "pairs": [data[i : i + 2] for i in range(0, len(data), 2)],
    }[cut]
    assert feed_all(frontend(), chunks) == (expected, None)


INVALID: list[tuple[bytes, str]] = [
    (b"\x80", "negative"),  # known negative from the first byte
    (b"\xff\xff\xff\xff", "negative"),
    (b"\x80\x00\x00\x00", "negative"),
    (b"\x7f\xff\xff\xff", "above the limit"),  # 2**31 - 1
    (b"\x7f", "above the limit"),
    (b"\x00\x00\x04\x01", "above the limit"),  # limit + 1
    (b"\x00\x01", "above the limit"),  # at least 65536
    (frame(b"ok") + b"\x90", "negative"),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_streams_fail_at_once(data: bytes, message: str) -> None:
    fe = frontend()
    with pytest.raises(RemoteProtocolError, match=message):
        fe.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=message):
        fe.receive_data(frame(b"later"))  # stays broken


def test_frames_carry_sequence_ids_and_may_each_go_anywhere() -> None:
    frames = frontend().receive_data(frame(b"a") + frame(b"b") + frame(b"c"))
    assert [(f.stream_id, f.new_backend, f.expects_response, f.hint) for f in frames] == [
        (0, True, True, None),
        (1, True, True, None),
        (2, True, True, None),
    ]


def test_several_frames_per_segment_and_frames_across_segments() -> None:
    payloads = [bytes([i]) * i for i in range(50)]
    stream = b"".join(frame(p) for p in payloads)
    for size in (1, 3, 7, 64, 1000):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(frontend(), chunks) == ([frame(p) for p in payloads], None)


def test_registered_as_framed_int32() -> None:
    proc = get_processor("framed-int32", Limits(10))
    assert isinstance(proc, FramedInt32Processor)
    assert proc.limits.max_frame_size == 10
    assert isinstance(proc.new_frontend(INFO), FramedInt32Frontend)
    assert isinstance(proc.new_backend(INFO), FramedInt32Backend)


def test_encode_frame() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


# -- limits without allocation ---------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"\xff\xff\xff\xff", b"\x80\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x7f\xff\xff\xfe"],
)
@pytest.mark.parametrize("side", ["frontend", "backend"])
def test_bad_lengths_raise_without_allocating(header: bytes, side: str) -> None:
    proc = FramedInt32Processor()  # default 16 MiB limit
    ctx = proc.new_frontend(INFO) if side == "frontend" else proc.new_backend(INFO)
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            ctx.receive_data(header + b"tail")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_huge_allowed_length_allocates_only_what_arrived() -> None:
    fe = FramedInt32Processor(Limits(2**31 - 2)).new_frontend(INFO)
    tracemalloc.start()
    try:
        assert fe.receive_data(b"\x7f\xff\xff\xfe" + b"x" * 1000) == []
        for _ in range(100):
            assert fe.receive_data(b"y" * 100) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_large_frame_byte_chunks_is_linear() -> None:
    # 1 MiB in 4 KiB pieces; a whole-buffer rescan per piece would take ~256x longer.
    payload = bytes(range(256)) * 4096
    data = frame(payload)
    fe = frontend(2**20)
    got: list[Frame] = []
    for i in range(0, len(data), 4096):
        got.extend(fe.receive_data(data[i : i + 4096]))
    assert [f.data for f in got] == [data]


# -- routing through several backends --------------------------------------------------


class EchoServer:
    """A framed server: answers each frame with b"re:" + payload, in order, at random pace."""

    def __init__(self) -> None:
        self.buf = b""
        self.queue: list[bytes] = []
        self.requests = 0

    def receive(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if len(self.buf) < 4 + n:
                break
            self.queue.append(frame(b"re:" + self.buf[4 : 4 + n]))
            self.buf = self.buf[4 + n :]
            self.requests += 1

    def respond(self, rng: random.Random) -> bytes:
        n = rng.randint(0, len(self.queue))
        out, self.queue = self.queue[:n], self.queue[n:]
        return b"".join(out)


def test_1000_interleaved_requests_over_3_backends() -> None:
    rng = random.Random(1)
    servers = [EchoServer() for _ in range(3)]
    sim = SimProxy(FramedInt32Processor(), servers, rng)  # type: ignore[arg-type]
    requests = [b"req-%d" % i + b"." * rng.randint(0, 40) for i in range(1000)]
    pending = b"".join(frame(r) for r in requests)
    # The client's bytes arrive cut at random while backends answer in between.
    for chunk in random_chunks(pending, rng, 97):
        sim.from_client(0, chunk)
        if rng.random() < 0.5:
            sim.pump()
    sim.drain()
    assert bytes(sim.clients[0].received) == b"".join(frame(b"re:" + r) for r in requests)
    assert sum(s.requests for s in servers) == 1000
    assert all(s.requests > 200 for s in servers)
    assert sim.clients[0].fe.waiting == 0


def test_clients_sharing_backends_get_their_own_responses() -> None:
    rng = random.Random(2)
    servers = [EchoServer() for _ in range(3)]
    sim = SimProxy(FramedInt32Processor(), servers, rng, clients=5)  # type: ignore[arg-type]
    expected = [b""] * 5
    for i in range(600):
        c = rng.randrange(5)
        payload = b"client%d/%d" % (c, i)
        expected[c] += frame(b"re:" + payload)
        for chunk in random_chunks(frame(payload), rng, 6):
            sim.from_client(c, chunk)
        if rng.random() < 0.2:
            sim.pump()
    sim.drain()
    assert [bytes(c.received) for c in sim.clients] == expected


def test_backend_reports_pending_requests_when_it_is_lost() -> None:
    be = FramedInt32Processor().new_backend(INFO)
    be.send_frame(Frame(frame(b"a"), stream_id=0), origin="alice")
    be.send_frame(Frame(frame(b"b"), stream_id=7), origin="bob")
    assert be.receive_data(frame(b"A")) == [Response("alice", 0, frame(b"A"))]
    assert [(p.origin, p.stream_id) for p in be.pending()] == [("bob", 7)]


def test_backend_response_without_request_is_an_error() -> None:
    be = FramedInt32Processor().new_backend(INFO)
    with pytest.raises(RemoteProtocolError):
        be.receive_data(frame(b"unasked"))


# -- properties ------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Valid frames (some longer than the limit of 64), then a few bytes overwritten."""
    payloads = draw(st.lists(st.binary(max_size=70), max_size=6))
    data = bytearray(b"".join(frame(p) for p in payloads))
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=200), mangled()),
    cuts=st.lists(st.integers(0, 400), max_size=20),
)
def test_fuzz_any_bytes_any_cut_frames_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    whole, whole_error = feed_all(frontend(64), [data])
    pieces, pieces_error = feed_all(frontend(64), split(data, cuts))
    # never another exception, and the cut changes nothing but how early an error shows
    assert pieces == whole
    assert (pieces_error is None) == (whole_error is None)
    be = FramedInt32Processor(Limits(64)).new_backend(INFO)
    for i in range(10):
        be.send_frame(Frame(frame(b"q"), stream_id=i), origin=i)
    try:
        for chunk in split(data, cuts):
            be.receive_data(chunk)
    except ProtocolError:
        pass


@PROPERTY
@given(
    payloads=st.lists(st.binary(max_size=100), max_size=20),
    cuts=st.lists(st.integers(0, 3000), max_size=30),
)
def test_round_trip(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    frames, error = feed_all(frontend(100), split(stream, cuts))
    assert error is None
    assert [f[4:] for f in frames] == payloads

    be = FramedInt32Processor(Limits(100)).new_backend(INFO)
    for i in range(len(payloads)):
        be.send_frame(Frame(b"", stream_id=i), origin="o")
    got: list[Response] = []
    for chunk in split(stream, cuts):
        got.extend(e for e in be.receive_data(chunk) if isinstance(e, Response))
    assert [(r.stream_id, r.data[4:]) for r in got] == list(enumerate(payloads))
