"""Fuzz the HTTP/2 sides of the ``h2`` mode (``vproxy.processor.h2``), both roles.

Invariant: ``ClientFacing.receive_data`` (vproxy as the server of a client) and
``BackendFacing.receive_data`` (vproxy as the client of an h2c backend) return events
or raise that module's ``RemoteProtocolError``, which carries the GOAWAY to send. The
harness also answers what arrives as the glue would (responses, DATA within the
windows, acknowledgements, resets), so the sending side and the window accounting run
on states the peer chose; none of that may raise anything but ``LocalProtocolError``
for a stream the peer closed meanwhile.

Run: ``python3 fuzz/fuzz_h2.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
import h2.config
import h2.connection
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.h2 import (
        BackendFacing,
        ClientFacing,
        DataReceived,
        ErrorCode,
        H2Limits,
        H2Side,
        LocalProtocolError,
        RemoteProtocolError,
        RequestReceived,
        ResponseReceived,
        TrailersReceived,
    )

_LIMITS = H2Limits(max_concurrent_streams=8, max_header_list_size=4096, max_headers=20)
_REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def _client_bytes() -> bytes:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    headers = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "a")]
    c.send_headers(1, headers)
    c.send_data(1, b"hello", end_stream=True)
    c.send_headers(3, [*headers[:1], *headers[1:]], end_stream=True)
    c.reset_stream(3)
    c.send_headers(5, headers)
    c.send_headers(5, [("x-trailer", "1")], end_stream=True)
    c.ping(b"12345678")
    return c.data_to_send()


def _server_bytes() -> bytes:
    """A backend's answers to the three requests the harness sends first."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for sid in (1, 3, 5):
        c.send_headers(sid, [(k.decode(), v.decode()) for k, v in _REQ], end_stream=True)
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    s.initiate_connection()
    s.receive_data(c.data_to_send())
    s.send_headers(1, [(":status", "100")])
    s.send_headers(1, [(":status", "200"), ("content-length", "2")])
    s.send_data(1, b"ok", end_stream=True)
    s.send_headers(3, [(":status", "204")], end_stream=True)
    s.send_headers(5, [(":status", "200")])
    s.send_headers(5, [("x-t", "1")], end_stream=True)
    s.close_connection(last_stream_id=5)
    return s.data_to_send()


SEEDS = [
    b"\x00\x00" + _client_bytes(),
    b"\x01\x07" + _client_bytes(),
    b"\x02\x00" + _server_bytes(),
]


def _answer(side: H2Side, events: list[object], server: bool) -> None:
    for ev in events:
        try:
            if server and isinstance(ev, RequestReceived):
                side.send_headers(ev.stream_id, [(b":status", b"200")])
                n = min(side.local_flow_control_window(ev.stream_id), 100)
                side.send_data(ev.stream_id, b"x" * n)
                if ev.stream_id % 4 == 1:
                    side.reset_stream(ev.stream_id, ErrorCode.NO_ERROR)
            elif isinstance(ev, DataReceived):
                side.acknowledge_received_data(len(ev.data), ev.stream_id)
                if server and ev.end_stream:
                    side.end_stream(ev.stream_id)
            elif isinstance(ev, TrailersReceived | ResponseReceived) and not server:
                side.reset_stream(ev.stream_id)
        except LocalProtocolError:
            pass  # the peer closed the stream meanwhile


def test_one(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, data = data[0], data[1:]
    server = not flags & 2
    side: H2Side = ClientFacing(_LIMITS) if server else BackendFacing(_LIMITS)
    side.initiate()
    if not server:
        for _ in range(3):
            side.send_headers(side.next_stream_id(), _REQ, end_stream=bool(flags & 1))
    side.data_to_send()
    now = 1000.0
    try:
        for chunk in reads(data):
            now += 0.001 * (flags >> 2)
            events = side.receive_data(chunk, now)
            _answer(side, list(events), server)
            side.data_to_send()
    except RemoteProtocolError:
        pass


if __name__ == "__main__":
    main(test_one, SEEDS)
