"""The shortcuts of vproxy.processor.http1 give what the plain rules give.

The parsers take whole clean heads in a few C calls, build heads without the
dataclass ``__init__``, and the encoders copy fields in one pass when no Connection
option names a field. Each shortcut is checked here against the straightforward
version of the same rule: the dataclass constructor, and a two-pass encoder written
from the module docstring.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor import http1
from vproxy.processor.http1 import (
    AddedFields,
    BodyChunk,
    BodyKind,
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

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

HOP = {b"connection", b"keep-alive", b"proxy-connection"}
PROTECTED = {b"host", b"content-length", b"transfer-encoding"}
LIST_VALUED = {b"x-forwarded-for", b"forwarded", b"via"}


def tokens(values: list[bytes]) -> list[bytes]:
    return [t.strip(b" \t") for v in values for t in v.split(b",") if t.strip(b" \t")]


def reference_encode_head(head: RequestHead, add: list[tuple[bytes, bytes]]) -> bytes:
    """encode_head as the module docstring states it, two passes, no shortcut."""
    added = {n.lower() for n, _ in add}
    options = tokens([v for n, v in head.headers if n.lower() == b"connection"])
    kept = [o for o in options if o.lower() not in PROTECTED | added]
    drop = HOP | ({o.lower() for o in kept} - {b"close", b"keep-alive", b"upgrade"})
    upgrading = head.upgrade is not None
    drop = drop - {o.lower() for o in kept} if upgrading else drop | {b"upgrade"}
    if upgrading and kept:
        connection = b", ".join(kept)
    elif head.version == b"1.0" and head.keep_alive:
        connection = b"keep-alive"
    else:
        connection = b""
    previous: dict[bytes, list[bytes]] = {}
    out = head.method + b" " + head.target + b" HTTP/" + head.version + b"\r\n"
    for name, value in head.headers:
        lname = name.lower()
        if lname in added:
            previous.setdefault(lname, []).append(value)
        elif lname == b"connection":
            if connection:
                out += name + b": " + connection + b"\r\n"
                connection = b""
        elif lname not in drop:
            out += name + b": " + value + b"\r\n"
    for name, value in add:
        lname = name.lower()
        if lname in LIST_VALUED and lname in previous:
            value = b", ".join([*previous[lname], value])
        out += name + b": " + value + b"\r\n"
    return out + b"\r\n"


def reference_encode_response_head(head: ResponseHead, close: bool) -> bytes:
    out = b"HTTP/" + head.version + b" %d " % head.status + head.reason + b"\r\n"
    if head.status < 200:
        drop = set() if head.status == 101 else HOP
        connection = b""
    else:
        options = tokens([v for n, v in head.headers if n.lower() == b"connection"])
        named = {o.lower() for o in options if o.lower() not in PROTECTED}
        drop = HOP | (named - {b"close", b"keep-alive", b"upgrade"})
        if head.status != 426:
            drop = drop | {b"upgrade"}
        connection = b"close" if close else b"keep-alive" if head.version == b"1.0" else b""
    for name, value in head.headers:
        if name.lower() not in drop:
            out += name + b": " + value + b"\r\n"
    if connection:
        out += b"Connection: " + connection + b"\r\n"
    return out + b"\r\n"


# Field lines that exercise every branch: hop-by-hop fields, Connection options that
# name fields (or protected ones, or added ones), forwarding fields the client sent.
FIELDS = [
    (b"Accept", b"*/*"),
    (b"X-Secret", b"s"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Upgrade", b"websocket"),
    (b"X-Forwarded-For", b"1.1.1.1"),
    (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
    (b"X-Client-Port", b"1"),
    (b"Via", b"1.1 a"),
    (b"Content-Length", b"0"),
    (b"Connection", b"keep-alive"),
    (b"Connection", b"close"),
    (b"connection", b"Upgrade"),
    (b"Connection", b"X-Secret"),
    (b"Connection", b"keep-alive, x-secret , Content-Length"),
    (b"Connection", b"x-forwarded-for"),
    (b"CONNECTION", b"upgrade, HTTP2-Settings"),
    (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
    (b"TE", b"trailers"),
]
ADDED = [
    [],
    [(b"X-Forwarded-For", b"127.0.0.1"), (b"X-Client-Port", b"50000")],
    [(b"x-forwarded-for", b"10.0.0.9")],
    [(b"Via", b"1.1 vproxy"), (b"X-Real-IP", b"10.0.0.9")],
]


def parse_request(data: bytes) -> RequestHead | None:
    try:
        events = RequestParser().receive_data(data)
    except RemoteProtocolError:
        return None
    head = events[0]
    assert isinstance(head, RequestHead)
    return head


@PROPERTY
@given(
    st.sampled_from([b"1.0", b"1.1"]),
    st.lists(st.sampled_from(FIELDS), max_size=7),
    st.sampled_from(ADDED),
)
def test_encode_head_matches_the_two_pass_rules(
    version: bytes, fields: list[tuple[bytes, bytes]], add: list[tuple[bytes, bytes]]
) -> None:
    wire = b"GET /x HTTP/" + version + b"\r\nHost: a\r\n"
    wire += b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    head = parse_request(wire)
    if head is None:
        return
    assert encode_head(head, add) == reference_encode_head(head, add)
    assert encode_head(head, tuple(add)) == reference_encode_head(head, add)
    assert encode_head(head, AddedFields(tuple(add))) == reference_encode_head(head, add)


@pytest.mark.parametrize(
    ("fields", "as_received"),
    [
        (b"Host: a\r\nAccept: */*\r\n", True),
        (b"Host: a\r\nContent-Length: 0\r\nTE: trailers\r\n", True),
        (b"Host: a\r\nAccept:  */*\r\n", False),  # not as encode_head writes it
        (b"Host: a\r\nAccept:*/*\r\n", False),
        (b"Host: a \r\n", False),
        (b"Host: a\r\nConnection: keep-alive\r\n", False),  # dropped
        (b"Host: a\r\nKeep-Alive: 5\r\n", False),
        (b"Host: a\r\nX-Forwarded-For: 1.1.1.1\r\n", False),  # replaced
        (b"Host: a\r\nforwarded: for=x\r\n", False),
        (b"Host: a\r\nVia: 1.1 a\r\n", False),
    ],
)
def test_heads_written_back_as_received(fields: bytes, as_received: bool) -> None:
    # A head that encode_head would write field by field as it came is kept as
    # received (RequestHead.wire) and written back so; the bytes are the same.
    for version in (b"1.0", b"1.1"):
        head = parse_request(b"GET /x HTTP/" + version + b"\r\n" + fields + b"\r\n")
        assert head is not None
        assert bool(head.wire) is as_received
        for add in ADDED:
            assert encode_head(head, add) == reference_encode_head(head, add)
            assert encode_head(head, AddedFields(tuple(add))) == reference_encode_head(head, add)
    head = parse_request(b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    assert head is not None
    assert head.wire == b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*"
    head.headers.append((b"X-More", b"1"))  # changed: its wire no longer holds
    head.wire = b""
    assert encode_head(head).endswith(b"Accept: */*\r\nX-More: 1\r\n\r\n")


@PROPERTY
@given(
    st.sampled_from([b"1.0", b"1.1"]),
    st.sampled_from([100, 101, 103, 200, 204, 404, 426]),
    st.lists(st.sampled_from(FIELDS), max_size=7),
    st.booleans(),
)
def test_encode_response_head_matches_the_two_pass_rules(
    version: bytes, status: int, fields: list[tuple[bytes, bytes]], close: bool
) -> None:
    head = ResponseHead(status, b"Reason", version, fields, True, BodyKind.NONE)
    assert encode_response_head(head, close) == reference_encode_response_head(head, close)


def test_add_headers_are_checked_on_every_call() -> None:
    (head, _) = RequestParser().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(head, RequestHead)
    for _ in range(2):
        with pytest.raises(LocalProtocolError):
            encode_head(head, [(b"X-Forwarded-For", b"1\r\nHost: evil")])
        with pytest.raises(LocalProtocolError):
            encode_head(head, [(b"Connection", b"close")])
    # Prepared once: checked when made.
    with pytest.raises(LocalProtocolError):
        AddedFields(((b"X-Forwarded-For", b"1\r\nHost: evil"),))
    with pytest.raises(LocalProtocolError):
        AddedFields(((b"Content-Length", b"0"),))


def test_many_distinct_add_headers() -> None:
    (head, _) = RequestParser().receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(head, RequestHead)
    for port in range(3000):
        add = [(b"X-Client-Port", str(port).encode())]
        assert encode_head(head, add).endswith(b"X-Client-Port: %d\r\n\r\n" % port)


def test_parsed_heads_are_the_dataclasses() -> None:
    data = (
        b"POST /u HTTP/1.1\r\nHost: A:1\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
        b"GET http://b/ HTTP/1.0\r\n\r\n"
    )
    events = RequestParser().receive_data(data)
    kinds = [type(e) for e in events]
    assert kinds == [RequestHead, BodyChunk, RequestEnd, RequestHead, RequestEnd]
    for event in events:
        if isinstance(event, RequestHead):
            rebuilt = RequestHead(
                **{f.name: getattr(event, f.name) for f in dataclasses.fields(RequestHead)}
            )
            assert rebuilt == event
            assert repr(rebuilt) == repr(event)
    parser = ResponseParser()
    parser.expect_response(b"GET")
    parser.expect_response(b"GET")
    events = parser.receive_data(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx" + b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert head == ResponseHead(200, b"OK", b"1.1", [(b"Content-Length", b"1")], True,
                                BodyKind.LENGTH, 1)  # fmt: skip
    assert events[1:] == [BodyChunk(b"x"), ResponseEnd(), events[3]]


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"CONNECT / HTTP/1.1", 501),
        (b"CONNECT /a#b HTTP/1.1", 501),
        (b"GET /a#b HTTP/1.1", 400),
        (b"GET /a#b HTTP/1.2", 505),
        (b"GET / HTTP/1.2", 505),
        (b"GET / HTTP/2.1", 505),
        (b"get /#", 400),
    ],
)
def test_request_line_shortcut_keeps_the_verdicts(line: bytes, status: int) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        RequestParser().receive_data(line + b"\r\nHost: a\r\n\r\n")
    assert info.value.status == status


def test_request_line_shortcut_fields() -> None:
    for line, expected in [
        (b"GET /a?b=%22c%22 HTTP/1.1", (b"GET", b"/a?b=%22c%22", b"1.1", "a")),
        (b"M-X / HTTP/1.0", (b"M-X", b"/", b"1.0", "a")),
        (b"OPTIONS * HTTP/1.1", (b"OPTIONS", b"*", b"1.1", "a")),
        (b"GET http://a:80/p HTTP/1.1", (b"GET", b"http://a:80/p", b"1.1", "a")),
    ]:
        head = parse_request(line + b"\r\nHost: a\r\n\r\n")
        assert head is not None
        assert (head.method, head.target, head.version, head.host) == expected


def test_host_hint_follows_each_request() -> None:
    parser = RequestParser()
    hosts = []
    for host in (b"A", b"a", b"b:8080", b"b:8080", b"[::1]", b"", b"a"):
        (head, _) = parser.receive_data(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert isinstance(head, RequestHead)
        hosts.append(head.host)
    assert hosts == ["a", "a", "b", "b", "[::1]", None, "a"]
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")


def test_request_lines_are_remembered_bounded_and_apart() -> None:
    # Request lines and field lines are judged once and then looked up: each keeps
    # its own verdict (a request line is no field line), the memory stays bounded.
    for i in range(3000):
        for _ in range(2):
            parser = RequestParser()
            wire = b"GET /%d HTTP/1.1\r\nHost: h%d\r\nX-N:  %d \r\n\r\n" % (i, i, i)
            head, end = parser.receive_data(wire)
            assert isinstance(head, RequestHead)
            assert isinstance(end, RequestEnd)
            assert head.target == b"/%d" % i
            assert head.headers == [(b"Host", b"h%d" % i), (b"X-N", b"%d" % i)]
            assert head.host == f"h{i}"
    assert 0 < len(http1._request_lines) <= 1024
    assert 0 < len(http1._request_fields) <= 1024
    assert 0 < len(http1._field_ids) <= 1024
    long_name = b"X-" + b"n" * 300
    (head, _) = RequestParser().receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\n" + long_name + b": v\r\n\r\n"
    )
    assert isinstance(head, RequestHead)
    assert head.headers[-1] == (long_name, b"v")
    assert long_name not in http1._field_ids  # (not kept: too long)
    for wire, status in [
        (b"GET / HTTP/1.1\r\nHost: a\r\nGET / HTTP/1.1\r\n\r\n", 400),
        (b"Host: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00\r\n\r\n", 400),
    ]:
        with pytest.raises(RemoteProtocolError) as info:
            RequestParser().receive_data(wire)
        assert info.value.status == status


# -- ResponseParser.receive_whole ----------------------------------------------------
#
# The proxy's shortcut for a whole response: the bytes it hands back must be those of
# the general path (receive_data, then encode_response_head and the body), and the
# parser must end where receive_data leaves it; when it declines, nothing may change.

WHOLE = settings(
    max_examples=2500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NGINX = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 6\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"hello\n"
)
WHOLE_NAMES = [
    b"Server",
    b"Date",
    b"Content-Type",
    b"Content-Length",
    b"content-LENGTH",
    b"Connection",
    b"CONNECTION",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Connections",
    b"Content-Lengths",
    b"X-Secret",
    b"X Secret",
    b"X\x01",
    b"",
]
WHOLE_VALUES = [
    b"keep-alive",
    b"keep-alive",
    b"6",
    b"6",
    b"Keep-Alive",
    b"close",
    b"upgrade",
    b"keep-alive, close",
    b"x-secret",
    b"0",
    b"3",
    b"6",
    b"006",
    b"1234567890123456789",
    b"-1",
    b"chunked",
    b"nginx/1.24.0",
    b"a  b",
    b"",
    b"\xe9t\xe9",
    b"a\rb",
    b"a\nb",
    b"a\x00b",
    b"a\x7fb",
    b"6\r",
]
PLAIN = [(b"Server", b"nginx/1.24.0"), (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"X", b"a  b")]
# Mostly lines as encode_response_head writes them, so that the shortcut is taken
# often; the rest is every way a line can differ from that.
whole_field = st.one_of(
    st.sampled_from(PLAIN).map(lambda f: (f[0], b": ", f[1], b"")),
    st.tuples(
        st.sampled_from(WHOLE_NAMES),
        st.just(b": "),
        st.sampled_from(WHOLE_VALUES),
        st.just(b""),
    ),
    st.tuples(
        st.sampled_from(WHOLE_NAMES),
        st.sampled_from([b": ", b":", b":  ", b":\t", b" : "]),
        st.sampled_from(WHOLE_VALUES),
        st.sampled_from([b"", b" ", b"\t"]),
    ),
)


@st.composite
def whole_reads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0", b"1.0", b"2.0"]))
    status = draw(st.sampled_from([b"200", b"204", b"304", b"404", b"426", b"599", b"101"]))
    status = draw(st.sampled_from([status, status, status, status, b"103", b"600", b"099"]))
    line = b"HTTP/" + version + b" " + status
    line += draw(st.sampled_from([b" OK", b" OK", b" OK", b"", b" ", b" Not Found", b"  a\tb "]))
    body = draw(
        st.sampled_from(
            # (past 4 KiB the head is found by another means: _PARTITION_MAX)
            [b"", b"", b"abc", b"hello\n", b"hello\n", b"hello\nHTTP/1.1", b"x\r\n\r\n" * 1100]
        )
    )
    if draw(st.integers(0, 3)):
        # Near the usual shape: plain lines, the right Content-Length, a Connection
        # option, in any order, then maybe one line of any kind.
        fields = [(n, b": ", v, b"") for n, v in draw(st.lists(st.sampled_from(PLAIN), max_size=4))]
        if draw(st.integers(0, 3)):
            fields.append((b"Content-Length", b": ", b"%d" % len(body), b""))
        option = draw(st.sampled_from([b"", b"keep-alive", b"Close", b"upgrade"]))
        if option:
            fields.append((b"Connection", b": ", option, b""))
        fields = list(draw(st.permutations(fields)))
        if draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), draw(whole_field))
    else:
        fields = draw(st.lists(whole_field, max_size=6))
    head = line + b"\r\n" + b"".join(n + s + v + t + b"\r\n" for n, s, v, t in fields)
    head += draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b""]))
    return head + body


def feed(parser: ResponseParser, data: bytes) -> object:
    try:
        return parser.receive_data(data)
    except RemoteProtocolError as exc:
        return ("error", exc.status, exc.events)


def snapshot(parser: ResponseParser) -> tuple[object, ...]:
    return (parser.state, parser.pending, parser.idle, parser.buffered, parser.trailing_data)


def check_whole(data: bytes, method: bytes, close: bool, limits: HttpLimits | None) -> bool:
    fast = ResponseParser(limits)
    general = ResponseParser(limits)
    for p in (fast, general):
        p.expect_response(method)
        p.expect_response(b"GET")
    before = snapshot(fast)
    whole = fast.receive_whole(data, close)
    expected = feed(general, data)
    if whole is None:
        assert snapshot(fast) == before
        assert feed(fast, data) == expected
    else:
        status, keep_alive, out = whole
        assert isinstance(expected, list)
        assert 2 <= len(expected) <= 3
        head = expected[0]
        assert type(head) is ResponseHead
        assert type(expected[-1]) is ResponseEnd
        body = expected[1].data if len(expected) == 3 else b""
        assert type(expected[1]) is BodyChunk or len(expected) == 2
        assert out == encode_response_head(head, close) + body
        assert (status, keep_alive) == (head.status, head.keep_alive)
        assert snapshot(fast) == snapshot(general)
    # Both go on alike with the next response.
    following = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    if snapshot(fast)[0] is State.HEAD:
        assert feed(fast, following) == feed(general, following)
        assert snapshot(fast) == snapshot(general)
    return whole is not None


@WHOLE
@given(
    whole_reads(),
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.booleans(),
    st.sampled_from(
        [None, None, HttpLimits(max_line=16, max_head=64, max_headers=2)],
    ),
)
def test_receive_whole_matches_the_general_path(
    data: bytes, method: bytes, close: bool, limits: HttpLimits | None
) -> None:
    check_whole(data, method, close, limits)


@WHOLE
@given(
    st.lists(
        st.sampled_from(
            [
                (b"Server", b"nginx/1.24.0"),
                (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
                (b"Content-Type", b"text/html"),
                (b"Content-Length", b"6"),
                (b"Connection", b"keep-alive"),
                (b"connection", b"Close"),
                (b"Keep-Alive", b"timeout=5"),
                (b"ETag", b'"65e0f-6"'),
            ]
        ),
        max_size=7,
        unique_by=lambda f: f[0].lower(),
    ),
    st.sampled_from([b"1.1", b"1.0"]),
    st.sampled_from([b"GET", b"HEAD"]),
    st.booleans(),
)
def test_receive_whole_on_usual_heads(
    fields: list[tuple[bytes, bytes]], version: bytes, method: bytes, close: bool
) -> None:
    head = (
        b"HTTP/" + version + b" 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    )
    data = head + b"\r\n" + (b"" if method == b"HEAD" else b"hello\n")
    check_whole(data, method, close, None)


def test_receive_whole_takes_the_usual_responses() -> None:
    assert check_whole(NGINX, b"GET", False, None)
    assert check_whole(NGINX, b"GET", True, None)
    assert check_whole(NGINX.replace(b"HTTP/1.1", b"HTTP/1.0"), b"GET", False, None)
    assert check_whole(NGINX[: NGINX.index(b"hello")], b"HEAD", False, None)
    assert check_whole(b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n", b"GET", False, None)
    assert check_whole(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"GET", False, None)
    # Past 4 KiB (_PARTITION_MAX) the head is found another way: taken all the same.
    for size in (4000, 5000):
        body = b"\r\n".join([b"z" * 98] * (size // 100 + 1))[:size]
        big = NGINX.replace(b"Content-Length: 6", b"Content-Length: %d" % size)
        assert check_whole(big.replace(b"hello\n", body), b"GET", False, None)
    parser = ResponseParser()
    parser.expect_response(b"GET")
    status, keep_alive, out = parser.receive_whole(NGINX, False) or (0, False, b"")
    assert (status, keep_alive) == (200, True)
    assert out == NGINX.replace(b"Connection: keep-alive\r\n", b"")
    assert parser.idle


def test_receive_whole_declines() -> None:
    for data in [
        NGINX[:-1],  # body incomplete
        NGINX + b"HTTP/1.1",  # more after it
        NGINX.replace(b"Content-Length: 6\r\n", b""),  # until close
        NGINX.replace(b"Server: ", b"Server:  "),  # not as encode_response_head writes it
        NGINX.replace(b"Connection: keep-alive", b"Connection: x-secret"),
        NGINX.replace(b"Connection: keep-alive", b"Keep-Alive: timeout=5"),
        NGINX.replace(b"200 OK", b"100 Continue"),
        NGINX.replace(b"200 OK", b"200 O\x00K"),  # control bytes, lone CR or LF
        NGINX.replace(b"text/html", b"text/\x7fhtml"),
        NGINX.replace(b"nginx/", b"nginx\r/"),
        NGINX.replace(b"\r\nDate", b"\nDate"),
        NGINX.replace(b"Server:", b"Ser ver:"),  # not a token
        NGINX.replace(b"Content-Length: 6", b"Content-Length: 06 "),
        NGINX.replace(b"HTTP/1.1 200", b"HTTP/1.2 200"),
        NGINX.replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 200"),
        # a line known as a status line is no field line, and the other way round
        NGINX.replace(b"Server:", b"HTTP/1.1 200 OK\r\nServer:"),
        NGINX.replace(b"HTTP/1.1 200 OK", b"Content-Length: 6"),
        NGINX.replace(b"HTTP/1.1 200 OK", b"Connection: close"),
    ]:
        parser = ResponseParser()
        parser.expect_response(b"GET")
        assert parser.receive_whole(data, False) is None
        assert parser.pending == 1
        assert parser.buffered == 0
    assert ResponseParser().receive_whole(NGINX, False) is None  # nothing was asked


def test_receive_whole_remembers_a_bounded_number_of_lines() -> None:
    # The lines of usual heads are remembered by their bytes (a backend repeats
    # them): each line's verdict stays its own, and the memory stays bounded.
    for i in range(3000):
        data = NGINX.replace(b"Server: nginx", b"Server: nginx-%d" % i)
        for _ in range(2):
            parser = ResponseParser()
            parser.expect_response(b"GET")
            whole = parser.receive_whole(data, False)
            assert whole is not None
            assert whole[2] == data.replace(b"Connection: keep-alive\r\n", b"")
        bad = data.replace(b"Server: nginx", b"Server:  nginx")
        parser = ResponseParser()
        parser.expect_response(b"GET")
        assert parser.receive_whole(bad, False) is None
    assert 0 < len(http1._response_lines) <= 1024
    assert 0 < len(http1._status_lines) <= 1024
    long_line = b"X-Long: " + b"a" * 300
    parser = ResponseParser()
    parser.expect_response(b"GET")
    assert parser.receive_whole(NGINX.replace(b"Server:", long_line + b"\r\nServer:"), False)
    assert long_line not in http1._response_lines  # (not kept: too long)
