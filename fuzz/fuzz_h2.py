"""Fuzz the HTTP/2 sides of the ``h2`` mode (``vproxy.processor.h2``), both roles.

Invariant: ``ClientFacing.receive_data`` (vproxy as the server of a client) and
``BackendFacing.receive_data`` (vproxy as the client of an h2c backend) return events
or raise that module's ``RemoteProtocolError``, which carries the GOAWAY to send.

Run: ``python3 fuzz/fuzz_h2.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
import h2.config
import h2.connection
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.h2 import BackendFacing, ClientFacing, H2Limits, RemoteProtocolError

_LIMITS = H2Limits(max_concurrent_streams=8, max_header_list_size=4096, max_headers=20)


def _client_bytes() -> bytes:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    headers = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "a")]
    c.send_headers(1, headers)
    c.send_data(1, b"hello", end_stream=True)
    c.send_headers(3, [*headers[:1], *headers[1:]], end_stream=True)
    c.reset_stream(3)
    c.ping(b"12345678")
    return c.data_to_send()


def _server_bytes() -> bytes:
    s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    s.initiate_connection()
    return s.data_to_send()


SEEDS = [
    b"\x00\x00" + _client_bytes(),
    b"\x01\x07" + _client_bytes(),
    b"\x02\x00" + _server_bytes(),
]


def test_one(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, data = data[0], data[1:]
    side = BackendFacing(_LIMITS) if flags & 2 else ClientFacing(_LIMITS)
    side.initiate()
    side.data_to_send()
    now = 1000.0
    try:
        for chunk in reads(data):
            now += 0.001 * (flags >> 2)
            side.receive_data(chunk, now)
            side.data_to_send()
    except RemoteProtocolError:
        pass


if __name__ == "__main__":
    main(test_one, SEEDS)
