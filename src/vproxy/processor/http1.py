"""Sans-IO HTTP/1.0 and HTTP/1.1 message framing for a request-level load balancer.

Owns the bytes of HTTP/1.x on both sides of the ``http/1.x`` tcp-lb mode (SPEC §2):
:class:`RequestParser` turns what a client sends into :class:`RequestHead`,
:class:`BodyChunk` and :class:`RequestEnd` events, one request after another
(pipelining keeps its order); :class:`ResponseParser` does the same for what a
backend answers (:class:`ResponseHead`, :class:`BodyChunk`, :class:`ResponseEnd`),
told by :meth:`ResponseParser.expect_response` which request each answer is for.
:func:`encode_head` and :func:`encode_response_head` write the heads to forward.

Must not: do I/O, import asyncio, socket, selectors or time, pick backends, or buffer
a whole body. Bodies stream: each :class:`BodyChunk` carries the body bytes *as they
were on the wire*, so forwarding is a plain write. A chunked body stays chunked, with
its chunk-size lines, extensions and trailers, all validated before they are handed
out; nothing is re-encoded. A chunk-size line or trailer line is only released once
it is complete and valid.

Which parser, and why. ``bench/http1_parsers.py`` parses a stream of pipelined
keep-alive requests fed in 64 KiB reads: a browser-like GET (390 bytes, 10 fields)
20,000 times, and a POST with a 64 KiB Content-Length body 500 times; and, as the
``http/1.x`` mode does per request, a "proxy pair": a wrk-like GET parsed and
re-encoded with two forwarding fields, then an nginx-like 200 with a 6-byte body
parsed and re-encoded, one message per call. Requests (pairs) per second of process
CPU time, median of 7, CPython 3.11.7 on a shared, busy 2-vCPU VM, all in one session:

=======================================  =========  =========  =============
parser                                       GET/s     POST/s  proxy pairs/s
=======================================  =========  =========  =============
httptools 0.9.0 (llhttp), callbacks        191,172     80,025        192,743
h11 0.16.0 (pure Python)                     6,751      5,696              -
this module, before the fast paths          28,304     20,786         10,443
this module, llhttp for field sections      42,828     30,227         18,362
=======================================  =========  =========  =============

llhttp (through ``httptools``) is ~29x faster than h11 on heads and ~15x on bodies,
and strict by default; h11 would also have to be driven through fake responses to
parse pipelined requests. But llhttp as wrapped by httptools cannot do what a proxy
needs: it refuses extension methods it does not know, cannot be told that a response
answers HEAD, cannot be told that the connection ended (a truncated body or a
read-until-close body cannot be finished), hands out de-chunked bodies (chunked could
not stay chunked), treats any request with ``Connection: upgrade`` as bodiless (the
h2c smuggling shape), and leaves the Host rules and head limits to its user. So the
start line, the limits and all body framing (Content-Length, chunked, until-close)
are Python over ``bytes.find`` and compiled regexes; body bytes are sliced, never
scanned byte by byte in Python. llhttp was kept for what it did best, validating and
splitting each field section (behind a fixed ``HTTP/1.1 304`` status line), until
measurements showed that its one Python callback per field line cost more than
compiled regexes doing the same job: one match validates a whole head of the usual
shape (origin-form request line or status line, then ``token ":" OWS value CRLF``
lines, all with possessive quantifiers: linear, no backtracking), a ``findall``
splits its fields, and the usual fields (Host, one Content-Length or
``Transfer-Encoding: chunked``, Connection) are judged inline; a read holding just
that message (and its Content-Length body) skips the framing loop. Anything else
(another framing field, a head cut over reads, a limit) goes line by line, where
each rule below is judged in byte order. The regex grammar accepts exactly the field
sections llhttp accepted (the tests check the two against each other), and the
Content-Length / Transfer-Encoding rules llhttp also applied are applied here anyway.
Same VM and session as the table, ``--runs 7``: GET 47,802 -> 61,000/s, POST 36,962
-> 49,952/s, proxy pairs 19,850 -> 30,652/s (50 -> 33 us); callgrind, one proxy
pair: 132k -> 101k instructions.

Strictness (where request smuggling lives). Each rule below refuses the message;
on the client side that is a :class:`RemoteProtocolError` whose ``status`` the proxy
answers before it closes, and no event of the refused request is handed out
(``HttpError.events`` holds only the requests completed before it). A refusal in a
request *body* can only come after its head was handed out in an earlier call; the
proxy then drops that backend connection.

* Content-Length together with Transfer-Encoding: 400.
* Content-Length in more than one field line, even with the same value, or as a
  list (``3, 3``): 400 (refused rather than folded: nothing is rewritten, and llhttp
  refuses it as well). Not ``1*DIGIT`` or above ``2**63-1``: 400.
* Transfer-Encoding in more than one field line; its last coding not exactly
  ``chunked`` (lowercase, as every real client sends it; ``chunked ,x``, ``xchunked``,
  ``Chunked``, ``chunked;x=1``); ``chunked`` also earlier in the list; any character
  other than tokens, commas, SP and HTAB; or any Transfer-Encoding in HTTP/1.0: 400.
* A chunk-size line that is not ``1*HEXDIG *( ";" token [ "=" ( token /
  quoted-string ) ] )`` followed by CRLF (no whitespace anywhere, no sign, no
  ``0x``, no bare CR or LF), a size above ``2**63-1``, a line over
  ``max_chunk_line``, data not followed by CRLF, a malformed trailer line, or a
  Content-Length / Transfer-Encoding / Host trailer: 400. A trailer section over
  ``max_head`` bytes or ``max_headers`` fields: 431.
* Bare LF or bare CR anywhere in a head (we do not accept LF-only line ends), obs-fold,
  whitespace before a colon, an empty or non-token field name: 400.
* Host: two field lines, none in HTTP/1.1, an invalid value, or one that names a
  different host than an absolute-form target: 400.
* Request line: exactly ``token SP target SP HTTP/d.d``. Malformed: 400. A well-formed
  version other than 1.0 and 1.1: 505. Target not origin-form, absolute-form
  (``http``/``https``, no userinfo) or ``*`` (OPTIONS only), or holding ``#`` or a
  byte outside VCHAR: 400. ``CONNECT``: 501 (a reverse proxy opens no tunnels; the
  socks5-server does). ``Expect`` other than ``100-continue`` in HTTP/1.1: 417.
* Limits (:class:`HttpLimits`): request line over ``max_line``: 414; head over
  ``max_head`` bytes or over ``max_headers`` fields: 431.

The verdict does not depend on how the bytes were cut: each rule is judged only on a
complete line or a full window, in byte order, so a request fed at once or a byte at a
time gets the same status (the tests check this).

Backend side: every violation above (with a status line ``HTTP/1.x SP 3DIGIT [SP
reason]``, status 100..599, instead of a request line) is a :class:`RemoteProtocolError`
with status 502; the proxy answers 502 if it sent nothing to the client yet, and
otherwise closes the client; that backend connection is never reused. A response
with a final coding other than chunked, or without Content-Length, is read until
the backend closes. A body cut short by the close (``receive_eof``) is an error,
never padded.

Other choices made here once:

* Leading empty lines (CRLF) before a request line are skipped (RFC 9112 §2.2).
* After a request with ``Connection: close`` (or HTTP/1.0 without keep-alive), later
  bytes are ignored: the proxy answers it and closes (RFC 9112 §9.6).
* An upgrade request (HTTP/1.1, ``Connection: upgrade`` and ``Upgrade``) may carry a
  body, framed as usual. After its end the parser holds further bytes (at most
  ``max_pending``) until the proxy knows the backend's answer:
  :meth:`RequestParser.accept_upgrade` after a ``101`` (the connection is then an
  opaque relay, :attr:`State.SWITCHED`), :meth:`RequestParser.decline_upgrade`
  otherwise (parsing goes on). A ``101`` for a request that did not ask: 502.
* ``1xx`` responses other than 101 are interim: a :class:`ResponseHead` with no body
  and no :class:`ResponseEnd`; the final head follows. If a final response arrives
  before its request body ended (e.g. a 417 after ``Expect: 100-continue``), the
  proxy must close the client connection after that response. Interim heads are not
  for HTTP/1.0 clients: the proxy drops them for those.

Hop-by-hop handling in :func:`encode_head` (RFC 9110 §7.6.1): ``Connection``,
``Keep-Alive``, ``Proxy-Connection`` and every field the client named in
``Connection`` are not forwarded, so that the backend connection's persistence is
ours (an HTTP/1.1 backend connection stays open whatever the client asked; an
HTTP/1.0 request that asked for keep-alive is forwarded with ``Connection:
keep-alive``). ``Upgrade`` is dropped unless the request is an upgrade request, which
keeps ``Connection`` (and the fields it names, e.g. ``HTTP2-Settings``) as sent.
Host, Content-Length, Transfer-Encoding and the forwarding headers are never dropped
because the client named them: a client cannot make a downstream hop strip the
framing or our ``x-forwarded-for``. ``Transfer-Encoding`` is forwarded because the
body is forwarded chunked as received.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias, TypeVar

__all__ = [
    "AddedFields",
    "BodyChunk",
    "BodyKind",
    "Event",
    "HttpError",
    "HttpLimits",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RequestEnd",
    "RequestHead",
    "RequestParser",
    "ResponseEnd",
    "ResponseHead",
    "ResponseParser",
    "State",
    "encode_head",
    "encode_response_head",
]

_T = TypeVar("_T")

_MAX_LENGTH: Final = 2**63 - 1
"""Largest Content-Length or chunk size accepted."""

_CR: Final = 0x0D
_LF: Final = 0x0A

_TOKEN: Final = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_TOKEN_RE: Final = re.compile(_TOKEN)
_REQUEST_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
# The usual request line, every rule of _check_start_line but CONNECT judged at once:
# origin-form target without "#", HTTP/1.0 or 1.1.
_ORIGIN_REQUEST_LINE_RE: Final = re.compile(
    rb"(" + _TOKEN + rb") (/[\x21\x22\x24-\x7e]*) HTTP/(1\.[01])"
)
_STATUS_LINE_RE: Final = re.compile(
    rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?"
)
_ABSOLUTE_RE: Final = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?]*)(.*)", re.DOTALL)
_AUTHORITY_RE: Final = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::([0-9]*))?", re.DOTALL
)
_CHUNK_LINE_RE: Final = re.compile(
    rb"([0-9A-Fa-f]+)(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_FIELD_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*[\t\x20-\x7e\x80-\xff]*")
_FIELD_VALUE_RE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

# A field section (RFC 9112 §5): field lines, each CRLF-terminated; the empty line
# that ends the head is not part of it. _FIELD_PAIR_RE splits one that matched.
# Possessive quantifiers: sre's backtracking bookkeeping for a plain (?:...)* costs
# ten times the match itself, and nothing here needs to give back what it took.
_FIELD_LINES: Final = rb"(?:" + _TOKEN + rb"+:[\t\x20-\x7e\x80-\xff]*+\r\n)*+"
_FIELD_SECTION_RE: Final = re.compile(_FIELD_LINES)
_FIELD_PAIR_RE: Final = re.compile(rb"(" + _TOKEN + rb"+):[\t ]*+([\t\x20-\x7e\x80-\xff]*+)\r\n")
# A whole response head in one match, for the usual shape (HTTP/1.0 or 1.1, status
# 100..599; group 4 is the field section); anything else (or a head over a limit)
# goes line by line. (Requests: RequestParser._usual_head, without a regex.)
_RESPONSE_HEAD_RE: Final = re.compile(
    rb"HTTP/(1\.[01]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*+))?\r\n("
    + _FIELD_LINES
    + rb")\r\n"
)

# The usual whole response head, already in the form encode_response_head writes
# (ResponseParser.receive_whole): HTTP/1.0 or 1.1, status 200..599, the reason phrase
# after one space, every field line "Name: value" with one space after the colon and
# a value that neither is empty nor begins or ends in whitespace; of the fields that
# matter to a hop at most one Content-Length of 1..18 digits and one Connection with
# one option (keep-alive, close or upgrade, any case); no other framing or hop-by-hop
# field. The head is split into its lines (find, split: C loops) and each line is
# judged once, then looked up (_response_lines below), not matched by a regular
# expression: sre spent ~60 instructions per byte on the character classes of a head.
_FIELD_CONTENT: Final = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_TOKEN_CHARS: Final = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_TARGET_CHARS: Final = bytes([0x21, 0x22, *range(0x24, 0x7F)])  # origin-form, no "#"
_V11: Final = b"1.1"
_V10: Final = b"1.0"
# Field names (and methods) of usual heads, by what they are to a hop: not a token
# (-1), another field (0), or one of these.
_FID_HOST: Final = 1
_FID_LENGTH: Final = 2
_FID_TRANSFER_ENCODING: Final = 3
_FID_CONNECTION: Final = 4
_FID_EXPECT: Final = 5
_FID_UPGRADE: Final = 6
_FID_KEEP_ALIVE: Final = 7
_FID_PROXY_CONNECTION: Final = 8
_FIELD_IDS: Final = {
    b"host": _FID_HOST,
    b"content-length": _FID_LENGTH,
    b"transfer-encoding": _FID_TRANSFER_ENCODING,
    b"connection": _FID_CONNECTION,
    b"expect": _FID_EXPECT,
    b"upgrade": _FID_UPGRADE,
    b"keep-alive": _FID_KEEP_ALIVE,
    b"proxy-connection": _FID_PROXY_CONNECTION,
}
# Names as received -> their id; bounded as the line memos below (_remember_line).
# Shared by the loops' threads: a dict operation is atomic, and a lost entry is only
# computed again.
_field_ids: Final[dict[bytes, int]] = {}


def _field_id(name: bytes) -> int:
    fid = _field_ids.get(name)
    if fid is not None:
        return fid
    fid = -1 if not name or name.translate(None, _TOKEN_CHARS) else _FIELD_IDS.get(name.lower(), 0)
    _remember_line(_field_ids, name, fid)
    return fid


# What a line of a usual response head is (ResponseParser.receive_whole), remembered
# by its bytes: a backend repeats most of them (status, Server, Content-Type, often
# Content-Length and Connection), so a known line costs a dictionary look-up instead
# of its checks. Codes: _LINE_OFF (not the usual shape), _LINE_PLAIN (forwarded as
# received), _LINE_KEEP_ALIVE/_LINE_CLOSE/_LINE_UPGRADE (a Connection line),
# _LINE_LENGTH + n (Content-Length: n); a status line: _LINE_STATUS + 2 * status +
# (1 for HTTP/1.1), in a dict of their own. Bounded in entries (1,024 each) and line
# length (256 bytes); cleared when full. Shared by the loops' threads: a dict
# operation is atomic, and a lost entry is only checked again.
_LINE_OFF: Final = -1
_LINE_PLAIN: Final = 0
_LINE_KEEP_ALIVE: Final = 1
_LINE_CLOSE: Final = 2
_LINE_UPGRADE: Final = 3
_LINE_STATUS: Final = 4
_LINE_LENGTH: Final = 2000
_CONNECTION_LINES: Final = {
    b"keep-alive": _LINE_KEEP_ALIVE,
    b"close": _LINE_CLOSE,
    b"upgrade": _LINE_UPGRADE,
}
_LINES_MAX: Final = 1024
_LINE_MAX: Final = 256
_status_lines: Final[dict[bytes, int]] = {}  # (apart: a field line is no status line)
_response_lines: Final[dict[bytes, int]] = {}


def _status_line_code(line: bytes) -> int:
    # "HTTP/1.x NNN reason": 1.0 or 1.1, a final status 200..599, the reason after one space.
    if (
        len(line) < 13
        or not line.startswith(b"HTTP/1.")
        or line[8] != 0x20
        or line[12] != 0x20
        or not 0x32 <= line[9] <= 0x35
        or not 0x30 <= line[10] <= 0x39
        or not 0x30 <= line[11] <= 0x39
        or line.translate(None, _FIELD_CONTENT)
    ):
        return _LINE_OFF
    minor = line[7]
    if minor != 0x30 and minor != 0x31:
        return _LINE_OFF
    status = (line[9] - 0x30) * 100 + (line[10] - 0x30) * 10 + line[11] - 0x30
    return _LINE_STATUS + 2 * status + (minor - 0x30)


def _response_line_code(line: bytes) -> int:
    # A field line "Name: value" as encode_response_head writes it.
    name, _, value = line.partition(b": ")
    if not value or value.translate(None, _FIELD_CONTENT):
        return _LINE_OFF
    fid = _field_id(name)
    if fid in (0, _FID_HOST, _FID_EXPECT):  # (plain in a response)
        first = value[0]
        last = value[-1]
        if first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09:
            return _LINE_OFF
        return _LINE_PLAIN
    if fid == _FID_LENGTH:
        if len(value) > 18 or not value.isdigit():
            return _LINE_OFF
        return _LINE_LENGTH + int(value)
    if fid == _FID_CONNECTION:
        return _CONNECTION_LINES.get(value.lower(), _LINE_OFF)
    return _LINE_OFF


# Up to this size a buffer's head is cut with bytes.partition rather than find and
# a slice: partition takes its one argument as is, where find parses a tuple of
# them (~40% of its cost on a usual head); past it, partition's copy of the rest
# (a body that came with the head) would cost more than the parsing saved.
_PARTITION_MAX: Final = 4096


def _remember_line(lines: dict[bytes, _T], line: bytes, verdict: _T) -> None:
    if len(line) <= _LINE_MAX:
        if len(lines) >= _LINES_MAX:
            lines.clear()
        lines[line] = verdict


# The lines of usual request heads (RequestParser._usual_head), remembered the same
# way: a client repeats its request line and most field lines (Host, User-Agent,
# Accept...). A request line -> (method, target, version), _NOT_USUAL_LINE if it is
# not of the usual shape; a field line -> (field id, name, value without OWS, whether
# encode_head writes it back as received), id -1 if not usual.
_NOT_USUAL_LINE: Final = (b"", b"", b"")
_NOT_USUAL_FIELD: Final = (-1, b"", b"", False)
# Fields a proxy adds in place of the client's (AddedFields.wire_ok): a line naming
# one of them is not written back as received.
_WIRE_REPLACED: Final = frozenset({b"x-forwarded-for", b"x-client-port", b"forwarded", b"via"})
_request_lines: Final[dict[bytes, tuple[bytes, bytes, bytes]]] = {}
_request_fields: Final[dict[bytes, tuple[int, bytes, bytes, bool]]] = {}


def _request_line_parts(line: bytes) -> tuple[bytes, bytes, bytes]:
    # "METHOD /target HTTP/1.x": a token, an origin-form target without "#" (no byte
    # but a target's and the two spaces), HTTP/1.0 or 1.1; not CONNECT.
    if line.translate(None, _TARGET_CHARS) != b"  ":
        return _NOT_USUAL_LINE
    version_at = len(line) - 9
    suffix = line[version_at:]
    if suffix == b" HTTP/1.1":
        version = _V11
    elif suffix == b" HTTP/1.0":
        version = _V10
    else:
        return _NOT_USUAL_LINE
    space = line.find(b" ")
    if space <= 0 or line[space + 1] != 0x2F:  # (the other space is version_at's)
        return _NOT_USUAL_LINE
    method = line[:space]
    if _field_id(method) < 0 or method == b"CONNECT":
        return _NOT_USUAL_LINE
    return method, line[space + 1 : version_at], version


def _request_field(line: bytes) -> tuple[int, bytes, bytes, bool]:
    # "name:value" of field content; the value without the whitespace around it.
    name, colon, value = line.partition(b":")
    fid = _field_id(name)
    if not colon or fid < 0 or line.translate(None, _FIELD_CONTENT):
        return _NOT_USUAL_FIELD
    if value:
        first = value[0]
        last = value[-1]
        if first == 0x20 or first == 0x09 or last == 0x20 or last == 0x09:
            value = value.strip(b" \t")
    # As encode_head writes it: "Name: value", a field it neither drops nor replaces.
    as_written = (
        len(line) == len(name) + 2 + len(value)
        and line[len(name) + 1] == 0x20
        and fid in (0, _FID_HOST, _FID_LENGTH, _FID_TRANSFER_ENCODING)
        and name.lower() not in _WIRE_REPLACED
    )
    return fid, name, value, as_written


_CLOSE_TAIL: Final = b"Connection: close\r\n\r\n"
_KEEP_ALIVE_TAIL: Final = b"Connection: keep-alive\r\n\r\n"

_HOP_BY_HOP: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection"})
_HOP_BY_HOP_UPGRADE: Final = _HOP_BY_HOP | {b"upgrade"}
_NOTHING: Final[frozenset[bytes]] = frozenset()
# Fields a Connection option can never remove (framing and routing).
_PROTECTED: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
# Forwarding fields whose client values are kept and extended, not replaced.
_LIST_VALUED: Final = frozenset({b"x-forwarded-for", b"forwarded", b"via"})
_FORBIDDEN_TRAILERS: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})
_REQUEST_FIELDS: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"}
)
_RESPONSE_FIELDS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"upgrade"}
)

_PHRASES: Final = {
    400: "Bad Request",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    505: "HTTP Version Not Supported",
}


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Sizes a peer may not exceed. Every buffer here is bounded by one of these.

    Attributes:
        max_line: Longest request line (over it: 414) or status line (502), in bytes
            without the CRLF.
        max_head: Largest head, start line to the empty line included (over it: 431);
            also the largest trailer section.
        max_headers: Most field lines in a head or trailer section (over it: 431).
        max_chunk_line: Longest chunk-size line, extensions included, without CRLF.
        max_pending: Most bytes held after an upgrade request until the backend has
            answered it (over it: 400).
    """

    max_line: int = 8 * 1024
    max_head: int = 32 * 1024
    max_headers: int = 100
    max_chunk_line: int = 4 * 1024
    max_pending: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_line", "max_head", "max_headers", "max_chunk_line", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        if self.max_line + 4 > self.max_head:
            raise ValueError("max_head must exceed max_line by at least 4 (two CRLFs)")


# -- events ---------------------------------------------------------------------------


# Events are slotted dataclasses (equality, repr) with their own __init__: compiled
# (setup.py), a dataclass-generated __init__ stays interpreted, 0.5-1 µs per event
# against 0.07 µs. Not frozen (a frozen one sets each field through object.__setattr__);
# nobody mutates them.


class BodyKind(enum.Enum):
    """How a message's body is delimited."""

    NONE = enum.auto()  # no body at all
    LENGTH = enum.auto()  # Content-Length bytes (possibly 0)
    CHUNKED = enum.auto()  # chunked transfer coding
    UNTIL_CLOSE = enum.auto()  # responses only: everything until the backend closes


@dataclass(slots=True, init=False)
class RequestHead:
    """A request line and field section that passed every check.

    Attributes:
        method: The method token, e.g. ``b"GET"``.
        target: The request target as sent, e.g. ``b"/a?b"``.
        version: ``b"1.0"`` or ``b"1.1"``.
        headers: Every field line in order, names with their original casing, values
            without surrounding whitespace.
        host: The routing hint: the host of an absolute-form target, else of the Host
            field, lowercased, without port (IPv6 keeps its brackets); ``None`` when
            there is none (HTTP/1.0, or an empty Host).
        keep_alive: Whether the client wants the connection kept after this request.
        expect_continue: ``Expect: 100-continue`` in an HTTP/1.1 request.
        upgrade: The ``Upgrade`` value of an upgrade request, else ``None``.
        body_kind: How the body is delimited (never ``UNTIL_CLOSE`` for requests).
        content_length: The Content-Length for ``BodyKind.LENGTH``, else ``None``.
        wire: The head as received, up to its last field line (without that line's
            CRLF), when it is what :func:`encode_head` would write field by field
            (each line ``Name: value``, none that it drops or replaces); else ``b""``.
            Not compared. Whoever changes a parsed head sets it to ``b""``, or
            :func:`encode_head` writes the head as received.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    host: str | None
    keep_alive: bool
    expect_continue: bool
    upgrade: bytes | None
    body_kind: BodyKind
    content_length: int | None = None
    wire: bytes = field(default=b"", compare=False, repr=False)

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        host: str | None,
        keep_alive: bool,
        expect_continue: bool,
        upgrade: bytes | None,
        body_kind: BodyKind,
        content_length: int | None = None,
        wire: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.body_kind = body_kind
        self.content_length = content_length
        self.wire = wire


@dataclass(slots=True, init=False)
class ResponseHead:
    """A status line and field section that passed every check.

    Attributes:
        status: 100..599. A 1xx other than 101 is interim: the final head follows.
        reason: The reason phrase as sent (may be empty).
        version: ``b"1.0"`` or ``b"1.1"``.
        headers: Every field line in order, as in :class:`RequestHead`.
        keep_alive: Whether the backend connection may carry another request after
            this response (always ``False`` for ``UNTIL_CLOSE`` bodies).
        body_kind: How the body is delimited; ``NONE`` for 1xx, 204, 304 and answers
            to HEAD, whatever their fields say.
        content_length: The Content-Length for ``BodyKind.LENGTH``, else ``None``.
    """

    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    body_kind: BodyKind
    content_length: int | None = None

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body_kind: BodyKind,
        content_length: int | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.body_kind = body_kind
        self.content_length = content_length

    @property
    def interim(self) -> bool:
        """Whether this is a 1xx head other than 101 (another head follows)."""
        return self.status < 200 and self.status != 101


@dataclass(slots=True, init=False)
class BodyChunk:
    """The next body bytes exactly as on the wire (chunked framing included).

    Attributes:
        data: Never empty.
    """

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(frozen=True, slots=True)
class RequestEnd:
    """The request that began with the last :class:`RequestHead` is complete."""


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The final response that began with the last :class:`ResponseHead` is complete."""


Event: TypeAlias = RequestHead | ResponseHead | BodyChunk | RequestEnd | ResponseEnd

# The end events have no fields: one instance serves all.
_REQUEST_END: Final = RequestEnd()
_RESPONSE_END: Final = ResponseEnd()


# -- errors ---------------------------------------------------------------------------


class HttpError(Exception):
    """Base of this module's errors.

    Attributes:
        status: The HTTP status the proxy answers with (400, 414, 417, 431, 501, 505
            for a client's fault, 502 for a backend's, 500 for ours).
        reason: What was wrong, for the log.
        events: Events completed before the error in the same call (whole messages
            only, in order); handle them first, then answer :attr:`status` and close.
    """

    def __init__(self, status: int, reason: str, events: tuple[Event, ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.events = events

    @property
    def wire(self) -> bytes:
        """A complete ``Connection: close`` response for :attr:`status`."""
        phrase = _PHRASES.get(self.status, "Error")
        body = f"{self.status} {phrase}\n".encode("ascii")
        return (
            f"HTTP/1.1 {self.status} {phrase}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("ascii") + body


class RemoteProtocolError(HttpError):
    """The peer broke HTTP/1.x or a limit. The error sticks: later calls raise it
    again (with no events)."""


class LocalProtocolError(HttpError):
    """The caller used a parser wrongly (e.g. fed it after the protocol switched).
    The parser's state does not change."""

    def __init__(self, reason: str) -> None:
        super().__init__(500, reason)


# -- the state machine ----------------------------------------------------------------


class State(enum.Enum):
    """Where a parser is in its stream of messages."""

    # Members are singletons; Enum's own __hash__ is Python code, and the transition
    # table is looked up a few times per message.
    __hash__ = object.__hash__

    HEAD = enum.auto()  # between messages, or in a head
    BODY = enum.auto()  # in a Content-Length body
    BODY_UNTIL_CLOSE = enum.auto()  # in a body delimited by EOF (responses)
    CHUNK_SIZE = enum.auto()  # expecting a chunk-size line
    CHUNK_DATA = enum.auto()  # in chunk data
    CHUNK_DATA_END = enum.auto()  # expecting the CRLF after chunk data
    TRAILERS = enum.auto()  # in the trailer section after the last chunk
    DONE = enum.auto()  # message complete; momentary, decides what comes next
    AWAIT_UPGRADE = enum.auto()  # upgrade request done: hold bytes until decided
    SWITCHED = enum.auto()  # protocol switched: the rest is an opaque relay
    MUST_CLOSE = enum.auto()  # a closing message is done; later bytes are ignored
    CLOSED = enum.auto()  # EOF at a message boundary
    ERROR = enum.auto()  # the peer broke the protocol; close


_BODY_STATES: Final = frozenset(
    {
        State.BODY,
        State.BODY_UNTIL_CLOSE,
        State.CHUNK_SIZE,
        State.CHUNK_DATA,
        State.CHUNK_DATA_END,
        State.TRAILERS,
    }
)


class _Input(enum.Enum):
    __hash__ = object.__hash__  # as State's
    DATA = enum.auto()  # receive_data was called
    EOF = enum.auto()  # receive_eof was called at a message boundary
    EOF_TRUNCATED = enum.auto()  # receive_eof was called inside a head
    HEAD_NO_BODY = enum.auto()  # a valid head whose message has no body bytes
    HEAD_LENGTH = enum.auto()  # ... a Content-Length body
    HEAD_CHUNKED = enum.auto()  # ... a chunked body
    HEAD_UNTIL_CLOSE = enum.auto()  # ... a body until EOF (responses)
    HEAD_INTERIM = enum.auto()  # a 1xx response head other than 101
    HEAD_SWITCH = enum.auto()  # a 101 answering an upgrade request
    LENGTH_DONE = enum.auto()  # the last Content-Length byte
    CHUNK_HEADER = enum.auto()  # a valid chunk-size line with a size > 0
    LAST_CHUNK = enum.auto()  # a valid chunk-size line with size 0
    CHUNK_DATA_DONE = enum.auto()  # the last byte of a chunk's data
    CRLF = enum.auto()  # the CRLF after chunk data
    TRAILER = enum.auto()  # a valid trailer field line
    BLANK_LINE = enum.auto()  # the empty line ending the trailer section
    KEEP_ALIVE = enum.auto()  # the completed message keeps the connection
    CLOSE = enum.auto()  # the completed message closes the connection
    UPGRADE = enum.auto()  # the completed message is an upgrade request
    ACCEPT = enum.auto()  # accept_upgrade(): the backend answered 101
    DECLINE = enum.auto()  # decline_upgrade(), the request kept the connection
    DECLINE_CLOSE = enum.auto()  # decline_upgrade(), the request asked to close
    PEER_ERROR = enum.auto()  # anything the peer sent that breaks a rule


class _Action(enum.Enum):
    PARSE = enum.auto()  # parse the bytes in this state
    NONE = enum.auto()  # nothing beyond the move
    EMIT_HEAD = enum.auto()  # emit the RequestHead / ResponseHead
    EMIT_END = enum.auto()  # emit RequestEnd / ResponseEnd (after pending body bytes)
    HOLD = enum.auto()  # keep the bytes (or the EOF) for after the upgrade decision
    RELEASE = enum.auto()  # hand the held bytes to the relay
    RESUME = enum.auto()  # parse the held bytes (and EOF) as HTTP again
    IGNORE = enum.auto()  # drop the bytes
    FINISH = enum.auto()  # the stream ended cleanly
    FAIL = enum.auto()  # raise RemoteProtocolError; stay in ERROR
    MISUSE = enum.auto()  # raise LocalProtocolError; the state does not change


# How both parsers move. receive_data looks up (state, DATA): PARSE runs the loop, which
# reads what the state waits for (a head, a chunk-size line, ...) as soon as all of it
# is there, classifies it into one _Input and looks that up here, then goes on in the
# new state with the bytes that follow: one call handles any number of pipelined
# messages. Bytes inside a body state (BODY, CHUNK_DATA, BODY_UNTIL_CLOSE) do not move
# it until the last one. DONE is left at once by the message's own input (KEEP_ALIVE,
# CLOSE or UPGRADE), so callers never see it. receive_eof looks up EOF (or
# EOF_TRUNCATED when a head was cut); accept_upgrade / decline_upgrade look up ACCEPT
# and DECLINE[_CLOSE].
#
#   state              input              action      -> state
#   HEAD               HEAD_NO_BODY       EMIT_HEAD   -> DONE
#   HEAD               HEAD_LENGTH        EMIT_HEAD   -> BODY
#   HEAD               HEAD_CHUNKED       EMIT_HEAD   -> CHUNK_SIZE
#   HEAD               HEAD_UNTIL_CLOSE   EMIT_HEAD   -> BODY_UNTIL_CLOSE  (responses)
#   HEAD               HEAD_INTERIM       EMIT_HEAD   -> HEAD              (responses)
#   HEAD               HEAD_SWITCH        EMIT_HEAD   -> SWITCHED          (responses)
#   HEAD               EOF                FINISH      -> CLOSED
#   BODY               LENGTH_DONE        NONE        -> DONE
#   BODY_UNTIL_CLOSE   EOF                EMIT_END    -> CLOSED
#   CHUNK_SIZE         CHUNK_HEADER       NONE        -> CHUNK_DATA
#   CHUNK_SIZE         LAST_CHUNK         NONE        -> TRAILERS
#   CHUNK_DATA         CHUNK_DATA_DONE    NONE        -> CHUNK_DATA_END
#   CHUNK_DATA_END     CRLF               NONE        -> CHUNK_SIZE
#   TRAILERS           TRAILER            NONE        -> TRAILERS
#   TRAILERS           BLANK_LINE         NONE        -> DONE
#   DONE               KEEP_ALIVE         EMIT_END    -> HEAD
#   DONE               CLOSE              EMIT_END    -> MUST_CLOSE
#   DONE               UPGRADE            EMIT_END    -> AWAIT_UPGRADE     (requests)
#   AWAIT_UPGRADE      DATA / EOF         HOLD        -> AWAIT_UPGRADE
#   AWAIT_UPGRADE      ACCEPT             RELEASE     -> SWITCHED
#   AWAIT_UPGRADE      DECLINE            RESUME      -> HEAD
#   AWAIT_UPGRADE      DECLINE_CLOSE      RESUME      -> MUST_CLOSE
#   MUST_CLOSE         DATA               IGNORE      -> MUST_CLOSE
#   MUST_CLOSE         EOF                FINISH      -> CLOSED
#   HEAD, body states  DATA               PARSE       -> (unchanged)
#   HEAD               EOF_TRUNCATED      FAIL        -> ERROR
#   body states        EOF                FAIL        -> ERROR  (truncated body)
#   HEAD, body states  PEER_ERROR         FAIL        -> ERROR
#   AWAIT_UPGRADE      PEER_ERROR         FAIL        -> ERROR  (held too much)
#   anything else                         MISUSE      -> (unchanged)
#
# "Anything else" is spelled out below so the table is total; a property test checks
# that, that every state but the terminal ones can still reach CLOSED, and that the
# parsers only ever move along it. ERROR is never looked up: it raises first.
_TRANSITIONS: Final[dict[tuple[State, _Input], tuple[_Action, State]]] = {
    (State.HEAD, _Input.HEAD_NO_BODY): (_Action.EMIT_HEAD, State.DONE),
    (State.HEAD, _Input.HEAD_LENGTH): (_Action.EMIT_HEAD, State.BODY),
    (State.HEAD, _Input.HEAD_CHUNKED): (_Action.EMIT_HEAD, State.CHUNK_SIZE),
    (State.HEAD, _Input.HEAD_UNTIL_CLOSE): (_Action.EMIT_HEAD, State.BODY_UNTIL_CLOSE),
    (State.HEAD, _Input.HEAD_INTERIM): (_Action.EMIT_HEAD, State.HEAD),
    (State.HEAD, _Input.HEAD_SWITCH): (_Action.EMIT_HEAD, State.SWITCHED),
    (State.HEAD, _Input.EOF): (_Action.FINISH, State.CLOSED),
    (State.HEAD, _Input.EOF_TRUNCATED): (_Action.FAIL, State.ERROR),
    (State.BODY, _Input.LENGTH_DONE): (_Action.NONE, State.DONE),
    (State.BODY_UNTIL_CLOSE, _Input.EOF): (_Action.EMIT_END, State.CLOSED),
    (State.CHUNK_SIZE, _Input.CHUNK_HEADER): (_Action.NONE, State.CHUNK_DATA),
    (State.CHUNK_SIZE, _Input.LAST_CHUNK): (_Action.NONE, State.TRAILERS),
    (State.CHUNK_DATA, _Input.CHUNK_DATA_DONE): (_Action.NONE, State.CHUNK_DATA_END),
    (State.CHUNK_DATA_END, _Input.CRLF): (_Action.NONE, State.CHUNK_SIZE),
    (State.TRAILERS, _Input.TRAILER): (_Action.NONE, State.TRAILERS),
    (State.TRAILERS, _Input.BLANK_LINE): (_Action.NONE, State.DONE),
    (State.DONE, _Input.KEEP_ALIVE): (_Action.EMIT_END, State.HEAD),
    (State.DONE, _Input.CLOSE): (_Action.EMIT_END, State.MUST_CLOSE),
    (State.DONE, _Input.UPGRADE): (_Action.EMIT_END, State.AWAIT_UPGRADE),
    (State.AWAIT_UPGRADE, _Input.DATA): (_Action.HOLD, State.AWAIT_UPGRADE),
    (State.AWAIT_UPGRADE, _Input.EOF): (_Action.HOLD, State.AWAIT_UPGRADE),
    (State.AWAIT_UPGRADE, _Input.ACCEPT): (_Action.RELEASE, State.SWITCHED),
    (State.AWAIT_UPGRADE, _Input.DECLINE): (_Action.RESUME, State.HEAD),
    (State.AWAIT_UPGRADE, _Input.DECLINE_CLOSE): (_Action.RESUME, State.MUST_CLOSE),
    (State.AWAIT_UPGRADE, _Input.PEER_ERROR): (_Action.FAIL, State.ERROR),
    (State.MUST_CLOSE, _Input.DATA): (_Action.IGNORE, State.MUST_CLOSE),
    (State.MUST_CLOSE, _Input.EOF): (_Action.FINISH, State.CLOSED),
}
for _state in (State.HEAD, *_BODY_STATES):
    _TRANSITIONS[(_state, _Input.DATA)] = (_Action.PARSE, _state)
    _TRANSITIONS[(_state, _Input.PEER_ERROR)] = (_Action.FAIL, State.ERROR)
for _state in _BODY_STATES - {State.BODY_UNTIL_CLOSE}:
    _TRANSITIONS[(_state, _Input.EOF)] = (_Action.FAIL, State.ERROR)
for _state in State:
    for _input in _Input:
        _TRANSITIONS.setdefault((_state, _input), (_Action.MISUSE, _state))
del _state, _input


# -- helpers --------------------------------------------------------------------------


def _slice(buf: bytes | bytearray, start: int, end: int) -> bytes:
    """``buf[start:end]`` as bytes; a whole ``bytes`` object is returned uncopied."""
    if type(buf) is bytes:
        return buf[start:end]
    return bytes(buf[start:end])


def _parse_authority(value: bytes) -> str | None:
    """``host[:port]`` -> the lowercased host (``None`` if empty); ValueError if invalid."""
    m = _AUTHORITY_RE.fullmatch(value)
    if m is None:
        raise ValueError
    port = m.group(2)
    if port and (len(port) > 5 or int(port) > 0xFFFF):
        raise ValueError
    host = m.group(1)
    return host.decode("ascii").lower() if host else None


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated elements of list-valued fields, OWS stripped, empty dropped."""
    out: list[bytes] = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if item:
                out.append(item)
    return out


def _options(values: list[bytes]) -> list[bytes]:
    """The Connection options in ``values``, lowercased (as ``_tokens``)."""
    if len(values) == 1 and values[0].find(b",") < 0:  # the usual single option
        option = values[0].strip(b" \t").lower()
        return [option] if option else []
    return [t.lower() for t in _tokens(values)]


# The Content-Length and Transfer-Encoding rules (llhttp has the same ones; these do
# not depend on any library's defaults).


def _content_length(values: list[bytes], status: int) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise RemoteProtocolError(status, "Content-Length in more than one field line")
    value = values[0]
    if not value.isdigit() or not value.isascii():
        raise RemoteProtocolError(status, f"invalid Content-Length {value!r}")
    length = int(value)
    if length > _MAX_LENGTH:
        raise RemoteProtocolError(status, "Content-Length too large")
    return length


def _chunked_last(values: list[bytes], status: int) -> bool:
    """Check a Transfer-Encoding value; whether its last coding is ``chunked``.

    Raises RemoteProtocolError for more than one field line, a malformed list, or
    ``chunked`` anywhere but last.
    """
    if len(values) > 1:
        raise RemoteProtocolError(status, "Transfer-Encoding in more than one field line")
    codings = values[0].split(b",")
    for i, raw in enumerate(codings):
        coding = raw.strip(b" \t")
        if _TOKEN_RE.fullmatch(coding) is None:
            raise RemoteProtocolError(status, f"invalid Transfer-Encoding {values[0]!r}")
        if coding.lower() == b"chunked" and (i != len(codings) - 1 or coding != b"chunked"):
            raise RemoteProtocolError(status, f"obfuscated Transfer-Encoding {values[0]!r}")
    return codings[-1].strip(b" \t") == b"chunked"


def _parse_fields(
    buf: bytes | bytearray, start: int, end: int, status: int
) -> list[tuple[bytes, bytes]]:
    """The field lines of ``buf[start:end]``: a field section (CRLF-terminated field
    lines, the empty line not included), names as sent, values without surrounding
    whitespace.

    The grammar (RFC 9112 §5): ``token ":" OWS field-value OWS CRLF``, values of HTAB,
    SP, VCHAR and obs-text. No whitespace before the colon, no obs-fold (a line
    starting with SP or HTAB is not a token), no empty name, no control bytes. This is
    what llhttp (in strict mode) accepts in a field section, with its Content-Length
    and Transfer-Encoding rules left to the callers, which apply them anyway (the
    tests check the two against each other).

    Raises:
        RemoteProtocolError: The section breaks the grammar (with ``status``).
    """
    if _FIELD_SECTION_RE.fullmatch(buf, start, end) is None:
        raise RemoteProtocolError(status, "invalid field section")
    return _fields_of(buf, start, end)


def _fields_of(buf: bytes | bytearray, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """The (name, value) pairs of a field section already checked against the grammar."""
    headers: list[tuple[bytes, bytes]] = _FIELD_PAIR_RE.findall(buf, start, end)
    # Trailing whitespace is part of what the value pattern takes: strip it where
    # there is any (rare), found in two C calls.
    if buf.find(b" \r\n", start, end) >= 0 or buf.find(b"\t\r\n", start, end) >= 0:
        headers = [(n, v.rstrip(b" \t")) for n, v in headers]
    return headers


# Enum members used on the hot path, bound once: reading a member off an Enum class
# costs several global lookups in CPython 3.11, and a message takes dozens of them.
_ST_AWAIT_UPGRADE: Final = State.AWAIT_UPGRADE
_ST_BODY: Final = State.BODY
_ST_BODY_UNTIL_CLOSE: Final = State.BODY_UNTIL_CLOSE
_ST_CHUNK_DATA: Final = State.CHUNK_DATA
_ST_CHUNK_DATA_END: Final = State.CHUNK_DATA_END
_ST_CHUNK_SIZE: Final = State.CHUNK_SIZE
_ST_CLOSED: Final = State.CLOSED
_ST_DONE: Final = State.DONE
_ST_ERROR: Final = State.ERROR
_ST_HEAD: Final = State.HEAD
_ST_MUST_CLOSE: Final = State.MUST_CLOSE
_ST_SWITCHED: Final = State.SWITCHED
_ST_TRAILERS: Final = State.TRAILERS
_IN_ACCEPT: Final = _Input.ACCEPT
_IN_BLANK_LINE: Final = _Input.BLANK_LINE
_IN_CHUNK_DATA_DONE: Final = _Input.CHUNK_DATA_DONE
_IN_CHUNK_HEADER: Final = _Input.CHUNK_HEADER
_IN_CLOSE: Final = _Input.CLOSE
_IN_CRLF: Final = _Input.CRLF
_IN_DATA: Final = _Input.DATA
_IN_DECLINE: Final = _Input.DECLINE
_IN_DECLINE_CLOSE: Final = _Input.DECLINE_CLOSE
_IN_EOF: Final = _Input.EOF
_IN_EOF_TRUNCATED: Final = _Input.EOF_TRUNCATED
_IN_HEAD_CHUNKED: Final = _Input.HEAD_CHUNKED
_IN_HEAD_INTERIM: Final = _Input.HEAD_INTERIM
_IN_HEAD_LENGTH: Final = _Input.HEAD_LENGTH
_IN_HEAD_NO_BODY: Final = _Input.HEAD_NO_BODY
_IN_HEAD_SWITCH: Final = _Input.HEAD_SWITCH
_IN_HEAD_UNTIL_CLOSE: Final = _Input.HEAD_UNTIL_CLOSE
_IN_KEEP_ALIVE: Final = _Input.KEEP_ALIVE
_IN_LAST_CHUNK: Final = _Input.LAST_CHUNK
_IN_LENGTH_DONE: Final = _Input.LENGTH_DONE
_IN_PEER_ERROR: Final = _Input.PEER_ERROR
_IN_TRAILER: Final = _Input.TRAILER
_IN_UPGRADE: Final = _Input.UPGRADE
_DO_EMIT_END: Final = _Action.EMIT_END
_DO_EMIT_HEAD: Final = _Action.EMIT_HEAD
_DO_FAIL: Final = _Action.FAIL
_DO_HOLD: Final = _Action.HOLD
_DO_IGNORE: Final = _Action.IGNORE
_DO_MISUSE: Final = _Action.MISUSE
_BK_CHUNKED: Final = BodyKind.CHUNKED
_BK_LENGTH: Final = BodyKind.LENGTH
_BK_NONE: Final = BodyKind.NONE
_BK_UNTIL_CLOSE: Final = BodyKind.UNTIL_CLOSE

# Rows of the table the loop follows on every message, looked up by input alone.
_PARSE_STATES: Final = frozenset(
    state for state in State if _TRANSITIONS[(state, _Input.DATA)][0] is _Action.PARSE
)
_HEAD_NEXT: Final = {
    inp: new
    for (state, inp), (action, new) in _TRANSITIONS.items()
    if state is State.HEAD and action is _Action.EMIT_HEAD
}
_END_NEXT: Final = {
    inp: new
    for (state, inp), (action, new) in _TRANSITIONS.items()
    if state is State.DONE and action is _Action.EMIT_END
}
_AFTER_HEAD_NO_BODY: Final = _HEAD_NEXT[_Input.HEAD_NO_BODY]
_AFTER_KEEP_ALIVE: Final = _END_NEXT[_Input.KEEP_ALIVE]
_AFTER_CLOSE: Final = _END_NEXT[_Input.CLOSE]
_AFTER_UPGRADE: Final = _END_NEXT[_Input.UPGRADE]
_AFTER_LENGTH: Final = _TRANSITIONS[(State.BODY, _Input.LENGTH_DONE)][1]
_AFTER_CHUNK_DATA: Final = _TRANSITIONS[(State.CHUNK_DATA, _Input.CHUNK_DATA_DONE)][1]


# -- the shared parser ----------------------------------------------------------------


class _Parser:
    """What both sides share: buffering, the head limits, body framing, the table."""

    __slots__ = (
        "_buf",
        "_committed",
        "_eof",
        "_error",
        "_head_lines",
        "_head_scan",
        "_keep_alive",
        "_limits",
        "_line_end",
        "_remaining",
        "_seen",
        "_state",
        "_trailer_bytes",
        "_trailer_count",
        "_upgrade",
    )

    # Set by subclasses: the statuses for a long start line, a large head, the rest.
    _LINE_STATUS: int = 400
    _SIZE_STATUS: int = 400
    _BAD_STATUS: int = 400
    _END: Event  # the event that ends a message: RequestEnd() or ResponseEnd()
    # Whether _head_start must see every head, not only those starting with CR.
    _HEAD_START_CHECKS: bool = True
    # A whole head of the usual shape (see _fast_head).
    _HEAD_RE: re.Pattern[bytes]

    def __init__(self, limits: HttpLimits | None = None) -> None:
        self._limits = limits if limits is not None else HttpLimits()
        self._state = _ST_HEAD
        self._buf = bytearray()
        self._error: RemoteProtocolError | None = None
        self._eof = False  # EOF seen while holding bytes for an upgrade decision
        self._committed = 0  # events in this call that belong to complete messages
        self._head_scan = 0  # head bytes already checked line by line
        self._head_lines = 0  # complete head lines checked so far
        self._seen = 0  # bytes of the current line already searched for its LF
        self._line_end = 0  # offset of the CR ending the start line in the head
        self._remaining = 0  # bytes left in a Content-Length body or a chunk
        self._keep_alive = True
        self._upgrade = False  # the message is an upgrade request (requests only)
        self._trailer_bytes = 0
        self._trailer_count = 0

    @property
    def state(self) -> State:
        """Where the parser is; :attr:`State.SWITCHED` means relay the rest opaquely."""
        return self._state

    @property
    def limits(self) -> HttpLimits:
        """The limits this parser enforces."""
        return self._limits

    @property
    def buffered(self) -> int:
        """Bytes received but not handed out yet (e.g. part of a head)."""
        return len(self._buf)

    # -- the public feeding API ------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes received from the peer.

        Args:
            data: The next bytes of the stream, of any length (``b""`` is fine).

        Returns:
            The events these bytes complete, in order; empty when more are needed.
            After a closing message, bytes are ignored (empty list).

        Raises:
            RemoteProtocolError: The peer broke HTTP/1.x or a limit; ``events`` holds
                the whole messages completed before it in this call.
            LocalProtocolError: The stream is no longer HTTP (switched or ended).
        """
        state = self._state
        events: list[Event]
        if state is _ST_HEAD and type(data) is bytes and not self._buf:
            # The usual read: a whole head of the usual shape at its start (see
            # _fast_head), and often the message's whole body after it. Taken here
            # without the loop; what follows the head, if not just that, is left to it.
            fast = self._usual_head(data, 0)
            if fast is not None:
                head, inp, pos = fast
                n = len(data)
                if inp is _IN_HEAD_NO_BODY:
                    if pos == n:
                        self._state = _AFTER_KEEP_ALIVE if self._keep_alive else _AFTER_CLOSE
                        return [head, self._END]
                    self._state = _AFTER_HEAD_NO_BODY
                elif inp is _IN_HEAD_LENGTH and n - pos == self._remaining:
                    self._remaining = 0
                    self._state = _AFTER_KEEP_ALIVE if self._keep_alive else _AFTER_CLOSE
                    chunk = BodyChunk(data[pos:])
                    return [head, chunk, self._END]
                else:
                    self._state = _HEAD_NEXT[inp]
                events = [head]
                self._committed = 0
                try:
                    pos = self._run(data, events, pos)
                except RemoteProtocolError as exc:
                    raise self._fail(exc, events) from None
                return self._after_run(data, events, pos)
        if self._error is not None:
            raise RemoteProtocolError(self._error.status, self._error.reason)
        if state not in _PARSE_STATES:  # (state, DATA) -> PARSE, state: no move
            action = self._go(_IN_DATA)
            if action is _DO_IGNORE:
                self._buf.clear()
                return []
            # HOLD (MISUSE has raised)
            self._buf += data
            self._check_held([])
            return []
        if type(data) is not bytes:
            data = bytes(data)
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        events = []
        self._committed = 0
        try:
            pos = self._run(buf, events, 0)
        except RemoteProtocolError as exc:
            raise self._fail(exc, events) from None
        return self._after_run(buf, events, pos)

    def _after_run(self, buf: bytes | bytearray, events: list[Event], pos: int) -> list[Event]:
        state = self._state
        if state is _ST_MUST_CLOSE:
            pos = len(buf)
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < len(buf):
            self._buf += memoryview(buf)[pos:]
        if state is _ST_AWAIT_UPGRADE:
            self._check_held(events)
        return events

    def receive_eof(self) -> list[Event]:
        """Tell the parser the peer closed its sending side.

        Returns:
            ``[ResponseEnd()]`` when that ends a body read until close, else ``[]``.

        Raises:
            RemoteProtocolError: The stream ended inside a head or a body (truncated).
            LocalProtocolError: The protocol was switched, or EOF was already fed.
        """
        if self._error is not None:
            raise RemoteProtocolError(self._error.status, self._error.reason)
        state = self._state
        if state is _ST_HEAD and (self._buf or not self._at_boundary()):
            inp = _IN_EOF_TRUNCATED
        else:
            inp = _IN_EOF
        action = self._go(inp)
        if action is _DO_FAIL:
            raise self._fail(self._truncated(state), [])
        if action is _DO_HOLD:
            self._eof = True
            return []
        self._buf.clear()
        if action is _DO_EMIT_END:
            return [self._END]
        return []

    # -- the table -----------------------------------------------------------------------

    def _go(self, inp: _Input) -> _Action:
        action, new_state = _TRANSITIONS[(self._state, inp)]
        if action is _DO_MISUSE:
            raise LocalProtocolError(f"{inp.name} is not possible in state {self._state.name}")
        self._state = new_state
        return action

    def _fail(self, exc: RemoteProtocolError, events: list[Event]) -> RemoteProtocolError:
        if self._state is not _ST_ERROR:  # receive_eof's FAIL has moved already
            self._go(_IN_PEER_ERROR)
        self._buf = bytearray()
        self._error = exc
        exc.events = tuple(events[: self._committed])
        return exc

    def _check_held(self, events: list[Event]) -> None:
        if len(self._buf) > self._limits.max_pending:
            exc = RemoteProtocolError(400, "too many bytes before the upgrade was answered")
            self._committed = len(events)
            raise self._fail(exc, events)

    # -- hooks for the two sides --------------------------------------------------------

    def _at_boundary(self) -> bool:
        """Whether EOF now (with nothing buffered) ends the stream cleanly."""
        return True

    def _head_start(self, buf: bytes | bytearray, pos: int) -> int:
        """Called before a new head is read at ``pos``; returns where it really starts."""
        return pos

    def _check_start_line(self, buf: bytes | bytearray, start: int, end: int) -> None:
        raise NotImplementedError

    def _on_head(self, buf: bytes | bytearray, start: int, end: int) -> tuple[Event, _Input]:
        raise NotImplementedError

    def _usual_head(self, buf: bytes | bytearray, pos: int) -> tuple[Event, _Input, int] | None:
        """A whole head of the usual shape at ``pos``, within the limits: the event
        :meth:`_on_head` would give for it, the input it makes, and where it ends.
        ``None`` when it is not whole, or anything is off that shape or a rule left to
        the line-by-line path applies (a limit, CONNECT): that path judges it."""
        m = self._HEAD_RE.match(buf, pos, pos + self._limits.max_head)
        if m is None:
            return None
        fast = self._fast_head(buf, m)
        if fast is None:
            return None
        return fast[0], fast[1], m.end()

    def _fast_head(self, buf: bytes | bytearray, m: re.Match[bytes]) -> tuple[Event, _Input] | None:
        """The head that ``_HEAD_RE`` matched, as :meth:`_on_head` would give it; ``None``
        when a rule left to the line-by-line path applies (a limit, CONNECT)."""
        raise NotImplementedError

    def _truncated(self, state: State) -> RemoteProtocolError:
        status = self._BAD_STATUS
        if state is _ST_HEAD:
            return RemoteProtocolError(status, "connection closed inside a message head")
        if state is _ST_BODY:
            return RemoteProtocolError(
                status, f"body truncated: connection closed {self._remaining} bytes early"
            )
        return RemoteProtocolError(status, "chunked body truncated by the connection closing")

    # -- the loop ------------------------------------------------------------------------

    def _run(self, buf: bytes | bytearray, events: list[Event], pos: int) -> int:
        # The moves below are the table's (see _HEAD_NEXT and friends), made without
        # _go: the inputs met here are the ones the current state expects.
        n = len(buf)
        span = pos if self._state in _BODY_STATES else -1  # start of unreported body bytes
        while True:
            state = self._state
            if state is _ST_HEAD:
                if pos >= n:
                    break
                head_end = -1
                if self._head_scan == 0:
                    if buf[pos] == _CR or self._HEAD_START_CHECKS:
                        start = self._head_start(buf, pos)
                        if start != pos:
                            pos = start
                            self._seen = 0
                            if pos >= n:
                                break
                    if self._seen == 0:
                        # A whole head of the usual shape, within the limits, is taken
                        # in one match; anything else goes line by line (_scan_head),
                        # which finds the first fault.
                        fast = self._usual_head(buf, pos)
                        if fast is not None:
                            head, inp, head_end = fast
                if head_end < 0:
                    head_end = self._scan_head(buf, pos)
                    if head_end < 0:
                        break
                    head, inp = self._on_head(buf, pos, head_end)
                pos = head_end
                events.append(head)
                if inp is _IN_HEAD_NO_BODY:
                    self._state = _AFTER_HEAD_NO_BODY  # DONE
                    continue
                state = self._state = _HEAD_NEXT[inp]
                if state in _BODY_STATES:
                    span = pos
                elif inp is _IN_HEAD_INTERIM:
                    self._committed = len(events)
                else:  # HEAD_SWITCH
                    self._committed = len(events)
                    break
            elif state is _ST_DONE:
                if 0 <= span < pos:
                    data = buf[span:pos]
                    chunk = BodyChunk(data if type(data) is bytes else bytes(data))
                    events.append(chunk)
                span = -1
                if self._upgrade:
                    self._state = _AFTER_UPGRADE
                elif self._keep_alive:
                    self._state = _AFTER_KEEP_ALIVE
                else:
                    self._state = _AFTER_CLOSE
                events.append(self._END)
                self._committed = len(events)
            elif state is _ST_BODY or state is _ST_CHUNK_DATA:
                remaining = self._remaining
                if n - pos < remaining:
                    self._remaining = remaining - (n - pos)
                    pos = n
                    break
                pos += remaining
                self._remaining = 0
                self._state = _AFTER_LENGTH if state is _ST_BODY else _AFTER_CHUNK_DATA
            elif state is _ST_CHUNK_SIZE:
                end = self._chunk_size_line(buf, pos)
                if end < 0:
                    break
                pos = end
            elif state is _ST_CHUNK_DATA_END:
                if n - pos < 2:
                    if n > pos and buf[pos] != _CR:
                        raise RemoteProtocolError(self._BAD_STATUS, "no CRLF after chunk data")
                    break
                if buf[pos] != _CR or buf[pos + 1] != _LF:
                    raise RemoteProtocolError(self._BAD_STATUS, "no CRLF after chunk data")
                pos += 2
                self._go(_IN_CRLF)
            elif state is _ST_TRAILERS:
                end = self._trailer_line(buf, pos)
                if end < 0:
                    break
                pos = end
            elif state is _ST_BODY_UNTIL_CLOSE:
                pos = n
                break
            else:  # AWAIT_UPGRADE, MUST_CLOSE, SWITCHED: this call is done with the bytes
                break
        if 0 <= span < pos:
            data = buf[span:pos]
            chunk = BodyChunk(data if type(data) is bytes else bytes(data))
            events.append(chunk)
        return pos

    # -- heads ------------------------------------------------------------------------

    def _scan_head(self, buf: bytes | bytearray, start: int) -> int:
        """Find the end of the head starting at ``start``; -1 if it is incomplete.

        Every rule is judged on a complete line or a full window, line by line in byte
        order, so the outcome does not depend on how the bytes were cut (the loop's
        fast path takes only heads in which this finds no fault).
        """
        limits = self._limits
        n = len(buf)
        scan = start + self._head_scan
        lines = self._head_lines
        head_limit = start + limits.max_head
        while True:
            window = min(scan + limits.max_line + 2, head_limit) if lines == 0 else head_limit
            lf = buf.find(b"\n", max(scan, start + self._seen), min(n, window))
            if lf < 0:
                if n >= window:
                    if lines == 0:
                        raise RemoteProtocolError(self._LINE_STATUS, "start line too long")
                    raise RemoteProtocolError(self._SIZE_STATUS, "head too large")
                self._head_scan = scan - start
                self._head_lines = lines
                self._seen = n - start
                return -1
            if lf == scan or buf[lf - 1] != _CR:
                raise RemoteProtocolError(self._BAD_STATUS, "bare LF in head")
            if buf.find(b"\r", scan, lf - 1) >= 0:
                raise RemoteProtocolError(self._BAD_STATUS, "bare CR in head")
            if lines == 0:
                self._check_start_line(buf, scan, lf - 1)
                self._line_end = lf - 1 - start
            elif lf - 1 == scan:
                self._head_scan = self._head_lines = self._seen = 0
                return lf + 1
            elif lines > limits.max_headers:
                raise RemoteProtocolError(self._SIZE_STATUS, "too many header fields")
            lines += 1
            scan = lf + 1

    # -- chunked bodies ---------------------------------------------------------------

    def _line(self, buf: bytes | bytearray, pos: int, limit: int, what: str, status: int) -> int:
        """Find the LF ending a CRLF line at ``pos`` of at most ``limit`` bytes; -1 if
        incomplete. Raises for a bare LF, or (with ``status``) for a line that cannot
        end within the limit."""
        n = len(buf)
        window = pos + limit + 2
        lf = buf.find(b"\n", pos + self._seen, min(n, window))
        if lf < 0:
            if n >= window:
                raise RemoteProtocolError(status, f"{what} too long")
            self._seen = n - pos
            return -1
        self._seen = 0
        if lf == pos or buf[lf - 1] != _CR:
            raise RemoteProtocolError(self._BAD_STATUS, f"bare LF in {what}")
        return lf

    def _chunk_size_line(self, buf: bytes | bytearray, pos: int) -> int:
        lf = self._line(buf, pos, self._limits.max_chunk_line, "chunk-size line", self._BAD_STATUS)
        if lf < 0:
            return -1
        m = _CHUNK_LINE_RE.fullmatch(buf, pos, lf - 1)
        if m is None:
            raise RemoteProtocolError(self._BAD_STATUS, "invalid chunk-size line")
        size = int(m.group(1), 16)
        if size > _MAX_LENGTH:
            raise RemoteProtocolError(self._BAD_STATUS, "chunk size overflow")
        if size:
            self._remaining = size
            self._go(_IN_CHUNK_HEADER)
        else:
            self._trailer_bytes = self._trailer_count = 0
            self._go(_IN_LAST_CHUNK)
        return lf + 1

    def _trailer_line(self, buf: bytes | bytearray, pos: int) -> int:
        limits = self._limits
        room = limits.max_head - self._trailer_bytes
        lf = self._line(buf, pos, room - 2, "trailer section", self._SIZE_STATUS)
        if lf < 0:
            return -1
        if buf.find(b"\r", pos, lf - 1) >= 0:
            raise RemoteProtocolError(self._BAD_STATUS, "bare CR in trailer section")
        self._trailer_bytes += lf + 1 - pos
        if lf - 1 == pos:
            self._go(_IN_BLANK_LINE)
            return lf + 1
        m = _FIELD_LINE_RE.fullmatch(buf, pos, lf - 1)
        if m is None:
            raise RemoteProtocolError(self._BAD_STATUS, "invalid trailer field line")
        if bytes(m.group(1)).lower() in _FORBIDDEN_TRAILERS:
            raise RemoteProtocolError(self._BAD_STATUS, f"{m.group(1)!r} not allowed in trailers")
        self._trailer_count += 1
        if self._trailer_count > limits.max_headers:
            raise RemoteProtocolError(self._SIZE_STATUS, "too many trailer fields")
        self._go(_IN_TRAILER)
        return lf + 1


# -- the client side ------------------------------------------------------------------


class RequestParser(_Parser):
    """Parses the requests of one client connection, in the h11 style, without I/O.

    Feed :meth:`receive_data` with whatever the socket produced and :meth:`receive_eof`
    when the client half-closes. For each request you get a :class:`RequestHead`
    (forward :func:`encode_head` of it), :class:`BodyChunk` events (forward their
    bytes) and a :class:`RequestEnd`. After an upgrade request's end, call
    :meth:`accept_upgrade` or :meth:`decline_upgrade` once the backend has answered.

    Example:
        >>> p = RequestParser()
        >>> events = p.receive_data(b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\nGET /2 HTTP/1.1\\r\\n")
        >>> [type(e).__name__ for e in events]
        ['RequestHead', 'RequestEnd']
        >>> events[0].host, events[0].keep_alive
        ('a', True)
    """

    __slots__ = ("_host_cache", "_request_line")

    _LINE_STATUS = 414
    _SIZE_STATUS = 431
    _BAD_STATUS = 400
    _END: Event = _REQUEST_END
    _HEAD_START_CHECKS = False  # it only skips empty lines

    def __init__(self, limits: HttpLimits | None = None) -> None:
        """Create a parser for one client connection.

        Args:
            limits: Size limits; the defaults of :class:`HttpLimits` if ``None``.
        """
        super().__init__(limits)
        self._request_line: tuple[bytes, bytes, bytes, str | None] = (b"", b"", b"", None)
        # The last Host value and its routing hint: a keep-alive client repeats it.
        self._host_cache: tuple[bytes, str | None] = (b"", None)

    def accept_upgrade(self) -> bytes:
        """The backend answered the upgrade request with 101: switch to relaying.

        Returns:
            Bytes the client sent after the upgrade request (to relay to the backend).

        Raises:
            LocalProtocolError: No upgrade request is waiting for an answer.
        """
        self._go(_IN_ACCEPT)
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def decline_upgrade(self) -> list[Event]:
        """The backend answered the upgrade request without switching: go on with HTTP.

        Returns:
            The events of the bytes held since the upgrade request.

        Raises:
            RemoteProtocolError: The held bytes break HTTP/1.x (or end a message early).
            LocalProtocolError: No upgrade request is waiting for an answer.
        """
        self._go(_IN_DECLINE if self._keep_alive else _IN_DECLINE_CLOSE)
        events = self.receive_data(b"")
        if self._eof:
            self._eof = False
            try:
                events += self.receive_eof()
            except HttpError as exc:
                exc.events = tuple(events) + exc.events
                raise
        return events

    def _head_start(self, buf: bytes | bytearray, pos: int) -> int:
        while buf.startswith(b"\r\n", pos):  # RFC 9112 §2.2: skip empty lines before
            pos += 2
        return pos

    def _check_start_line(self, buf: bytes | bytearray, start: int, end: int) -> None:
        m = _ORIGIN_REQUEST_LINE_RE.fullmatch(buf, start, end)
        if m is not None and m.group(1) != b"CONNECT":
            method, target, version = m.groups()
            self._request_line = (method, target, version, None)
            return
        m = _REQUEST_LINE_RE.fullmatch(buf, start, end)
        if m is None:
            raise RemoteProtocolError(400, "malformed request line")
        method, target, version = m.groups()
        if version != b"1.1" and version != b"1.0":
            raise RemoteProtocolError(505, f"HTTP/{version.decode()} not supported")
        if method == b"CONNECT":
            raise RemoteProtocolError(501, "CONNECT is not supported")
        if b"#" in target:
            raise RemoteProtocolError(400, "fragment in request target")
        host: str | None = None
        if target[0] == 0x2F:  # "/": origin-form
            pass
        elif target == b"*":
            if method != b"OPTIONS":
                raise RemoteProtocolError(400, "asterisk-form target needs OPTIONS")
        else:
            absolute = _ABSOLUTE_RE.fullmatch(target)
            if absolute is None or absolute.group(1).lower() not in (b"http", b"https"):
                raise RemoteProtocolError(400, "invalid request target")
            authority = absolute.group(2)
            try:
                host = None if b"@" in authority else _parse_authority(authority)
            except ValueError:
                host = None
            if host is None:
                raise RemoteProtocolError(400, "invalid authority in request target")
        self._request_line = (method, target, version, host)

    def _usual_head(self, buf: bytes | bytearray, pos: int) -> tuple[Event, _Input, int] | None:
        # The usual head: a request line "METHOD /target HTTP/1.x" (a token, an
        # origin-form target without "#", HTTP/1.0 or 1.1), field lines "name:value"
        # of field content, and the rules of _head for the usual fields (one Host, at
        # most one valid Content-Length or "Transfer-Encoding: chunked", one
        # Connection), checked inline. Anything else (another field of
        # _REQUEST_FIELDS, a repeated one, a value that breaks a rule, CONNECT) is left
        # to _head, which judges it: None. As ResponseParser.receive_whole: split into
        # lines, each judged once and then looked up (_request_lines, _request_fields),
        # not matched by a regular expression.
        limits = self._limits
        if pos == 0 and type(buf) is bytes and len(buf) <= _PARTITION_MAX:
            raw, sep, _rest = buf.partition(b"\r\n\r\n")
            if not sep:
                return None
            end = len(raw)
            if end + 4 > limits.max_head:
                return None
        else:
            # (find without bounds when it can: parsing them is a third of the call)
            end = buf.find(b"\r\n\r\n") if pos == 0 else buf.find(b"\r\n\r\n", pos)
            if end < 0 or end + 4 - pos > limits.max_head:
                return None
            raw = buf[pos:end] if type(buf) is bytes else bytes(buf[pos:end])
        lines = raw.split(b"\r\n")
        # (each line of field content only: so no CR or LF but the CRLFs that split them)
        line = lines[0]
        if len(line) > limits.max_line or len(lines) - 1 > limits.max_headers:
            return None
        parts = _request_lines.get(line)
        if parts is None:
            parts = _request_line_parts(line)
            _remember_line(_request_lines, line, parts)
        method, target, version = parts
        if not method:
            return None
        headers: list[tuple[bytes, bytes]] = []
        raw_host: bytes | None = None
        length: int | None = None
        connection: bytes | None = None
        chunked = False
        wire_ok = True
        for i in range(1, len(lines)):
            line = lines[i]
            field = _request_fields.get(line)
            if field is None:
                field = _request_field(line)
                _remember_line(_request_fields, line, field)
            fid, name, value, as_written = field
            if fid < 0:
                return None
            if not as_written:
                wire_ok = False
            headers.append((name, value))
            if fid == 0 or fid >= _FID_KEEP_ALIVE:  # (encode_head drops hop-by-hop fields)
                continue
            if fid == _FID_HOST and raw_host is None:
                raw_host = value
            elif (
                fid == _FID_LENGTH
                and length is None
                and not chunked
                and 0 < len(value) <= 18
                and value.isdigit()
            ):
                length = int(value)
            elif (
                fid == _FID_TRANSFER_ENCODING
                and value == b"chunked"
                and not chunked
                and length is None
            ):
                chunked = True
            elif fid == _FID_CONNECTION and connection is None:
                connection = value
            else:
                return None
        http11 = version == b"1.1"
        if raw_host is None:
            if http11:
                return None
            host = None
        else:
            cached, host = self._host_cache
            if raw_host != cached:
                try:
                    host = _parse_authority(raw_host)
                except ValueError:
                    return None
                self._host_cache = (raw_host, host)
        if connection is None:
            keep_alive = http11
        elif connection.find(b",") < 0:  # one option (the value has no OWS around it)
            option = connection.lower()
            keep_alive = option != b"close" if http11 else option == b"keep-alive"
        else:
            options = _options([connection])
            if http11:
                keep_alive = b"close" not in options
            else:
                keep_alive = b"keep-alive" in options and b"close" not in options
        self._keep_alive = keep_alive
        self._upgrade = False
        if chunked:
            if not http11:
                return None
            body, inp = _BK_CHUNKED, _IN_HEAD_CHUNKED
        elif length is not None:
            body, inp = _BK_LENGTH, _IN_HEAD_LENGTH if length else _IN_HEAD_NO_BODY
            self._remaining = length
        else:
            body, inp = _BK_NONE, _IN_HEAD_NO_BODY
        head = RequestHead(
            method,
            target,
            version,
            headers,
            host,
            keep_alive,
            False,
            None,
            body,
            length,
            raw if wire_ok else b"",
        )
        return head, inp, end + 4

    def _on_head(self, buf: bytes | bytearray, start: int, end: int) -> tuple[Event, _Input]:
        headers = _parse_fields(buf, start + self._line_end + 2, end - 2, 400)
        method, target, version, host = self._request_line
        return self._head(method, target, version, host, headers)

    def _head(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        host: str | None,
        headers: list[tuple[bytes, bytes]],
    ) -> tuple[Event, _Input]:
        hosts: list[bytes] = []
        lengths: list[bytes] = []
        codings: list[bytes] = []
        connection: list[bytes] = []
        expect: list[bytes] = []
        upgrade: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname in _REQUEST_FIELDS:
                if lname == b"host":
                    hosts.append(value)
                elif lname == b"content-length":
                    lengths.append(value)
                elif lname == b"transfer-encoding":
                    codings.append(value)
                elif lname == b"connection":
                    connection.append(value)
                elif lname == b"expect":
                    expect.append(value)
                else:
                    upgrade.append(value)
        http11 = version == b"1.1"
        if len(hosts) > 1:
            raise RemoteProtocolError(400, "more than one Host field")
        if hosts:
            raw = hosts[0]
            cached, field_host = self._host_cache
            if raw != cached:
                try:
                    field_host = _parse_authority(raw)
                except ValueError:
                    raise RemoteProtocolError(400, f"invalid Host {raw!r}") from None
                self._host_cache = (raw, field_host)
            if host is None:
                host = field_host
            elif field_host != host:
                raise RemoteProtocolError(400, "Host does not match the request target")
        elif http11:
            raise RemoteProtocolError(400, "no Host field in an HTTP/1.1 request")
        length = _content_length(lengths, 400) if lengths else None
        if codings:
            if lengths:
                raise RemoteProtocolError(400, "Content-Length with Transfer-Encoding")
            if not http11:
                raise RemoteProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if not _chunked_last(codings, 400):
                raise RemoteProtocolError(400, "final transfer coding is not chunked")
        if connection:
            options = _options(connection)
            if http11:
                keep_alive = b"close" not in options
            else:
                keep_alive = b"keep-alive" in options and b"close" not in options
        else:
            options = []
            keep_alive = http11
        expect_continue = False
        if expect and http11:
            for item in _tokens(expect):
                if item.lower() != b"100-continue":
                    raise RemoteProtocolError(417, f"unsupported expectation {item!r}")
                expect_continue = True
        upgrade_to = None
        if upgrade and http11 and b"upgrade" in options:
            upgrade_to = b", ".join(upgrade)
        self._keep_alive = keep_alive
        self._upgrade = upgrade_to is not None
        if codings:
            kind, inp = _BK_CHUNKED, _IN_HEAD_CHUNKED
        elif length is not None:
            kind, inp = _BK_LENGTH, _IN_HEAD_LENGTH if length else _IN_HEAD_NO_BODY
            self._remaining = length
        else:
            kind, inp = _BK_NONE, _IN_HEAD_NO_BODY
        head = RequestHead(
            method,
            target,
            version,
            headers,
            host,
            keep_alive,
            expect_continue,
            upgrade_to,
            kind,
            length,
        )
        return head, inp


# -- the backend side -----------------------------------------------------------------


class ResponseParser(_Parser):
    """Parses the responses of one backend connection, in the h11 style, without I/O.

    Call :meth:`expect_response` for every request sent on the connection, in order,
    so the parser knows which responses have no body (HEAD) and which may switch
    protocols. Feed :meth:`receive_data` and :meth:`receive_eof`. For each response
    you get zero or more interim :class:`ResponseHead` (1xx), then a final
    :class:`ResponseHead`, :class:`BodyChunk` events and a :class:`ResponseEnd` -
    except after a 101, when :attr:`state` is :attr:`State.SWITCHED` and
    :attr:`trailing_data` holds the first bytes of the new protocol.

    Every :class:`RemoteProtocolError` has status 502: never reuse the connection.
    """

    __slots__ = ("_expected", "_status_line")

    _LINE_STATUS = 502
    _SIZE_STATUS = 502
    _BAD_STATUS = 502
    _END: Event = _RESPONSE_END
    _HEAD_RE = _RESPONSE_HEAD_RE

    def __init__(self, limits: HttpLimits | None = None) -> None:
        """Create a parser for one backend connection.

        Args:
            limits: Size limits; the defaults of :class:`HttpLimits` if ``None``.
        """
        super().__init__(limits)
        self._expected: deque[tuple[bytes, bool]] = deque()
        self._status_line: tuple[bytes, int, bytes] = (b"", 0, b"")

    def expect_response(self, method: bytes, upgrade: bool = False) -> None:
        """Announce a request sent on this connection (call once per request, in order).

        Args:
            method: The request's method (``b"HEAD"`` responses have no body).
            upgrade: Whether it was an upgrade request (only then is 101 allowed).

        Raises:
            LocalProtocolError: ``CONNECT`` (not supported), or the connection is
                switched, closed or broken.
        """
        if method == b"CONNECT":
            raise LocalProtocolError("CONNECT is not supported")
        if self._state in (_ST_SWITCHED, _ST_CLOSED, _ST_ERROR, _ST_MUST_CLOSE):
            raise LocalProtocolError(f"no response can come in state {self._state.name}")
        self._expected.append((method, upgrade))

    @property
    def pending(self) -> int:
        """Requests announced whose final response has not begun yet."""
        return len(self._expected)

    @property
    def idle(self) -> bool:
        """Whether every announced request has its whole response (``pending == 0``)
        and no response has begun (:attr:`state` is :attr:`State.HEAD`)."""
        return not self._expected and self._state is _ST_HEAD

    @property
    def trailing_data(self) -> bytes:
        """After a 101: bytes of the new protocol that came with the response head."""
        return bytes(self._buf) if self._state is _ST_SWITCHED else b""

    def _at_boundary(self) -> bool:
        return not self._expected

    def _head_start(self, buf: bytes | bytearray, pos: int) -> int:
        if pos < len(buf) and not self._expected:
            raise RemoteProtocolError(502, "response bytes without a request")
        return pos

    def _truncated(self, state: State) -> RemoteProtocolError:
        if state is _ST_HEAD and not self._buf:
            return RemoteProtocolError(502, "backend closed the connection without responding")
        return super()._truncated(state)

    def _check_start_line(self, buf: bytes | bytearray, start: int, end: int) -> None:
        m = _STATUS_LINE_RE.fullmatch(buf, start, end)
        if m is None:
            raise RemoteProtocolError(502, "malformed status line")
        version, code, reason = m.groups()
        if version != b"1.1" and version != b"1.0":
            raise RemoteProtocolError(502, "unsupported HTTP version in status line")
        status = int(code)
        if not 100 <= status <= 599:
            raise RemoteProtocolError(502, f"invalid status code {status}")
        self._status_line = (version, status, reason or b"")

    def _fast_head(self, buf: bytes | bytearray, m: re.Match[bytes]) -> tuple[Event, _Input] | None:
        # As RequestParser._fast_head: a final response with the usual fields (at
        # most one valid Content-Length or "Transfer-Encoding: chunked", one
        # Connection); anything else is left to _head.
        start, end = m.span(4)
        limits = self._limits
        if start - 2 - m.start() > limits.max_line:
            return None
        if not self._expected:
            return None  # _head_start refuses it
        version, code, reason = m.group(1, 2, 3)
        status = int(code)
        if status < 200:
            return None
        headers: list[tuple[bytes, bytes]] = _FIELD_PAIR_RE.findall(buf, start, end)
        if len(headers) > limits.max_headers:  # (one pair per line of a matched section)
            return None
        if buf.find(b" \r\n", start, end) >= 0 or buf.find(b"\t\r\n", start, end) >= 0:
            headers = [(n, v.rstrip(b" \t")) for n, v in headers]
        length = connection = None
        chunked = False
        for name, value in headers:
            lname = name.lower()
            if lname in _RESPONSE_FIELDS:
                if (
                    lname == b"content-length"
                    and length is None
                    and not chunked
                    and 0 < len(value) <= 18
                    and value.isdigit()
                ):
                    length = int(value)
                elif (
                    lname == b"transfer-encoding"
                    and value == b"chunked"
                    and not chunked
                    and length is None
                ):
                    chunked = True
                elif lname == b"connection" and connection is None:
                    connection = value
                else:
                    return None
        http11 = version == b"1.1"
        if connection is None:
            keep_alive = http11
        elif connection.find(b",") < 0:  # one option (the value has no OWS around it)
            option = connection.lower()
            keep_alive = option != b"close" if http11 else option == b"keep-alive"
        else:
            options = _options([connection])
            if http11:
                keep_alive = b"close" not in options
            else:
                keep_alive = b"keep-alive" in options and b"close" not in options
        if chunked and not http11:
            return None
        method = self._expected.popleft()[0]
        if method == b"HEAD" or status == 204 or status == 304:
            kind, inp, length = _BK_NONE, _IN_HEAD_NO_BODY, None
        elif chunked:
            kind, inp = _BK_CHUNKED, _IN_HEAD_CHUNKED
        elif length is not None:
            kind, inp = _BK_LENGTH, _IN_HEAD_LENGTH if length else _IN_HEAD_NO_BODY
            self._remaining = length
        else:
            kind, inp = _BK_UNTIL_CLOSE, _IN_HEAD_UNTIL_CLOSE
            keep_alive = False
        self._keep_alive = keep_alive
        head = ResponseHead(status, reason or b"", version, headers, keep_alive, kind, length)
        return head, inp

    def receive_whole(self, data: bytes, close: bool) -> tuple[int, bool, bytes] | None:
        """Take a whole final response of the usual shape, ready to send to the client.

        The proxy's shortcut for the common read: ``data`` is exactly one final
        response (status 200..599, a head as :func:`encode_response_head` writes it,
        Content-Length or no body), arriving while nothing else is buffered. Its head
        goes out as received, without the hop-by-hop field lines and with the proxy's
        Connection line; the bytes are those of :func:`encode_response_head` followed
        by the body, and the parser moves as :meth:`receive_data` would.

        Args:
            data: Bytes just read from the backend.
            close: As for :func:`encode_response_head`.

        Returns:
            ``(status, keep_alive, bytes for the client)``; ``None`` (nothing
            consumed, nothing changed) when anything is off the usual shape: feed
            the same bytes to :meth:`receive_data` then.
        """
        if (
            self._state is not _ST_HEAD
            or self._buf
            or not self._expected
            or type(data) is not bytes
        ):
            return None
        limits = self._limits
        if len(data) <= _PARTITION_MAX:
            head, sep, _rest = data.partition(b"\r\n\r\n")
            end = len(head) if sep else -1
        else:
            end = data.find(b"\r\n\r\n")
            head = data[:end]
        if end < 12 or end + 4 > limits.max_head:
            return None
        lines = head.split(b"\r\n")
        # (each line of field content only: so no CR or LF but the CRLFs that split them)
        line = lines[0]
        if len(line) > limits.max_line or len(lines) - 1 > limits.max_headers:
            return None
        code = _status_lines.get(line)
        if code is None:
            code = _status_line_code(line)
            _remember_line(_status_lines, line, code)
        if code < _LINE_STATUS:
            return None
        code -= _LINE_STATUS
        http11 = (code & 1) == 1
        status = code >> 1
        # The field lines: where the Connection line is (to drop it), the length.
        length = -1
        connection = 0
        cut = cut_end = 0
        at = len(line) + 2
        for i in range(1, len(lines)):
            line = lines[i]
            code = _response_lines.get(line)
            if code is None:
                code = _response_line_code(line)
                _remember_line(_response_lines, line, code)
            if code >= _LINE_LENGTH:
                if length >= 0:
                    return None
                length = code - _LINE_LENGTH
            elif code > _LINE_PLAIN:
                if connection:
                    return None
                connection = code
                cut = at
                cut_end = at + len(line) + 2
            elif code < _LINE_PLAIN:
                return None
            at += len(line) + 2
        pos = end + 4
        if not connection:
            keep_alive = http11
        else:
            keep_alive = connection != _LINE_CLOSE if http11 else connection == _LINE_KEEP_ALIVE
        method = self._expected[0][0]
        if method == b"HEAD" or status == 204 or status == 304:
            if pos != len(data):
                return None
        elif len(data) - pos != length:  # (-1: no length, until close)
            return None
        self._expected.popleft()
        self._keep_alive = keep_alive
        self._state = _AFTER_KEEP_ALIVE if keep_alive else _AFTER_CLOSE
        # The head as received, without its Connection line, with the proxy's own
        # Connection line before the empty line.
        if close:
            tail = _CLOSE_TAIL
        elif not http11:
            tail = _KEEP_ALIVE_TAIL
        elif not connection:
            return status, keep_alive, data
        else:
            return status, keep_alive, data[:cut] + data[cut_end:]
        if not connection:
            return status, keep_alive, b"".join((data[: pos - 2], tail, data[pos:]))
        out = b"".join((data[:cut], data[cut_end : pos - 2], tail, data[pos:]))
        return status, keep_alive, out

    def _on_head(self, buf: bytes | bytearray, start: int, end: int) -> tuple[Event, _Input]:
        headers = _parse_fields(buf, start + self._line_end + 2, end - 2, 502)
        version, status, reason = self._status_line
        return self._head(version, status, reason, headers)

    def _head(
        self, version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[Event, _Input]:
        method, upgrade_request = self._expected[0]
        lengths: list[bytes] = []
        codings: list[bytes] = []
        connection: list[bytes] = []
        upgrade: list[bytes] = []
        for name, value in headers:
            lname = name.lower()
            if lname in _RESPONSE_FIELDS:
                if lname == b"content-length":
                    lengths.append(value)
                elif lname == b"transfer-encoding":
                    codings.append(value)
                elif lname == b"connection":
                    connection.append(value)
                else:
                    upgrade.append(value)
        http11 = version == b"1.1"
        length = _content_length(lengths, 502) if lengths else None
        chunked = False
        if codings:
            if lengths:
                raise RemoteProtocolError(502, "Content-Length with Transfer-Encoding")
            if not http11:
                raise RemoteProtocolError(502, "Transfer-Encoding in an HTTP/1.0 response")
            chunked = _chunked_last(codings, 502)
        if connection:
            options = _options(connection)
            if http11:
                keep_alive = b"close" not in options
            else:
                keep_alive = b"keep-alive" in options and b"close" not in options
        else:
            keep_alive = http11
        if status < 200:
            if status == 101:
                if not upgrade_request or not upgrade:
                    raise RemoteProtocolError(502, "101 without an upgrade to switch to")
                self._expected.popleft()
                inp = _IN_HEAD_SWITCH
            else:
                inp = _IN_HEAD_INTERIM
            kind = _BK_NONE
            length = None
        else:
            self._expected.popleft()
            if method == b"HEAD" or status in (204, 304):
                kind, inp, length = _BK_NONE, _IN_HEAD_NO_BODY, None
            elif codings and chunked:
                kind, inp, length = _BK_CHUNKED, _IN_HEAD_CHUNKED, None
            elif length is not None:
                kind = _BK_LENGTH
                inp = _IN_HEAD_LENGTH if length else _IN_HEAD_NO_BODY
                self._remaining = length
            else:
                kind, inp, length = _BK_UNTIL_CLOSE, _IN_HEAD_UNTIL_CLOSE, None
                keep_alive = False
        self._keep_alive = keep_alive
        head = ResponseHead(status, reason, version, headers, keep_alive, kind, length)
        return head, inp


# -- encoding -------------------------------------------------------------------------


def _check_field(name: bytes, value: bytes) -> None:
    if _TOKEN_RE.fullmatch(name) is None:
        raise LocalProtocolError(f"invalid field name {name!r}")
    if _FIELD_VALUE_RE.fullmatch(value) is None:
        raise LocalProtocolError(f"invalid field value {value!r} for {name!r}")


_NOT_NAMES: Final = frozenset({b"close", b"keep-alive", b"upgrade"})


def _hop_by_hop(
    headers: list[tuple[bytes, bytes]], keep: frozenset[bytes]
) -> tuple[frozenset[bytes], list[bytes]]:
    """The lowercased names to drop for a hop, and the Connection options (as sent)
    that do not name a field in ``keep``."""
    options = _tokens([v for n, v in headers if n.lower() == b"connection"])
    kept = [o for o in options if o.lower() not in keep]
    named = {o.lower() for o in kept} - _NOT_NAMES
    return _HOP_BY_HOP | named, kept


def _names_fields(connection: list[bytes], keep: frozenset[bytes]) -> bool:
    """Whether these Connection values name a field to drop (one not in ``keep``)."""
    if len(connection) == 1 and connection[0].lower() in _NOT_NAMES:
        return False  # the usual "keep-alive" or "close"
    for option in _tokens(connection):
        option = option.lower()
        if option not in keep and option not in _NOT_NAMES:
            return True
    return False


class AddedFields:
    """Fields for :func:`encode_head` to add, checked and prepared once.

    A proxy adds the same fields to every request of a connection (the client's
    address and port): pass one of these instead of the list, and the list is not
    looked at again per request.

    Raises:
        LocalProtocolError: A field is not a valid field line, or names Host,
            Content-Length, Transfer-Encoding or a hop-by-hop field.
    """

    __slots__ = ("fields", "keep", "names", "skip", "tail", "wire_ok", "wire_tail")

    def __init__(self, add_headers: tuple[tuple[bytes, bytes], ...]) -> None:
        for name, value in add_headers:
            _check_field(name, value)
        self.names = frozenset(name.lower() for name, _ in add_headers)
        if self.names & (_HOP_BY_HOP | _PROTECTED | {b"upgrade"}):
            raise LocalProtocolError("add_headers may not name framing or hop-by-hop fields")
        self.fields = add_headers
        self.keep = _PROTECTED | self.names  # Connection options that cannot drop these
        # Names the copy loop must look at, when no Connection field names others.
        self.skip = _HOP_BY_HOP_UPGRADE | self.names
        # The added field lines and the empty line, when the client sent none of them.
        self.tail = b"".join(n + b": " + v + b"\r\n" for n, v in add_headers) + b"\r\n"
        # A head's wire (RequestHead.wire) holds none of these names: it is written
        # back as received, then the CRLF of its last line and the tail.
        self.wire_ok = self.names <= _WIRE_REPLACED
        self.wire_tail = b"\r\n" + self.tail


# add_headers -> AddedFields. A proxy passes the same few lists (its address, the client's
# address and port) again and again; the bound keeps a flood of distinct clients from
# growing it.
_ADDED_CACHE: Final[dict[tuple[tuple[bytes, bytes], ...], AddedFields]] = {}
_ADDED_CACHE_MAX: Final = 1024


def _added(add_headers: Sequence[tuple[bytes, bytes]] | AddedFields) -> AddedFields:
    if isinstance(add_headers, AddedFields):
        return add_headers
    key = tuple(add_headers)
    try:
        added = _ADDED_CACHE.get(key)
    except TypeError:  # unhashable items: nothing to reuse
        return AddedFields(tuple((n, v) for n, v in add_headers))
    if added is None:
        added = AddedFields(key)
        if len(_ADDED_CACHE) >= _ADDED_CACHE_MAX:
            _ADDED_CACHE.clear()
        _ADDED_CACHE[key] = added
    return added


def encode_head(
    head: RequestHead, add_headers: Sequence[tuple[bytes, bytes]] | AddedFields = ()
) -> bytes:
    """Write the request head to send to a backend.

    The request line and field lines are written in the client's order and casing
    (values without surrounding whitespace). Hop-by-hop fields are handled as the
    module docstring says. Each field in ``add_headers`` replaces the client's
    fields of that name and is appended at the end; for ``X-Forwarded-For``,
    ``Forwarded`` and ``Via`` the client's values are kept in front, joined by
    ``", "`` (``X-Forwarded-For: client-sent, 10.0.0.1``).

    Args:
        head: A head from :class:`RequestParser`.
        add_headers: Fields to add, e.g. ``[(b"x-forwarded-for", b"10.0.0.1"),
            (b"x-client-port", b"51000")]``, or the same as :class:`AddedFields`.

    Returns:
        The head bytes, ending with the empty line; the body follows unchanged.

    Raises:
        LocalProtocolError: A field in ``add_headers`` is not a valid field line, or
            names Host, Content-Length, Transfer-Encoding or a hop-by-hop field.
    """
    added = _added(add_headers)
    wire = head.wire
    if wire and added.wire_ok:
        return wire + added.wire_tail
    out = [head.method, b" ", head.target, b" HTTP/", head.version, b"\r\n"]
    if head.upgrade is None:
        # One pass for the common case: no Connection option names a field to drop,
        # and the client sent none of the added fields. Anything else starts over.
        skip = added.skip
        connection: list[bytes] = []
        replaced = False
        for name, value in head.headers:
            lname = name.lower()
            if lname not in skip:
                out += (name, b": ", value, b"\r\n")
            elif lname == b"connection":
                if not connection and head.version == b"1.0" and head.keep_alive:
                    out += (name, b": keep-alive\r\n")
                connection.append(value)
            elif lname in added.names:
                replaced = True
        if not replaced and not (connection and _names_fields(connection, added.keep)):
            out.append(added.tail)
            return b"".join(out)
        del out[6:]
    drop, options = _hop_by_hop(head.headers, added.keep)
    upgrading = head.upgrade is not None
    # An upgrade keeps the fields its Connection names (e.g. HTTP2-Settings) and Upgrade.
    drop = drop - {o.lower() for o in options} if upgrading else drop | {b"upgrade"}
    if upgrading and options:
        connection_value = b", ".join(options)
    elif head.version == b"1.0" and head.keep_alive:
        connection_value = b"keep-alive"
    else:
        connection_value = b""
    names = added.names
    previous: dict[bytes, list[bytes]] = {}
    for name, value in head.headers:
        lname = name.lower()
        if lname in names:
            previous.setdefault(lname, []).append(value)
        elif lname == b"connection":
            if connection_value:
                out += (name, b": ", connection_value, b"\r\n")
                connection_value = b""
        elif lname not in drop:
            out += (name, b": ", value, b"\r\n")
    for name, value in added.fields:
        lname = name.lower()
        if lname in _LIST_VALUED and lname in previous:
            value = b", ".join([*previous[lname], value])
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def encode_response_head(head: ResponseHead, close: bool = False) -> bytes:
    """Write a backend's response head to send to the client.

    Status line and field lines are kept in order and casing. For a 101 the fields
    go as they are (``Connection: upgrade`` is the point). Otherwise the backend's
    hop-by-hop fields are dropped as in :func:`encode_head` and the proxy's own
    intent is written: ``Connection: close`` if ``close``, or ``Connection:
    keep-alive`` for an HTTP/1.0 response on a connection that stays open.

    Args:
        head: A head from :class:`ResponseParser`.
        close: Whether the proxy closes the client connection after this response
            (ignored for interim and 101 heads).

    Returns:
        The head bytes, ending with the empty line.
    """
    status = head.status
    out = [b"HTTP/%s %d %s\r\n" % (head.version, status, head.reason)]
    if status < 200:
        drop = _NOTHING if status == 101 else _HOP_BY_HOP
        for name, value in head.headers:
            if name.lower() not in drop:
                out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")
        return b"".join(out)
    # 426 Upgrade Required must say which protocol.
    drop = _HOP_BY_HOP if status == 426 else _HOP_BY_HOP_UPGRADE
    connection: list[bytes] = []
    for name, value in head.headers:
        lname = name.lower()
        if lname not in drop:
            out += (name, b": ", value, b"\r\n")
        elif lname == b"connection":
            connection.append(value)
    if connection and _names_fields(connection, _PROTECTED):
        # Connection names fields to drop too (rare): start over without them.
        drop = drop | _hop_by_hop(head.headers, _PROTECTED)[0]
        del out[1:]
        for name, value in head.headers:
            if name.lower() not in drop:
                out += (name, b": ", value, b"\r\n")
    if close:
        out.append(b"Connection: close\r\n\r\n")
    elif head.version == b"1.0":
        out.append(b"Connection: keep-alive\r\n\r\n")
    else:
        out.append(b"\r\n")
    return b"".join(out)
