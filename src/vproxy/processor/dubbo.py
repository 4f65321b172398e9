"""Sans-IO ``dubbo`` processor: Alibaba/Apache dubbo RPC frames, spread per request.

Owns the dubbo exchange framing (``ExchangeCodec``): a 16-byte header ::

    0-1   magic 0xdabb
    2     flag: 0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization id
    3     status (responses; 20 = OK)
    4-11  request id, big-endian
    12-15 body length, big-endian signed int32

then the body. A client's requests are spread over backend connections; on each
backend connection the request id is rewritten to one unique on that connection (a
connection carries the requests of many clients, whose ids may well collide), and the
response gets the client's id back before it is routed to that client. Responses are
delivered as they come: dubbo clients match them by id, not by order.

Must not: do I/O, import asyncio, socket, selectors or time, or deserialize bodies
(beyond reading the service name for the upstream hint, below).

Choices made here once:

* A heartbeat (two-way event request) is answered locally, on whichever side it came
  from: a response with the same id, the event flag, the same serialization, status 20,
  and the request's own body echoed (a heartbeat's body is the serialized ``null``, which
  is also what a heartbeat response carries). Heartbeats check the connection they
  travel on; forwarding one would test some other connection instead.
* Other events are connection-level notices and are not forwarded. From a backend, the
  readonly event (``"R"``, hessian2) becomes a :class:`~vproxy.processor.base.Draining`
  notice; event responses (answers to heartbeats this proxy never sends) are dropped.
* One-way requests (no 0x40) are forwarded with ``expects_response=False`` and nothing is
  remembered for them.
* A response whose id this connection never sent (or already answered) is dropped and
  counted in :attr:`DubboBackend.unmatched`, as dubbo's own client does with late
  responses; it is not worth killing a connection other clients share.
* Requests from a backend (dubbo "callbacks") and non-event responses from a client are
  not supported: :class:`~vproxy.processor.base.RemoteProtocolError`. So is anything that
  does not start with the magic (e.g. dubbo's telnet console).
* The upstream hint is the service path (the interface name, the second string of a
  hessian2 request body) when the body is hessian2 (serialization id 2) and the path is
  printable ASCII of at most 255 characters; otherwise there is no hint.
* Body lengths follow :class:`~vproxy.processor.base.Limits` like framed-int32: negative
  or above the limit is refused from the length bytes, before the body is read.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from vproxy.processor.base import (
    BackendContext,
    BackendEvent,
    ConnectionInfo,
    Draining,
    Frame,
    FrontendContext,
    Limits,
    LocalProtocolError,
    PendingRequest,
    Processor,
    ReceiveBuffer,
    RemoteProtocolError,
    Response,
)

__all__ = [
    "FLAG_EVENT",
    "FLAG_REQUEST",
    "FLAG_TWO_WAY",
    "HEADER_SIZE",
    "HESSIAN2",
    "MAGIC",
    "NAME",
    "SERIALIZATION_MASK",
    "STATUS_OK",
    "DubboBackend",
    "DubboFrontend",
    "DubboProcessor",
    "Header",
    "encode_message",
    "heartbeat_reply",
    "read_message",
    "service_name",
]

NAME: Final = "dubbo"
HEADER_SIZE: Final = 16
MAGIC: Final = b"\xda\xbb"
FLAG_REQUEST: Final = 0x80
FLAG_TWO_WAY: Final = 0x40
FLAG_EVENT: Final = 0x20
SERIALIZATION_MASK: Final = 0x1F
STATUS_OK: Final = 20
HESSIAN2: Final = 2
"""Serialization id of hessian2, dubbo 2.x's default."""

_ID_MASK = 2**64 - 1
_MAGIC_NUMBER = 0xDABB
_HEADER = struct.Struct(">HBBQi")  # magic, flag, status, request id, body length
_MAX_HINT = 255


class Header(NamedTuple):
    """A decoded dubbo header (a named tuple: one is made per message).

    Attributes:
        flag: The flag byte (request, two-way, event bits and serialization id).
        status: The status byte (meaningful in responses).
        request_id: The request id, as an unsigned 64-bit number.
        body_length: Bytes of body after the header.
    """

    flag: int
    status: int
    request_id: int
    body_length: int

    @property
    def is_request(self) -> bool:
        """Whether the request bit (0x80) is set."""
        return bool(self.flag & FLAG_REQUEST)

    @property
    def two_way(self) -> bool:
        """Whether the two-way bit (0x40) is set: a response is expected."""
        return bool(self.flag & FLAG_TWO_WAY)

    @property
    def is_event(self) -> bool:
        """Whether the event bit (0x20) is set (heartbeats, readonly notices)."""
        return bool(self.flag & FLAG_EVENT)

    @property
    def serialization(self) -> int:
        """The serialization id (low 5 bits of the flag)."""
        return self.flag & SERIALIZATION_MASK

    @classmethod
    def parse(cls, data: bytes) -> Header:
        """Decode the first 16 bytes of ``data``.

        Raises:
            RemoteProtocolError: Bad magic, a negative body length, or too few bytes.
        """
        if len(data) < HEADER_SIZE:
            raise RemoteProtocolError(f"dubbo header needs {HEADER_SIZE} bytes")
        magic, flag, status, request_id, length = _HEADER.unpack_from(data)
        if magic != _MAGIC_NUMBER:
            raise RemoteProtocolError("bad dubbo magic")
        if length < 0:
            raise RemoteProtocolError("negative dubbo body length")
        return cls(flag, status, request_id, length)


def encode_message(flag: int, request_id: int, body: bytes = b"", status: int = 0) -> bytes:
    """Build one dubbo message.

    Args:
        flag: The flag byte.
        request_id: The id, 0..2**64-1.
        body: The serialized body.
        status: The status byte (responses).

    Raises:
        ValueError: A field is out of range.
    """
    if not 0 <= flag <= 0xFF or not 0 <= status <= 0xFF:
        raise ValueError("flag and status are single bytes")
    if not 0 <= request_id <= _ID_MASK:
        raise ValueError("request id must be in 0..2**64-1")
    if len(body) >= 2**31:
        raise ValueError("body too large")
    return b"".join(
        (
            MAGIC,
            bytes((flag, status)),
            request_id.to_bytes(8, "big"),
            len(body).to_bytes(4, "big"),
            body,
        )
    )


def read_message(buffer: ReceiveBuffer, max_body: int) -> tuple[Header, bytes] | None:
    """Take one whole message (header included) from ``buffer``.

    Args:
        buffer: What has been received so far.
        max_body: Largest body length accepted.

    Returns:
        The header and the message's bytes, or ``None`` until all of it has arrived.

    Raises:
        RemoteProtocolError: Bad magic, or a body length that is negative or above
            ``max_body``; raised from the first byte that proves it.
    """
    fields = buffer.unpack(_HEADER)
    if fields is None:
        _check_partial_header(buffer.peek(HEADER_SIZE), max_body)
        return None
    magic, flag, status, request_id, length = fields
    if magic != _MAGIC_NUMBER:
        raise RemoteProtocolError("bad dubbo magic")
    if length < 0:
        raise RemoteProtocolError("negative dubbo body length")
    if length > max_body:
        raise RemoteProtocolError(f"dubbo body length {length} is above the limit of {max_body}")
    if len(buffer) < HEADER_SIZE + length:
        return None
    return Header(flag, status, request_id, length), buffer.take(HEADER_SIZE + length)


def _check_partial_header(head: bytes, max_body: int) -> None:
    """Refuse a header that is already certain to be bad before all of it has come."""
    if not head:
        return
    if head[0] != MAGIC[0] or (len(head) > 1 and head[1] != MAGIC[1]):
        raise RemoteProtocolError("bad dubbo magic")
    if len(head) > 12:
        # the smallest body length the bytes so far allow
        smallest = int.from_bytes(head[12:].ljust(4, b"\0"), "big", signed=True)
        if smallest < 0:
            raise RemoteProtocolError("negative dubbo body length")
        if smallest > max_body:
            raise RemoteProtocolError(f"dubbo body length is above the limit of {max_body}")


def heartbeat_reply(header: Header, message: bytes) -> bytes:
    """The local answer to a heartbeat: same id, event flag, status OK, body echoed."""
    return encode_message(
        header.serialization | FLAG_EVENT,
        header.request_id,
        message[HEADER_SIZE:],
        STATUS_OK,
    )


def service_name(header: Header, message: bytes) -> str | None:
    """The service path of a hessian2 request, or ``None`` when it cannot be read.

    A dubbo request body starts with the strings dubbo version, service path, service
    version and method name; this reads the first two, and only if they are ASCII.
    """
    if header.serialization != HESSIAN2 or header.is_event or not header.is_request:
        return None
    end = HEADER_SIZE + header.body_length
    first = _hessian2_ascii(message, HEADER_SIZE, end)
    if first is None:
        return None
    second = _hessian2_ascii(message, first[1], end)
    if second is None:
        return None
    path = second[0]
    if not 0 < len(path) <= _MAX_HINT or not all(0x21 <= ord(c) <= 0x7E for c in path):
        return None
    return path


def _hessian2_ascii(data: bytes, pos: int, end: int) -> tuple[str, int] | None:
    """Read one hessian2 string at ``pos``; ``(text, next position)`` or ``None``.

    Hessian2 strings: ``0x00-0x1f`` + that many chars; ``0x30-0x33 b0`` + up to 1023
    chars; ``'S' b1 b0`` + chars (final chunk); ``'R' b1 b0`` + chars + another string
    (non-final chunk). Lengths count UTF-16 units, bytes are UTF-8: equal only for ASCII,
    so anything else is refused (service names are ASCII).
    """
    parts: list[bytes] = []
    total = 0
    while True:
        if pos >= end:
            return None
        tag = data[pos]
        if tag <= 0x1F:
            length, pos, final = tag, pos + 1, True
        elif 0x30 <= tag <= 0x33:
            if pos + 2 > end:
                return None
            length, pos, final = ((tag - 0x30) << 8) | data[pos + 1], pos + 2, True
        elif tag in (0x52, 0x53):  # 'R' non-final chunk, 'S' final chunk
            if pos + 3 > end:
                return None
            length, pos, final = (
                int.from_bytes(data[pos + 1 : pos + 3], "big"),
                pos + 3,
                tag == 0x53,
            )
        else:
            return None
        total += length
        if pos + length > end or total > _MAX_HINT:
            return None
        chunk = data[pos : pos + length]
        if not chunk.isascii():
            return None
        parts.append(chunk)
        pos += length
        if final:
            return b"".join(parts).decode("ascii"), pos


# -- contexts --------------------------------------------------------------------------
#
# What each whole message does, by side and flag bits (R request, T two-way, E event;
# * either). The two on_data methods below are this table, row by row:
#
#   side     R T E   the message is            action
#   client   1 * 0   a call                    Frame, expects_response = T
#   client   1 1 1   a heartbeat               answer it here (heartbeat_reply)
#   client   1 0 1   a one-way notice          drop
#   client   0 * 1   a heartbeat answer        drop (we send no heartbeats)
#   client   0 * 0   a response (callback)     RemoteProtocolError
#   backend  0 * 0   a response                restore the id -> Response to its client;
#                                              an id not outstanding: drop, count
#   backend  0 * 1   a heartbeat answer        drop
#   backend  1 * 1   an event                  T: answer it here; readonly "R": Draining
#   backend  1 * 0   a request (callback)      RemoteProtocolError
#
# Bad magic or a bad body length is a RemoteProtocolError before any of this, from the
# first byte that shows it (read_message).


class DubboFrontend(FrontendContext):
    """One client connection: requests out, heartbeats answered here."""

    __slots__ = ("_buffer", "_max_body")

    def __init__(self, max_body: int) -> None:
        super().__init__()
        self._buffer = ReceiveBuffer()
        self._max_body = max_body

    def on_data(self, data: bytes, out: list[Frame]) -> None:
        self._buffer.feed(data)
        while (found := read_message(self._buffer, self._max_body)) is not None:
            header, message = found
            if header.is_request:
                if not header.is_event:
                    out.append(
                        Frame(
                            message,
                            stream_id=header.request_id,
                            hint=service_name(header, message),
                            new_backend=True,
                            expects_response=header.two_way,
                        )
                    )
                elif header.two_way:
                    self.queue(heartbeat_reply(header, message))
                # one-way events concern this connection only: not forwarded
            elif not header.is_event:
                raise RemoteProtocolError(
                    "client sent a dubbo response (callbacks are not supported)"
                )
            # event responses answer heartbeats we never send: dropped


class DubboBackend(BackendContext):
    """One backend connection: ids rewritten out, restored on the way back.

    Attributes:
        unmatched: Responses dropped because their id was not outstanding here.
    """

    __slots__ = ("_buffer", "_inflight", "_max_body", "_next_id", "unmatched")

    def __init__(self, max_body: int) -> None:
        super().__init__()
        self._buffer = ReceiveBuffer()
        self._max_body = max_body
        self._inflight: dict[int, PendingRequest] = {}  # backend-side id -> who asked
        self._next_id = 1
        self.unmatched = 0

    def on_frame(self, frame: Frame, origin: object) -> None:
        data = frame.data
        if len(data) < HEADER_SIZE:
            raise LocalProtocolError("not a dubbo message")
        magic, flag, status, client_id, length = _HEADER.unpack_from(data)
        if magic != _MAGIC_NUMBER:
            raise LocalProtocolError("not a dubbo message")
        if not flag & FLAG_REQUEST or flag & FLAG_EVENT:
            raise LocalProtocolError("only dubbo requests are forwarded, not events/responses")
        if length != len(data) - HEADER_SIZE:
            raise LocalProtocolError("dubbo body length does not match the frame")
        backend_id = self._allocate_id()
        # The flag, not frame.expects_response, decides: it is what the backend obeys.
        if flag & FLAG_TWO_WAY:
            self._inflight[backend_id] = PendingRequest(origin, client_id)
        self.queue(_HEADER.pack(magic, flag, status, backend_id, length))
        self.queue(memoryview(data)[HEADER_SIZE:])  # the body, not copied until sent

    def on_data(self, data: bytes, out: list[BackendEvent]) -> None:
        self._buffer.feed(data)
        while (found := read_message(self._buffer, self._max_body)) is not None:
            header, message = found
            if not header.is_request:
                if header.is_event:
                    continue  # answers a heartbeat we never send
                asked = self._inflight.pop(header.request_id, None)
                if asked is None:
                    self.unmatched += 1
                    continue
                client_id = asked.stream_id or 0  # always set: on_frame read it
                restored = b"".join(
                    (
                        _HEADER.pack(
                            _MAGIC_NUMBER, header.flag, header.status, client_id, header.body_length
                        ),
                        memoryview(message)[HEADER_SIZE:],
                    )
                )
                out.append(Response(asked.origin, asked.stream_id, restored))
            elif not header.is_event:
                raise RemoteProtocolError(
                    "backend sent a dubbo request (callbacks are not supported)"
                )
            else:
                if header.two_way:
                    self.queue(heartbeat_reply(header, message))
                if _is_readonly_event(header, message):
                    out.append(Draining("dubbo readonly event"))

    def pending(self) -> list[PendingRequest]:
        return list(self._inflight.values())

    @property
    def outstanding(self) -> int:
        return len(self._inflight)

    def _allocate_id(self) -> int:
        backend_id = self._next_id
        while backend_id in self._inflight:  # only after 2**64 ids: cheap insurance
            backend_id = (backend_id + 1) & _ID_MASK
        self._next_id = (backend_id + 1) & _ID_MASK
        return backend_id


def _is_readonly_event(header: Header, message: bytes) -> bool:
    if header.serialization != HESSIAN2:
        return False
    found = _hessian2_ascii(message, HEADER_SIZE, HEADER_SIZE + header.body_length)
    return found is not None and found[0] == "R"


class DubboProcessor(Processor):
    """The ``dubbo`` protocol (registered under that name)."""

    __slots__ = ()

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)

    def new_frontend(self, info: ConnectionInfo) -> FrontendContext:
        return DubboFrontend(self.limits.max_frame_size)

    def new_backend(self, info: ConnectionInfo) -> BackendContext:
        return DubboBackend(self.limits.max_frame_size)
