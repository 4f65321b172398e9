"""Tests for the dubbo processor (vproxy.processor.dubbo)."""

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
    Draining,
    Frame,
    FrontendContext,
    Limits,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Response,
    get_processor,
)
from vproxy.processor.dubbo import (
    DubboBackend,
    DubboFrontend,
    DubboProcessor,
    Header,
    encode_message,
    service_name,
)

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROPERTY = settings(max_examples=300, deadline=None, database=None)

INFO = ConnectionInfo()
HESSIAN2 = 2
REQ, TWO_WAY, EVENT = 0x80, 0x40, 0x20
CALL = REQ | TWO_WAY | HESSIAN2  # 0xc2
ONE_WAY = REQ | HESSIAN2
HEARTBEAT = REQ | TWO_WAY | EVENT | HESSIAN2  # 0xe2
OK = 20


def msg(flag: int, rid: int, body: bytes = b"", status: int = 0) -> bytes:
    """Encode independently of the module under test."""
    return struct.pack(">HBBQi", 0xDABB, flag, status, rid, len(body)) + body


def unpack(data: bytes) -> tuple[int, int, int, bytes]:
    """(flag, status, id, body) of one whole message."""
    magic, flag, status, rid, n = struct.unpack(">HBBQi", data[:16])
    assert magic == 0xDABB
    assert n == len(data) - 16
    return flag, status, rid, data[16:]


def h2(text: str) -> bytes:
    """A short hessian2 string."""
    raw = text.encode()
    assert len(raw) < 32
    return bytes([len(raw)]) + raw


def call_body(service: str = "com.example.Demo", method: str = "hi", tail: bytes = b"") -> bytes:
    return h2("2.0.2") + h2(service) + h2("0.0.0") + h2(method) + h2("") + tail


def frontend(max_body: int = 4096) -> FrontendContext:
    return DubboProcessor(Limits(max_body)).new_frontend(INFO)


def backend(max_body: int = 4096) -> DubboBackend:
    be = DubboProcessor(Limits(max_body)).new_backend(INFO)
    assert isinstance(be, DubboBackend)
    return be


Outcome = tuple[list[Frame], bytes, str | None]


def feed_all(fe: FrontendContext, chunks: Iterable[bytes]) -> Outcome:
    """Frames, bytes answered locally, and the error message if any."""
    frames: list[Frame] = []
    for chunk in chunks:
        try:
            frames.extend(fe.receive_data(chunk))
        except ProtocolError as exc:
            frames.extend(e for e in exc.events if isinstance(e, Frame))
            return frames, fe.data_to_send(), exc.message
    return frames, fe.data_to_send(), None


def one_by_one(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- the frontend, by table --------------------------------------------------------------

CALL_MSG = msg(CALL, 7, call_body())
ONE_WAY_MSG = msg(ONE_WAY, 8, call_body("com.example.Log"))
HEARTBEAT_MSG = msg(HEARTBEAT, 9, b"N")
FRONTEND_TABLE: list[tuple[str, bytes, list[tuple[int | None, bool, str | None]], bytes]] = [
    ("two-way call", CALL_MSG, [(7, True, "com.example.Demo")], b""),
    ("one-way call", ONE_WAY_MSG, [(8, False, "com.example.Log")], b""),
    ("heartbeat answered here", HEARTBEAT_MSG, [], msg(EVENT | HESSIAN2, 9, b"N", OK)),
    ("empty heartbeat", msg(HEARTBEAT, 3), [], msg(EVENT | HESSIAN2, 3, b"", OK)),
    (
        "fastjson heartbeat",
        msg(REQ | TWO_WAY | EVENT | 6, 4, b"null\n"),
        [],
        msg(EVENT | 6, 4, b"null\n", OK),
    ),
    ("one-way event dropped", msg(REQ | EVENT | HESSIAN2, 1, h2("R")), [], b""),
    ("event response dropped", msg(EVENT | HESSIAN2, 1, b"N", OK), [], b""),
    ("max id", msg(CALL, 2**64 - 1, b"x"), [(2**64 - 1, True, None)], b""),
    (
        "not hessian2: no hint",
        msg(REQ | TWO_WAY | 6, 5, b'"2.0.2"\n"a.B"\n'),
        [(5, True, None)],
        b"",
    ),
    ("empty body", msg(CALL, 6), [(6, True, None)], b""),
    (
        "mixed",
        CALL_MSG + HEARTBEAT_MSG + ONE_WAY_MSG,
        [(7, True, "com.example.Demo"), (8, False, "com.example.Log")],
        msg(EVENT | HESSIAN2, 9, b"N", OK),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected", "reply"),
    [pytest.param(d, e, r, id=name) for name, d, e, r in FRONTEND_TABLE],
)
@pytest.mark.parametrize("cut", ["whole", "bytes", "sevens"])
def test_frontend_table(
    data: bytes, expected: list[tuple[int | None, bool, str | None]], reply: bytes, cut: str
) -> None:
    chunks = {
        "whole": [data],
        "bytes": one_by_one(data),
        "sevens": [data[i : i + 7] for i in range(0, len(data), 7)],
    }[cut]
    frames, local, error = feed_all(frontend(), chunks)
    assert error is None
    assert [(f.stream_id, f.expects_response, f.hint) for f in frames] == expected
    assert all(f.new_backend for f in frames)
    assert local == reply


def test_frames_are_the_exact_request_bytes() -> None:
    frames, _, _ = feed_all(frontend(), [CALL_MSG + ONE_WAY_MSG])
    assert [f.data for f in frames] == [CALL_MSG, ONE_WAY_MSG]


FRONTEND_ERRORS: list[tuple[str, bytes, str]] = [
    ("bad first magic byte", b"\xda\xbc", "magic"),
    ("bad magic at once", b"G", "magic"),
    ("telnet", b"ls\r\n", "magic"),
    ("negative length", msg(CALL, 1)[:12] + b"\xff\xff\xff\xff", "negative"),
    ("negative from one byte", msg(CALL, 1)[:12] + b"\x80", "negative"),
    ("2**31-1", msg(CALL, 1)[:12] + b"\x7f\xff\xff\xff", "above the limit"),
    ("limit + 1", msg(CALL, 1)[:12] + b"\x00\x00\x10\x01", "above the limit"),
    ("client sends a response", msg(HESSIAN2, 1, b"", OK), "callbacks"),
    ("good then bad", CALL_MSG + b"\x00", "magic"),
]


@pytest.mark.parametrize(
    ("data", "message"), [pytest.param(d, m, id=n) for n, d, m in FRONTEND_ERRORS]
)
def test_frontend_errors_are_immediate_and_stick(data: bytes, message: str) -> None:
    fe = frontend()
    with pytest.raises(RemoteProtocolError, match=message) as info:
        fe.receive_data(data)
    if data.startswith(CALL_MSG):
        assert [e.data for e in info.value.events if isinstance(e, Frame)] == [CALL_MSG]
    with pytest.raises(RemoteProtocolError, match=message):
        fe.receive_data(CALL_MSG)


def test_registered_as_dubbo() -> None:
    proc = get_processor("dubbo", Limits(100))
    assert isinstance(proc, DubboProcessor)
    assert proc.limits.max_frame_size == 100
    assert isinstance(proc.new_frontend(INFO), DubboFrontend)
    assert isinstance(proc.new_backend(INFO), DubboBackend)


# -- limits without allocation ---------------------------------------------------------


@pytest.mark.parametrize("length", [b"\xff\xff\xff\xff", b"\x80\x00\x00\x00", b"\x7f\xff\xff\xff"])
@pytest.mark.parametrize("side", ["frontend", "backend"])
def test_bad_lengths_raise_without_allocating(length: bytes, side: str) -> None:
    proc = DubboProcessor()
    ctx = proc.new_frontend(INFO) if side == "frontend" else proc.new_backend(INFO)
    data = msg(CALL if side == "frontend" else HESSIAN2, 1)[:12] + length + b"body"
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            ctx.receive_data(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_a_huge_allowed_length_allocates_only_what_arrived() -> None:
    fe = DubboProcessor(Limits(2**31 - 2)).new_frontend(INFO)
    tracemalloc.start()
    try:
        assert fe.receive_data(msg(CALL, 1)[:12] + b"\x7f\xff\xff\xfe" + b"x" * 1000) == []
        for _ in range(100):
            assert fe.receive_data(b"y" * 100) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


# -- the backend -------------------------------------------------------------------------


def test_backend_rewrites_colliding_ids_and_restores_them() -> None:
    be = backend()
    a = Frame(msg(CALL, 1, b"from-a"), stream_id=1)
    b = Frame(msg(CALL, 1, b"from-b"), stream_id=1)
    be.send_frame(a, origin="alice")
    be.send_frame(b, origin="bob")
    wire = be.data_to_send()
    first, second = wire[: len(a.data)], wire[len(a.data) :]
    (_, _, id_a, body_a), (_, _, id_b, body_b) = unpack(first), unpack(second)
    assert (body_a, body_b) == (b"from-a", b"from-b")
    assert id_a != id_b
    assert be.outstanding == 2
    # Answers in the other order; each goes to its client with the client's id.
    events = be.receive_data(msg(HESSIAN2, id_b, b"to-b", OK) + msg(HESSIAN2, id_a, b"to-a", OK))
    assert events == [
        Response("bob", 1, msg(HESSIAN2, 1, b"to-b", OK)),
        Response("alice", 1, msg(HESSIAN2, 1, b"to-a", OK)),
    ]
    assert be.outstanding == 0


def test_backend_one_way_requests_are_not_remembered() -> None:
    be = backend()
    be.send_frame(Frame(ONE_WAY_MSG, stream_id=8, expects_response=False), origin="c")
    (flag, _, _, body) = unpack(be.data_to_send())
    assert flag == ONE_WAY
    assert body == ONE_WAY_MSG[16:]
    assert be.pending() == []


def test_backend_two_way_flag_wins_over_the_frame_field() -> None:
    be = backend()
    be.send_frame(Frame(CALL_MSG, stream_id=7, expects_response=False), origin="c")
    assert [(p.origin, p.stream_id) for p in be.pending()] == [("c", 7)]


def test_backend_drops_unknown_and_repeated_response_ids() -> None:
    be = backend()
    be.send_frame(Frame(CALL_MSG, stream_id=7), origin="c")
    (_, _, rid, _) = unpack(be.data_to_send())
    reply = msg(HESSIAN2, rid, b"r", OK)
    assert be.receive_data(msg(HESSIAN2, rid + 1000, b"?", OK)) == []
    assert be.receive_data(reply) == [Response("c", 7, msg(HESSIAN2, 7, b"r", OK))]
    assert be.receive_data(reply) == []
    assert be.unmatched == 2


def test_backend_answers_heartbeats_and_reports_readonly() -> None:
    be = backend()
    events = be.receive_data(
        msg(HEARTBEAT, 55, b"N")
        + msg(REQ | EVENT | HESSIAN2, 56, h2("R"))  # readonly: take no new requests
        + msg(REQ | EVENT | HESSIAN2, 57, h2("W"))  # some other notice
        + msg(EVENT | HESSIAN2, 58, b"N", OK)  # a heartbeat answer: dropped
    )
    assert events == [Draining("dubbo readonly event")]
    assert be.data_to_send() == msg(EVENT | HESSIAN2, 55, b"N", OK)


def test_backend_refuses_requests_from_the_backend() -> None:
    be = backend()
    with pytest.raises(RemoteProtocolError, match="callbacks"):
        be.receive_data(msg(CALL, 1, b"x"))


def test_backend_error_keeps_the_responses_before_it() -> None:
    be = backend()
    be.send_frame(Frame(CALL_MSG, stream_id=7), origin="c")
    (_, _, rid, _) = unpack(be.data_to_send())
    with pytest.raises(RemoteProtocolError) as info:
        be.receive_data(msg(HESSIAN2, rid, b"r", OK) + b"junk")
    assert info.value.events == (Response("c", 7, msg(HESSIAN2, 7, b"r", OK)),)
    with pytest.raises(LocalProtocolError):
        be.send_frame(Frame(CALL_MSG, stream_id=8), origin="c")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xda\xbb\xc2",
        b"\x00" * 16,
        msg(HEARTBEAT, 1, b"N"),
        msg(REQ | EVENT | HESSIAN2, 1),
        msg(HESSIAN2, 1, b"", OK),
        msg(CALL, 1, b"abc")[:-1],  # length field says 3, frame has 2
        msg(CALL, 1, b"abc") + b"!",
    ],
)
def test_backend_send_frame_refuses_what_is_not_a_dubbo_request(data: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        backend().send_frame(Frame(data, stream_id=1), origin=None)


def test_backend_ids_skip_those_still_in_flight_on_wrap() -> None:
    be = backend()
    be._next_id = 2**64 - 1
    be.send_frame(Frame(msg(CALL, 1), stream_id=1), origin="a")
    be.send_frame(Frame(msg(CALL, 2), stream_id=2), origin="b")
    be._next_id = 2**64 - 1  # as if 2**64 ids had gone by
    be.send_frame(Frame(msg(CALL, 3), stream_id=3), origin="c")
    wire = be.data_to_send()
    ids = [unpack(wire[i : i + 16])[2] for i in range(0, len(wire), 16)]
    assert ids == [2**64 - 1, 0, 1]


# -- service name hints --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (call_body(), "com.example.Demo"),
        (h2("2.0.2") + b"S\x00\x03a.B" + h2("x"), "a.B"),  # 'S' final chunk
        (h2("2.0.2") + b"R\x00\x02a." + b"\x01B", "a.B"),  # 'R' chunk + more
        (h2("2.0.2") + b"\x30\x03a.B", "a.B"),  # medium string
        (h2("2.0.2") + b"\x31\x00" + b"a" * 256, None),  # longer than 255
        (h2("2.0.2") + b"\x04caf\xc3", None),  # not ASCII
        (h2("2.0.2") + h2("a b"), None),  # a space
        (h2("2.0.2") + h2(""), None),
        (h2("2.0.2") + b"\x05abc", None),  # cut short
        (h2("2.0.2") + b"S\x00", None),
        (h2("2.0.2") + b"\x30", None),
        (h2("2.0.2") + b"N", None),  # null
        (h2("2.0.2"), None),
        (b"", None),
        (b"\x90", None),
    ],
)
def test_service_name(body: bytes, expected: str | None) -> None:
    data = msg(CALL, 1, body)
    assert service_name(Header.parse(data), data) == expected


def test_service_name_only_for_hessian2_requests() -> None:
    for flag in (REQ | TWO_WAY | 6, HESSIAN2, HEARTBEAT):
        data = msg(flag, 1, call_body())
        assert service_name(Header.parse(data), data) is None


def test_header_and_encode_message() -> None:
    data = encode_message(CALL, 2**64 - 1, b"xyz", status=0)
    assert data == msg(CALL, 2**64 - 1, b"xyz")
    h = Header.parse(data)
    assert (h.is_request, h.two_way, h.is_event, h.serialization) == (True, True, False, 2)
    assert (h.request_id, h.body_length, h.status) == (2**64 - 1, 3, 0)
    for bad in (b"\xda\xbb", b"\xda\xbc" + data[2:], data[:12] + b"\xff\xff\xff\xff"):
        with pytest.raises(RemoteProtocolError):
            Header.parse(bad)
    for args in ((256, 1), (1, -1), (1, 2**64)):
        with pytest.raises(ValueError, match=r"byte|id must"):
            encode_message(*args)


# -- routing through several backends ------------------------------------------------


class DubboServer:
    """A provider: answers calls in random order, heartbeats the proxy now and then."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.buf = b""
        self.queue: list[bytes] = []
        self.in_flight: set[int] = set()
        self.calls = 0
        self.one_way: list[bytes] = []
        self.heartbeats_sent = 0
        self.heartbeats_answered = 0

    def receive(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 16:
            (n,) = struct.unpack(">i", self.buf[12:16])
            if len(self.buf) < 16 + n:
                break
            flag, _, rid, body = unpack(self.buf[: 16 + n])
            self.buf = self.buf[16 + n :]
            if flag & EVENT:
                assert not flag & REQ
                self.heartbeats_answered += 1
            elif flag & TWO_WAY:
                # ids of different clients must never collide on one connection
                assert rid not in self.in_flight
                self.in_flight.add(rid)
                self.calls += 1
                self.queue.append(msg(flag & 0x1F, rid, b"re:" + body, OK))
            else:
                self.one_way.append(body)

    def respond(self, rng: random.Random) -> bytes:
        rng.shuffle(self.queue)
        n = rng.randint(0, len(self.queue))
        out, self.queue = self.queue[:n], self.queue[n:]
        for m in out:
            self.in_flight.discard(unpack(m)[2])
        if rng.random() < 0.05:
            self.heartbeats_sent += 1
            out.append(msg(HEARTBEAT, 10**9 + self.heartbeats_sent, b"N"))
        return b"".join(out)


def received_messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while data:
        (n,) = struct.unpack(">i", data[12:16])
        out.append(unpack(data[: 16 + n]))
        data = data[16 + n :]
    return out


def test_1000_interleaved_requests_over_3_backends() -> None:
    rng = random.Random(3)
    servers = [DubboServer(rng) for _ in range(3)]
    sim = SimProxy(DubboProcessor(), servers, rng)  # type: ignore[arg-type]
    bodies = {}
    stream = []
    for i in range(1000):
        rid = rng.getrandbits(64)
        while rid in bodies:
            rid = rng.getrandbits(64)
        bodies[rid] = call_body(tail=b"%d" % i)
        stream.append(msg(CALL, rid, bodies[rid]))
        if i % 100 == 0:  # heartbeats interleaved: answered by the proxy itself
            stream.append(msg(HEARTBEAT, i, b"N"))
    for chunk in random_chunks(b"".join(stream), rng, 150):
        sim.from_client(0, chunk)
        if rng.random() < 0.5:
            sim.pump()
    sim.drain()

    got = received_messages(bytes(sim.clients[0].received))
    responses = {rid: body for flag, _, rid, body in got if not flag & EVENT}
    assert responses == {rid: b"re:" + body for rid, body in bodies.items()}
    assert len(got) - len(responses) == 10  # the heartbeats' answers
    assert all(s.calls > 250 for s in servers)
    assert sum(s.heartbeats_sent for s in servers) > 0
    assert [s.heartbeats_answered for s in servers] == [s.heartbeats_sent for s in servers]
    assert all(f.hint == "com.example.Demo" for _, _, f in sim.frames)


def test_clients_with_colliding_ids_share_backends() -> None:
    rng = random.Random(4)
    servers = [DubboServer(rng) for _ in range(3)]
    sim = SimProxy(DubboProcessor(), servers, rng, clients=4)  # type: ignore[arg-type]
    expected: list[dict[int, bytes]] = [{} for _ in range(4)]
    one_way_sent = []
    next_id = [0] * 4  # every client counts from 0: the same ids on all of them
    for i in range(800):
        c = rng.randrange(4)
        rid = next_id[c]
        next_id[c] += 1
        if rng.random() < 0.1:
            body = b"log %d" % i
            one_way_sent.append(body)
            data = msg(ONE_WAY, rid, body)
        else:
            body = b"c%d call %d" % (c, i)
            expected[c][rid] = b"re:" + body
            data = msg(CALL, rid, body)
        for chunk in random_chunks(data, rng, 9):
            sim.from_client(c, chunk)
        if rng.random() < 0.3:
            sim.pump()
    sim.drain()
    for c, client in enumerate(sim.clients):
        got = {rid: body for _, _, rid, body in received_messages(bytes(client.received))}
        assert got == expected[c]
        assert client.fe.waiting == 0
    assert sorted(b for s in servers for b in s.one_way) == sorted(one_way_sent)


def test_backend_lost_names_the_waiting_clients() -> None:
    be = backend()
    be.send_frame(Frame(msg(CALL, 1), stream_id=1), origin="a")
    be.send_frame(Frame(msg(CALL, 1), stream_id=1), origin="b")
    be.send_frame(Frame(msg(ONE_WAY, 2), stream_id=2), origin="c")
    assert sorted((p.origin, p.stream_id) for p in be.pending()) == [("a", 1), ("b", 1)]


# -- properties ------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


messages = st.builds(
    msg,
    flag=st.integers(0, 255),
    rid=st.integers(0, 2**64 - 1),
    body=st.binary(max_size=40),
    status=st.integers(0, 255),
)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Valid messages, then a few bytes overwritten (often the header)."""
    data = bytearray(b"".join(draw(st.lists(messages, max_size=5))))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=200), mangled()),
    cuts=st.lists(st.integers(0, 400), max_size=20),
)
def test_fuzz_any_bytes_any_cut_frames_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    whole, whole_local, whole_error = feed_all(frontend(32), [data])
    pieces, pieces_local, pieces_error = feed_all(frontend(32), split(data, cuts))
    assert pieces == whole
    assert pieces_local == whole_local
    assert (pieces_error is None) == (whole_error is None)

    be = backend(32)
    for i in range(10):
        be.send_frame(Frame(msg(CALL, i), stream_id=i), origin=i)
    try:
        for chunk in split(data, cuts):
            be.receive_data(chunk)
    except ProtocolError:
        pass


@PROPERTY
@given(
    calls=st.lists(
        st.tuples(st.booleans(), st.integers(0, 2**64 - 1), st.binary(max_size=60)), max_size=15
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
)
def test_round_trip(calls: list[tuple[bool, int, bytes]], cuts: list[int]) -> None:
    stream = [
        encode_message(CALL if two_way else ONE_WAY, rid, body) for two_way, rid, body in calls
    ]
    frames, local, error = feed_all(frontend(60), split(b"".join(stream), cuts))
    assert (local, error) == (b"", None)
    assert [f.data for f in frames] == stream
    assert [(f.stream_id, f.expects_response) for f in frames] == [(r, t) for t, r, _ in calls]

    # through one backend connection and back: same bytes, same ids, same clients
    be = backend(60)
    for n, f in enumerate(frames):
        be.send_frame(f, origin=n)
    answers = []
    for m in received_messages_raw(be.data_to_send()):
        flag, _, rid, body = unpack(m)
        if flag & TWO_WAY:
            answers.append(msg(HESSIAN2, rid, b"re:" + body, OK))
    got: list[Response] = []
    for chunk in split(b"".join(reversed(answers)), cuts):
        got.extend(e for e in be.receive_data(chunk) if isinstance(e, Response))
    expected = [
        Response(n, rid, msg(HESSIAN2, rid, b"re:" + body, OK))
        for n, (two_way, rid, body) in enumerate(calls)
        if two_way
    ]
    assert got == list(reversed(expected))


def received_messages_raw(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack(">i", data[12:16])
        out.append(data[: 16 + n])
        data = data[16 + n :]
    return out
