"""Sans-IO HTTP/2 rules for the ``h2`` tcp-lb mode, around python-hyper's ``h2``.

Owns: the two kinds of HTTP/2 connection a proxy holds — :class:`ClientFacing` (vproxy
is the server, the peer a client) and :class:`BackendFacing` (vproxy is the client of
an h2c backend) — their settings and windows, and the defences a proxy needs on top
of ``h2`` (which implements the protocol, not resource policy):

* CONTINUATION floods: ``h2`` parks every frame of a header block until END_HEADERS
  (up to 64 frames of up to the frame size each). :class:`FrameScanner` reads the
  9-byte frame headers *before* ``h2`` sees the bytes and refuses a block with too many
  frames or too many bytes.
* HPACK bombs: the decoder stops at ``max_header_list_size`` decoded bytes.
* Rapid reset (CVE-2023-44487): resets by the client of streams younger than
  ``rapid_reset_age`` are paid from a token bucket; an empty bucket, or more than half
  of the streams reset young once ``rapid_reset_min_streams`` were opened, is a flood.
* Control-frame floods (PING, SETTINGS, PRIORITY, RST_STREAM, empty DATA): paid from
  another token bucket; and while the I/O glue reports its output blocked
  (:attr:`ClientFacing.output_blocked`), answers queued for frames that demand one
  (PING, SETTINGS) are counted and capped.

A flood ends the connection with GOAWAY ENHANCE_YOUR_CALM; any other violation with
the code ``h2`` chose. Either way :meth:`H2Side.receive_data` raises
:class:`RemoteProtocolError`, whose ``wire`` holds what to write before closing.

Must not: do I/O, import asyncio, socket, selectors or time (time comes in as the
``now`` argument), choose backends, or buffer stream data (the glue holds at most the
windows this module grants).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    Event,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
)
from h2.exceptions import ProtocolError as _H2ProtocolError
from h2.settings import SettingCodes, Settings

__all__ = [
    "PREFACE",
    "BackendFacing",
    "ClientFacing",
    "FrameScanner",
    "H2Error",
    "H2Limits",
    "LocalProtocolError",
    "RemoteProtocolError",
    "TokenBucket",
    "authority_hint",
    "forward_headers",
    "local_response",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Header = tuple[bytes, bytes]

# Frame types (RFC 9113 §6) the scanner looks at.
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING = 0, 1, 2, 3, 4, 5, 6
_GOAWAY = 7
_CONTINUATION = 9
_FLAG_ACK = 0x1
_FLAG_END_STREAM = 0x1
_FLAG_END_HEADERS = 0x4
_HEAD = struct.Struct(">HBBBL")  # 24-bit length as 16+8, type, flags, stream id


# -- errors -----------------------------------------------------------------------------


class H2Error(Exception):
    """Base of this layer's errors: the connection cannot go on.

    Attributes:
        error_code: The HTTP/2 error code of the GOAWAY.
        wire: Bytes to write to the peer before closing (ends with the GOAWAY).
    """

    def __init__(self, message: str, error_code: ErrorCodes, wire: bytes = b"") -> None:
        super().__init__(message)
        self.error_code = error_code
        self.wire = wire


class RemoteProtocolError(H2Error):
    """The peer broke the protocol or flooded the connection."""


class LocalProtocolError(H2Error):
    """The caller used this layer wrongly."""


# -- limits ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Resource limits of one HTTP/2 connection (all counts, bytes and seconds).

    Attributes:
        max_concurrent_streams: Streams the peer may have open (advertised).
        max_header_list_size: Decoded bytes of one header list (advertised; HPACK
            decoding stops past it).
        max_headers: Fields in one header list (checked by the glue with
            :meth:`ClientFacing.too_many_headers`).
        stream_window: Initial receive window of each stream (advertised).
        connection_window: Receive window of the whole connection.
        max_continuation_frames: CONTINUATION frames in one header block.
        rapid_reset_age: A reset of a stream younger than this is "rapid".
        rapid_reset_burst: Rapid resets allowed in a burst (token bucket size).
        rapid_reset_rate: Rapid resets allowed per second in the long run.
        rapid_reset_min_streams: From this many streams on, more than half of them
            reset rapidly is a flood whatever the bucket says.
        control_burst: Cheap frames (PING, SETTINGS, PRIORITY, RST_STREAM, empty
            DATA) allowed in a burst.
        control_rate: Cheap frames allowed per second in the long run.
        max_queued_answers: PING/SETTINGS answers queued while output is blocked.
    """

    max_concurrent_streams: int = 100
    max_header_list_size: int = 32 * 1024
    max_headers: int = 100
    stream_window: int = 256 * 1024
    connection_window: int = 1024 * 1024
    max_continuation_frames: int = 16
    rapid_reset_age: float = 1.0
    rapid_reset_burst: int = 200
    rapid_reset_rate: float = 100.0
    rapid_reset_min_streams: int = 400
    control_burst: int = 2000
    control_rate: float = 1000.0
    max_queued_answers: int = 1000

    @property
    def max_header_block_size(self) -> int:
        """Encoded bytes of one header block: HPACK never needs much more than the
        decoded size (literal fields cost a few bytes of framing each)."""
        return self.max_header_list_size + 16 * self.max_headers + 1024


# -- building blocks ---------------------------------------------------------------------


class TokenBucket:
    """A token bucket with an injected clock: ``take(now)`` pays one token."""

    __slots__ = ("_last", "_rate", "_size", "_tokens")

    def __init__(self, size: int, rate: float) -> None:
        self._size = float(size)
        self._rate = rate
        self._tokens = float(size)
        self._last: float | None = None

    def take(self, now: float, n: int = 1) -> bool:
        """Pay ``n`` tokens at time ``now``; ``False`` when the bucket ran dry."""
        last = self._last
        if last is not None and now > last:
            self._tokens = min(self._size, self._tokens + (now - last) * self._rate)
        self._last = now
        self._tokens -= n
        return self._tokens >= 0


class FrameScanner:
    """Reads frame headers ahead of ``h2`` to refuse floods before they are buffered.

    Only the 9-byte headers are looked at; payloads are skipped by length, so the
    cost is per frame, not per byte. Counts CONTINUATION frames and encoded bytes per
    header block, and cheap frames (see :class:`H2Limits`) against a token bucket.
    """

    __slots__ = (
        "_block_bytes",
        "_block_frames",
        "_cheap",
        "_head",
        "_in_block",
        "_limits",
        "_preface_left",
        "_skip",
    )

    def __init__(self, limits: H2Limits, *, server: bool) -> None:
        self._limits = limits
        self._preface_left = len(PREFACE) if server else 0
        self._skip = 0  # payload bytes of the current frame not seen yet
        self._head = b""  # a frame header cut by a read
        self._in_block = False
        self._block_frames = 0
        self._block_bytes = 0
        self._cheap = TokenBucket(limits.control_burst, limits.control_rate)

    def feed(self, data: bytes | memoryview, now: float) -> None:
        """Look at the next received bytes.

        Raises:
            RemoteProtocolError: A flood (error code ENHANCE_YOUR_CALM, ``wire``
                empty: the caller adds the GOAWAY).
        """
        view = memoryview(data)
        pos = 0
        end = len(view)
        if self._preface_left:
            n = min(self._preface_left, end)
            self._preface_left -= n
            pos = n
        while pos < end:
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            if self._head:
                need = 9 - len(self._head)
                self._head += bytes(view[pos : pos + need])
                pos += min(need, end - pos)
                if len(self._head) < 9:
                    return
                hi, lo, ftype, flags, _ = _HEAD.unpack(self._head)
                self._head = b""
                self._frame((hi << 8) | lo, ftype, flags, now)
                continue
            if end - pos < 9:
                self._head = bytes(view[pos:end])
                return
            hi, lo, ftype, flags, _ = _HEAD.unpack_from(view, pos)
            self._frame((hi << 8) | lo, ftype, flags, now)
            pos += 9

    def _frame(self, length: int, ftype: int, flags: int, now: float) -> None:
        self._skip = length
        limits = self._limits
        if ftype == _CONTINUATION:
            self._block_frames += 1
            self._block_bytes += length
            if self._block_frames > limits.max_continuation_frames:
                raise RemoteProtocolError(
                    f"more than {limits.max_continuation_frames} CONTINUATION frames"
                    " in one header block",
                    ErrorCodes.ENHANCE_YOUR_CALM,
                )
            if self._block_bytes > limits.max_header_block_size:
                raise RemoteProtocolError(
                    f"header block over {limits.max_header_block_size} bytes",
                    ErrorCodes.ENHANCE_YOUR_CALM,
                )
            if flags & _FLAG_END_HEADERS:
                self._in_block = False
            return
        if ftype in (_HEADERS, _PUSH_PROMISE):
            self._in_block = not flags & _FLAG_END_HEADERS
            self._block_frames = 0
            self._block_bytes = length
            return
        if ftype in (_PING, _SETTINGS):
            cheap = not flags & _FLAG_ACK
        elif ftype == _DATA:
            cheap = length == 0 and not flags & _FLAG_END_STREAM
        else:
            cheap = ftype in (_PRIORITY, _RST_STREAM)
        if cheap and not self._cheap.take(now):
            raise RemoteProtocolError("control frame flood", ErrorCodes.ENHANCE_YOUR_CALM)


# -- the two sides -----------------------------------------------------------------------


class H2Side:
    """One HTTP/2 connection: ``h2`` plus the guards of this module.

    Send through :attr:`conn` (the ``h2`` connection); receive through
    :meth:`receive_data`; write what :meth:`data_to_send` returns.
    """

    __slots__ = ("conn", "limits", "scanner")

    def __init__(self, limits: H2Limits, *, server: bool) -> None:
        self.limits = limits
        # Outbound headers are ones ``h2`` validated inbound on the other side (plus
        # the forwarding fields built here): checking them again costs about a third
        # of the per-request CPU and finds nothing.
        config = H2Configuration(
            client_side=not server,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = H2Connection(config=config)
        self.conn.decoder.max_header_list_size = limits.max_header_list_size
        self.scanner = FrameScanner(limits, server=server)

    def initiate(self) -> None:
        """Queue the preface (client role) and our SETTINGS and window."""
        conn = self.conn
        conn.local_settings = _settings(self.limits, server=not conn.config.client_side)
        conn.initiate_connection()
        grow = self.limits.connection_window - conn.inbound_flow_control_window
        if grow > 0:
            conn.increment_flow_control_window(grow)

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now."""
        return self.conn.data_to_send()

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """Feed received bytes; return the ``h2`` events they complete.

        Raises:
            RemoteProtocolError: The peer broke the protocol or flooded; ``wire`` ends
                with the GOAWAY to send before closing.
        """
        try:
            self.scanner.feed(data, now)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        try:
            events = self.conn.receive_data(data)
        except _H2ProtocolError as exc:
            code = _error_code(exc)
            wire = self._wire() or self.goaway(code)  # a bad preface queues no GOAWAY
            raise RemoteProtocolError(str(exc) or type(exc).__name__, code, wire) from exc
        return events

    def goaway(self, error_code: ErrorCodes = ErrorCodes.NO_ERROR, debug: bytes = b"") -> bytes:
        """Queue a GOAWAY and return everything to write before closing."""
        try:
            self.conn.close_connection(error_code=error_code, additional_data=debug or None)
        except _H2ProtocolError:
            pass  # already closed: nothing more to say
        return self._wire()

    def _fail(self, exc: H2Error) -> RemoteProtocolError:
        wire = self.goaway(exc.error_code, str(exc).encode()[:64])
        return RemoteProtocolError(str(exc), exc.error_code, wire)

    def _wire(self) -> bytes:
        return self.conn.data_to_send()


class ClientFacing(H2Side):
    """The connection to a client: vproxy is the HTTP/2 server.

    Attributes:
        output_blocked: Set by the I/O glue while its transport is over its
            high-water mark; answers queued meanwhile are capped.
        streams_opened: Streams the client opened so far.
        rapid_resets: Resets of young streams so far.
    """

    __slots__ = (
        "_answers",
        "_opened",
        "_resets",
        "output_blocked",
        "rapid_resets",
        "streams_opened",
    )

    def __init__(self, limits: H2Limits) -> None:
        super().__init__(limits, server=True)
        self.output_blocked = False
        self._answers = 0
        self._opened: dict[int, float] = {}
        self._resets = TokenBucket(limits.rapid_reset_burst, limits.rapid_reset_rate)
        self.streams_opened = 0
        self.rapid_resets = 0

    def unblocked(self) -> None:
        """The glue's output went below its low-water mark again."""
        self.output_blocked = False
        self._answers = 0

    def too_many_headers(self, headers: Sequence[Header]) -> bool:
        """True when a header list has more fields than ``max_headers``."""
        return len(headers) > self.limits.max_headers

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """Feed received bytes; return the ``h2`` events they complete.

        Raises:
            RemoteProtocolError: The client broke the protocol or flooded (rapid
                reset, CONTINUATION, control frames, HPACK size); ``wire`` ends with
                the GOAWAY.
        """
        events = super().receive_data(data, now)
        try:
            self._account(events, now)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        return events

    def _account(self, events: Iterable[Event], now: float) -> None:
        limits = self.limits
        opened = self._opened
        for ev in events:
            if isinstance(ev, RequestReceived):
                self.streams_opened += 1
                if ev.stream_id is not None:
                    opened[ev.stream_id] = now
            elif isinstance(ev, StreamReset):
                born = opened.pop(ev.stream_id, None) if ev.stream_id is not None else None
                if born is not None and now - born < limits.rapid_reset_age:
                    self.rapid_resets += 1
                    if not self._resets.take(now):
                        raise RemoteProtocolError("rapid reset flood", ErrorCodes.ENHANCE_YOUR_CALM)
                    if (
                        self.streams_opened >= limits.rapid_reset_min_streams
                        and self.rapid_resets * 2 > self.streams_opened
                    ):
                        raise RemoteProtocolError(
                            "most streams reset right after opening",
                            ErrorCodes.ENHANCE_YOUR_CALM,
                        )
            elif isinstance(ev, PingReceived | RemoteSettingsChanged) and self.output_blocked:
                self._answers += 1
                if self._answers > limits.max_queued_answers:
                    raise RemoteProtocolError(
                        "peer does not read the answers to its PING/SETTINGS",
                        ErrorCodes.ENHANCE_YOUR_CALM,
                    )
        if len(opened) > 4 * limits.max_concurrent_streams + 64:
            self._prune()

    def _prune(self) -> None:
        streams = self.conn.streams
        self._opened = {
            sid: t for sid, t in self._opened.items() if sid in streams and not streams[sid].closed
        }

    def stream_done(self, stream_id: int) -> None:
        """Forget a stream the glue finished with (its reset is no longer rapid)."""
        self._opened.pop(stream_id, None)


class BackendFacing(H2Side):
    """The connection to an h2c backend: vproxy is the HTTP/2 client.

    The backend is trusted more than a client, but its header blocks and cheap frames
    are capped the same way; push is disabled.

    A backend's GOAWAY is taken out of the byte stream here and reported as a
    :class:`~h2.events.ConnectionTerminated` event in its place: ``h2`` closes its
    state machine on a GOAWAY and would refuse the responses the backend still owes
    for streams up to the GOAWAY's last stream id (RFC 9113 §6.8 lets them complete;
    nginx says GOAWAY every ``keepalive_requests`` requests). Frames go to ``h2``
    whole, so a frame cut by a read waits here for its end.
    """

    __slots__ = ("_rest",)

    def __init__(self, limits: H2Limits) -> None:
        super().__init__(limits, server=False)
        self._rest = b""

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """Feed received bytes; return the events they complete (GOAWAY included).

        Raises:
            RemoteProtocolError: As :meth:`H2Side.receive_data`; also a GOAWAY
                shorter than its 8 fixed bytes.
        """
        buf = self._rest + bytes(data) if self._rest else bytes(data)
        events: list[Event] = []
        n = len(buf)
        start = pos = 0  # start: first byte not given to h2; pos: next frame
        while n - pos >= 9:
            end = pos + 9 + int.from_bytes(buf[pos : pos + 3], "big")
            if end > n:
                break
            if buf[pos + 3] == _GOAWAY:
                if pos > start:
                    events += super().receive_data(buf[start:pos], now)
                events.append(self._goaway_event(buf[pos + 9 : end]))
                start = end
            pos = end
        if pos > start:
            events += super().receive_data(buf[start:pos], now)
        self._rest = buf[pos:]
        return events

    def _goaway_event(self, payload: bytes) -> ConnectionTerminated:
        if len(payload) < 8:
            raise self._fail(
                RemoteProtocolError("GOAWAY shorter than 8 bytes", ErrorCodes.FRAME_SIZE_ERROR)
            )
        ev = ConnectionTerminated()
        ev.last_stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        try:
            ev.error_code = ErrorCodes(code)
        except ValueError:
            ev.error_code = code
        ev.additional_data = payload[8:] or None
        return ev


def _settings(limits: H2Limits, *, server: bool) -> Settings:
    return Settings(
        client=not server,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )


def _error_code(exc: _H2ProtocolError) -> ErrorCodes:
    code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
    return code if isinstance(code, ErrorCodes) else ErrorCodes.PROTOCOL_ERROR


# -- headers -----------------------------------------------------------------------------


def authority_hint(headers: Iterable[Header]) -> str | None:
    """The upstream hint of a request: ``:authority`` (else ``host``) without port.

    ``[::1]:8443`` gives ``::1``; a value that is not ASCII gives ``None``.
    """
    value: bytes | None = None
    for name, v in headers:
        if name == b":authority":
            value = v
            break
        if name == b"host" and value is None:
            value = v
    if not value:
        return None
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if "@" in text:
        text = text.rsplit("@", 1)[1]
    if text.startswith("["):
        host, sep, _ = text[1:].partition("]")
        return host if sep and host else None
    host = text.partition(":")[0]
    return host or None


def forward_headers(headers: Iterable[Header], client_ip: str, client_port: int) -> list[Header]:
    """The header list to send a backend for a client's request.

    ``x-forwarded-for`` gets the client's address appended (one field, the client's
    fields joined by ``", "``); ``x-client-port`` is replaced by the client's port.
    Field objects are passed through as they are, so fields the client marked
    never-indexed stay so.
    """
    out: list[Header] = []
    xff: list[bytes] = []
    for h in headers:
        name = h[0]
        if name == b"x-forwarded-for":
            xff.append(h[1])
        elif name != b"x-client-port":
            out.append(h)
    xff.append(client_ip.encode("ascii", "replace"))
    out.append((b"x-forwarded-for", b", ".join(xff)))
    out.append((b"x-client-port", str(client_port).encode()))
    return out


def local_response(status: int, text: str) -> tuple[list[Header], bytes]:
    """Headers and body of a response vproxy gives itself (502, 503, 431...)."""
    body = text.encode()
    return [
        (b":status", str(status).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"server", b"vproxy"),
    ], body
