"""Fuzz the RESP request parser (``vproxy.processor.resp``).

Invariant: ``RespParser.receive_data`` returns requests or raises
``RespProtocolError``; once broken it keeps raising it.

Run: ``python3 fuzz/fuzz_resp.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.resp import RespParser, RespProtocolError


SEEDS = [
    b"\x00*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n",
    b"\x07*1\r\n$4\r\nPING\r\nAUTH s3cret\r\nlist-detail tcp-lb\r\n",
    b"\x00*2\r\n$-1\r\n$0\r\n\r\n*0\r\n\n",
]


def test_one(data: bytes) -> None:
    parser = RespParser()
    broken = False
    for chunk in reads(data):
        try:
            parser.receive_data(chunk)
        except RespProtocolError:
            broken = True
            continue
        if broken:
            raise AssertionError("a broken parser accepted more data")


if __name__ == "__main__":
    main(test_one, SEEDS)
