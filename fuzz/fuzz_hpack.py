"""Fuzz HPACK decoding (``vproxy.processor.hpack``).

Invariant: ``Decoder.decode`` returns a header list within the limit or raises
``HpackError``; what it returns, encoded by our ``Encoder``, decodes back to the same
list on a fresh decoder. Each input is a sequence of blocks (cut where the input
chooses) sharing one dynamic table, the first byte choosing the table size.

Run: ``python3 fuzz/fuzz_hpack.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main, reads

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.processor.hpack import Decoder, Encoder, HpackError

SEEDS = [
    b"\x00\x00" + bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"),
    b"\x01\x10" + bytes.fromhex("8286844188f1e3c2e5f23a6ba0ab90f4ff") + b"\xbe\x3f\xe1\x1f",
    b"\x02\x05" + b"\x40\x01a\x01b\xbe\xbe\x20\x40\x81\xff\x01a",
]


def test_one(data: bytes) -> None:
    if len(data) < 2:
        return
    table = (0, 256, 4096)[data[0] % 3]
    dec = Decoder(max_header_list_size=8192, max_table_size=table)
    enc = Encoder(4096)
    check = Decoder(max_header_list_size=1 << 20)
    for block in reads(data[1:]):
        try:
            fields = dec.decode(block)
        except HpackError:
            return
        total = sum(len(n) + len(v) + 32 for n, v in fields)
        if total > 8192 or dec.table_size > dec.max_table_size:
            raise AssertionError("limit not kept")
        if check.decode(enc.encode(fields)) != fields:
            raise AssertionError("round trip differs")


if __name__ == "__main__":
    main(test_one, SEEDS)
