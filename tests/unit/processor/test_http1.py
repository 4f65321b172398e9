"""Tests for the sans-IO HTTP/1.x framing (vproxy.processor.http1), by example.

The smuggling table is the heart of it: each row is raw client bytes and the status the
proxy must answer, checked fed at once (then no event of the refused request may come
out, so no byte of it reaches a backend) and fed a byte at a time (same status).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable

import pytest

from helpers import source_of
from vproxy.processor import http1
from vproxy.processor.http1 import (
    BodyChunk,
    BodyKind,
    Event,
    HttpError,
    HttpLimits,
    LocalProtocolError,
    RemoteProtocolError,
    RequestEnd,
    RequestHead,
    RequestParser,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    State,
    encode_head,
    encode_response_head,
)

SMALL = HttpLimits(max_line=64, max_head=256, max_headers=4, max_chunk_line=32, max_pending=64)


def feed_all(parser: RequestParser | ResponseParser, data: bytes) -> list[Event]:
    return parser.receive_data(data)


def feed_bytewise(parser: RequestParser | ResponseParser, data: bytes) -> list[Event]:
    events: list[Event] = []
    for i in range(len(data)):
        events += parser.receive_data(data[i : i + 1])
    return events


def merged(events: list[Event]) -> list[Event]:
    """Events with adjacent BodyChunks joined (how bytes are cut changes their number)."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, BodyChunk) and out and isinstance(out[-1], BodyChunk):
            out[-1] = BodyChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def state_of(parser: RequestParser | ResponseParser) -> State:
    """The parser's state, read through a call so mypy does not pin it across calls."""
    return parser.state


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyChunk))


def req(head: bytes, body: bytes = b"") -> bytes:
    """A request: ``head`` lines joined by CRLF, the empty line, then ``body``."""
    return head.replace(b"\n", b"\r\n") + b"\r\n\r\n" + body


def chunked(head: bytes, body: bytes) -> bytes:
    return req(head + b"\nTransfer-Encoding: chunked", body)


OK_GET = req(b"GET / HTTP/1.1\nHost: a")


def post(fields: bytes, body: bytes = b"") -> bytes:
    """A POST to host ``a`` with extra field lines ``fields``."""
    return req(b"POST / HTTP/1.1\nHost: a\n" + fields, body)


def get(fields: bytes) -> bytes:
    return req(b"GET / HTTP/1.1\nHost: a\n" + fields)


def cpost(body: bytes) -> bytes:
    """A chunked POST whose body (framing included) is ``body``."""
    return post(b"Transfer-Encoding: chunked", body)


def line(request_line: bytes) -> bytes:
    return req(request_line + b"\nHost: a")


Z = b"0\r\n\r\n"  # the last chunk, no trailers
TE = b"Transfer-Encoding:"

# -- the smuggling table --------------------------------------------------------------

# fmt: off
BAD_REQUESTS: list[tuple[str, bytes, int]] = [
    # Content-Length and Transfer-Encoding together, or Content-Length twice or odd
    ("cl-te", post(b"Content-Length: 5\nTransfer-Encoding: chunked", Z), 400),
    ("te-cl", post(b"Transfer-Encoding: chunked\nContent-Length: 5", Z), 400),
    ("te-cl-zero", post(b"Content-Length: 0\nTransfer-Encoding: chunked", Z), 400),
    ("cl-differs", post(b"Content-Length: 5\nContent-Length: 6", b"hello!"), 400),
    ("cl-same-twice", post(b"Content-Length: 5\nContent-Length: 5", b"hello"), 400),
    ("cl-list", post(b"Content-Length: 5, 5", b"hello"), 400),
    ("cl-plus", post(b"Content-Length: +5", b"hello"), 400),
    ("cl-negative", post(b"Content-Length: -1"), 400),
    ("cl-hex", post(b"Content-Length: 0x5", b"hello"), 400),
    ("cl-inner-space", post(b"Content-Length: 1 2"), 400),
    ("cl-empty", post(b"Content-Length:"), 400),
    ("cl-overflow", post(b"Content-Length: 99999999999999999999"), 400),
    ("cl-2**63", post(b"Content-Length: 9223372036854775808"), 400),
    ("cl-space-before-colon", post(b"Content-Length : 5", b"hello"), 400),
    # obfuscated Transfer-Encoding
    ("te-chunked-comma-x", post(TE + b" chunked ,x", Z), 400),
    ("te-xchunked", post(TE + b" xchunked", Z), 400),
    ("te-chunked-x", post(TE + b" chunked, x", Z), 400),
    ("te-Chunked", post(TE + b" Chunked", Z), 400),
    ("te-CHUNKED", post(TE + b" CHUNKED", Z), 400),
    ("te-chunked-chunked", post(TE + b" chunked, chunked", Z), 400),
    ("te-param", post(TE + b" chunked;q=1", Z), 400),
    ("te-identity", post(TE + b" identity", b"x"), 400),
    ("te-gzip-only", post(TE + b" gzip", b"x"), 400),
    ("te-empty-element", post(TE + b" ,chunked", Z), 400),
    ("te-vtab", post(TE + b"\x0bchunked", Z), 400),
    ("te-formfeed", post(TE + b" \x0cchunked", Z), 400),
    ("te-nbsp", post(TE + b" \xa0chunked", Z), 400),
    ("te-trailing-vtab", post(TE + b" chunked\x0b", Z), 400),
    ("te-second-line", post(TE + b" gzip\n" + TE + b" chunked", Z), 400),
    ("te-chunked-twice", post(TE + b" chunked\n" + TE + b" chunked", Z), 400),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked", Z), 400),
    ("te-leading-space", post(b" Transfer-Encoding: chunked", Z), 400),
    ("te-folded", post(TE + b"\n chunked", Z), 400),
    ("te-http10", req(b"POST / HTTP/1.0\nTransfer-Encoding: chunked", Z), 400),
    # chunk sizes and chunked framing
    ("chunk-nonhex", cpost(b"zz\r\n"), 400),
    ("chunk-negative", cpost(b"-1\r\n"), 400),
    ("chunk-plus", cpost(b"+1\r\nx\r\n" + Z), 400),
    ("chunk-0x", cpost(b"0x5\r\nhello\r\n" + Z), 400),
    ("chunk-overflow", cpost(b"fffffffffffffffff1\r\n"), 400),
    ("chunk-2**63", cpost(b"8000000000000000\r\n"), 400),
    ("chunk-empty-size", cpost(b"\r\n"), 400),
    ("chunk-space-after", cpost(b"5 \r\nhello\r\n" + Z), 400),
    ("chunk-space-before", cpost(b" 5\r\nhello\r\n" + Z), 400),
    ("chunk-ext-bare-cr", cpost(b"5;a\rb\r\nhello\r\n" + Z), 400),
    ("chunk-ext-bare-lf", cpost(b"5;a\nb\r\nhello\r\n" + Z), 400),
    ("chunk-ext-space", cpost(b"5 ;a=b\r\nhello\r\n" + Z), 400),
    ("chunk-ext-bad-quote", cpost(b'5;a="b\r\nhello\r\n' + Z), 400),
    ("chunk-ext-no-name", cpost(b"5;=b\r\nhello\r\n" + Z), 400),
    ("chunk-size-bare-lf", cpost(b"5\nhello\r\n" + Z), 400),
    ("chunk-data-no-crlf", cpost(b"5\r\nhelloX" + Z), 400),
    ("chunk-data-bare-lf", cpost(b"5\r\nhello\n" + Z), 400),
    ("chunk-data-too-long", cpost(b"3\r\nhello\r\n" + Z), 400),
    ("chunk-line-too-long", cpost(b"5;" + b"a" * 40 + b"\r\n"), 400),
    ("trailer-space-before-colon", cpost(b"0\r\nT : v\r\n\r\n"), 400),
    ("trailer-folded", cpost(b"0\r\nT: v\r\n w\r\n\r\n"), 400),
    ("trailer-bare-lf", cpost(b"0\r\nT: v\n\r\n"), 400),
    ("trailer-bare-cr", cpost(b"0\r\nT: v\rw\r\n\r\n"), 400),
    ("trailer-no-colon", cpost(b"0\r\nTv\r\n\r\n"), 400),
    ("trailer-content-length", cpost(b"0\r\nContent-Length: 5\r\n\r\n"), 400),
    ("trailer-te", cpost(b"0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
    ("trailer-too-many", cpost(b"0\r\n" + b"T: v\r\n" * 5 + b"\r\n"), 431),
    ("trailer-too-large", cpost(b"0\r\nT: " + b"v" * 300 + b"\r\n\r\n"), 431),
    # field syntax
    ("space-before-colon", req(b"GET / HTTP/1.1\nHost : a"), 400),
    ("tab-before-colon", get(b"X\t: b"), 400),
    ("obs-fold-space", get(b"X: b\n c"), 400),
    ("obs-fold-tab", get(b"X: b\n\tc"), 400),
    ("obs-fold-first", req(b"GET / HTTP/1.1\n Host: a"), 400),
    ("empty-field-name", get(b": b"), 400),
    ("no-colon", get(b"Xb"), 400),
    ("name-non-token", get(b"X(y): b"), 400),
    ("value-nul", get(b"X: a\x00b"), 400),
    ("value-ctl", get(b"X: a\x01b"), 400),
    ("value-del", get(b"X: a\x7fb"), 400),
    # line ends: no bare LF, no bare CR
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("bare-lf-field", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("bare-lf-end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    ("bare-lf-first", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bare-cr-request-line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
    ("bare-cr-field", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    ("cr-cr-lf", b"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", 400),
    # Host
    ("two-hosts-differ", get(b"Host: b"), 400),
    ("two-hosts-same", get(b"Host: a"), 400),
    ("two-hosts-http10", req(b"GET / HTTP/1.0\nHost: a\nHost: b"), 400),
    ("no-host-http11", req(b"GET / HTTP/1.1\nX: a"), 400),
    ("host-list", req(b"GET / HTTP/1.1\nHost: a, b"), 400),
    ("host-space", req(b"GET / HTTP/1.1\nHost: a b"), 400),
    ("host-userinfo", req(b"GET / HTTP/1.1\nHost: u@a"), 400),
    ("host-bad-port", req(b"GET / HTTP/1.1\nHost: a:8x"), 400),
    ("host-big-port", req(b"GET / HTTP/1.1\nHost: a:65536"), 400),
    ("host-mismatch-absolute", req(b"GET http://a/ HTTP/1.1\nHost: b"), 400),
    # request line
    ("method-paren", line(b"G(T / HTTP/1.1"), 400),
    ("method-empty", line(b" / HTTP/1.1"), 400),
    ("method-nul", line(b"G\x00T / HTTP/1.1"), 400),
    ("double-space", line(b"GET  / HTTP/1.1"), 400),
    ("tab-separator", line(b"GET\t/ HTTP/1.1"), 400),
    ("trailing-space", line(b"GET / HTTP/1.1 "), 400),
    ("target-space", line(b"GET /a b HTTP/1.1"), 400),
    ("target-ctl", line(b"GET /a\x01b HTTP/1.1"), 400),
    ("target-del", line(b"GET /a\x7fb HTTP/1.1"), 400),
    ("target-8bit", line(b"GET /a\xffb HTTP/1.1"), 400),
    ("target-fragment", line(b"GET /a#b HTTP/1.1"), 400),
    ("target-relative", line(b"GET a HTTP/1.1"), 400),
    ("target-asterisk-get", line(b"GET * HTTP/1.1"), 400),
    ("target-authority", line(b"GET a:80 HTTP/1.1"), 400),
    ("target-ftp", line(b"GET ftp://a/ HTTP/1.1"), 400),
    ("target-userinfo", line(b"GET http://u@a/ HTTP/1.1"), 400),
    ("target-no-host", line(b"GET http:/// HTTP/1.1"), 400),
    ("target-bad-port", line(b"GET http://a:99999/ HTTP/1.1"), 400),
    ("version-lowercase", line(b"GET / http/1.1"), 400),
    ("version-no-minor", line(b"GET / HTTP/1"), 400),
    ("version-two-digits", line(b"GET / HTTP/1.10"), 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("version-1.2", line(b"GET / HTTP/1.2"), 505),
    ("version-2.0", line(b"GET / HTTP/2.0"), 505),
    ("version-0.9", line(b"GET / HTTP/0.9"), 505),
    ("connect", req(b"CONNECT a:443 HTTP/1.1\nHost: a:443"), 501),
    ("expect-other", get(b"Expect: 200-ok"), 417),
    # limits (SMALL: request line 64, head 256, 4 fields)
    ("line-too-long", line(b"GET /" + b"a" * 80 + b" HTTP/1.1"), 414),
    ("line-too-long-unended", b"GET /" + b"a" * 80, 414),
    ("head-too-large", get(b"X: " + b"b" * 300), 431),
    ("head-too-large-unended", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 300, 431),
    ("too-many-fields", get(b"A: 1\nB: 2\nC: 3\nD: 4"), 431),
]
# fmt: on


def _status_bytewise(data: bytes) -> int:
    parser = RequestParser(SMALL)
    with pytest.raises(RemoteProtocolError) as info:
        feed_bytewise(parser, data)
    return info.value.status


@pytest.mark.parametrize(
    ("data", "status"),
    [(d, s) for _, d, s in BAD_REQUESTS],
    ids=[name for name, _, _ in BAD_REQUESTS],
)
def test_smuggling_table(data: bytes, status: int) -> None:
    parser = RequestParser(SMALL)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(data)
    assert info.value.status == status
    assert info.value.events == ()  # nothing of the refused request reaches a backend
    assert parser.state is State.ERROR
    assert _status_bytewise(data) == status


@pytest.mark.parametrize(
    ("data", "status"),
    [(d, s) for _, d, s in BAD_REQUESTS],
    ids=[name for name, _, _ in BAD_REQUESTS],
)
def test_smuggling_table_after_a_good_request(data: bytes, status: int) -> None:
    """A refused request pipelined after a good one: the good one still comes out."""
    parser = RequestParser(SMALL)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(OK_GET + data)
    assert info.value.status == status
    assert [type(e) for e in info.value.events] == [RequestHead, RequestEnd]


GOOD_REQUESTS: list[tuple[str, bytes]] = [
    ("te-tab-ows", req(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding:\tchunked\t", b"0\r\n\r\n")),
    (
        "te-gzip-then-chunked",
        req(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked", b"0\r\n\r\n"),
    ),
    ("cl-leading-zeros", req(b"POST / HTTP/1.1\nHost: a\nContent-Length: 005", b"hello")),
    ("chunk-ext-token", cpost(b"5;a=b;c\r\nhello\r\n0\r\n\r\n")),
    (
        "chunk-ext-quoted",
        cpost(b'5;a="b \\" ;c"\r\nhello\r\n0;z\r\n\r\n'),
    ),
    ("chunk-size-zeros", cpost(b"0005\r\nhello\r\n000\r\n\r\n")),
    ("chunk-size-upper", cpost(b"A\r\n0123456789\r\n0\r\n\r\n")),
    ("trailers", cpost(b"1\r\nx\r\n0\r\nT: v\r\nU:\r\n\r\n")),
    ("empty-value", req(b"GET / HTTP/1.1\nHost: a\nX:")),
    ("obs-text-value", req(b"GET / HTTP/1.1\nHost: a\nX: caf\xe9")),
    ("extension-method", req(b"PURGE /x HTTP/1.1\nHost: a")),
    ("lowercase-method", req(b"get /x HTTP/1.1\nHost: a")),
    ("options-asterisk", req(b"OPTIONS * HTTP/1.1\nHost: a")),
    ("absolute-form", req(b"GET http://A.example:80/x?y HTTP/1.1\nHost: a.example")),
    ("http10-no-host", req(b"GET / HTTP/1.0")),
    ("empty-host-http11", req(b"GET / HTTP/1.1\nHost:")),
    ("ipv6-host", req(b"GET / HTTP/1.1\nHost: [::1]:8080")),
    ("leading-crlf", b"\r\n\r\n" + req(b"GET / HTTP/1.1\nHost: a")),
    ("expect-http10-ignored", req(b"GET / HTTP/1.0\nExpect: whatever")),
]


@pytest.mark.parametrize("data", [d for _, d in GOOD_REQUESTS], ids=[n for n, _ in GOOD_REQUESTS])
def test_accepted_requests(data: bytes) -> None:
    whole = RequestParser().receive_data(data)
    assert isinstance(whole[0], RequestHead)
    assert isinstance(whole[-1], RequestEnd)
    assert merged(feed_bytewise(RequestParser(), data)) == merged(whole)


def test_head_fields() -> None:
    data = req(
        b"POST /up?x=1 HTTP/1.1\nHOST: Example.COM:8080\nX-Trailing: v \nContent-Length: 3\n"
        b"Expect: 100-continue",
        b"abc",
    )
    head, chunk, end = RequestParser().receive_data(data)
    assert head == RequestHead(
        method=b"POST",
        target=b"/up?x=1",
        version=b"1.1",
        headers=[
            (b"HOST", b"Example.COM:8080"),
            (b"X-Trailing", b"v"),
            (b"Content-Length", b"3"),
            (b"Expect", b"100-continue"),
        ],
        host="example.com",
        keep_alive=True,
        expect_continue=True,
        upgrade=None,
        body_kind=BodyKind.LENGTH,
        content_length=3,
    )
    assert chunk == BodyChunk(b"abc")
    assert end == RequestEnd()


def test_host_from_absolute_form_wins() -> None:
    (head, _) = RequestParser().receive_data(
        req(b"GET http://a.example/x HTTP/1.1\nHost: A.example")
    )
    assert isinstance(head, RequestHead)
    assert head.host == "a.example"
    (head, _) = RequestParser().receive_data(req(b"GET http://[::1]:80/ HTTP/1.0"))
    assert isinstance(head, RequestHead)
    assert head.host == "[::1]"


# -- pipelining and segmentation ------------------------------------------------------

PIPELINE = (
    req(b"GET /1 HTTP/1.1\nHost: a")
    + req(b"POST /2 HTTP/1.1\nHost: a\nContent-Length: 5", b"hello")
    + chunked(b"PUT /3 HTTP/1.1\nHost: a", b"3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n")
    + req(b"HEAD /4 HTTP/1.1\nHost: a\nContent-Length: 0")
    + req(b"DELETE /5 HTTP/1.0\nConnection: keep-alive")
)


def test_pipelined_requests_come_out_in_order() -> None:
    events = RequestParser().receive_data(PIPELINE)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "RequestHead", "RequestEnd",
        "RequestHead", "BodyChunk", "RequestEnd",
        "RequestHead", "BodyChunk", "RequestEnd",
        "RequestHead", "RequestEnd",
        "RequestHead", "RequestEnd",
    ]  # fmt: skip
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == [b"/1", b"/2", b"/3", b"/4", b"/5"]
    assert [h.body_kind for h in heads] == [
        BodyKind.NONE, BodyKind.LENGTH, BodyKind.CHUNKED, BodyKind.LENGTH, BodyKind.NONE
    ]  # fmt: skip
    assert events[3] == BodyChunk(b"hello")
    assert events[6] == BodyChunk(b"3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n")


def test_pipeline_split_at_every_point() -> None:
    expected = merged(RequestParser().receive_data(PIPELINE))
    for cut in range(len(PIPELINE) + 1):
        parser = RequestParser()
        got = parser.receive_data(PIPELINE[:cut]) + parser.receive_data(PIPELINE[cut:])
        assert merged(got) == expected, cut
    assert merged(feed_bytewise(RequestParser(), PIPELINE)) == expected


def test_chunked_body_split_anywhere_into_three() -> None:
    body = b'4;name="q\\"x"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nA: b\r\n\r\n'
    data = cpost(body) + OK_GET
    expected = merged(RequestParser().receive_data(data))
    assert body_of(expected) == body
    start = data.index(b"\r\n\r\n") + 4
    for i in range(start, len(data) + 1):
        for j in range(i, len(data) + 1):
            parser = RequestParser()
            got = parser.receive_data(data[:i]) + parser.receive_data(data[i:j])
            got += parser.receive_data(data[j:])
            assert merged(got) == expected, (i, j)


def test_body_bytes_are_streamed_not_buffered() -> None:
    parser = RequestParser()
    head = req(b"POST / HTTP/1.1\nHost: a\nContent-Length: 100000")
    assert [type(e) for e in parser.receive_data(head)] == [RequestHead]
    part = b"x" * 4096
    assert parser.receive_data(part) == [BodyChunk(part)]
    assert parser.receive_data(b"") == []
    assert parser.state is State.BODY


def test_request_body_bytes_are_not_copied_when_whole() -> None:
    parser = RequestParser()
    parser.receive_data(req(b"POST / HTTP/1.1\nHost: a\nContent-Length: 100000"))
    part = b"y" * 65536
    (chunk,) = parser.receive_data(part)
    assert isinstance(chunk, BodyChunk)
    assert chunk.data is part


# -- keep-alive, close, EOF -----------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\nHost: a", True),
        (b"GET / HTTP/1.1\nHost: a\nConnection: close", False),
        (b"GET / HTTP/1.1\nHost: a\nConnection: Keep-Alive, CLOSE", False),
        (b"GET / HTTP/1.0", False),
        (b"GET / HTTP/1.0\nConnection: keep-alive", True),
        (b"GET / HTTP/1.0\nConnection: Keep-Alive\nConnection: close", False),
    ],
)
def test_keep_alive_rules(head: bytes, keep_alive: bool) -> None:
    parser = RequestParser()
    events = parser.receive_data(req(head))
    assert isinstance(events[0], RequestHead)
    assert events[0].keep_alive is keep_alive
    assert parser.state is (State.HEAD if keep_alive else State.MUST_CLOSE)


def test_bytes_after_a_closing_request_are_ignored() -> None:
    parser = RequestParser()
    events = parser.receive_data(req(b"GET / HTTP/1.1\nHost: a\nConnection: close") + b"junk")
    assert [type(e) for e in events] == [RequestHead, RequestEnd]
    assert parser.receive_data(OK_GET) == []
    assert parser.receive_eof() == []
    assert parser.state is State.CLOSED


def test_request_eof() -> None:
    parser = RequestParser()
    parser.receive_data(OK_GET)
    assert parser.receive_eof() == []
    assert parser.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        parser.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        parser.receive_eof()


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HT",
        b"\r",
        req(b"POST / HTTP/1.1\nHost: a\nContent-Length: 5", b"hel"),
        cpost(b"5\r\nhel"),
        cpost(b"5\r\nhello"),
        cpost(b"0\r\n"),
        cpost(b""),
    ],
)
def test_request_eof_inside_a_message(data: bytes) -> None:
    parser = RequestParser()
    parser.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_eof()
    assert info.value.status == 400
    assert parser.state is State.ERROR


def test_errors_stick() -> None:
    parser = RequestParser()
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(b"BAD\r\n\r\n")
    calls: list[Callable[[], object]] = [functools.partial(parser.receive_data, OK_GET)]
    for call in [*calls, parser.receive_eof]:
        with pytest.raises(RemoteProtocolError) as info:
            call()
        assert info.value.status == 400
        assert info.value.events == ()


def test_error_wire_form() -> None:
    exc = RemoteProtocolError(431, "head too large")
    wire = exc.wire
    assert wire.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nConnection: close\r\n" in wire
    head, _, body = wire.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert RemoteProtocolError(599, "x").wire.startswith(b"HTTP/1.1 599 Error\r\n")
    assert LocalProtocolError("misuse").status == 500
    assert isinstance(exc, HttpError)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_head"):
        HttpLimits(max_line=100, max_head=103)
    with pytest.raises(ValueError, match="max_headers"):
        HttpLimits(max_headers=0)
    with pytest.raises(ValueError, match="max_pending"):
        HttpLimits(max_pending=0)
    assert RequestParser(SMALL).limits is SMALL


def test_limits_are_inclusive() -> None:
    line = b"GET /" + b"a" * (64 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 64
    assert RequestParser(SMALL).receive_data(req(line + b"\nHost: a"))[-1] == RequestEnd()
    fields = req(b"GET / HTTP/1.1\nHost: a\nA: 1\nB: 2\nC: 3")
    assert RequestParser(SMALL).receive_data(fields)[-1] == RequestEnd()
    head = req(b"GET / HTTP/1.1\nHost: a\nX: ")
    pad = 256 - len(head)
    exact = head[:-4] + b"b" * pad + b"\r\n\r\n"
    assert len(exact) == 256
    assert RequestParser(SMALL).receive_data(exact)[-1] == RequestEnd()
    assert feed_bytewise(RequestParser(SMALL), exact)[-1] == RequestEnd()


# -- upgrade --------------------------------------------------------------------------

WS = req(
    b"GET /chat HTTP/1.1\nHost: a\nConnection: Upgrade\nUpgrade: websocket\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13"
)


def test_upgrade_accepted() -> None:
    parser = RequestParser()
    events = parser.receive_data(WS + b"\x81\x05hello")
    head = events[0]
    assert isinstance(head, RequestHead)
    assert head.upgrade == b"websocket"
    assert [type(e) for e in events] == [RequestHead, RequestEnd]
    assert state_of(parser) is State.AWAIT_UPGRADE
    assert parser.receive_data(b"\x81\x01!") == []
    assert parser.accept_upgrade() == b"\x81\x05hello\x81\x01!"
    assert state_of(parser) is State.SWITCHED
    with pytest.raises(LocalProtocolError):
        parser.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        parser.receive_eof()


def test_upgrade_declined_parses_what_was_held() -> None:
    parser = RequestParser()
    assert [type(e) for e in parser.receive_data(WS + b"GET /next HTTP/1.1\r\n")] == [
        RequestHead,
        RequestEnd,
    ]
    assert parser.receive_data(b"Host: a\r\n\r\n") == []
    events = parser.decline_upgrade()
    assert [type(e) for e in events] == [RequestHead, RequestEnd]
    assert isinstance(events[0], RequestHead)
    assert events[0].target == b"/next"
    assert parser.state is State.HEAD


def test_upgrade_declined_after_eof() -> None:
    parser = RequestParser()
    parser.receive_data(WS + OK_GET)
    assert parser.receive_eof() == []
    events = parser.decline_upgrade()
    assert [type(e) for e in events] == [RequestHead, RequestEnd]
    assert parser.state is State.CLOSED

    parser = RequestParser()
    parser.receive_data(WS + b"GET / HT")
    parser.receive_eof()
    with pytest.raises(RemoteProtocolError) as info:
        parser.decline_upgrade()
    assert info.value.status == 400


def test_upgrade_declined_on_a_closing_request() -> None:
    parser = RequestParser()
    parser.receive_data(req(b"GET / HTTP/1.1\nHost: a\nConnection: upgrade, close\nUpgrade: x"))
    parser.receive_data(OK_GET)
    assert parser.decline_upgrade() == []
    assert parser.state is State.MUST_CLOSE


def test_upgrade_request_with_a_body_is_framed() -> None:
    data = req(
        b"POST / HTTP/1.1\nHost: a\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\nContent-Length: 5",
        b"hello",
    )
    parser = RequestParser()
    events = parser.receive_data(data + b"PRI * HTTP/2.0")
    assert body_of(events) == b"hello"
    assert parser.accept_upgrade() == b"PRI * HTTP/2.0"


def test_upgrade_needs_connection_option_and_http11() -> None:
    for head in (
        b"GET / HTTP/1.1\nHost: a\nUpgrade: websocket",
        b"GET / HTTP/1.1\nHost: a\nConnection: upgrade",
        b"GET / HTTP/1.0\nConnection: upgrade\nUpgrade: websocket",
    ):
        parser = RequestParser()
        events = parser.receive_data(req(head))
        assert isinstance(events[0], RequestHead)
        assert events[0].upgrade is None
        assert parser.state is not State.AWAIT_UPGRADE


def test_upgrade_holds_at_most_max_pending() -> None:
    parser = RequestParser(SMALL)
    parser.receive_data(req(b"GET / HTTP/1.1\nHost: a\nConnection: upgrade\nUpgrade: x"))
    parser.receive_data(b"x" * 64)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(b"x")
    assert info.value.status == 400

    parser = RequestParser(SMALL)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(
            req(b"GET / HTTP/1.1\nHost: a\nConnection: upgrade\nUpgrade: x") + b"y" * 65
        )
    assert [type(e) for e in info.value.events] == [RequestHead, RequestEnd]


def test_upgrade_calls_in_the_wrong_state() -> None:
    parser = RequestParser()
    with pytest.raises(LocalProtocolError):
        parser.accept_upgrade()
    with pytest.raises(LocalProtocolError):
        parser.decline_upgrade()
    assert parser.state is State.HEAD


# -- responses ------------------------------------------------------------------------


def resp(head: bytes, body: bytes = b"") -> bytes:
    return head.replace(b"\n", b"\r\n") + b"\r\n\r\n" + body


def response_parser(*methods: bytes) -> ResponseParser:
    parser = ResponseParser()
    for method in methods:
        parser.expect_response(method)
    return parser


def test_response_with_length() -> None:
    parser = response_parser(b"GET", b"GET")
    data = resp(b"HTTP/1.1 200 OK\nContent-Length: 3", b"abc") + resp(
        b"HTTP/1.1 404 \nContent-Length: 0"
    )
    events = parser.receive_data(data)
    assert events[0] == ResponseHead(
        200, b"OK", b"1.1", [(b"Content-Length", b"3")], True, BodyKind.LENGTH, 3
    )
    assert events[1:3] == [BodyChunk(b"abc"), ResponseEnd()]
    assert isinstance(events[3], ResponseHead)
    assert (events[3].status, events[3].reason) == (404, b"")
    assert events[4] == ResponseEnd()
    assert parser.pending == 0
    assert parser.receive_eof() == []
    assert parser.state is State.CLOSED


def test_truncated_backend_body_is_an_error_not_padding() -> None:
    parser = response_parser(b"GET")
    events = parser.receive_data(resp(b"HTTP/1.1 200 OK\nContent-Length: 1000", b"0123456789"))
    assert body_of(events) == b"0123456789"
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_eof()
    assert info.value.status == 502
    assert "990" in info.value.reason
    assert info.value.events == ()


def test_truncated_chunked_backend_body() -> None:
    parser = response_parser(b"GET")
    parser.receive_data(resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked", b"a\r\n01234"))
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_eof()
    assert info.value.status == 502


def test_backend_closes_without_answering() -> None:
    parser = response_parser(b"GET")
    with pytest.raises(RemoteProtocolError, match="without responding"):
        parser.receive_eof()
    parser = response_parser(b"GET")
    parser.receive_data(b"HTTP/1.1 200")
    with pytest.raises(RemoteProtocolError, match="inside a message head"):
        parser.receive_eof()


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.0 200 OK", False),
        (b"HTTP/1.1 200 OK\nConnection: close", False),
        (b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip", False),
    ],
)
def test_body_until_close(head: bytes, keep_alive: bool) -> None:
    parser = response_parser(b"GET")
    events = parser.receive_data(resp(head, b"abc"))
    assert isinstance(events[0], ResponseHead)
    assert events[0].body_kind is BodyKind.UNTIL_CLOSE
    assert events[0].keep_alive is keep_alive
    assert parser.receive_data(b"def") == [BodyChunk(b"def")]
    assert parser.receive_eof() == [ResponseEnd()]
    assert parser.state is State.CLOSED


def test_http10_response_with_length_closes() -> None:
    parser = response_parser(b"GET", b"GET")
    events = parser.receive_data(resp(b"HTTP/1.0 200 OK\nContent-Length: 1", b"x") + b"junk")
    assert isinstance(events[0], ResponseHead)
    assert not events[0].keep_alive
    assert parser.state is State.MUST_CLOSE
    with pytest.raises(LocalProtocolError):
        parser.expect_response(b"GET")
    parser = response_parser(b"GET")
    events = parser.receive_data(
        resp(b"HTTP/1.0 200 OK\nConnection: keep-alive\nContent-Length: 0")
    )
    assert isinstance(events[0], ResponseHead)
    assert events[0].keep_alive
    assert parser.state is State.HEAD


@pytest.mark.parametrize(
    ("method", "head"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\nContent-Length: 100"),
        (b"HEAD", b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked"),
        (b"HEAD", b"HTTP/1.1 200 OK"),
        (b"GET", b"HTTP/1.1 204 No Content\nContent-Length: 100"),
        (b"GET", b"HTTP/1.1 304 Not Modified\nContent-Length: 100"),
        (b"GET", b"HTTP/1.1 304 Not Modified\nTransfer-Encoding: chunked"),
    ],
)
def test_responses_without_body(method: bytes, head: bytes) -> None:
    parser = response_parser(method, b"GET")
    nxt = resp(b"HTTP/1.1 200 OK\nContent-Length: 2", b"ok")
    events = parser.receive_data(resp(head) + nxt)
    assert isinstance(events[0], ResponseHead)
    assert events[0].body_kind is BodyKind.NONE
    assert events[1] == ResponseEnd()
    assert events[2:] == [events[2], BodyChunk(b"ok"), ResponseEnd()]
    assert merged(feed_bytewise(response_parser(method, b"GET"), resp(head) + nxt)) == events


def test_interim_responses() -> None:
    parser = response_parser(b"POST")
    data = (
        resp(b"HTTP/1.1 100 Continue")
        + resp(b"HTTP/1.1 103 Early Hints\nLink: </a.css>; rel=preload")
        + resp(b"HTTP/1.1 201 Created\nContent-Length: 0")
    )
    events = parser.receive_data(data)
    statuses = [e.status for e in events if isinstance(e, ResponseHead)]
    assert statuses == [100, 103, 201]
    assert [isinstance(e, ResponseHead) and e.interim for e in events] == [True, True, False, False]
    assert events[-1] == ResponseEnd()
    assert merged(feed_bytewise(response_parser(b"POST"), data)) == events


def test_interim_then_error_keeps_the_interim() -> None:
    parser = response_parser(b"POST")
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(resp(b"HTTP/1.1 100 Continue") + b"HTTP/9.9 200 OK\r\n\r\n")
    assert [type(e) for e in info.value.events] == [ResponseHead]


def test_switching_protocols() -> None:
    parser = ResponseParser()
    parser.expect_response(b"GET", upgrade=True)
    head = resp(b"HTTP/1.1 101 Switching Protocols\nConnection: Upgrade\nUpgrade: websocket")
    events = parser.receive_data(resp(b"HTTP/1.1 100 Continue") + head + b"\x81\x02hi")
    assert [e.status for e in events if isinstance(e, ResponseHead)] == [100, 101]
    assert parser.state is State.SWITCHED
    assert parser.trailing_data == b"\x81\x02hi"
    with pytest.raises(LocalProtocolError):
        parser.receive_data(b"more")
    assert ResponseParser().trailing_data == b""


@pytest.mark.parametrize(
    ("upgrade", "head"),
    [
        (False, b"HTTP/1.1 101 Switching Protocols\nConnection: Upgrade\nUpgrade: websocket"),
        (True, b"HTTP/1.1 101 Switching Protocols\nConnection: Upgrade"),
    ],
)
def test_unasked_or_empty_101_is_refused(upgrade: bool, head: bytes) -> None:
    parser = ResponseParser()
    parser.expect_response(b"GET", upgrade=upgrade)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(resp(head))
    assert info.value.status == 502


def test_declined_upgrade_response() -> None:
    parser = ResponseParser()
    parser.expect_response(b"GET", upgrade=True)
    events = parser.receive_data(resp(b"HTTP/1.1 426 Upgrade Required\nContent-Length: 0"))
    assert isinstance(events[0], ResponseHead)
    assert events[0].status == 426
    assert parser.state is State.HEAD


BAD_RESPONSES: list[tuple[str, bytes]] = [
    ("cl-te", resp(b"HTTP/1.1 200 OK\nContent-Length: 3\nTransfer-Encoding: chunked")),
    ("cl-twice", resp(b"HTTP/1.1 200 OK\nContent-Length: 3\nContent-Length: 3", b"abc")),
    ("te-obfuscated", resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked ,x")),
    ("te-Chunked", resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: Chunked")),
    ("te-two-lines", resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip\nTransfer-Encoding: chunked")),
    ("te-http10", resp(b"HTTP/1.0 200 OK\nTransfer-Encoding: chunked", b"0\r\n\r\n")),
    ("chunk-bad", resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked", b"zz\r\n")),
    ("obs-fold", resp(b"HTTP/1.1 200 OK\nX: a\n b\nContent-Length: 0")),
    ("space-before-colon", resp(b"HTTP/1.1 200 OK\nContent-Length : 0")),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    ("status-2-digits", resp(b"HTTP/1.1 20 OK\nContent-Length: 0")),
    ("status-600", resp(b"HTTP/1.1 600 X\nContent-Length: 0")),
    ("status-099", resp(b"HTTP/1.1 099 X\nContent-Length: 0")),
    ("version-2", resp(b"HTTP/2.0 200 OK\nContent-Length: 0")),
    ("version-lower", resp(b"http/1.1 200 OK\nContent-Length: 0")),
    ("no-space", resp(b"HTTP/1.1  200 OK\nContent-Length: 0")),
    ("reason-ctl", resp(b"HTTP/1.1 200 O\x01K\nContent-Length: 0")),
    ("empty-start", b"\r\nHTTP/1.1 200 OK\r\n\r\n"),
    ("status-line-too-long", resp(b"HTTP/1.1 200 " + b"x" * 9000)),
    ("head-too-large", resp(b"HTTP/1.1 200 OK\nX: " + b"x" * 8000 + (b"\nX: " + b"x" * 8000) * 4)),
]


@pytest.mark.parametrize("data", [d for _, d in BAD_RESPONSES], ids=[n for n, _ in BAD_RESPONSES])
def test_broken_backends_get_502(data: bytes) -> None:
    parser = response_parser(b"GET")
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(data)
    assert info.value.status == 502
    assert info.value.events == ()
    parser = response_parser(b"GET")
    with pytest.raises(RemoteProtocolError) as info:
        feed_bytewise(parser, data)
    assert info.value.status == 502


def test_unsolicited_response_bytes() -> None:
    with pytest.raises(RemoteProtocolError, match="without a request"):
        ResponseParser().receive_data(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert ResponseParser().receive_data(b"") == []


def test_expect_response_refusals() -> None:
    with pytest.raises(LocalProtocolError):
        ResponseParser().expect_response(b"CONNECT")
    parser = response_parser(b"GET")
    parser.receive_data(resp(b"HTTP/1.1 200 OK", b"x"))
    parser.receive_eof()
    with pytest.raises(LocalProtocolError):
        parser.expect_response(b"GET")


def test_response_trailers_and_chunks_pass_through() -> None:
    body = b"5;ext=1\r\nhello\r\n0\r\nServer-Timing: db;dur=53\r\n\r\n"
    parser = response_parser(b"GET")
    events = parser.receive_data(resp(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked", body))
    assert body_of(events) == body
    assert events[-1] == ResponseEnd()


# -- encoding -------------------------------------------------------------------------


def parse_one(data: bytes) -> tuple[RequestHead, bytes]:
    events = RequestParser().receive_data(data)
    head = events[0]
    assert isinstance(head, RequestHead)
    assert isinstance(events[-1], RequestEnd)
    return head, body_of(events)


FORWARD = [(b"x-forwarded-for", b"10.0.0.9"), (b"x-client-port", b"51000")]


def test_encode_head_appends_forwarding_headers() -> None:
    head, _ = parse_one(req(b"GET /p?q HTTP/1.1\nHost: a\nAccept: */*\nUser-Agent: t"))
    assert encode_head(head, FORWARD) == (
        b"GET /p?q HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: t\r\n"
        b"x-forwarded-for: 10.0.0.9\r\nx-client-port: 51000\r\n\r\n"
    )
    assert (
        encode_head(head) == b"GET /p?q HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n"
    )


def test_encode_head_extends_client_forwarded_for_and_replaces_port() -> None:
    head, _ = parse_one(
        req(
            b"GET / HTTP/1.1\nX-Forwarded-For: 1.1.1.1\nHost: a\nX-Client-Port: 1\n"
            b"x-forwarded-for: 2.2.2.2, 3.3.3.3"
        )
    )
    assert encode_head(head, FORWARD) == (
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        b"x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\nx-client-port: 51000\r\n\r\n"
    )


def test_encode_head_drops_hop_by_hop() -> None:
    head, _ = parse_one(
        req(
            b"GET / HTTP/1.1\nHost: a\n"
            b"Connection: close, X-Secret, x-forwarded-for, Content-Length\n"
            b"Keep-Alive: timeout=5\nX-Secret: s\nProxy-Connection: keep-alive\nUpgrade: h2c\n"
            b"Content-Length: 0\nTE: trailers"
        )
    )
    assert encode_head(head, FORWARD) == (
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTE: trailers\r\n"
        b"x-forwarded-for: 10.0.0.9\r\nx-client-port: 51000\r\n\r\n"
    )


def test_encode_head_http10_keep_alive() -> None:
    head, _ = parse_one(
        req(b"GET / HTTP/1.0\nUser-Agent: t\nconnection: Keep-Alive\nKeep-Alive: 5")
    )
    assert encode_head(head) == b"GET / HTTP/1.0\r\nUser-Agent: t\r\nconnection: keep-alive\r\n\r\n"
    head, _ = parse_one(req(b"GET / HTTP/1.0\nUser-Agent: t"))
    assert encode_head(head) == b"GET / HTTP/1.0\r\nUser-Agent: t\r\n\r\n"


def test_encode_head_keeps_the_upgrade_handshake() -> None:
    head, _ = parse_one(
        req(
            b"GET / HTTP/1.1\nHost: a\nConnection: Upgrade, HTTP2-Settings, x-client-port\n"
            b"Upgrade: h2c\nHTTP2-Settings: AAMAAABkAAQAAP__\nKeep-Alive: 1"
        )
    )
    assert encode_head(head, FORWARD) == (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"
        b"x-forwarded-for: 10.0.0.9\r\nx-client-port: 51000\r\n\r\n"
    )


def test_encode_head_keeps_chunked_body_framing() -> None:
    body = b"3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n"
    head, got = parse_one(cpost(body))
    assert got == body
    forwarded = encode_head(head, FORWARD) + got
    again, body2 = parse_one(forwarded)
    assert body2 == body
    assert again.headers == [*head.headers, *FORWARD]


def test_encode_head_refuses_bad_added_fields() -> None:
    head, _ = parse_one(OK_GET)
    with pytest.raises(LocalProtocolError):
        encode_head(head, [(b"x forwarded", b"1")])
    with pytest.raises(LocalProtocolError):
        encode_head(head, [(b"x-forwarded-for", b"1\r\nHost: evil")])
    for name in (b"Host", b"content-length", b"Transfer-Encoding", b"Connection", b"upgrade"):
        with pytest.raises(LocalProtocolError):
            encode_head(head, [(name, b"x")])


def test_encode_response_head() -> None:
    parser = response_parser(b"GET", b"GET", b"GET")
    data = (
        resp(
            b"HTTP/1.1 200 OK\nConnection: keep-alive, X-Hop\nX-Hop: 1\nContent-Length: 0\n"
            b"Upgrade: h2c"
        )
        + resp(b"HTTP/1.0 404 Not Found\nConnection: keep-alive\nContent-Length: 0")
        + resp(b"HTTP/1.1 100 Continue\nConnection: x")
    )
    events = parser.receive_data(data)
    heads = [e for e in events if isinstance(e, ResponseHead)]
    assert encode_response_head(heads[0]) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert encode_response_head(heads[0], close=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert encode_response_head(heads[1]) == (
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    )
    assert encode_response_head(heads[2], close=True) == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_encode_response_head_101_and_426_keep_upgrade() -> None:
    parser = ResponseParser()
    parser.expect_response(b"GET", upgrade=True)
    parser.expect_response(b"GET", upgrade=True)
    h426 = resp(
        b"HTTP/1.1 426 Upgrade Required\nUpgrade: websocket\nConnection: Upgrade\nContent-Length: 0"
    )
    h101 = resp(b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade")
    events = parser.receive_data(h426 + h101)
    heads = [e for e in events if isinstance(e, ResponseHead)]
    assert encode_response_head(heads[0]) == (
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n"
    )
    assert encode_response_head(heads[1], close=True) == h101


def test_module_does_no_io() -> None:
    tree = ast.parse(source_of(http1).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "selectors", "time", "vproxy"}


def test_events_are_slotted() -> None:
    events = RequestParser().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    for event in [*events, BodyChunk(b"x"), ResponseEnd(), HttpLimits()]:
        assert not hasattr(event, "__dict__"), event  # slotted (or compiled)
    with pytest.raises(AttributeError):
        BodyChunk(b"x").other = b"y"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        HttpLimits().max_line = 1  # type: ignore[misc]  # the limits stay frozen
