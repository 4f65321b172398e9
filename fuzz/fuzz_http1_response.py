"""Fuzz the HTTP/1.x response parser (``vproxy.processor.http1.ResponseParser``).

Invariant: ``receive_data`` / ``receive_eof`` return events or raise
``RemoteProtocolError`` (status 502); the requests it answers are announced first,
HEAD or not, upgrade or not, as the proxy does.

Run: ``python3 fuzz/fuzz_http1_response.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.http1 import (
        RemoteProtocolError,
        ResponseHead,
        ResponseParser,
        State,
        encode_response_head,
    )

_METHODS = (b"GET", b"HEAD", b"POST", b"GET")


SEEDS = [
    b"\x00\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"\x01\x03HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"\x24\x00HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"\x04\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # HEAD
    b"\x10\x00HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
    b"Upgrade: websocket\r\n\r\n\x81\x00",
]


def test_one(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, data = data[0], data[1:]
    parser = ResponseParser()
    try:
        for i in range(1 + (flags & 3)):
            parser.expect_response(_METHODS[(flags >> 2) + i & 3], upgrade=bool(flags & 16))
        for chunk in reads(data):
            if parser.state is State.SWITCHED:
                return  # an opaque relay from here on
            for ev in parser.receive_data(chunk):
                if isinstance(ev, ResponseHead):
                    encode_response_head(ev, close=bool(flags & 64))
        if flags & 32 and parser.state not in (State.SWITCHED, State.CLOSED):
            parser.receive_eof()
    except RemoteProtocolError:
        pass


if __name__ == "__main__":
    main(test_one, SEEDS)
