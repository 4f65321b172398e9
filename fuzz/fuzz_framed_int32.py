"""Fuzz the framed-int32 processor (``vproxy.processor.framed_int32``), both directions.

Invariant: frontend and backend contexts return, or raise the processor layer's
``RemoteProtocolError`` (see ``_frames.py``).

Run: ``python3 fuzz/fuzz_framed_int32.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main

with atheris.instrument_imports(include=["vproxy"]):
    from _frames import drive

    from vproxy.processor.base import Limits
    from vproxy.processor.framed_int32 import FramedInt32Processor, encode_frame

_PROC = FramedInt32Processor(Limits(max_frame_size=4096))


def _seeds() -> list[bytes]:
    requests = encode_frame(b"\x80\x01\x00\x01\x00\x00\x00\x04ping") + encode_frame(b"")
    responses = encode_frame(b"\x80\x01\x00\x02\x00\x00\x00\x04ping") + encode_frame(b"x")
    return [bytes([128]) + requests + responses, bytes([200]) + requests]


def test_one(data: bytes) -> None:
    drive(_PROC, data)


if __name__ == "__main__":
    main(test_one, _seeds())
