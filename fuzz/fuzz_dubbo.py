"""Fuzz the dubbo processor (``vproxy.processor.dubbo``), both directions.

Invariant: frontend and backend contexts return, or raise the processor layer's
``RemoteProtocolError`` (see ``_frames.py``).

Run: ``python3 fuzz/fuzz_dubbo.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main

with atheris.instrument_imports(include=["vproxy"]):
    from _frames import drive

    from vproxy.processor.base import Limits
    from vproxy.processor.dubbo import DubboProcessor, encode_message

_PROC = DubboProcessor(Limits(max_frame_size=4096))


def _seeds() -> list[bytes]:
    body = b"\x05hello\x0fcom.example.Svc\x030.0\x06invoke"
    requests = encode_message(0xC2, 1, body) + encode_message(0xE2, 2, b"N")  # + heartbeat
    responses = encode_message(0x02, 0, b"\x91", status=20)
    cut = len(requests) * 256 // (len(requests) + len(responses)) + 1
    return [bytes([cut]) + requests + responses, bytes([128]) + requests]


def test_one(data: bytes) -> None:
    drive(_PROC, data)


if __name__ == "__main__":
    main(test_one, _seeds())
