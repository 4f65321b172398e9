"""Tests for typed replies and their RESP, JSON and console renderings (control.reply)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vproxy.control.reply import (
    NIL,
    OK,
    Array,
    ErrorReply,
    Integer,
    Nil,
    Reply,
    Status,
    String,
    to_console,
    to_json,
    to_resp,
)

PROPERTY = settings(max_examples=300, deadline=None, database=None)


def arr(*items: Reply) -> Array:
    return Array(items)


ELEVEN = Array(tuple(Integer(i) for i in range(11)))

# -- RESP ------------------------------------------------------------------------------

RESP_CASES: list[tuple[Reply, bytes]] = [
    (OK, b"+OK\r\n"),
    (Status(""), b"+\r\n"),
    (Integer(1), b":1\r\n"),
    (Integer(-42), b":-42\r\n"),
    (String("text"), b"$4\r\ntext\r\n"),
    (String(""), b"$0\r\n\r\n"),
    (String("é"), b"$2\r\n\xc3\xa9\r\n"),  # the length counts UTF-8 bytes
    (String("a\r\nb"), b"$4\r\na\r\nb\r\n"),  # a bulk string carries CRLF as data
    (NIL, b"$-1\r\n"),
    (arr(), b"*0\r\n"),
    (arr(String("a"), String("b")), b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    (
        arr(arr(String("a"), arr()), Integer(3), NIL, arr(arr(OK))),
        b"*4\r\n*2\r\n$1\r\na\r\n*0\r\n:3\r\n$-1\r\n*1\r\n*1\r\n+OK\r\n",
    ),
    (ErrorReply("no such tcp-lb: lb9"), b"-ERR no such tcp-lb: lb9\r\n"),
    (ErrorReply("bad\r\nline\nend\r"), b"-ERR bad line end \r\n"),
    (
        ErrorReply("Authentication required.", 401, "NOAUTH"),
        b"-NOAUTH Authentication required.\r\n",
    ),
    (ErrorReply(""), b"-ERR\r\n"),
    (Status("two\nlines"), b"+two lines\r\n"),
    (arr(ErrorReply("x"), OK), b"*2\r\n-ERR x\r\n+OK\r\n"),
]


@pytest.mark.parametrize(("reply", "wire"), RESP_CASES)
def test_to_resp(reply: Reply, wire: bytes) -> None:
    assert to_resp(reply) == wire


def test_to_resp_survives_lone_surrogates() -> None:
    # Text decoded with surrogateescape gets its bytes back; other lone surrogates
    # are shown escaped instead of making the reply unsendable.
    assert to_resp(String(b"\xff".decode("utf-8", "surrogateescape"))) == b"$1\r\n\xff\r\n"
    assert to_resp(String("\ud800")) == b"$6\r\n\\ud800\r\n"


# -- console (redis-cli 7 human mode, checked against redis-cli --no-raw) ---------------

CONSOLE_CASES: list[tuple[Reply, str]] = [
    (OK, "OK"),
    (Integer(1), "(integer) 1"),
    (Integer(-5), "(integer) -5"),
    (String("text"), '"text"'),
    (String(""), '""'),
    (String('é\t"\\x\x01\n\r\a\b'), '"\\xc3\\xa9\\t\\"\\\\x\\x01\\n\\r\\a\\b"'),
    (NIL, "(nil)"),
    (arr(), "(empty array)"),
    (ErrorReply("bad\nthing"), "(error) ERR bad thing"),
    (ErrorReply("e", code="NOAUTH"), "(error) NOAUTH e"),
    (arr(String("a"), String("b")), '1) "a"\n2) "b"'),
    (arr(arr(String("a"), String("b"))), '1) 1) "a"\n   2) "b"'),
    (
        arr(arr(String("a"), String("b")), Integer(3)),
        '1) 1) "a"\n   2) "b"\n2) (integer) 3',
    ),
    (
        arr(
            String("a"),
            arr(String("a"), arr(String("x"), arr(), ELEVEN), String("b")),
            Integer(3),
            NIL,
            ErrorReply("e", code="NOAUTH"),
        ),
        "\n".join(
            [
                '1) "a"',
                '2) 1) "a"',
                '   2) 1) "x"',
                "      2) (empty array)",
                "      3)  1) (integer) 0",
                *(f"         {i + 1:>2}) (integer) {i}" for i in range(1, 11)),
                '   3) "b"',
                "3) (integer) 3",
                "4) (nil)",
                "5) (error) NOAUTH e",
            ]
        ),
    ),
    (
        arr(ELEVEN, String("z")),
        "1)  1) (integer) 0\n"
        + "".join(f"   {i + 1:>2}) (integer) {i}\n" for i in range(1, 11))
        + '2) "z"',
    ),
    (
        Array(tuple(arr(String(str(i))) for i in range(10))),
        "\n".join(f'{i + 1:>2}) 1) "{i}"' for i in range(10)),
    ),
]


@pytest.mark.parametrize(("reply", "text"), CONSOLE_CASES)
def test_to_console(reply: Reply, text: str) -> None:
    assert to_console(reply) == text


def test_to_console_verbatim_examples() -> None:
    assert to_console(arr(String("a"), String("b"))) == '1) "a"\n2) "b"'
    assert to_console(arr(arr(String("a"), String("b")))) == '1) 1) "a"\n   2) "b"'


# -- JSON ------------------------------------------------------------------------------

JSON_CASES: list[tuple[Reply, object]] = [
    (OK, "OK"),
    (Integer(7), 7),
    (String("é"), "é"),
    (NIL, None),
    (arr(), []),
    (arr(String("a"), arr(Integer(1), NIL)), ["a", [1, None]]),
    (ErrorReply("no such upstream: u"), {"code": 400, "message": "no such upstream: u"}),
    (ErrorReply("gone", 404), {"code": 404, "message": "gone"}),
]


@pytest.mark.parametrize(("reply", "value"), JSON_CASES)
def test_to_json(reply: Reply, value: object) -> None:
    assert to_json(reply) == value
    json.dumps(to_json(reply))


# -- the types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply", [OK, Integer(1), String("s"), NIL, arr(), ErrorReply("e")], ids=repr
)
def test_replies_are_frozen_and_slotted(reply: Reply) -> None:
    assert not hasattr(reply, "__dict__")
    fields = dataclasses.fields(reply)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(reply, fields[0].name, None)


def test_equality_and_defaults() -> None:
    assert Nil() == NIL
    assert arr(String("a")) == Array((String("a"),))
    error = ErrorReply("m")
    assert (error.http_status, error.code) == (400, "ERR")


@pytest.mark.parametrize("code", ["", "TWO WORDS", "LINE\n"])
def test_error_code_must_be_one_word(code: str) -> None:
    with pytest.raises(ValueError, match="error code"):
        ErrorReply("m", code=code)


# -- properties ------------------------------------------------------------------------

TEXT = st.text(max_size=12)
LEAVES: st.SearchStrategy[Reply] = st.one_of(
    st.builds(Status, TEXT),
    st.builds(Integer, st.integers(-(2**63), 2**63 - 1)),
    st.builds(String, TEXT),
    st.just(NIL),
    st.builds(ErrorReply, TEXT, st.sampled_from([400, 404, 409, 500])),
)
REPLIES: st.SearchStrategy[Reply] = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=6).map(lambda xs: Array(tuple(xs))),
    max_leaves=20,
)

Decoded = bytes | int | None | list["Decoded"] | tuple[str, bytes]


def decode_resp(data: bytes, pos: int = 0) -> tuple[Decoded, int]:
    """A tiny client-side RESP2 reply decoder, independent of the code under test."""
    kind = data[pos : pos + 1]
    end = data.index(b"\r\n", pos)
    head = data[pos + 1 : end]
    pos = end + 2
    if kind == b"+":
        return ("status", head), pos
    if kind == b"-":
        return ("error", head), pos
    if kind == b":":
        return int(head), pos
    if kind == b"$":
        length = int(head)
        if length == -1:
            return None, pos
        assert data[pos + length : pos + length + 2] == b"\r\n"
        return data[pos : pos + length], pos + length + 2
    assert kind == b"*", kind
    items: list[Decoded] = []
    for _ in range(int(head)):
        item, pos = decode_resp(data, pos)
        items.append(item)
    return items, pos


def assert_same(decoded: Decoded, reply: Reply) -> None:
    if isinstance(reply, Array):
        assert isinstance(decoded, list)
        assert len(decoded) == len(reply.items)
        for got, item in zip(decoded, reply.items, strict=True):
            assert_same(got, item)
    elif isinstance(reply, Status | ErrorReply):
        assert isinstance(decoded, tuple)
        kind, line = decoded
        assert kind == ("status" if isinstance(reply, Status) else "error")
        assert b"\r" not in line
        assert b"\n" not in line
        if isinstance(reply, ErrorReply):
            assert line.split(b" ", 1)[0] == b"ERR"
    elif isinstance(reply, String):
        if not any(0xD800 <= ord(c) < 0xE000 for c in reply.value):
            assert decoded == reply.value.encode()
    elif isinstance(reply, Integer):
        assert decoded == reply.value
    else:
        assert decoded is None


def count_leaves(reply: Reply) -> int:
    if isinstance(reply, Array):
        return sum(count_leaves(item) for item in reply.items) if reply.items else 1
    return 1


@PROPERTY
@given(reply=REPLIES)
def test_renderings_of_any_reply(reply: Reply) -> None:
    # RESP decodes back to the same structure, with no line break in a status or error.
    wire = to_resp(reply)
    decoded, end = decode_resp(wire)
    assert end == len(wire)
    assert_same(decoded, reply)
    # The console shows one line per leaf (an empty array is a leaf).
    assert len(to_console(reply).split("\n")) == count_leaves(reply)
    # JSON always serialises.
    json.dumps(to_json(reply))
