"""Property tests for the HTTP/1.x framing (vproxy.processor.http1).

Claims, each checked by hypothesis:

* any bytes, cut anywhere, give events or an ``HttpError`` and nothing else, and the
  events obey the grammar (head, body chunks, end; errors carry whole messages only);
* how the bytes are cut changes neither the events nor the error status;
* random valid requests (and responses), encoded and cut at random points, parse back
  to the same heads and body bytes;
* the bytes forwarded for a request (``encode_head`` plus the body chunks) parse back
  to the same request plus the forwarding fields;
* the transition table is total, has no dead end, and the parsers move along it.
"""

from __future__ import annotations

import functools
import string
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor.http1 import (
    _TRANSITIONS,
    BodyChunk,
    BodyKind,
    Event,
    HttpError,
    LocalProtocolError,
    RemoteProtocolError,
    RequestEnd,
    RequestHead,
    RequestParser,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    State,
    _Action,
    _Input,
    encode_head,
)

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FORWARD = [(b"x-forwarded-for", b"192.0.2.7"), (b"x-client-port", b"40000")]
TERMINAL = {State.ERROR, State.CLOSED, State.SWITCHED}

# -- generating valid messages ----------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
# Field names the generator leaves to the code that needs them (framing, routing,
# hop-by-hop, forwarding).
SPECIAL = {
    "host", "content-length", "transfer-encoding", "connection", "expect", "upgrade",
    "keep-alive", "proxy-connection", "x-forwarded-for", "x-client-port", "forwarded", "via",
}  # fmt: skip
VALUE_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%?"


def random_case(draw: st.DrawFn, name: str) -> bytes:
    mask = draw(st.integers(0, 2 ** len(name) - 1))
    return bytes(
        c ^ 0x20 if mask >> i & 1 and chr(c).isalpha() else c for i, c in enumerate(name.encode())
    )


field_names = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in SPECIAL
)
field_values = st.lists(st.sampled_from(VALUE_BYTES), max_size=30).map(
    lambda bs: bytes(bs).strip(b" \t")
)
hex_case = st.sampled_from(["x", "X"])


@st.composite
def chunk_extensions(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.text(TOKEN_CHARS, min_size=1, max_size=5)).encode()
        kind = draw(st.sampled_from(["bare", "token", "quoted"]))
        if kind == "bare":
            out += b";" + name
        elif kind == "token":
            out += b";" + name + b"=" + draw(st.text(TOKEN_CHARS, min_size=1, max_size=5)).encode()
        else:
            text = draw(st.text(string.ascii_letters + ' ;=,\\"', max_size=6))
            quoted = text.replace("\\", "\\\\").replace('"', '\\"').encode()
            out += b";" + name + b'="' + quoted + b'"'
    return out


@st.composite
def chunked_bodies(draw: st.DrawFn, payload: bytes) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    out = b""
    for piece in pieces:
        if not piece:
            continue
        size = format(len(piece), draw(hex_case)).encode()
        zeros = b"0" * draw(st.integers(0, 2))
        out += zeros + size + draw(chunk_extensions()) + b"\r\n" + piece + b"\r\n"
    out += b"0" + draw(chunk_extensions()) + b"\r\n"
    for name, value in draw(st.lists(st.tuples(field_names, field_values), max_size=2)):
        out += name.encode() + b": " + value + b"\r\n"
    return out + b"\r\n"


@dataclass
class Expected:
    wire: bytes
    head: RequestHead
    body: bytes  # as on the wire


@st.composite
def requests(draw: st.DrawFn, last: bool = True) -> Expected:
    version = draw(st.sampled_from([b"1.0", b"1.1"]))
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"PURGE", b"M-X"]))
    target = b"/" + draw(st.text(PATH_CHARS, max_size=20)).encode()
    fields: list[tuple[bytes, bytes]] = []
    host: str | None = None
    if version == b"1.1" or draw(st.booleans()):
        host_name, port = draw(
            st.sampled_from([("a.example", ""), ("B.Example", ":8080"), ("[::1]", ":1")])
        )
        host = host_name.lower()
        fields.append((random_case(draw, "host"), (host_name + port).encode()))
    fields += draw(st.lists(st.tuples(field_names.map(str.encode), field_values), max_size=6))
    payload = draw(st.binary(max_size=300))
    kinds = ["none", "length"] + (["chunked"] if version == b"1.1" else [])
    kind = draw(st.sampled_from(kinds))
    body = b""
    length = None
    if kind == "length":
        body, length = payload, len(payload)
        fields.append((random_case(draw, "content-length"), str(length).encode()))
    elif kind == "chunked":
        body = draw(chunked_bodies(payload))
        fields.append((random_case(draw, "transfer-encoding"), b"chunked"))
    keep_alive = version == b"1.1"
    if version == b"1.0" and (not last or draw(st.booleans())):
        fields.append((random_case(draw, "connection"), b"keep-alive"))
        keep_alive = True
    elif version == b"1.1" and last and draw(st.booleans()):
        fields.append((random_case(draw, "connection"), b"close"))
        keep_alive = False
    fields = draw(st.permutations(fields))
    wire = method + b" " + target + b" HTTP/" + version + b"\r\n"
    for name, value in fields:
        ows = draw(st.sampled_from([b"", b" ", b"\t ", b"  "]))
        wire += name + b":" + ows + value + draw(st.sampled_from([b"", b" ", b"\t"])) + b"\r\n"
    wire += b"\r\n" + body
    head = RequestHead(
        method=method,
        target=target,
        version=version,
        headers=list(fields),
        host=host,
        keep_alive=keep_alive,
        expect_continue=False,
        upgrade=None,
        body_kind={"none": BodyKind.NONE, "length": BodyKind.LENGTH, "chunked": BodyKind.CHUNKED}[
            kind
        ],
        content_length=length,
    )
    return Expected(wire, head, body)


@st.composite
def request_streams(draw: st.DrawFn) -> list[Expected]:
    count = draw(st.integers(1, 4))
    return [draw(requests(last=i == count - 1)) for i in range(count)]


@st.composite
def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random points (empty segments allowed)."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- driving the parsers -----------------------------------------------------------------


@dataclass
class Outcome:
    events: list[Event]  # merged body chunks; all that came out
    status: int | None  # the error's status, if one was raised
    state: State


def merged(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        if isinstance(event, BodyChunk) and out and isinstance(out[-1], BodyChunk):
            out[-1] = BodyChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def committed(events: list[Event]) -> list[Event]:
    """The events up to the end of the last complete message (or interim head)."""
    last = 0
    for i, event in enumerate(events):
        if isinstance(event, RequestEnd | ResponseEnd) or (
            isinstance(event, ResponseHead) and event.status < 200
        ):
            last = i + 1
    return events[:last]


def drive(parser: RequestParser | ResponseParser, segments: list[bytes], eof: bool) -> Outcome:
    """Feed ``segments`` (then EOF), the way a proxy would; any error but
    RemoteProtocolError escapes and fails the test."""
    events: list[Event] = []
    error: RemoteProtocolError | None = None
    try:
        for segment in segments:
            if parser.state is State.SWITCHED:
                break
            events += parser.receive_data(segment)
        if isinstance(parser, RequestParser) and parser.state is State.AWAIT_UPGRADE:
            events += parser.decline_upgrade()
        if eof and parser.state not in (State.SWITCHED, State.CLOSED):
            events += parser.receive_eof()
    except RemoteProtocolError as exc:
        error = exc
    if error is None:
        return Outcome(merged(events), None, parser.state)
    assert 400 <= error.status <= 599
    assert list(error.events) == committed(list(error.events))
    events += error.events
    return Outcome(merged(committed(events)), error.status, parser.state)


def check_grammar(events: list[Event], response: bool) -> None:
    """(Head BodyChunk* End)* with a possibly unfinished last message."""
    in_message = False
    head_type = ResponseHead if response else RequestHead
    end_type = ResponseEnd if response else RequestEnd
    for event in events:
        if isinstance(event, head_type):
            assert not in_message
            in_message = not (isinstance(event, ResponseHead) and event.status < 200)
        elif isinstance(event, BodyChunk):
            assert in_message
            assert event.data
        else:
            assert isinstance(event, end_type)
            assert in_message
            in_message = False


# -- inputs that look like HTTP, broken ---------------------------------------------------

NOISE = [
    b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b'"', b"0", b"f", b"-", b"\x00",
    b"\xff", b"chunked", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Host: h\r\n", b"Connection: upgrade\r\nUpgrade: x\r\n", b"HTTP/1.1", b"GET / ",
    b"\r\n\r\n", b"0\r\n\r\n",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(NOISE))
        elif op == "delete" and data:
            end = pos + draw(st.integers(1, 8))
            del data[pos:end]
        elif data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


# Valid messages the fuzzers break: cheaper to draw than generated ones, and covering
# every framing (the round-trip tests generate messages instead).
REQUEST_TEMPLATES = [
    b"GET /a?b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'3;e="q"\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n',
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"\r\nGET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
]
RESPONSE_TEMPLATES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nraw",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
]


@st.composite
def request_noise(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    base = b"".join(draw(st.lists(st.sampled_from(REQUEST_TEMPLATES), min_size=1, max_size=3)))
    return draw(mutated(base))


@st.composite
def response_noise(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    base = b"".join(draw(st.lists(st.sampled_from(RESPONSE_TEMPLATES), min_size=1, max_size=3)))
    return draw(mutated(base))


# -- responses -----------------------------------------------------------------------------


@dataclass
class ExpectedResponse:
    method: bytes
    wire: bytes
    heads: list[ResponseHead]  # interim ones first
    body: bytes


@st.composite
def responses(draw: st.DrawFn, last: bool) -> ExpectedResponse:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    wire = b""
    heads: list[ResponseHead] = []
    for status in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        fields = draw(st.lists(st.tuples(field_names.map(str.encode), field_values), max_size=2))
        wire += b"HTTP/1.1 %d Info\r\n" % status
        wire += b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
        heads.append(ResponseHead(status, b"Info", b"1.1", fields, True, BodyKind.NONE))
    version = draw(st.sampled_from([b"1.0", b"1.1"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    reason = draw(st.sampled_from([b"", b"OK", b"Some Reason"]))
    fields = draw(st.lists(st.tuples(field_names.map(str.encode), field_values), max_size=4))
    payload = draw(st.binary(max_size=200))
    kinds = ["length"] + (["chunked"] if version == b"1.1" else []) + (["close"] if last else [])
    kind = draw(st.sampled_from(kinds))
    no_body = method == b"HEAD" or status in (204, 304)
    body = b""
    length = None
    keep_alive = True
    if version == b"1.0":
        fields.append((b"Connection", b"keep-alive"))
    if kind == "length":
        fields.append((b"Content-Length", str(len(payload)).encode()))
        if no_body:
            body_kind = BodyKind.NONE
        else:
            body, length, body_kind = payload, len(payload), BodyKind.LENGTH
    elif kind == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
        body_kind = BodyKind.NONE if no_body else BodyKind.CHUNKED
        if not no_body:
            body = draw(chunked_bodies(payload))
    elif no_body:
        body_kind = BodyKind.NONE
    else:
        body, body_kind, keep_alive = payload, BodyKind.UNTIL_CLOSE, False
    fields = draw(st.permutations(fields))
    wire += (
        b"HTTP/"
        + version
        + b" %d" % status
        + (b" " + reason if reason or draw(st.booleans()) else b"")
    )
    wire += b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n" + body
    heads.append(ResponseHead(status, reason, version, list(fields), keep_alive, body_kind, length))
    return ExpectedResponse(method, wire, heads, body)


@st.composite
def response_streams(draw: st.DrawFn) -> list[ExpectedResponse]:
    count = draw(st.integers(1, 4))
    return [draw(responses(last=i == count - 1)) for i in range(count)]


# -- the properties --------------------------------------------------------------------------


@FUZZ
@given(st.data())
def test_request_fuzz_gives_events_or_http_errors(data: st.DataObject) -> None:
    raw = data.draw(request_noise())
    segments = data.draw(cut(raw))
    outcome = drive(RequestParser(), segments, eof=data.draw(st.booleans()))
    check_grammar(outcome.events, response=False)


@FUZZ
@given(st.data())
def test_response_fuzz_gives_events_or_http_errors(data: st.DataObject) -> None:
    raw = data.draw(response_noise())
    parser = ResponseParser()
    for method in data.draw(st.lists(st.sampled_from([b"GET", b"HEAD"]), max_size=5)):
        parser.expect_response(method, upgrade=data.draw(st.booleans()))
    segments = data.draw(cut(raw))
    outcome = drive(parser, segments, eof=data.draw(st.booleans()))
    check_grammar(outcome.events, response=True)


@PROPERTY
@given(st.data())
def test_request_outcome_does_not_depend_on_segmentation(data: st.DataObject) -> None:
    raw = data.draw(request_noise())
    eof = data.draw(st.booleans())
    whole = drive(RequestParser(), [raw], eof)
    pieces = drive(RequestParser(), data.draw(cut(raw)), eof)
    assert (pieces.status, pieces.state) == (whole.status, whole.state)
    if whole.status is None:
        assert pieces.events == whole.events
    else:
        assert committed(pieces.events) == committed(whole.events)
    bytewise = drive(RequestParser(), [raw[i : i + 1] for i in range(len(raw))], eof)
    assert (bytewise.status, bytewise.state) == (whole.status, whole.state)


@PROPERTY
@given(st.data())
def test_response_outcome_does_not_depend_on_segmentation(data: st.DataObject) -> None:
    raw = data.draw(response_noise())
    methods = data.draw(st.lists(st.sampled_from([b"GET", b"HEAD"]), min_size=1, max_size=5))
    eof = data.draw(st.booleans())

    def run(segments: list[bytes]) -> Outcome:
        parser = ResponseParser()
        for method in methods:
            parser.expect_response(method)
        return drive(parser, segments, eof)

    whole = run([raw])
    pieces = run(data.draw(cut(raw)))
    assert (pieces.status, pieces.state) == (whole.status, whole.state)
    assert committed(pieces.events) == committed(whole.events)


def split_messages(events: list[Event]) -> list[tuple[RequestHead, bytes]]:
    out: list[tuple[RequestHead, bytes]] = []
    for event in events:
        if isinstance(event, RequestHead):
            out.append((event, b""))
        elif isinstance(event, BodyChunk):
            head, body = out[-1]
            out[-1] = (head, body + event.data)
    return out


@PROPERTY
@given(st.data())
def test_valid_requests_round_trip(data: st.DataObject) -> None:
    stream = data.draw(request_streams())
    wire = b"".join(e.wire for e in stream)
    outcome = drive(RequestParser(), data.draw(cut(wire)), eof=True)
    assert outcome.status is None
    assert outcome.state is State.CLOSED
    assert sum(isinstance(e, RequestEnd) for e in outcome.events) == len(stream)
    got = split_messages(outcome.events)
    assert [
        (h.method, h.target, h.version, h.headers, h.host, h.keep_alive, h.body_kind)
        for h, _ in got
    ] == [
        (
            e.head.method,
            e.head.target,
            e.head.version,
            [(n, v) for n, v in e.head.headers],
            e.head.host,
            e.head.keep_alive,
            e.head.body_kind,
        )
        for e in stream
    ]
    assert [h.content_length for h, _ in got] == [e.head.content_length for e in stream]
    assert [body for _, body in got] == [e.body for e in stream]


HOP = {b"connection", b"keep-alive", b"proxy-connection", b"upgrade"}


@PROPERTY
@given(st.data())
def test_forwarded_bytes_reparse_to_the_same_request(data: st.DataObject) -> None:
    expected = data.draw(requests())
    events = RequestParser().receive_data(expected.wire)
    ((head, body),) = split_messages(events)
    forwarded = encode_head(head, FORWARD) + body
    again = drive(RequestParser(), data.draw(cut(forwarded)), eof=False)
    assert again.status is None
    ((head2, body2),) = split_messages(again.events)
    assert isinstance(again.events[-1], RequestEnd)
    assert body2 == body
    same = ("method", "target", "version", "host", "body_kind", "content_length", "upgrade")
    assert [getattr(head2, f) for f in same] == [getattr(head, f) for f in same]
    assert head2.keep_alive is (head.keep_alive or head.version == b"1.1")

    def plain(h: RequestHead) -> list[tuple[bytes, bytes]]:
        return [(n, v) for n, v in h.headers if n.lower() not in HOP]

    assert plain(head2) == plain(head) + FORWARD


@PROPERTY
@given(st.data())
def test_valid_responses_round_trip(data: st.DataObject) -> None:
    stream = data.draw(response_streams())
    parser = ResponseParser()
    for r in stream:
        parser.expect_response(r.method)
    wire = b"".join(r.wire for r in stream)
    outcome = drive(parser, data.draw(cut(wire)), eof=True)
    assert outcome.status is None, outcome
    heads = [e for e in outcome.events if isinstance(e, ResponseHead)]
    assert heads == [h for r in stream for h in r.heads]
    assert sum(isinstance(e, ResponseEnd) for e in outcome.events) == len(stream)
    bodies: list[bytes] = []
    for event in outcome.events:
        if isinstance(event, ResponseHead) and event.status >= 200:
            bodies.append(b"")
        elif isinstance(event, BodyChunk):
            bodies[-1] += event.data
    assert bodies == [r.body for r in stream]


# -- the table -------------------------------------------------------------------------------


def test_table_is_total() -> None:
    assert set(_TRANSITIONS) == {(s, i) for s in State for i in _Input}


def test_every_live_state_can_end_cleanly() -> None:
    """From every state but the terminal ones, some inputs lead to CLOSED."""
    graph: dict[State, set[State]] = {s: set() for s in State}
    for (state, _inp), (action, new) in _TRANSITIONS.items():
        if action not in (_Action.MISUSE, _Action.FAIL):
            graph[state].add(new)
    for start in set(State) - TERMINAL:
        seen = {start}
        todo = deque([start])
        while todo:
            for nxt in graph[todo.popleft()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert State.CLOSED in seen, start


def test_terminal_states_only_refuse() -> None:
    for (state, _inp), (action, new) in _TRANSITIONS.items():
        if state in TERMINAL:
            assert (action, new) == (_Action.MISUSE, state)


def _reachable_pairs() -> set[tuple[State, State]]:
    graph: dict[State, set[State]] = {s: set() for s in State}
    for (state, _inp), (action, new) in _TRANSITIONS.items():
        if action is not _Action.MISUSE:
            graph[state].add(new)
    pairs = set()
    for start in State:
        seen = {start}
        todo = deque([start])
        while todo:
            for nxt in graph[todo.popleft()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        pairs |= {(start, s) for s in seen}
    return pairs


REACHABLE = _reachable_pairs()


@PROPERTY
@given(st.data())
def test_parsers_move_along_the_table(data: st.DataObject) -> None:
    """Every call moves a parser between states the table connects, DONE is never seen
    from outside, and refused calls (LocalProtocolError) change nothing."""
    parser = RequestParser()
    raw = data.draw(request_noise())
    calls: list[Callable[[], object]] = []
    for segment in data.draw(cut(raw)):
        calls.append(functools.partial(parser.receive_data, segment))
        if data.draw(st.integers(0, 5)) == 0:
            calls.append(
                data.draw(st.sampled_from([parser.accept_upgrade, parser.decline_upgrade]))
            )
    calls.append(parser.receive_eof)
    for call in calls:
        before = parser.state
        try:
            call()
        except LocalProtocolError:
            assert parser.state is before
        except HttpError:
            assert parser.state is State.ERROR
        assert parser.state is not State.DONE
        assert (before, parser.state) in REACHABLE
