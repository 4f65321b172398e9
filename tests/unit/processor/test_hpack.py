"""HPACK (vproxy.processor.hpack) against RFC 7541 and the python-hyper ``hpack`` package.

Claims:

* the Appendix C examples decode to the published header lists and table sizes, with
  and without Huffman coding, and the published Huffman strings encode and decode;
* whatever we encode, ``hpack`` decodes to the same list, and whatever ``hpack``
  encodes, we decode to the same list, over sequences of lists sharing one dynamic
  table, with table-size changes in between (hypothesis, 2,000 examples each way);
* never-indexed fields stay never-indexed when re-encoded;
* the remembered results are right after the table changes;
* malformed blocks and bombs raise ``HpackError`` / ``HeaderListTooLarge`` and never
  allocate past the limits.
"""

from __future__ import annotations

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor.hpack import (
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HpackError,
    NeverIndexed,
    _encode_int,
    huffman_decode,
    huffman_encode,
)

PROPERTY = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# -- RFC 7541 Appendix C ---------------------------------------------------------------------

REQUESTS = [
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]
REQUEST_TABLE_SIZES = [57, 110, 164]
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
URL = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", URL)],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1), (b"location", URL)],
    [
        (b":status", b"200"),
        (b"cache-control", b"private"),
        (b"date", DATE2),
        (b"location", URL),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", COOKIE),
    ],
]
RESPONSE_TABLE_SIZES = [222, 222, 215]

C3 = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4 = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]
C5 = [
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
    " 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
    " 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
    " 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
    " 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
]
C6 = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
    " 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
    " 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
    " 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
]


@pytest.mark.parametrize(
    ("blocks", "lists", "sizes", "table"),
    [
        (C3, REQUESTS, REQUEST_TABLE_SIZES, 4096),
        (C4, REQUESTS, REQUEST_TABLE_SIZES, 4096),
        (C5, RESPONSES, RESPONSE_TABLE_SIZES, 256),
        (C6, RESPONSES, RESPONSE_TABLE_SIZES, 256),
    ],
    ids=["C.3", "C.4", "C.5", "C.6"],
)
def test_rfc7541_appendix_c(
    blocks: list[str], lists: list[list[tuple[bytes, bytes]]], sizes: list[int], table: int
) -> None:
    d = Decoder(max_table_size=table)
    for block, want, size in zip(blocks, lists, sizes, strict=True):
        assert d.decode(unhex(block)) == want
        assert d.table_size == size
    # and our encoder's blocks for the same lists decode right on a fresh hpack decoder
    e = Encoder(table)
    theirs = hpack.Decoder(max_header_list_size=1 << 20)
    theirs.header_table_size = table
    for want in lists:
        assert theirs.decode(e.encode(want), raw=True) == want


def test_rfc7541_c2_single_fields() -> None:
    d = Decoder()
    assert d.decode(unhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")) == [
        (b"custom-key", b"custom-header")
    ]
    assert d.table_size == 55
    d = Decoder()
    assert d.decode(unhex("040c 2f73 616d 706c 652f 7061 7468")) == [(b":path", b"/sample/path")]
    assert d.table_size == 0
    d = Decoder()
    got = d.decode(unhex("1008 7061 7373 776f 7264 0673 6563 7265 74"))
    assert got == [(b"password", b"secret")]
    assert type(got[0]) is NeverIndexed
    assert d.table_size == 0


@pytest.mark.parametrize(
    ("coded", "plain"),
    [
        ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", b"www.example.com"),
        ("a8eb 1064 9cbf", b"no-cache"),
        ("25a8 49e9 5ba9 7d7f", b"custom-key"),
        ("25a8 49e9 5bb8 e8b4 bf", b"custom-value"),
        ("6402", b"302"),
        ("aec3 771a 4b", b"private"),
        ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", DATE1),
        ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", URL),
        ("9bd9 ab", b"gzip"),
    ],
)
def test_huffman_published_strings(coded: str, plain: bytes) -> None:
    assert huffman_decode(unhex(coded)) == plain
    assert huffman_encode(plain) == unhex(coded)


@given(st.binary(max_size=300))
@PROPERTY
def test_huffman_round_trip_any_bytes(data: bytes) -> None:
    assert huffman_decode(huffman_encode(data)) == data


def test_huffman_rejects_bad_padding_and_eos() -> None:
    with pytest.raises(HpackError):
        huffman_decode(b"\x00")  # '0' * 8: five bits of '0' then three of padding 000
    with pytest.raises(HpackError):
        huffman_decode(b"\xff\xff\xff\xff")  # EOS (30 ones) inside the string
    with pytest.raises(HpackError):
        huffman_decode(unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff"))  # 8+ bits of padding


# -- against the hpack package -----------------------------------------------------------------

_names = st.one_of(
    st.sampled_from(
        [b":method", b":path", b":authority", b":status", b"accept", b"cookie", b"x-id", b"date"]
    ),
    st.binary(min_size=1, max_size=20),
)
_values = st.one_of(
    st.sampled_from([b"GET", b"/", b"200", b"gzip, deflate", b"", b"a" * 100]),
    st.binary(max_size=60),
    st.binary(max_size=200),
)
_field = st.tuples(_names, _values)
_lists = st.lists(st.lists(_field, max_size=10), min_size=1, max_size=6)
_sizes = st.lists(st.sampled_from([0, 64, 256, 1024, 4096]), min_size=6, max_size=6)


@given(_lists, _sizes, st.lists(st.booleans(), min_size=6, max_size=6))
@PROPERTY
def test_our_encoder_their_decoder(
    lists: list[list[tuple[bytes, bytes]]], sizes: list[int], resize: list[bool]
) -> None:
    ours = Encoder()
    theirs = hpack.Decoder(max_header_list_size=1 << 22)
    for i, fields in enumerate(lists):
        if resize[i]:
            ours.set_max_table_size(sizes[i])
        block = ours.encode(fields)
        assert theirs.decode(block, raw=True) == fields
        again = ours.encode(fields)  # all indexed now (remembered), unless evicted
        assert theirs.decode(again, raw=True) == fields
        assert ours.table_size <= ours.max_table_size


@given(_lists, _sizes, st.lists(st.booleans(), min_size=6, max_size=6), st.booleans())
@PROPERTY
def test_their_encoder_our_decoder(
    lists: list[list[tuple[bytes, bytes]]], sizes: list[int], resize: list[bool], huff: bool
) -> None:
    theirs = hpack.Encoder()
    ours = Decoder(max_header_list_size=1 << 22)
    for i, fields in enumerate(lists):
        if resize[i]:
            theirs.header_table_size = sizes[i]
        block = theirs.encode(fields, huffman=huff)
        assert ours.decode(block) == fields
        assert ours.table_size <= ours.max_table_size


@given(_lists)
@PROPERTY
def test_ours_both_ways(lists: list[list[tuple[bytes, bytes]]]) -> None:
    e = Encoder()
    d = Decoder(max_header_list_size=1 << 22)
    for fields in lists:
        assert d.decode(e.encode(fields)) == fields
        assert d.table_size == e.table_size


def test_never_indexed_stays_never_indexed() -> None:
    theirs = hpack.Encoder()
    d = Decoder()
    block = theirs.encode([hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")])
    got = d.decode(block)
    assert type(got[0]) is NeverIndexed
    e = Encoder()
    out = e.encode(got)
    assert out[0] & 0xF0 == 0x10  # literal never indexed
    assert e.table_size == 0
    decoded = hpack.Decoder().decode(out, raw=True)
    assert decoded == [(b"authorization", b"secret")]
    assert isinstance(decoded[0], hpack.NeverIndexedHeaderTuple)


# -- remembered results --------------------------------------------------------------------------


def test_decoder_remembers_only_while_the_table_is_unchanged() -> None:
    d = Decoder()
    first = d.decode(b"\x40\x01a\x01b")  # insert a: b -> index 62
    assert first == [(b"a", b"b")]
    block = b"\xbe"
    assert d.decode(block) == [(b"a", b"b")]
    assert d.decode(block) is d.decode(block)  # remembered
    d.decode(b"\x40\x01c\x01d")  # insert c: d -> index 62 is now c: d
    assert d.decode(block) == [(b"c", b"d")]
    d.decode(b"\x20")  # table size 0: empty
    with pytest.raises(HpackError):
        d.decode(block)


def test_encoder_remembers_per_list_while_the_table_is_unchanged() -> None:
    e = Encoder()
    d = Decoder()
    fields = [(b":method", b"GET"), (b"x-a", b"1")]
    b1 = e.encode(fields)  # inserts x-a
    b2 = e.encode(fields)  # all indexed: remembered
    assert e.encode(fields) is b2
    assert b1 != b2
    assert d.decode(b1) == fields
    assert d.decode(b2) == fields
    assert d.decode(e.encode([(b"x-b", b"2")])) == [(b"x-b", b"2")]  # x-a is now 63
    b3 = e.encode(fields)
    assert b3 != b2
    assert d.decode(b3) == fields


def test_table_size_update_is_signalled_at_the_next_block() -> None:
    e = Encoder()
    e.encode([(b"x-a", b"1")])
    e.set_max_table_size(0)
    e.set_max_table_size(100)
    block = e.encode([(b"x-a", b"1")])
    assert block[:2] == b"\x20\x3f"  # 0, then 100 (31 + 69)
    theirs = hpack.Decoder()
    theirs.decode(b"\x40\x03x-a\x011", raw=True)
    assert theirs.decode(block, raw=True) == [(b"x-a", b"1")]


# -- limits and malformed blocks ----------------------------------------------------------------


def test_header_list_limit_stops_a_bomb() -> None:
    d = Decoder(max_header_list_size=1000)
    lit = b"\x40\x01x\x7f" + bytes([900 - 127 & 0x7F | 0x80, (900 - 127) >> 7]) + b"v" * 900
    assert d.decode(lit) == [(b"x", b"v" * 900)]
    with pytest.raises(HeaderListTooLarge):
        d.decode(b"\xbe" * 100_000)  # 100,000 references to a 933-byte entry


def test_huge_string_length_is_refused_before_reading() -> None:
    d = Decoder(max_header_list_size=1000)
    with pytest.raises(HpackError):
        d.decode(b"\x00\x7f\xff\xff\xff\x7f")  # a name of ~2**28 bytes, block of 6


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x80\x80\x80\x80\x80\x80\x01",  # integer past 2**35
        b"\xbe",  # index 62, empty table
        b"\x7f",  # truncated integer
        b"\x40\x05ab",  # string past the block
        b"\x82\x20",  # table size update after a field
        b"\x3f\xe2\x1f",  # table size update to 4096 + 1
        b"\x40\x81\x00\x01a",  # Huffman name with bad padding
    ],
)
def test_malformed_blocks(block: bytes) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(block)


def test_table_size_update_within_our_setting_is_honoured() -> None:
    d = Decoder(max_table_size=4096)
    d.decode(b"\x40\x01a\x01b")
    assert d.table_size == 34
    d.decode(b"\x3f\x03")  # 34
    assert d.max_table_size == 34
    d.decode(b"\x40\x01c\x01d")  # evicts a: b
    assert d.decode(b"\xbe") == [(b"c", b"d")]
    with pytest.raises(HpackError):
        d.decode(b"\xbf")


def test_static_only_blocks_are_remembered_and_their_insertions_replayed() -> None:
    # as nginx answers: literals with incremental indexing, static names only
    block = b"\x88" + b"\x76\x05nginx" + b"\x5c\x016"
    d = Decoder(max_table_size=4096)
    first = d.decode(block)
    assert first == [(b":status", b"200"), (b"server", b"nginx"), (b"content-length", b"6")]
    assert d.table_size == 2 * 32 + 6 + 5 + 14 + 1
    again = d.decode(block)
    assert again is first
    assert d.table_size == 2 * (2 * 32 + 6 + 5 + 14 + 1)  # inserted again
    # the dynamic table is what a plain decoder has after the same blocks
    ref = hpack.Decoder()
    ref.decode(block, raw=True)
    ref.decode(block, raw=True)
    for idx in (b"\xbe", b"\xbf", b"\xc0", b"\xc1"):
        assert d.decode(idx) == ref.decode(idx, raw=True)
    with pytest.raises(HpackError):
        d.decode(b"\xc2")


@given(
    st.lists(
        st.sampled_from(
            [
                b"\x88\x76\x05nginx\x5c\x016",  # static-only, inserts
                b"\x88\x0f\x0d\x016",  # static-only, no insertion
                b"\xbe",  # dynamic reference
                b"\xbf\xbe",
                b"\x40\x01a\x01b",  # literal name, inserts
                b"\x7e\x01c",  # dynamic name, inserts
                b"\x3f\x21",  # table size 64
                b"\x3f\xe1\x1f",  # table size 4096
            ]
        ),
        max_size=20,
    )
)
@PROPERTY
def test_remembered_blocks_decode_as_a_plain_decoder_does(blocks: list[bytes]) -> None:
    ours = Decoder()
    ref = hpack.Decoder()
    for block in blocks:
        try:
            want = ref.decode(block, raw=True)
        except hpack.HPACKError:
            with pytest.raises(HpackError):
                ours.decode(block)
            return
        assert ours.decode(block) == want
        assert ours.table_size == ref.header_table._current_size


@given(
    st.lists(st.integers(min_value=0, max_value=3), max_size=80),
    st.sampled_from([64, 256, 4096]),
)
@PROPERTY
def test_skipped_replays_leave_the_table_as_replaying_would(picks: list[int], table: int) -> None:
    """Runs of the same nginx-like response (insertions never referred to), mixed with
    others and with references to the table: the same results as a plain decoder."""
    blocks = [
        b"\x88\x76\x05nginx\x61\x1dMon, 21 Oct 2013 20:13:21 GMT\x5c\x016",
        b"\x88\x76\x05nginx\x61\x1dMon, 21 Oct 2013 20:13:22 GMT\x5c\x016",
        b"\xbe\xbf",
        b"\x40\x01a\x01b",
    ]
    ours = Decoder(max_table_size=table)
    ref = hpack.Decoder()
    ref.header_table_size = table
    resize = _encode_int(table, 5, 0x20)
    ours.decode(resize)
    ref.decode(resize, raw=True)
    sequence = [0] * 40 + picks + [1] * 40 + [2]
    for i in sequence:
        try:
            want = ref.decode(blocks[i], raw=True)
        except hpack.HPACKError:
            with pytest.raises(HpackError):
                ours.decode(blocks[i])
            continue
        assert ours.decode(blocks[i]) == want
        assert ours.table_size == ref.header_table._current_size


def test_only_small_blocks_and_lists_are_remembered() -> None:
    d = Decoder()
    big = b"\x00\x01x\x7f" + _encode_int(3000, 7, 0)[1:] + b"v" * 3000  # literal, no index
    first = d.decode(big)
    assert d.decode(big) == first
    assert d.decode(big) is not first
    assert not d.remembered
    small = b"\x00\x01x\x01v"
    assert d.decode(small) is d.decode(small)
    assert d.remembered
    for i in range(100):  # many distinct blocks: the caches stay bounded
        d.decode(b"\x00\x01x\x02" + bytes([65 + i % 26, 65 + i // 26]))
    assert len(d._fixed) + len(d._cache) <= 32
