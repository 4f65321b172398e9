"""Fuzz the socks5 server handshake (``vproxy.processor.socks5``).

Invariant: ``Socks5ServerConnection.receive_data`` returns events or raises
``Socks5Error`` (only after a ``ProtocolError`` event was reported); a request is
accepted or rejected as the proxy would do (bytes after it in the same read come
as payload; later ones belong to the relay).

Run: ``python3 fuzz/fuzz_socks5.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.socks5 import (
        AuthFailed,
        ConnectRequest,
        ProtocolError,
        ReplyCode,
        Socks5Error,
        Socks5ServerConnection,
    )


SEEDS = [
    # flags, then: greeting (no auth), CONNECT to an IPv4 address, payload
    b"\x00\x00\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50GET",
    # username/password, CONNECT to a domain name
    b"\x01\x03\x05\x01\x02\x01\x01u\x01p\x05\x01\x00\x03\x0bexample.com\x01\xbb",
    # CONNECT to an IPv6 address, rejected
    b"\x02\x00\x05\x02\x00\x02\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x16",
]


def _auth(user: bytes, password: bytes) -> bool:
    return user == b"u" and password == b"p"


def test_one(data: bytes) -> None:
    if not data:
        return
    flags, data = data[0], data[1:]
    conn = Socks5ServerConnection(auth=_auth if flags & 1 else None, max_buffer=flags * 16)
    ended = False
    for chunk in reads(data):
        try:
            events = conn.receive_data(chunk)
        except Socks5Error:
            if not ended:
                raise AssertionError("raised before a ProtocolError event") from None
            continue
        conn.data_to_send()
        if any(isinstance(ev, ProtocolError | AuthFailed) for ev in events):
            ended = True  # always the last event: the proxy answers nothing else
            continue
        for ev in events:
            if isinstance(ev, ConnectRequest):
                if flags & 2:
                    conn.reject(ReplyCode.CONNECTION_REFUSED)
                else:
                    conn.accept("127.0.0.1", 1080)
                conn.data_to_send()
                return  # the handshake is over: what follows belongs to the relay


if __name__ == "__main__":
    main(test_one, SEEDS)
