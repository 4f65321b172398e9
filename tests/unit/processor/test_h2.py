"""The sans-IO HTTP/2 rules (vproxy.processor.h2), without sockets.

Claims:

* a client and a backend side talk to each other in memory (preface, SETTINGS, a
  request with the windows this module grants);
* any bytes fed to the client-facing side, cut anywhere, give events or
  ``RemoteProtocolError`` (hypothesis), and an error carries a GOAWAY to send;
* floods are refused with ENHANCE_YOUR_CALM before ``h2`` buffers them:
  CONTINUATION (count and size per header block, however the bytes are cut), rapid
  reset, control frames, answers queued while output is blocked; an HPACK bomb stops
  at the header list limit;
* the same traffic spread over time is not a flood;
* header helpers: the hint, the forwarding fields, local responses.
"""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from h2.events import RequestReceived, StreamReset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor import h2 as h2mod
from vproxy.processor.h2 import (
    PREFACE,
    BackendFacing,
    ClientFacing,
    H2Limits,
    RemoteProtocolError,
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
    client.conn.send_headers(1, req, end_stream=True)
    events = server.receive_data(client.data_to_send(), 1.0)
    got = [e for e in events if isinstance(e, RequestReceived)]
    assert got
    assert list(got[0].headers) == req
    # what was advertised: the limits, and the connection window granted at once
    assert client.conn.remote_settings.max_concurrent_streams == 100
    assert client.conn.remote_settings.initial_window_size == 256 * 1024
    assert client.conn.outbound_flow_control_window == 1024 * 1024
    assert server.streams_opened == 1


def test_garbage_instead_of_preface_is_a_protocol_error_with_goaway() -> None:
    side = ClientFacing(H2Limits())
    side.initiate()
    side.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        side.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert info.value.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway_code(info.value.wire) == ErrorCodes.PROTOCOL_ERROR


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
def test_continuation_flood_refused_before_h2_buffers_it(cut: int | None) -> None:
    side = opened()
    flood = headers(1, end_headers=False) + frame(9, 0, 1) * 10_000
    step = cut or len(flood)
    with pytest.raises(RemoteProtocolError) as info:
        feed(side, [flood[i : i + step] for i in range(0, len(flood), step)])
    assert info.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway_code(info.value.wire) == ErrorCodes.ENHANCE_YOUR_CALM
    assert "CONTINUATION" in str(info.value)
    # refused at the limit, long before h2's own backlog of 64 frames
    assert len(side.conn.incoming_buffer._headers_buffer) <= 17


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
    assert info.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM


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
    assert info.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM
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
    assert info.value.error_code == ErrorCodes.ENHANCE_YOUR_CALM


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
    path = Path(h2mod.__file__)
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
    from h2.events import ConnectionTerminated, ResponseReceived, StreamEnded
    from hpack import Encoder
    from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame

    client = BackendFacing(H2Limits())
    client.initiate()
    req = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]
    client.conn.send_headers(1, req, end_stream=True)
    client.conn.send_headers(3, req, end_stream=True)
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
    assert term.error_code == ErrorCodes.NO_ERROR
    # what the backend still owed for stream 1 arrives after the GOAWAY
    assert kinds.index(ConnectionTerminated) < kinds.index(ResponseReceived)
    assert any(isinstance(e, StreamEnded) and e.stream_id == 1 for e in events)
    return events


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_backend_goaway_lets_the_owed_responses_through(chunk: int) -> None:
    _backend_after_goaway(chunk)


def test_backend_short_goaway_is_a_protocol_error() -> None:
    client = BackendFacing(H2Limits())
    client.initiate()
    with pytest.raises(h2mod.RemoteProtocolError) as info:
        client.receive_data(b"\x00\x00\x04\x07\x00\x00\x00\x00\x00\x00\x00\x00\x01", 0.0)
    assert info.value.error_code == ErrorCodes.FRAME_SIZE_ERROR
