"""Tests for the sans-IO RESP2 request parser (vproxy.processor.resp)."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor.resp import (
    DEFAULT_MAX_BULK,
    DEFAULT_MAX_INLINE,
    DEFAULT_MAX_MULTIBULK,
    Request,
    RespParser,
    RespProtocolError,
    split_inline,
)

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROPERTY = settings(max_examples=300, deadline=None, database=None)

Outcome = tuple[list[tuple[bytes, ...]], str | None]


def feed(parser: RespParser, chunks: Iterable[bytes]) -> Outcome:
    """Feed chunks; return every request's args and the error message, if any."""
    got: list[tuple[bytes, ...]] = []
    for chunk in chunks:
        try:
            got.extend(r.args for r in parser.receive_data(chunk))
        except RespProtocolError as exc:
            got.extend(r.args for r in exc.requests)
            return got, exc.message
    return got, None


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def one_by_one(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def segmentations(data: bytes) -> list[list[bytes]]:
    """Whole, byte at a time, and two fixed uneven cuttings."""
    return [[data], one_by_one(data), split_at(data, [1, 3, 7]), split_at(data, [2, 5, 11, 13])]


def encode_multibulk(args: Sequence[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


# -- valid input -----------------------------------------------------------------------

VALID: list[tuple[bytes, list[tuple[bytes, ...]]]] = [
    (b"*1\r\n$4\r\nPING\r\n", [(b"PING",)]),
    (b"*3\r\n$3\r\nset\r\n$1\r\na\r\n$0\r\n\r\n", [(b"set", b"a", b"")]),
    (b"*1\r\n$4\r\n\r\n\r\n\r\n", [(b"\r\n\r\n",)]),  # CRLF inside a bulk is data
    (b"*1\r\n$3\r\n\x00\xff*\r\n", [(b"\x00\xff*",)]),
    (b"*1\r\n$1\r\na\r\n*1\r\n$1\r\nb\r\n", [(b"a",), (b"b",)]),
    (b"*0\r\n", []),
    (b"*-1\r\n", []),
    (b"*0\r\n*1\r\n$1\r\nx\r\n", [(b"x",)]),
    (b"*10\r\n" + b"$1\r\nz\r\n" * 10, [(b"z",) * 10]),
    (b"PING\r\n", [(b"PING",)]),
    (b"PING\n", [(b"PING",)]),
    (b"list tcp-lb\r\nlist upstream\n", [(b"list", b"tcp-lb"), (b"list", b"upstream")]),
    (b"  set   a\tb  \r\n", [(b"set", b"a", b"b")]),
    (b"\r\n\n  \r\n", []),
    (b"a\rb\r\n", [(b"a", b"b")]),  # a bare CR separates words, as in redis
    (b"$3 x\r\n", [(b"$3", b"x")]),  # only '*' starts a multibulk request
    (b"PING\r\n*1\r\n$4\r\nPING\r\nPING\r\n", [(b"PING",)] * 3),
    (b'set "a b" c\r\n', [(b"set", b"a b", b"c")]),
    (b'"\\x41\\x4a\\x4b\\xzz"\r\n', [(b"AJKxzz",)]),
    (b'"\\n\\r\\t\\b\\a\\\\\\"\\q"\r\n', [(b'\n\r\t\b\x07\\"q',)]),
    (b"'a b' 'it\\'s' '\\n' '\"'\r\n", [(b"a b", b"it's", b"\\n", b'"')]),
    (b'a"b c" d\r\n', [(b"ab c", b"d")]),
    (b"a'b c' d\r\n", [(b"ab c", b"d")]),
    (b"\"\" ''\r\n", [(b"", b"")]),
    (b'"a"\tb\r\n', [(b"a", b"b")]),
    (b'"a"\x0bb\r\n', [(b"a", b"b")]),  # \v counts as space after a closing quote
    (b"a\x0bb \x0bc\r\n", [(b"a\x0bb", b"c")]),  # ... but does not end a bare word
    (b'"a\\"b"\r\n', [(b'a"b',)]),
    (b'"\\x4"\r\n', [(b"x4",)]),  # an incomplete \x escape is a plain 'x'
    (b"caf\xc3\xa9 \xff\r\n", [(b"caf\xc3\xa9", b"\xff")]),
]


def short_id(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize(("data", "expected"), VALID, ids=short_id)
def test_valid_in_every_segmentation(data: bytes, expected: list[tuple[bytes, ...]]) -> None:
    for chunks in segmentations(data):
        assert feed(RespParser(), chunks) == (expected, None), chunks


def test_incomplete_input_waits() -> None:
    parser = RespParser()
    for chunk in one_by_one(b"*2\r\n$3\r\nget\r\n$3\r\nkey\r"):
        assert parser.receive_data(chunk) == []
    assert parser.receive_data(b"\n") == [Request((b"get", b"key"))]
    assert parser.receive_data(b"") == []


def test_request_is_frozen_and_slotted() -> None:
    req = Request((b"PING",))
    assert not hasattr(req, "__dict__")
    with pytest.raises(AttributeError):
        req.args = ()  # type: ignore[misc]


# -- protocol errors -------------------------------------------------------------------

ERRORS: list[tuple[bytes, str]] = [
    (b"*2147483647", "invalid multibulk length"),
    (b"*2147483647\r\n", "invalid multibulk length"),
    (b"*1\r\n$2147483647", "invalid bulk length"),
    (b"*1\r\n$9223372036854775808\r\n", "invalid bulk length"),
    (b"*99999999999999999999999999999999", "invalid multibulk length"),
    (b"*-2\r\n", "invalid multibulk length"),
    (b"*-10\r\n", "invalid multibulk length"),
    (b"*-0\r\n", "invalid multibulk length"),
    (b"*-1x\r\n", "invalid multibulk length"),
    (b"*abc\r\n", "invalid multibulk length"),
    (b"*\r\n", "invalid multibulk length"),
    (b"*01\r\n", "invalid multibulk length"),
    (b"*+1\r\n", "invalid multibulk length"),
    (b"* 1\r\n", "invalid multibulk length"),
    (b"*1 \r\n", "invalid multibulk length"),
    (b"*1\rx", "invalid multibulk length"),
    (b"*1\n", "invalid multibulk length"),
    (b"*" + b" " * 30, "invalid multibulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),  # a request cannot hold a nil
    (b"*1\r\n$-2\r\n", "invalid bulk length"),
    (b"*1\r\n$x\r\n", "invalid bulk length"),
    (b"*1\r\n$\r\n", "invalid bulk length"),
    (b"*1\r\n$01\r\n", "invalid bulk length"),
    (b"*1\r\n$1.5\r\n", "invalid bulk length"),
    (b"*1\r\n:1\r\n", "expected '$', got ':'"),
    (b"*1\r\n\x00", "expected '$', got '\\x00'"),
    (b"*2\r\n$1\r\na\r\n*1\r\n", "expected '$', got '*'"),
    (b"*1\r\n$1\r\nab\r\n", "bulk string not terminated by CRLF"),
    (b"*1\r\n$1\r\na\n\r", "bulk string not terminated by CRLF"),
    (b'"abc\r\n', "unbalanced quotes in request"),
    (b"'abc\r\n", "unbalanced quotes in request"),
    (b'"a"b\r\n', "unbalanced quotes in request"),
    (b"'a'b\r\n", "unbalanced quotes in request"),
    (b'"abc\\"\r\n', "unbalanced quotes in request"),
    (b'set "x\\\r\n', "unbalanced quotes in request"),
    (b"a\x00b\r\n", "NUL byte in inline request"),
    (b"x" * (DEFAULT_MAX_INLINE + 1), "too big inline request"),
    (b"x" * (DEFAULT_MAX_INLINE + 1) + b"\r\n", "too big inline request"),
]


@pytest.mark.parametrize(("data", "message"), ERRORS, ids=short_id)
def test_error_in_every_segmentation(data: bytes, message: str) -> None:
    for chunks in segmentations(data):
        assert feed(RespParser(), chunks) == ([], message)


@pytest.mark.parametrize("data", [b"*2147483647", b"*1\r\n$2147483647", b"*1\r\n$-2"])
def test_huge_or_negative_length_fails_before_crlf(data: bytes) -> None:
    parser = RespParser()
    with pytest.raises(RespProtocolError):
        parser.receive_data(data)


def test_declared_lengths_never_allocate() -> None:
    # The largest lengths the default limits allow: nothing may be sized from them.
    tracemalloc.start()
    try:
        parser = RespParser()
        header = b"*%d\r\n$%d\r\n" % (DEFAULT_MAX_MULTIBULK, DEFAULT_MAX_BULK)
        assert parser.receive_data(header + b"abc") == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_requests_before_an_error_are_kept() -> None:
    parser = RespParser()
    with pytest.raises(RespProtocolError) as info:
        parser.receive_data(b"PING\r\n*1\r\n$1\r\na\r\n*1\r\n:")
    assert info.value.requests == (Request((b"PING",)), Request((b"a",)))
    assert info.value.wire == b"-ERR Protocol error: expected '$', got ':'\r\n"


def test_error_state_is_sticky() -> None:
    parser = RespParser()
    with pytest.raises(RespProtocolError):
        parser.receive_data(b"*x\r\n")
    for data in (b"PING\r\n", b""):
        with pytest.raises(RespProtocolError, match="invalid multibulk length") as info:
            parser.receive_data(data)
        assert info.value.requests == ()


def test_wire_form_has_no_line_breaks() -> None:
    assert RespProtocolError("a\r\nb").wire == b"-ERR Protocol error: a  b\r\n"


# -- limits ----------------------------------------------------------------------------


def test_inline_limit_boundary() -> None:
    limit = 16
    line = b"x" * limit
    for data in (line + b"\r\n", line + b"\n"):
        for chunks in segmentations(data):
            assert feed(RespParser(max_inline=limit), chunks) == ([(line,)], None)
    # A full line plus the CR of its line end is not yet too long ...
    parser = RespParser(max_inline=limit)
    assert parser.receive_data(line + b"\r") == []
    assert parser.receive_data(b"\n") == [Request((line,))]
    # ... but one more byte of content is, before any line end arrives.
    parser = RespParser(max_inline=limit)
    assert parser.receive_data(line) == []
    with pytest.raises(RespProtocolError, match="too big inline request"):
        parser.receive_data(b"y")
    parser = RespParser(max_inline=limit)
    with pytest.raises(RespProtocolError, match="too big inline request"):
        parser.receive_data(line + b"\ry")


def test_multibulk_limits_boundary() -> None:
    ok = encode_multibulk([b"a" * 8] * 4)
    assert feed(RespParser(max_multibulk=4, max_bulk=8), [ok]) == ([(b"a" * 8,) * 4], None)
    too_many = encode_multibulk([b"a"] * 5)
    assert feed(RespParser(max_multibulk=4), [too_many]) == ([], "invalid multibulk length")
    too_long = encode_multibulk([b"a" * 9])
    assert feed(RespParser(max_bulk=8), [too_long]) == ([], "invalid bulk length")


def test_set_limits_tightens_and_widens() -> None:
    parser = RespParser()
    parser.set_limits(max_multibulk=10, max_bulk=16384, max_inline=1024)
    assert (parser.max_multibulk, parser.max_bulk, parser.max_inline) == (10, 16384, 1024)
    assert parser.receive_data(encode_multibulk([b"AUTH", b"secret"])) == [
        Request((b"AUTH", b"secret"))
    ]
    parser.set_limits(max_bulk=DEFAULT_MAX_BULK)
    assert parser.max_multibulk == 10
    big = encode_multibulk([b"v" * 20000])
    assert parser.receive_data(big) == [Request((b"v" * 20000,))]

    strict = RespParser()
    strict.set_limits(max_multibulk=10, max_bulk=16384)
    with pytest.raises(RespProtocolError, match="invalid multibulk length"):
        strict.receive_data(b"*11\r\n")
    strict = RespParser()
    strict.set_limits(max_bulk=16384)
    with pytest.raises(RespProtocolError, match="invalid bulk length"):
        strict.receive_data(b"*1\r\n$16385")


def test_set_limits_applies_to_a_partly_buffered_length() -> None:
    parser = RespParser()
    assert parser.receive_data(b"*1\r\n$100") == []
    parser.set_limits(max_bulk=10)
    with pytest.raises(RespProtocolError, match="invalid bulk length"):
        parser.receive_data(b"\r\n")


@pytest.mark.parametrize("bad", [0, -1, 2**63, True, 1.5, "10"])
def test_bad_limits_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="max_bulk"):
        RespParser(max_bulk=bad)  # type: ignore[arg-type]
    parser = RespParser()
    with pytest.raises(ValueError, match="max_inline"):
        parser.set_limits(max_multibulk=5, max_inline=bad)  # type: ignore[arg-type]
    assert parser.max_multibulk == DEFAULT_MAX_MULTIBULK  # all-or-nothing


# -- split_inline ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"", ()),
        (b"   ", ()),
        (b"a", (b"a",)),
        (b" a  b ", (b"a", b"b")),
        (b'"a b"', (b"a b",)),
        (b"'a b'", (b"a b",)),
        (b'x"y"', (b"xy",)),
    ],
)
def test_split_inline(line: bytes, words: tuple[bytes, ...]) -> None:
    assert split_inline(line) == words


# -- properties ------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        b"*",
        b"$",
        b"\r\n",
        b"\r",
        b"\n",
        b"0",
        b"1",
        b"2",
        b"3",
        b"-1",
        b"-",
        b"12",
        b"99999999999",
        b'"',
        b"'",
        b"\\",
        b"\\x",
        b"4f",
        b"x",
        b" ",
        b"\t",
        b"\x0b",
        b"a",
        b"\x00",
        b"PING",
        b"*1\r\n",
        b"$1\r\n",
        b"*2\r\n$1\r\na\r\n",
    ]
)
STREAMS = st.one_of(
    st.binary(max_size=64),
    st.lists(st.one_of(TOKENS, st.binary(max_size=3)), max_size=40).map(b"".join),
)
LIMITS = st.one_of(
    st.just((DEFAULT_MAX_MULTIBULK, DEFAULT_MAX_BULK, DEFAULT_MAX_INLINE)),
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 24)),
)


@FUZZ
@given(data=STREAMS, cuts=st.lists(st.integers(0, 2**16), max_size=12), limits=LIMITS)
def test_any_bytes_any_segmentation(
    data: bytes, cuts: list[int], limits: tuple[int, int, int]
) -> None:
    # Only requests or RespProtocolError come out (feed() lets anything else escape),
    # and the outcome does not depend on how the bytes were cut.
    whole = feed(RespParser(*limits), [data])
    assert feed(RespParser(*limits), split_at(data, cuts)) == whole
    assert feed(RespParser(*limits), one_by_one(data)) == whole


ARGS = st.lists(st.binary(max_size=40), min_size=1, max_size=8)


@PROPERTY
@given(requests=st.lists(ARGS, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 2**16)))
def test_multibulk_round_trip(requests: list[list[bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_multibulk(args) for args in requests)
    expected = [tuple(args) for args in requests]
    assert feed(RespParser(), split_at(data, cuts)) == (expected, None)
    assert feed(RespParser(), one_by_one(data)) == (expected, None)


def quote_inline(word: bytes) -> bytes:
    """Quote a word as redis-cli would (sdscatrepr), which inline parsing undoes."""
    out = bytearray(b'"')
    for b in word:
        if b in b'\\"':
            out += b"\\" + bytes([b])
        elif 0x20 <= b < 0x7F:
            out.append(b)
        else:
            out += b"\\x%02x" % b
    return bytes(out + b'"')


@PROPERTY
@given(words=st.lists(st.binary(max_size=12), min_size=1, max_size=6), crlf=st.booleans())
def test_inline_quoted_round_trip(words: list[bytes], crlf: bool) -> None:
    line = b" ".join(quote_inline(w) for w in words) + (b"\r\n" if crlf else b"\n")
    assert feed(RespParser(), one_by_one(line)) == ([tuple(words)], None)


BARE_WORD = st.binary(min_size=1, max_size=10).filter(
    lambda w: not any(b in b" \t\r\n\x0b\x0c\x00\"'" for b in w)
)


@PROPERTY
@given(words=st.lists(BARE_WORD, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 999)))
def test_inline_bare_words(words: list[bytes], cuts: list[int]) -> None:
    # A first word starting with '*' would make a multibulk request: lead with a name.
    line = b" ".join([b"cmd", *words]) + b"\r\n"
    assert feed(RespParser(), split_at(line, cuts)) == ([(b"cmd", *words)], None)


# -- linear time -----------------------------------------------------------------------


def _seconds_byte_at_a_time(data: bytes) -> float:
    chunks = one_by_one(data)
    best = float("inf")
    for _ in range(3):
        parser = RespParser()
        start = time.perf_counter()
        for chunk in chunks:
            parser.receive_data(chunk)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda n: b"x" * n, id="inline"),
        pytest.param(lambda n: b"*1\r\n$%d\r\n" % (n + 1) + b"y" * n, id="bulk"),
    ],
)
def test_byte_at_a_time_is_linear(make: Callable[[int], bytes]) -> None:
    # Rescanning the buffer per byte would make 16x the input cost ~256x the time.
    small, large = 4096, 16 * 4096
    t_small = _seconds_byte_at_a_time(make(small))
    t_large = _seconds_byte_at_a_time(make(large))
    assert t_large < 64 * max(t_small, 1e-3), (t_small, t_large)
