"""Sans-IO ``framed-int32`` processor: 4-byte big-endian length, then the payload.

Owns splitting such a stream (framed thrift and many home-grown RPCs) into frames on
both sides, spreading a client's frames over backends one by one, and routing the
responses back: each backend connection answers in the order it was asked (a FIFO of
who asked), and each client gets its responses in the order it sent its requests (the
frontend holds back a response until the earlier ones are delivered).

Must not: do I/O, import asyncio, socket, selectors or time, or look inside payloads.

Choices made here once:

* The length counts the payload only, not the 4 length bytes (thrift's
  ``TFramedTransport``). A zero length is a valid, empty frame.
* A negative length (as a signed int32) or one above ``Limits.max_frame_size`` is a
  :class:`~vproxy.processor.base.RemoteProtocolError` as soon as the length bytes show
  it, often from the first byte; the limit is at most ``2**31 - 2``, so ``2**31 - 1``
  is always refused. Nothing is allocated from a length: a frame's bytes are kept only
  as they arrive.
* Every request frame gets exactly one response frame (thrift ``oneway`` calls, which
  get none, cannot be told apart and are not supported).
* Frames are forwarded byte for byte, length prefix included.
"""

from __future__ import annotations

import struct
from typing import Final

from vproxy.processor.base import (
    BackendContext,
    ConnectionInfo,
    FrontendContext,
    InOrderBackend,
    InOrderFrontend,
    Limits,
    Processor,
    ReceiveBuffer,
    RemoteProtocolError,
)

__all__ = [
    "HEADER_SIZE",
    "NAME",
    "FramedInt32Backend",
    "FramedInt32Frontend",
    "FramedInt32Processor",
    "encode_frame",
    "read_frame",
]

NAME: Final = "framed-int32"
HEADER_SIZE: Final = 4
_LENGTH = struct.Struct(">i")


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length.

    Raises:
        ValueError: The payload is ``2**31 - 1`` bytes or longer (no reader takes it).
    """
    if len(payload) >= 2**31 - 1:
        raise ValueError("payload too large for a framed-int32 frame")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def read_frame(buffer: ReceiveBuffer, max_frame_size: int) -> bytes | None:
    """Take one whole frame (prefix included) from ``buffer``.

    Args:
        buffer: What has been received so far.
        max_frame_size: Largest payload length accepted.

    Returns:
        The frame, or ``None`` until all of it has arrived.

    Raises:
        RemoteProtocolError: The length is negative or above ``max_frame_size``; raised
            from the first length byte that proves it.
    """
    fields = buffer.unpack(_LENGTH)
    if fields is None:
        head = buffer.peek(HEADER_SIZE)
        if head:  # the smallest length these bytes allow: refuse as soon as it is certain
            _check_length(
                int.from_bytes(head.ljust(HEADER_SIZE, b"\0"), "big", signed=True),
                max_frame_size,
                exact=False,
            )
        return None
    length: int = fields[0]
    _check_length(length, max_frame_size, exact=True)
    if len(buffer) < HEADER_SIZE + length:
        return None
    return buffer.take(HEADER_SIZE + length)


def _check_length(length: int, max_frame_size: int, exact: bool) -> None:
    if length < 0:
        raise RemoteProtocolError("negative frame length")
    if length > max_frame_size:
        shown = str(length) if exact else f"of at least {length}"
        raise RemoteProtocolError(f"frame length {shown} is above the limit of {max_frame_size}")


class FramedInt32Frontend(InOrderFrontend):
    """One client connection: every frame may go to a new backend."""

    __slots__ = ("_max_frame_size",)

    def __init__(self, max_frame_size: int) -> None:
        super().__init__()
        self._max_frame_size = max_frame_size

    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        return read_frame(buffer, self._max_frame_size)


class FramedInt32Backend(InOrderBackend):
    """One backend connection: responses matched to requests in order."""

    __slots__ = ("_max_frame_size",)

    def __init__(self, max_frame_size: int) -> None:
        super().__init__()
        self._max_frame_size = max_frame_size

    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        return read_frame(buffer, self._max_frame_size)


class FramedInt32Processor(Processor):
    """The ``framed-int32`` protocol (registered under that name)."""

    __slots__ = ()

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)

    def new_frontend(self, info: ConnectionInfo) -> FrontendContext:
        return FramedInt32Frontend(self.limits.max_frame_size)

    def new_backend(self, info: ConnectionInfo) -> BackendContext:
        return FramedInt32Backend(self.limits.max_frame_size)
