"""The sans-IO HTTP/2 rules (vproxy.processor.h2), without sockets.

Claims:

* a client and a backend side talk to each other in memory (preface, SETTINGS, a
  request with the windows this module grants);
* any bytes fed to the client-facing side, cut anywhere, give events or
  ``RemoteProtocolError`` (hypothesis), and an error carries a GOAWAY to send;
* floods are refused with ENHANCE_YOUR_CALM before they are buffered:
  CONTINUATION (count and size per header block, however the bytes are cut), rapid
  reset, control frames, answers queued while output is blocked; an HPACK bomb stops
  at the header list limit;
* the same traffic spread over time is not a flood;
* header helpers: the hint, the forwarding fields, local responses.
"""

from __future__ import annotations

import ast
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import source_of
from vproxy.processor import h2 as h2mod
from vproxy.processor.h2 import (
    PREFACE,
    BackendFacing,
    ClientFacing,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    H2Limits,
    RemoteProtocolError,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    TokenBucket,
    authority_hint,
    forward_headers,
    local_response,
)

FRAMES = settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# HPACK: static-table :method GET, :scheme http, :path /, then :authority (index 1)
# as a literal without indexing: the same bytes are a valid block on every stream.
BLOCK = b"\x82\x86\x84\x01\x06a.test"
SETTINGS_FRAME = struct.pack(">HBBBL", 0, 0, 4, 0, 0)


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, sid) + payload


def headers(sid: int, *, end_headers: bool = True, end_stream: bool = True) -> bytes:
    flags = (0x4 if end_headers else 0) | (0x1 if end_stream else 0)
    return frame(1, flags, sid, BLOCK)


def rst(sid: int, code: int = 8) -> bytes:
    return frame(3, 0, sid, struct.pack(">L", code))


def ping(data: bytes = b"12345678") -> bytes:
    return frame(6, 0, 0, data)


def opened(limits: H2Limits | None = None) -> ClientFacing:
    side = ClientFacing(limits or H2Limits())
    side.initiate()
    side.data_to_send()
    side.receive_data(PREFACE + SETTINGS_FRAME, 0.0)
    return side


def feed(side: ClientFacing, pieces: list[bytes], tick: float = 0.0) -> None:
    """Feed ``pieces`` one by one, ``tick`` seconds apart, writing nothing back."""
    now = 1.0
    for piece in pieces:
        side.receive_data(piece, now)
        side.data_to_send()
        now += tick


def goaway_code(wire: bytes) -> int:
    """Error code of the GOAWAY in ``wire`` (the frames vproxy wrote)."""
    pos = 0
    while pos + 9 <= len(wire):
        hi, lo, ftype, _, _ = struct.unpack_from(">HBBBL", wire, pos)
        n = (hi << 8) | lo
        if ftype == 7:
            return int(struct.unpack_from(">L", wire, pos + 9 + 4)[0])
        pos += 9 + n
    raise AssertionError(f"no GOAWAY in {wire[:100]!r}")


# -- a pair in memory ----------------------------------------------------------------------


def test_client_and_backend_sides_talk() -> None:
    server = ClientFacing(H2Limits())
    client = BackendFacing(H2Limits())
    server.initiate()
    client.initiate()
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    req = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
    client.send_headers(1, req, end_stream=True)
    events = server.receive_data(client.data_to_send(), 1.0)
    got = [e for e in events if isinstance(e, RequestReceived)]
    assert got
    assert list(got[0].headers) == req
    # what was advertised: the limits, and the connection window granted at once
    assert client.peer_max_concurrent_streams == 100
    assert client.local_flow_control_window(1) == 256 * 1024
    assert client.outbound_flow_control_window == 1024 * 1024
    assert server.streams_opened == 1


def test_garbage_instead_of_preface_is_a_protocol_error_with_goaway() -> None:
    side = ClientFacing(H2Limits())
    side.initiate()
    side.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert info.value.error_code == ErrorCode.PROTOCOL_ERROR
    assert goaway_code(info.value.wire) == ErrorCode.PROTOCOL_ERROR


# -- any bytes ----------------------------------------------------------------------------


def _feed_all(prefix: bytes, data: bytes, cuts: list[int]) -> None:
    side = ClientFacing(H2Limits(max_header_list_size=4096))
    side.initiate()
    side.data_to_send()
    stream = prefix + data
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    now = 0.0
    error: RemoteProtocolError | None = None
    for piece in pieces:
        now += 0.001
        try:
            side.receive_data(piece, now)
        except RemoteProtocolError as exc:
            error = exc
            break
        side.data_to_send()
    if error is not None:
        assert error.wire  # always something to say before closing


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=700), max_size=6))
def test_any_bytes_give_events_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    _feed_all(b"", data, cuts)


_frames = st.builds(
    lambda t, f, sid, payload: frame(t, f, sid, payload),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x20]),
    st.integers(min_value=0, max_value=255),
    st.sampled_from([0, 1, 2, 3, 5, 0x7FFFFFFF]),
    st.one_of(st.binary(max_size=40), st.just(BLOCK), st.just(b"\x00" * 8)),
)


@FRAMES
@given(
    st.lists(_frames, max_size=12),
    st.lists(st.integers(min_value=0, max_value=700), max_size=6),
)
def test_any_frames_after_the_preface_give_events_or_protocol_error(
    frames: list[bytes], cuts: list[int]
) -> None:
    _feed_all(PREFACE + SETTINGS_FRAME, b"".join(frames), cuts)


# -- floods ------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [None, 1, 7, 9, 100])
def test_continuation_flood_refused_before_it_is_buffered(cut: int | None) -> None:
    side = opened()
    flood = headers(1, end_headers=False) + frame(9, 0, 1) * 10_000
    step = cut or len(flood)
    with pytest.raises(RemoteProtocolError) as info:
        feed(side, [flood[i : i + step] for i in range(0, len(flood), step)])
    assert info.value.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert goaway_code(info.value.wire) == ErrorCode.ENHANCE_YOUR_CALM
    assert "CONTINUATION" in str(info.value)
    # refused at the frame header of the 17th CONTINUATION
    assert side._block_frames <= 16


def test_continuation_block_size_is_capped() -> None:
    limits = H2Limits(max_header_list_size=4096, max_continuation_frames=100)
    side = opened(limits)
    flood = headers(1, end_headers=False) + frame(9, 0, 1, b"\x00" * 16_000)
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(flood, 1.0)
    assert "header block over" in str(info.value)


def test_a_few_continuations_are_fine() -> None:
    side = opened()
    block = BLOCK
    data = frame(1, 0x1, 1, block[:3]) + frame(9, 0, 1, block[3:5]) + frame(9, 0x4, 1, block[5:])
    events = side.receive_data(data, 1.0)
    assert any(isinstance(e, RequestReceived) for e in events)


def test_hpack_bomb_stops_at_the_header_list_limit() -> None:
    side = opened(H2Limits(max_header_list_size=1000))
    # one literal with incremental indexing (0x40, new name), 900 bytes, then the
    # same field by its dynamic-table index (0xbe = 62) many times: tiny on the wire
    name, value = b"x-big", b"v" * 900
    lit = b"\x40" + bytes([len(name)]) + name + b"\x7f" + _int(len(value), 7) + value
    block = b"\x82\x86\x84\x01\x06a.test" + lit + b"\xbe" * 50
    assert len(block) < 1000
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(frame(1, 0x5, 1, block), 1.0)
    assert info.value.error_code == ErrorCode.ENHANCE_YOUR_CALM


def _int(value: int, prefix: int) -> bytes:
    """HPACK integer continuation bytes after a full prefix (RFC 7541 §5.1)."""
    value -= (1 << prefix) - 1
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_rapid_reset_is_a_flood() -> None:
    side = opened()
    pairs = [headers(2 * i + 1) + rst(2 * i + 1) for i in range(20_000)]
    with pytest.raises(RemoteProtocolError) as info:
        feed(side, pairs)
    assert info.value.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert "reset" in str(info.value)
    assert side.streams_opened <= 201


def test_resets_of_old_streams_and_slow_resets_are_not_a_flood() -> None:
    side = opened()
    now = 1.0
    for i in range(1000):
        sid = 2 * i + 1
        side.receive_data(headers(sid), now)
        now += 1.5  # older than rapid_reset_age when reset
        events = side.receive_data(rst(sid), now)
        assert any(isinstance(e, StreamReset) for e in events)
        side.data_to_send()
    assert side.rapid_resets == 0


def test_ratio_rule_catches_a_slow_trickle_of_rapid_resets() -> None:
    limits = H2Limits(rapid_reset_burst=10_000, rapid_reset_min_streams=100)
    side = opened(limits)
    pairs = [headers(2 * i + 1) + rst(2 * i + 1) for i in range(1000)]
    with pytest.raises(RemoteProtocolError, match="most streams reset"):
        feed(side, pairs, tick=1.0)


@pytest.mark.parametrize(
    "flood",
    [
        ping(),
        SETTINGS_FRAME,
        frame(2, 0, 1, b"\x00\x00\x00\x00\x10"),  # PRIORITY
    ],
)
def test_control_frame_flood(flood: bytes) -> None:
    side = opened()
    with pytest.raises(RemoteProtocolError) as info:
        feed(side, [flood] * 3000)
    assert info.value.error_code == ErrorCode.ENHANCE_YOUR_CALM


def test_empty_data_flood() -> None:
    side = opened()
    side.receive_data(headers(1, end_stream=False), 1.0)
    with pytest.raises(RemoteProtocolError):
        side.receive_data(frame(0, 0, 1) * 3000, 1.0)


def test_pings_spread_over_time_are_fine() -> None:
    side = opened()
    for i in range(5000):
        side.receive_data(ping(), 1.0 + i * 0.01)  # 100 per second
        side.data_to_send()


def test_answers_queued_while_output_is_blocked_are_capped() -> None:
    limits = H2Limits(control_burst=100_000, max_queued_answers=50)
    side = opened(limits)
    side.output_blocked = True
    for _ in range(50):
        side.receive_data(ping(), 1.0)
    with pytest.raises(RemoteProtocolError, match="does not read"):
        side.receive_data(ping(), 1.0)
    side2 = opened(limits)
    side2.output_blocked = True
    for _ in range(40):
        side2.receive_data(ping(), 1.0)
    side2.unblocked()
    for _ in range(40):
        side2.receive_data(ping(), 1.0)


def test_token_bucket_refills() -> None:
    b = TokenBucket(3, 1.0)
    assert all(b.take(0.0) for _ in range(3))
    assert not b.take(0.0)
    assert not b.take(0.5)  # -1.0 + 0.5 - 1 < 0
    assert b.take(10.0)  # refilled to the size, never beyond


# -- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "hint"),
    [
        ([(b":authority", b"a.test:8443")], "a.test"),
        ([(b":authority", b"A.Test")], "a.test"),
        ([(b":authority", b"[::1]:443")], "::1"),
        ([(b":authority", b"user@b.test:1")], "b.test"),
        ([(b"host", b"h.test:80")], "h.test"),
        ([(b"host", b"h.test"), (b":authority", b"a.test")], "a.test"),
        ([(b":authority", b"\xff\xfe")], None),
        ([(b":authority", b"[::1")], None),
        ([(b":path", b"/")], None),
    ],
)
def test_authority_hint(fields: list[tuple[bytes, bytes]], hint: str | None) -> None:
    assert authority_hint(fields) == hint


def test_forward_headers_append_xff_and_replace_client_port() -> None:
    fields = [
        (b":method", b"GET"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-client-port", b"1"),
        (b"x-forwarded-for", b"10.0.0.2"),
    ]
    out = forward_headers(fields, "192.0.2.7", 40000)
    assert out == [
        (b":method", b"GET"),
        (b"x-forwarded-for", b"10.0.0.1, 10.0.0.2, 192.0.2.7"),
        (b"x-client-port", b"40000"),
    ]


def test_local_response() -> None:
    fields, body = local_response(503, "no backend\n")
    assert (b":status", b"503") in fields
    assert (b"content-length", str(len(body)).encode()) in fields


def test_no_io_imports_and_docstring() -> None:
    path = source_of(h2mod)
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for n in names:
            assert n.split(".")[0] not in {"asyncio", "socket", "selectors", "time", "threading"}
    doc = ast.get_docstring(tree) or ""
    assert "Owns" in doc
    assert "Must not" in doc


def _backend_after_goaway(chunk: int) -> list[object]:
    """A backend answers stream 1 after a GOAWAY(last=1) and never answers stream 3."""
    from hpack import Encoder
    from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame

    client = BackendFacing(H2Limits())
    client.initiate()
    req = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
    client.send_headers(1, req, end_stream=True)
    client.send_headers(3, req, end_stream=True)
    client.data_to_send()
    enc = Encoder()
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 1
    headers = HeadersFrame(1)
    headers.data = enc.encode([(b":status", b"200")])
    headers.flags.add("END_HEADERS")
    data = DataFrame(1)
    data.data = b"hello"
    data.flags.add("END_STREAM")
    wire = b"".join(f.serialize() for f in (SettingsFrame(0), goaway, headers, data))
    events: list[object] = []
    for i in range(0, len(wire), chunk):
        events += client.receive_data(wire[i : i + chunk], 0.0)
    kinds = [type(e) for e in events]
    assert ConnectionTerminated in kinds
    term = next(e for e in events if isinstance(e, ConnectionTerminated))
    assert term.last_stream_id == 1
    assert term.error_code == ErrorCode.NO_ERROR
    # what the backend still owed for stream 1 arrives after the GOAWAY
    assert kinds.index(ConnectionTerminated) < kinds.index(ResponseReceived)
    assert any(isinstance(e, DataReceived) and e.stream_id == 1 and e.end_stream for e in events)
    return events


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_backend_goaway_lets_the_owed_responses_through(chunk: int) -> None:
    _backend_after_goaway(chunk)


def test_backend_short_goaway_is_a_protocol_error() -> None:
    client = BackendFacing(H2Limits())
    client.initiate()
    with pytest.raises(h2mod.RemoteProtocolError) as info:
        client.receive_data(SETTINGS_FRAME + frame(7, 0, 0, b"\x00\x00\x00\x01"), 0.0)
    assert info.value.error_code == ErrorCode.FRAME_SIZE_ERROR


# -- the protocol, frame by frame ------------------------------------------------------------


def frames_of(wire: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame vproxy wrote."""
    out = []
    pos = 0
    while pos + 9 <= len(wire):
        hi, lo, ftype, flags, sid = struct.unpack_from(">HBBBL", wire, pos)
        n = (hi << 8) | lo
        out.append((ftype, flags, sid & 0x7FFFFFFF, wire[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    return out


def rst_codes(wire: bytes) -> dict[int, int]:
    return {sid: struct.unpack(">L", p)[0] for t, _, sid, p in frames_of(wire) if t == 3}


def block_of(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A header block that only uses literals without indexing (no table state)."""
    out = b""
    for name, value in fields:
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


@pytest.mark.parametrize(
    "fields",
    [
        [*REQ, (b"X-Upper", b"1")],
        [*REQ, (b"connection", b"close")],
        [*REQ, (b"te", b"gzip")],
        [*REQ, (b"transfer-encoding", b"chunked")],
        [(b":method", b"GET"), (b"x", b"1"), (b":path", b"/"), (b":scheme", b"http")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],  # no :path
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")],
        [*REQ, (b":method", b"GET")],  # duplicated pseudo
        [*REQ, (b":status", b"200")],  # response pseudo in a request
        [*REQ, (b"x", b"a\r\nb")],
        [*REQ, (b"x", b" padded")],
        [*REQ, (b"bad name", b"1")],
        [*REQ, (b"host", b"b")],  # differs from :authority
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],  # no authority/host
        [*REQ, (b"content-length", b"x")],
    ],
)
def test_malformed_requests_reset_only_their_stream(fields: list[tuple[bytes, bytes]]) -> None:
    side = opened()
    events = side.receive_data(frame(1, 0x5, 1, block_of(fields)), 1.0)
    assert not [e for e in events if isinstance(e, RequestReceived)]
    assert rst_codes(side.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    # the connection goes on
    events = side.receive_data(headers(3), 1.0)
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [3]


def test_valid_request_variants_are_accepted() -> None:
    side = opened()
    ok = [
        [*REQ, (b"te", b"trailers"), (b"x", b""), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")],
        [(b":method", b"CONNECT"), (b":authority", b"h:443")],
    ]
    for i, fields in enumerate(ok):
        events = side.receive_data(frame(1, 0x5, 2 * i + 1, block_of(fields)), 1.0)
        got = [e for e in events if isinstance(e, RequestReceived)]
        assert got
        assert got[0].headers == fields
    assert not rst_codes(side.data_to_send())


def test_content_length_must_match_data() -> None:
    side = opened()
    cl = block_of([*REQ, (b"content-length", b"3")])
    side.receive_data(frame(1, 0x4, 1, cl) + frame(0, 0x1, 1, b"ab"), 1.0)
    assert rst_codes(side.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    events = side.receive_data(frame(1, 0x4, 3, cl) + frame(0, 0x1, 3, b"abc"), 1.0)
    assert next(e for e in events if isinstance(e, DataReceived)).end_stream
    side.receive_data(frame(1, 0x5, 5, cl), 1.0)  # content-length 3, no DATA
    assert rst_codes(side.data_to_send()) == {5: ErrorCode.PROTOCOL_ERROR}


def test_trailers_end_the_stream_and_must_have_no_pseudo_fields() -> None:
    side = opened()
    side.receive_data(headers(1, end_stream=False), 1.0)
    events = side.receive_data(frame(1, 0x5, 1, block_of([(b"x-sum", b"1")])), 1.0)
    assert [type(e).__name__ for e in events] == ["TrailersReceived"]
    side.receive_data(headers(3, end_stream=False), 1.0)
    side.receive_data(frame(1, 0x5, 3, block_of([(b":path", b"/")])), 1.0)
    assert rst_codes(side.data_to_send()) == {3: ErrorCode.PROTOCOL_ERROR}
    side.receive_data(headers(5, end_stream=False), 1.0)
    side.receive_data(frame(1, 0x4, 5, block_of([(b"x", b"1")])), 1.0)  # no END_STREAM
    assert rst_codes(side.data_to_send()) == {5: ErrorCode.PROTOCOL_ERROR}


def test_data_after_end_stream_is_stream_closed() -> None:
    side = opened()
    side.receive_data(headers(1), 1.0)  # END_STREAM: half-closed (remote)
    events = side.receive_data(frame(0, 0, 1, b"late"), 1.0)
    assert StreamReset(1, ErrorCode.STREAM_CLOSED) in events
    assert rst_codes(side.data_to_send()) == {1: ErrorCode.STREAM_CLOSED}


def test_frames_for_a_stream_we_reset_are_ignored() -> None:
    side = opened()
    side.receive_data(headers(1, end_stream=False), 1.0)
    assert side.reset_stream(1, ErrorCode.CANCEL)
    side.data_to_send()
    assert not side.reset_stream(1)  # already closed: nothing sent
    events = side.receive_data(frame(0, 0, 1, b"x" * 100) + frame(1, 0x5, 1, BLOCK), 1.0)
    assert events == []
    assert side.data_to_send() == b""


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(0, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),  # DATA on stream 0
        (frame(0, 0, 7, b"x"), ErrorCode.PROTOCOL_ERROR),  # DATA on an idle stream
        (frame(1, 0x5, 2, BLOCK), ErrorCode.PROTOCOL_ERROR),  # even stream from a client
        (frame(3, 0, 9, b"\x00\x00\x00\x08"), ErrorCode.PROTOCOL_ERROR),  # RST idle
        (frame(3, 0, 1, b"\x00"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(4, 0, 1), ErrorCode.PROTOCOL_ERROR),  # SETTINGS on a stream
        (frame(4, 0, 0, b"\x00" * 5), ErrorCode.FRAME_SIZE_ERROR),
        (frame(4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), ErrorCode.FLOW_CONTROL_ERROR),
        (frame(4, 0, 0, b"\x00\x05\x00\x00\x10\x00"), ErrorCode.PROTOCOL_ERROR),  # frame size
        (frame(4, 0, 0, b"\x00\x02\x00\x00\x00\x02"), ErrorCode.PROTOCOL_ERROR),  # push 2
        (frame(4, 1, 0, b"\x00" * 6), ErrorCode.FRAME_SIZE_ERROR),  # ACK with payload
        (frame(5, 0x4, 1, b"\x00\x00\x00\x02" + BLOCK), ErrorCode.PROTOCOL_ERROR),  # push
        (frame(6, 0, 0, b"1234"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(6, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR),
        (frame(7, 0, 1, b"\x00" * 8), ErrorCode.PROTOCOL_ERROR),
        (frame(8, 0, 0, b"\x00\x00\x00\x00"), ErrorCode.PROTOCOL_ERROR),  # increment 0
        (frame(8, 0, 0, b"\x7f\xff\xff\xff"), ErrorCode.FLOW_CONTROL_ERROR),  # overflow
        (frame(8, 0, 0, b"\x00\x01"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(9, 0x4, 1, BLOCK), ErrorCode.PROTOCOL_ERROR),  # CONTINUATION alone
        (frame(1, 0x1, 1, BLOCK) + ping(), ErrorCode.PROTOCOL_ERROR),  # block interrupted
        (frame(1, 0x5, 1, b"\xbe"), ErrorCode.COMPRESSION_ERROR),  # bad HPACK index
        (frame(0, 0, 1, b"x" * 16385), ErrorCode.FRAME_SIZE_ERROR),
        (frame(2, 0, 0, b"\x00" * 5), ErrorCode.PROTOCOL_ERROR),  # PRIORITY on 0
        (frame(1, 0x4 | 0x8, 1, b"\x40" + BLOCK), ErrorCode.PROTOCOL_ERROR),  # pad > length
    ],
)
def test_connection_errors_carry_their_code(wire: bytes, code: ErrorCode) -> None:
    side = opened()
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(wire, 1.0)
    assert info.value.error_code == code
    assert goaway_code(info.value.wire) == code
    assert side.receive_data(ping(), 1.0) == []  # a failed connection takes nothing more


def test_first_frame_must_be_settings() -> None:
    side = ClientFacing(H2Limits())
    side.initiate()
    side.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(PREFACE + ping(), 1.0)
    assert info.value.error_code == ErrorCode.PROTOCOL_ERROR


def test_ping_and_settings_are_answered() -> None:
    side = opened()
    side.receive_data(ping(b"abcdefgh") + SETTINGS_FRAME + frame(6, 1, 0, b"ignored!"), 1.0)
    got = frames_of(side.data_to_send())
    assert (6, 1, 0, b"abcdefgh") in got
    assert (4, 1, 0, b"") in got
    assert len([f for f in got if f[0] == 6]) == 1


def test_streams_over_max_concurrent_are_refused() -> None:
    side = opened(H2Limits(max_concurrent_streams=2))
    wire = b"".join(headers(2 * i + 1, end_stream=False) for i in range(3))
    events = side.receive_data(wire, 1.0)
    assert [e.stream_id for e in events if isinstance(e, RequestReceived)] == [1, 3]
    assert rst_codes(side.data_to_send()) == {5: ErrorCode.REFUSED_STREAM}


def test_receive_windows_are_enforced_and_reopened() -> None:
    limits = H2Limits(stream_window=1000, connection_window=100_000)
    side = opened(limits)
    side.receive_data(headers(1, end_stream=False), 1.0)
    side.receive_data(frame(0, 0, 1, b"x" * 1000), 1.0)
    # handing 600 bytes onward gives them back in a WINDOW_UPDATE (half a window owed)
    side.acknowledge_received_data(600, 1)
    ups = [(sid, p) for t, _, sid, p in frames_of(side.data_to_send()) if t == 8]
    assert ups == [(1, struct.pack(">L", 600))]
    side.receive_data(frame(0, 0, 1, b"x" * 600), 1.0)  # exactly the window again
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(frame(0, 0, 1, b"x"), 1.0)
    assert info.value.error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_padding_is_given_back_at_once() -> None:
    side = opened(H2Limits(stream_window=100, connection_window=100_000))
    side.receive_data(headers(1, end_stream=False), 1.0)
    events = side.receive_data(frame(0, 0x8, 1, b"\x50" + b"ab" + b"\x00" * 80), 1.0)
    assert [e.data for e in events if isinstance(e, DataReceived)] == [b"ab"]
    ups = [(sid, p) for t, _, sid, p in frames_of(side.data_to_send()) if t == 8]
    assert ups == [(1, struct.pack(">L", 81))]


def test_send_windows_and_frame_size() -> None:
    server = opened()
    server.receive_data(headers(1), 1.0)
    server.send_headers(1, [(b":status", b"200")])
    assert server.local_flow_control_window(1) == 65535
    with pytest.raises(h2mod.LocalProtocolError):
        server.send_data(1, b"x" * 65536)
    server.send_data(1, b"x" * 65535)
    got = [f for f in frames_of(server.data_to_send()) if f[0] == 0]
    assert [len(f[3]) for f in got] == [16384, 16384, 16384, 16383]
    assert server.local_flow_control_window(1) == 0
    server.receive_data(
        frame(8, 0, 1, b"\x00\x00\x00\x10") + frame(8, 0, 0, b"\x00\x00\x00\x05"), 1.0
    )
    assert server.local_flow_control_window(1) == 5  # the connection's 5 bytes
    # a larger initial window from SETTINGS moves open streams' windows
    server.receive_data(frame(4, 0, 0, b"\x00\x04\x00\x01\x00\x00"), 1.0)
    assert server.streams[1].out_window == 16 + 65536 - 65535


# -- stream states -----------------------------------------------------------------------------

_inputs = st.lists(st.sampled_from(list(h2mod.StreamInput)), max_size=8)


@FRAMES
@given(_inputs)
def test_stream_state_table_matches_two_half_streams(inputs: list[h2mod.StreamInput]) -> None:
    """A stream is two one-way halves: the table agrees with that model."""
    state: h2mod.StreamState | None = h2mod.StreamState.OPEN
    local_open = remote_open = True
    for inp in inputs:
        sending = inp in (h2mod.StreamInput.SEND, h2mod.StreamInput.SEND_END)
        ending = inp in (h2mod.StreamInput.SEND_END, h2mod.StreamInput.RECV_END)
        allowed = local_open if sending else remote_open
        assert state is not None
        new = h2mod._TRANSITIONS.get((state, inp))
        if not allowed:
            assert new is None
            break
        assert new is not None
        if ending:
            if sending:
                local_open = False
            else:
                remote_open = False
        expected = {
            (True, True): h2mod.StreamState.OPEN,
            (False, True): h2mod.StreamState.HALF_CLOSED_LOCAL,
            (True, False): h2mod.StreamState.HALF_CLOSED_REMOTE,
            (False, False): h2mod.StreamState.CLOSED,
        }[(local_open, remote_open)]
        assert new == expected
        state = new
        if state == h2mod.StreamState.CLOSED:
            break


# -- against python-hyper h2 as the peer ----------------------------------------------------------


def _pipe(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FRAMES
@given(
    st.lists(st.tuples(st.binary(max_size=3000), st.booleans()), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=100_000), max_size=8),
)
def test_h2_library_client_through_client_facing(
    bodies: list[tuple[bytes, bool]], cuts: list[int]
) -> None:
    """python-hyper's h2 as the client: requests with bodies and trailers arrive whole;
    our responses (with trailers) arrive whole, however the bytes are cut."""
    import h2.config
    import h2.connection
    import h2.events

    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    server = ClientFacing(H2Limits())
    server.initiate()
    sids = []
    for body, trailers in bodies:
        sid = client.get_next_available_stream_id()
        sids.append(sid)
        client.send_headers(
            sid, [*REQ, (b"x-n", str(sid).encode())], end_stream=not body and not trailers
        )
        if body:
            client.send_data(sid, body, end_stream=not trailers)
        if trailers:
            client.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
    got: dict[int, bytes] = {}
    ended: set[int] = set()
    for piece in _pipe(client.data_to_send(), cuts):
        for ev in server.receive_data(piece, 1.0):
            if isinstance(ev, RequestReceived):
                got[ev.stream_id] = b""
                assert (b"x-n", str(ev.stream_id).encode()) in ev.headers
                if ev.end_stream:
                    ended.add(ev.stream_id)
            elif isinstance(ev, DataReceived):
                got[ev.stream_id] += ev.data
                server.acknowledge_received_data(len(ev.data), ev.stream_id)
                if ev.end_stream:
                    ended.add(ev.stream_id)
            elif isinstance(ev, h2mod.TrailersReceived):
                assert ev.headers == [(b"x-trailer", b"1")]
                ended.add(ev.stream_id)
    assert ended == set(sids)
    for sid, (body, _) in zip(sids, bodies, strict=True):
        assert got[sid] == body
        server.send_headers(sid, [(b":status", b"200"), (b"x-n", str(sid).encode())])
        server.send_data(sid, body[:1000])
        server.send_headers(sid, [(b"x-done", b"yes")], end_stream=True)
    answers: dict[int, bytes] = {}
    done: set[int] = set()
    for piece in _pipe(server.data_to_send(), cuts):
        for ev in client.receive_data(piece):
            if isinstance(ev, h2.events.ResponseReceived):
                assert (b":status", b"200") in ev.headers
                answers[ev.stream_id] = b""
            elif isinstance(ev, h2.events.DataReceived):
                answers[ev.stream_id] += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                done.add(ev.stream_id)
    assert done == set(sids)
    for sid, (body, _) in zip(sids, bodies, strict=True):
        assert answers[sid] == body[:1000]
    assert not server.streams


@FRAMES
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=100_000), max_size=8),
)
def test_backend_facing_against_an_h2_library_server(bodies: list[bytes], cuts: list[int]) -> None:
    """python-hyper's h2 as the backend: our requests arrive, its responses (1xx,
    headers, DATA, trailers) come back as events."""
    import h2.config
    import h2.connection
    import h2.events

    backend = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    backend.initiate_connection()
    ours = BackendFacing(H2Limits())
    ours.initiate()
    for piece in _pipe(backend.data_to_send(), cuts):
        ours.receive_data(piece, 1.0)
    sids = []
    for body in bodies:
        sid = ours.next_stream_id()
        sids.append(sid)
        ours.send_headers(sid, REQ, end_stream=not body)
        if body:
            ours.send_data(sid, body, end_stream=True)
    received: dict[int, bytes] = {}
    for piece in _pipe(ours.data_to_send(), cuts):
        for ev in backend.receive_data(piece):
            if isinstance(ev, h2.events.RequestReceived):
                received[ev.stream_id] = b""
            elif isinstance(ev, h2.events.DataReceived):
                received[ev.stream_id] += ev.data
                backend.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
    for sid, body in zip(sids, bodies, strict=True):
        assert received[sid] == body
        backend.send_headers(sid, [(b":status", b"100")])
        backend.send_headers(
            sid, [(b":status", b"200"), (b"content-length", str(len(body)).encode())]
        )
        backend.send_data(sid, body)
        backend.send_headers(sid, [(b"x-t", b"1")], end_stream=True)
    got: dict[int, bytes] = {}
    kinds: dict[int, list[str]] = {sid: [] for sid in sids}
    for piece in _pipe(backend.data_to_send(), cuts):
        for ev in ours.receive_data(piece, 1.0):
            sid = getattr(ev, "stream_id", 0)
            if sid:
                kinds[sid].append(type(ev).__name__)
            if isinstance(ev, ResponseReceived):
                got[ev.stream_id] = b""
            elif isinstance(ev, DataReceived):
                got[ev.stream_id] += ev.data
                ours.acknowledge_received_data(len(ev.data), ev.stream_id)
    for sid, body in zip(sids, bodies, strict=True):
        assert got[sid] == body
        k = [x for x in kinds[sid] if x != "WindowUpdated"]
        assert k[0] == "InformationalResponseReceived"
        assert k[1] == "ResponseReceived"
        assert k[-1] == "TrailersReceived"
    assert not ours.streams


def test_terminated_event_fields() -> None:
    client = BackendFacing(H2Limits())
    client.initiate()
    events = client.receive_data(
        SETTINGS_FRAME + frame(7, 0, 0, b"\x00\x00\x00\x05\x00\x00\x00\x0bbye"), 0.0
    )
    term = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert term == [ConnectionTerminated(5, ErrorCode.ENHANCE_YOUR_CALM, b"bye")]


def test_backend_101_is_malformed_and_a_frame_trickling_in_arrives_whole() -> None:
    client = BackendFacing(H2Limits())
    client.initiate()
    client.send_headers(1, REQ, end_stream=True)
    client.data_to_send()
    client.receive_data(SETTINGS_FRAME, 0.0)
    events = client.receive_data(frame(1, 0x4, 1, block_of([(b":status", b"101")])), 0.0)
    assert events == [StreamReset(1, ErrorCode.PROTOCOL_ERROR)]  # passed on to the client
    assert rst_codes(client.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    client.send_headers(3, REQ, end_stream=True)
    wire = frame(1, 0x4, 3, block_of([(b":status", b"200")])) + frame(0, 0x1, 3, b"x" * 16384)
    got: list[object] = []
    for i in range(len(wire)):  # one byte per read
        got += client.receive_data(wire[i : i + 1], 0.0)
    assert [type(e).__name__ for e in got] == ["ResponseReceived", "DataReceived"]
    data = got[1]
    assert isinstance(data, DataReceived)
    assert data.data == b"x" * 16384
    assert data.end_stream
