"""Fuzz the HTTP/1.x request parser (``vproxy.processor.http1.RequestParser``).

Invariant: ``receive_data`` / ``receive_eof`` return events or raise
``RemoteProtocolError`` (the client's fault; ``LocalProtocolError`` would mean the
harness or the parser got the state wrong, and is a crash); upgrades are accepted or declined
as the proxy would; heads are re-encoded with ``encode_head`` without error.

Run: ``python3 fuzz/fuzz_http1_request.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.http1 import (
        Event,
        RemoteProtocolError,
        RequestHead,
        RequestParser,
        State,
        encode_head,
    )

_XFF = ((b"x-forwarded-for", b"192.0.2.1"), (b"x-client-port", b"1234"))


SEEDS = [
    b"\x00\x00GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x02\x05POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"\x00\x00POST /x HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    b"\x01\x00GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
    b"\r\n\x81\x00",
    b"\x00\x00OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nGET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
]


def _encode(events: list[Event]) -> None:
    for ev in events:
        if isinstance(ev, RequestHead):
            encode_head(ev, _XFF)


def test_one(data: bytes) -> None:
    if not data:
        return
    flags, data = data[0], data[1:]
    parser = RequestParser()
    try:
        for chunk in reads(data):
            _encode(parser.receive_data(chunk))
            if parser.state is State.AWAIT_UPGRADE:
                if flags & 1:
                    parser.accept_upgrade()
                    return
                _encode(parser.decline_upgrade())
        if flags & 2 and parser.state not in (State.SWITCHED, State.CLOSED):
            parser.receive_eof()
    except RemoteProtocolError:
        pass


if __name__ == "__main__":
    main(test_one, SEEDS)
