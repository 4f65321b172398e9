"""The head parsing of vproxy.processor.http1 against llhttp, and its two paths.

Field sections are split by compiled regexes (``_parse_fields``), no longer by llhttp
(httptools); a whole head of the usual shape in one read is taken at once
(``_usual_head``: a request by a few bytes methods, a response by one match),
anything else line by line. Checked here with hypothesis:

* on any field section, ``_parse_fields`` accepts what llhttp (strict, as the parser
  used it) accepts, with the same field lines; where it accepts what llhttp refused,
  the refusal was one of llhttp's Content-Length / Transfer-Encoding rules, and the
  request parser refuses that head anyway (with 400), as it did;
* a head parsed from one read (the shortcut) and byte by byte (line by line) gives
  the same events, or the same error status, for requests and responses built from
  the fields the rules care about, valid and broken.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor.http1 import (
    BodyChunk,
    Event,
    RemoteProtocolError,
    RequestEnd,
    RequestParser,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    State,
    _parse_fields,
)

MANY = settings(
    max_examples=2500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class _Llhttp:
    """The field parser this module had: llhttp behind a fixed ``304`` status line."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)
        self.parser.set_dangerous_leniencies(lenient_keep_alive=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value.rstrip(b" \t")))

    def on_message_complete(self) -> None:
        self.complete = True

    @classmethod
    def parse(cls, section: bytes) -> list[tuple[bytes, bytes]] | None:
        p = cls()
        try:
            p.parser.feed_data(b"HTTP/1.1 304 -\r\n" + section + b"\r\n")
        except httptools.HttpParserError:
            return None
        return p.headers if p.complete else None


# Bytes that matter to the grammar: token characters, separators, whitespace, control
# bytes, DEL, obs-text.
_ALPHABET = b'aZ09-!|~:;, \t"()/@=\x00\x01\x1f\x7f\x80\xff'


def _from_alphabet(raw: bytes) -> bytes:
    return bytes(_ALPHABET[x % len(_ALPHABET)] for x in raw)


_NAMES = [
    b"Host", b"content-length", b"Content-Length", b"Transfer-Encoding", b"connection",
    b"Expect", b"Upgrade", b"X-A", b"a", b"",
]  # fmt: skip
_VALUES = [
    b"", b"1", b"01", b"12345678901234567890", b"1, 1", b"+1", b"0x1", b" 3 ", b"chunked",
    b"gzip, chunked", b"chunked, gzip", b"Chunked", b"close", b"keep-alive", b"upgrade",
    b"100-continue", b"a b", b"\t", b"v\t ", b"\x80\xff", b"\x7f", b"\x00", b"a:b",
    b"a\rb", b"a\nb", b"\r",
]  # fmt: skip


@st.composite
def field_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # anything from the alphabet
        return draw(st.binary(max_size=24).map(_from_alphabet))
    name = draw(st.sampled_from(_NAMES))
    if kind == 1:
        name = draw(st.binary(max_size=6).map(_from_alphabet))
    sep = draw(st.sampled_from([b": ", b":", b" : ", b":\t", b": \t ", b" :", b""]))
    value = draw(st.sampled_from(_VALUES))
    if kind == 3:
        value = draw(st.binary(max_size=10).map(_from_alphabet))
    return name + sep + value


# No empty line: a field section ends at the first one (the framing sees to it).
sections = st.lists(field_lines().filter(bool), max_size=6).map(
    lambda lines: b"".join(x + b"\r\n" for x in lines)
)


@MANY
@given(sections)
def test_field_sections_split_as_llhttp_did(section: bytes) -> None:
    reference = _Llhttp.parse(section)
    ours: list[tuple[bytes, bytes]] | None = None
    status = 0
    try:
        ours = _parse_fields(section, 0, len(section), 400)
    except RemoteProtocolError as exc:
        status = exc.status
    assert ours is not None or status == 400
    if reference is not None:
        assert ours == reference
    elif ours is not None:
        # llhttp refused a section our grammar accepts: only its framing rules may
        # have, and the request parser applies those itself.
        names = {n.lower() for n, _ in ours}
        assert names & {b"content-length", b"transfer-encoding"}
        wire = b"GET / HTTP/1.1\r\nHost: a\r\n" + section + b"\r\n"
        with pytest.raises(RemoteProtocolError) as info:
            RequestParser().receive_data(wire)
        assert info.value.status == 400


# -- one read against byte by byte ---------------------------------------------------------

_REQUEST_LINES = [
    b"GET / HTTP/1.1", b"GET /a?b HTTP/1.0", b"POST /u HTTP/1.1", b"CONNECT / HTTP/1.1",
    b"GET /# HTTP/1.1", b"GET http://a/ HTTP/1.1", b"GET / HTTP/1.2", b"G\x80T / HTTP/1.1",
    b"GET  / HTTP/1.1", b"GET /a\x7f HTTP/1.1", b"GET /a b HTTP/1.1", b"GET\t/ HTTP/1.1",
    b"G(T / HTTP/1.1", b"#ET / HTTP/1.1", b"GET / HTTP/1.1 ", b"GET /\x80 HTTP/1.1",
    b" GET / HTTP/1.1", b"GET / http/1.1", b"GET / HTTP/1.1\r",
]  # fmt: skip
_STATUS_LINES = [
    b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 304 Not Modified",
    b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Switching", b"HTTP/1.1 600 X", b"HTTP/1.1 099 X",
    b"HTTP/2.0 200 OK", b"HTTP/1.1 200 \x80\t", b"HTTP/1.1 200 OK ",
]  # fmt: skip
_HOSTS = [b"a", b"A:80", b"[::1]:1", b"", b"a b", b"a:99999", b"a@b"]
# Mostly what real heads hold, so that many take the shortcut; then the rest.
_PLAUSIBLE = st.sampled_from(
    [
        (b"Host", b"a"), (b"host", b"B:8080"), (b"Content-Length", b"0"),
        (b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"), (b"Connection", b"close"),
        (b"Connection", b"Keep-Alive, x-a"), (b"X-A", b"1"), (b"Accept", b"*/*"),
    ]
)  # fmt: skip
_FIELDS = st.one_of(
    _PLAUSIBLE,
    _PLAUSIBLE,
    st.tuples(st.just(b"Host"), st.sampled_from(_HOSTS)),
    st.tuples(st.sampled_from(_NAMES[:9]), st.sampled_from(_VALUES)),
    st.tuples(st.sampled_from([b"X-A", b"Accept", b"Keep-Alive"]), st.sampled_from(_VALUES)),
)


@st.composite
def heads(draw: st.DrawFn, lines: list[bytes]) -> bytes:
    line = draw(st.sampled_from(lines))
    fields = draw(st.lists(_FIELDS, max_size=6))
    if draw(st.booleans()):  # one Host, and each framing field at most once
        seen: set[bytes] = set()
        kept = [(b"Host", b"a")]
        for name, value in fields:
            lname = name.lower()
            if lname not in seen and lname != b"host":
                seen.add(lname)
                kept.append((name, value))
        fields = kept
    sep = draw(st.sampled_from([b": ", b":", b":  ", b": \t"]))
    trail = draw(st.sampled_from([b"", b" ", b"\t "]))
    head = line + b"\r\n" + b"".join(n + sep + v + trail + b"\r\n" for n, v in fields)
    body = draw(
        st.sampled_from(
            [
                b"",
                b"x",
                b"0\r\n\r\n",
                b"abcdef",
                b"GET / HTTP/1.1\r\n",
                b"GET /n HTTP/1.1\r\nHost: b\r\n\r\n",
            ]
        )
    )
    return head + b"\r\n" + body


def _outcome(parser: RequestParser | ResponseParser, reads: list[bytes]) -> object:
    events: list[Event] = []
    rest = bytearray()  # what comes after a 101
    try:
        for data in reads:
            if parser.state is State.SWITCHED:
                rest += data
            else:
                events += parser.receive_data(data)
    except RemoteProtocolError as exc:
        return ("error", exc.status, _merged(_committed(events + list(exc.events))))
    if parser.state is State.SWITCHED:
        assert isinstance(parser, ResponseParser)
        return ("switched", _merged(events), parser.trailing_data + rest)
    return ("ok", _merged(events), parser.state, parser.buffered)


def _committed(events: list[Event]) -> list[Event]:
    """Up to the end of the last whole message (or interim head): what an error keeps."""
    last = 0
    for i, e in enumerate(events):
        if isinstance(e, RequestEnd | ResponseEnd) or (isinstance(e, ResponseHead) and e.interim):
            last = i + 1
    return events[:last]


def _merged(events: list[Event]) -> list[object]:
    """The events with body chunks as the bytes they carry, adjacent ones joined (how
    a body is cut into chunks depends on the reads)."""
    out: list[object] = []
    for e in events:
        if isinstance(e, BodyChunk):
            if out and isinstance(out[-1], bytes):
                out[-1] += e.data
            else:
                out.append(e.data)
        else:
            out.append(e)
    return out


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@MANY
@given(heads(_REQUEST_LINES))
def test_request_in_one_read_as_byte_by_byte(data: bytes) -> None:
    whole = _outcome(RequestParser(), [data])
    assert whole == _outcome(RequestParser(), _bytewise(data))


@MANY
@given(heads(_REQUEST_LINES), st.sampled_from([4096, 4097, 6000]))
def test_request_with_a_large_body_in_one_read_as_in_two(data: bytes, size: int) -> None:
    # Up to 4 KiB a read's head is cut one way, past it another (_PARTITION_MAX):
    # the same request, whole or with its body in a second read, parses the same.
    data += b"\r\n\r\n".join([b"y" * 50] * (size // 52 + 1))
    data = data[:size]
    head = data.index(b"\r\n\r\n") + 4
    whole = _outcome(RequestParser(), [data])
    assert whole == _outcome(RequestParser(), [data[:head], data[head:]])
    assert whole == _outcome(RequestParser(), [data[: head - 1], data[head - 1 :]])


@MANY
@given(heads(_REQUEST_LINES), st.integers(1, 200))
def test_request_in_two_reads_as_in_one(data: bytes, cut: int) -> None:
    # The second read finds the rest of a head in the parser's buffer (a bytearray),
    # or a whole pipelined head after the first one.
    cut = min(cut, len(data))
    whole = _outcome(RequestParser(), [data])
    assert whole == _outcome(RequestParser(), [data[:cut], data[cut:]])


@MANY
@given(heads(_STATUS_LINES), st.sampled_from([b"GET", b"HEAD"]), st.booleans())
def test_response_in_one_read_as_byte_by_byte(data: bytes, method: bytes, upgrade: bool) -> None:
    def parser() -> ResponseParser:
        p = ResponseParser()
        p.expect_response(method, upgrade=upgrade)
        return p

    whole = _outcome(parser(), [data])
    assert whole == _outcome(parser(), _bytewise(data))
