"""Sans-IO interface for application-layer load balancing, and the processor registry.

Owns the contract between a proxy and a framing protocol (SPEC §2: dubbo, framed-int32
and user-defined "custom" protocols): which bytes form a request, where it may be sent,
and which client a response belongs to. Also owns the name -> processor registry, and
small building blocks for writing processors (:class:`ReceiveBuffer`,
:class:`InOrderFrontend`, :class:`InOrderBackend`).

Must not: do I/O, import asyncio, socket, selectors or time, pick backends (that is the
upstream's policy), or know any particular protocol. Concrete processors live in their
own modules and are imported lazily, by name, so importing this module loads none.

How a proxy drives a processor (``docs/processors.md`` has a runnable version)::

    processor = get_processor("dubbo")              # once per tcp-lb
    fe = processor.new_frontend(info)               # per client connection
    be = processor.new_backend(info)                # per backend connection (shareable)

    client bytes   -> fe.receive_data(data) -> [Frame, ...]
                      for each frame: choose a backend connection (a new one when
                      frame.new_backend, else the one the previous frame went to),
                      be.send_frame(frame, origin=<the client>); write be.data_to_send()
                      to that backend; write fe.data_to_send() to the client (local
                      answers such as heartbeats)
    backend bytes  -> be.receive_data(data) -> [Response | Draining, ...]
                      Response: fe_of(response.origin).receive_response(response);
                      write that fe.data_to_send() to that client
                      Draining: send no new frames on this backend connection
                      and always write be.data_to_send() back to the backend
    backend lost   -> be.pending() names the clients still waiting; close them
    ProtocolError  -> close that connection (after writing exc.wire); frames or
                      responses completed before the error are in exc.events

One client's frames may go to many backend connections and one backend connection may
carry frames of many clients: the backend context remembers, per request it sent, the
opaque ``origin`` the proxy gave it and the client's ``stream_id``, and hands both back
with the response. Processors rewrite ids where the protocol needs it (dubbo) or keep a
FIFO where responses come back in order (framed-int32); a frontend context puts
responses back into the order its client expects.

Errors keep h11's split: :class:`RemoteProtocolError` when the peer broke the
protocol, :class:`LocalProtocolError` when the caller misused the API. Either one
sticks: every later ``receive_data`` raises again.
"""

from __future__ import annotations

import re
import struct
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module, metadata
from typing import Any, Final, NamedTuple, TypeAlias

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "ENTRY_POINT_GROUP",
    "MAX_FRAME_SIZE_CEILING",
    "RESERVED_NAMES",
    "BackendContext",
    "BackendEvent",
    "ConnectionInfo",
    "Draining",
    "Event",
    "Frame",
    "FrontendContext",
    "InOrderBackend",
    "InOrderFrontend",
    "Limits",
    "LocalProtocolError",
    "PendingRequest",
    "Processor",
    "ProcessorFactory",
    "ProcessorNotFound",
    "ProtocolError",
    "ReceiveBuffer",
    "RemoteProtocolError",
    "Response",
    "get_processor",
    "register_processor",
    "registered_names",
    "unregister_processor",
]

DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
"""Largest frame length accepted unless configured otherwise (16 MiB)."""
MAX_FRAME_SIZE_CEILING: Final = 2**31 - 2
"""Largest configurable ``max_frame_size``: a length of ``2**31 - 1`` is always refused."""

ENTRY_POINT_GROUP: Final = "vproxy.processors"
"""Installed packages may offer processors under this entry-point group (name -> factory)."""

RESERVED_NAMES: Final[frozenset[str]] = frozenset({"tcp", "http/1.x", "h2", "http"})
"""Protocol names the proxy implements itself; they cannot be registered."""

# Built-in processors, imported on first use: name -> "module:attribute".
_BUILTIN: Final[dict[str, str]] = {
    "dubbo": "vproxy.processor.dubbo:DubboProcessor",
    "framed-int32": "vproxy.processor.framed_int32:FramedInt32Processor",
}
# The same rule as the command language's protocol names (control/command/values.py).
_NAME = re.compile(r"[a-z0-9][a-z0-9/._-]{0,63}")


# -- errors ----------------------------------------------------------------------------


class ProtocolError(Exception):
    """Base of the processor errors: the connection cannot go on; close it.

    Attributes:
        message: What went wrong, for the log.
        wire: Bytes to write to the peer before closing (often empty).
        events: Frames (frontend) or responses (backend) completed before the error in
            the same ``receive_data`` call, in order. Responses there belong to other
            clients and should still be delivered.
    """

    def __init__(self, message: str, *, wire: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.wire = wire
        self.events: tuple[Event, ...] = ()


class LocalProtocolError(ProtocolError):
    """The caller used a context wrongly (e.g. a response for a stream never sent)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (bad magic, a length over the limit, ...)."""


class ProcessorNotFound(LookupError):
    """No processor is registered under the name asked for."""


# -- events and plain data -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One request from a client, ready to be sent to a backend.

    Attributes:
        data: The exact bytes to forward (a backend context may still rewrite them).
        stream_id: What the client calls this request (dubbo: its request id;
            in-order protocols: the request's sequence number on its connection).
            ``None`` when the protocol has no such notion.
        hint: An upstream hint (SPEC §1 Upstream), e.g. a host or service name.
        new_backend: ``True``: the proxy may choose a backend afresh for this frame.
            ``False``: it must go where the previous frame of this client went.
        expects_response: ``False`` for one-way messages: no response will come.
    """

    data: bytes
    stream_id: int | None = None
    hint: str | None = None
    new_backend: bool = True
    expects_response: bool = True


@dataclass(frozen=True, slots=True)
class Response:
    """A response read from a backend connection, and whom it is for.

    Attributes:
        origin: The object the proxy passed to :meth:`BackendContext.send_frame` with
            the request, returned as given.
        stream_id: The request's ``stream_id`` as the client knows it.
        data: The bytes for the client, ids already restored.
    """

    origin: object
    stream_id: int | None
    data: bytes


@dataclass(frozen=True, slots=True)
class Draining:
    """The backend asked for no new requests on this connection (e.g. dubbo readonly).

    Requests already sent are still answered; send new frames elsewhere.

    Attributes:
        reason: Why, for the log.
    """

    reason: str


class PendingRequest(NamedTuple):
    """A request sent on a backend connection and not answered yet.

    (A named tuple rather than a dataclass: one is kept per request in flight.)

    Attributes:
        origin: What the proxy passed to :meth:`BackendContext.send_frame`.
        stream_id: The request's ``stream_id`` as the client knows it.
    """

    origin: object
    stream_id: int | None


BackendEvent: TypeAlias = Response | Draining
Event: TypeAlias = Frame | Response | Draining


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a context may want to know about its connection (all optional).

    Attributes:
        remote: The peer's ``(ip, port)``: the client for a frontend context, the
            server for a backend context.
        local: Our own ``(ip, port)`` on that connection.
        server_name: The TLS SNI the client asked for, if TLS was terminated.
    """

    remote: tuple[str, int] | None = None
    local: tuple[str, int] | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits handed to a processor when it is created.

    Attributes:
        max_frame_size: Largest length field accepted, in bytes (the payload after
            the header). A larger, negative or ``2**31 - 1`` length is a
            :class:`RemoteProtocolError` as soon as its bytes arrive; nothing is
            allocated from a length before the bytes themselves have come.

    Raises:
        ValueError: ``max_frame_size`` is not an int in ``1..MAX_FRAME_SIZE_CEILING``.
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        value = self.max_frame_size
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"max_frame_size must be an int, not {type(value).__name__}")
        if not 1 <= value <= MAX_FRAME_SIZE_CEILING:
            raise ValueError(f"max_frame_size must be in 1..{MAX_FRAME_SIZE_CEILING}, not {value}")


# -- a receive buffer ------------------------------------------------------------------


class ReceiveBuffer:
    """Bytes received but not consumed yet, for incremental parsers.

    Consumed bytes are dropped at the next :meth:`feed` (CPython deletes from the front
    of a bytearray without moving the rest), and :meth:`take_until` resumes its search
    where the last one stopped, so a parser built on it looks at each byte a bounded
    number of times however the stream is cut.

    Example:
        >>> buf = ReceiveBuffer()
        >>> buf.feed(b"ab\\ncd")
        >>> buf.take_until(b"\\n", 100), len(buf)
        (b'ab\\n', 2)
    """

    __slots__ = ("_buf", "_pos", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes
        self._scan = 0  # where the pending take_until search resumes

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._pos = 0
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def peek(self, n: int) -> bytes:
        """Return up to ``n`` unconsumed bytes without consuming them."""
        return bytes(self._buf[self._pos : self._pos + n])

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...] | None:
        """Decode a fixed-size header at the front without consuming it.

        Returns:
            The fields, or ``None`` while fewer than ``layout.size`` bytes are buffered.
        """
        if len(self._buf) - self._pos < layout.size:
            return None
        return layout.unpack_from(self._buf, self._pos)

    def take(self, n: int) -> bytes:
        """Consume and return exactly ``n`` bytes.

        Raises:
            LocalProtocolError: Fewer than ``n`` bytes are buffered.
        """
        if n < 0 or n > len(self):
            raise LocalProtocolError(f"take({n}) with {len(self)} bytes buffered")
        start = self._pos
        with memoryview(self._buf) as view:
            out = bytes(view[start : start + n])
        self._pos = start + n
        return out

    def take_until(self, delimiter: bytes, limit: int) -> bytes | None:
        """Consume and return the bytes up to and including the next ``delimiter``.

        Args:
            delimiter: What ends a message, e.g. ``b"\\n"``.
            limit: Most bytes allowed before the delimiter.

        Returns:
            The message with its delimiter, or ``None`` until the delimiter arrives.

        Raises:
            RemoteProtocolError: More than ``limit`` bytes came without a delimiter.
        """
        if not delimiter:
            raise LocalProtocolError("empty delimiter")
        buf = self._buf
        start = self._pos
        window_end = start + limit + len(delimiter)
        found = buf.find(delimiter, max(self._scan, start), window_end)
        if found < 0:
            if len(buf) >= window_end:
                raise RemoteProtocolError(f"no {delimiter!r} within {limit} bytes")
            self._scan = max(start, len(buf) - len(delimiter) + 1)
            return None
        return self.take(found + len(delimiter) - start)


# -- contexts --------------------------------------------------------------------------


class FrontendContext(ABC):
    """The processor's state for one client connection.

    Subclasses implement :meth:`on_data` (and :meth:`on_response` when responses need
    more than forwarding) and call ``super().__init__()``. Bytes to write to the client
    are queued with :meth:`queue` and collected by the proxy with :meth:`data_to_send`.
    """

    __slots__ = ("_error", "_outbox", "_waiting")

    def __init__(self) -> None:
        self._error: ProtocolError | None = None
        self._outbox: list[bytes | memoryview] = []
        self._waiting = 0

    def receive_data(self, data: bytes) -> list[Frame]:
        """Feed bytes read from the client.

        Args:
            data: The next bytes of the stream, any length (``b""`` is fine).

        Returns:
            The requests completed by these bytes, in order; empty when more bytes are
            needed.

        Raises:
            ProtocolError: The stream is broken (it stays broken); frames completed
                before the error are in its ``events``.
        """
        _raise_if_broken(self._error)
        out: list[Frame] = []
        try:
            self.on_data(data, out)
        except ProtocolError as exc:
            self._error = exc
            exc.events = tuple(out)
            raise
        finally:
            self._waiting += sum(1 for f in out if f.expects_response)
        return out

    def receive_response(self, response: Response) -> None:
        """Hand over a response a backend context produced for this client.

        The bytes for the client are queued (in the order the protocol needs, which may
        mean holding them back); collect them with :meth:`data_to_send`.

        Raises:
            LocalProtocolError: The response does not belong here.
        """
        self.on_response(response)
        self._waiting = max(0, self._waiting - 1)

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes queued for the client."""
        out = b"".join(self._outbox)
        self._outbox.clear()
        return out

    @property
    def waiting(self) -> int:
        """Requests handed out that expect a response not received yet.

        A proxy may stop reading from the client while this is high (backpressure).
        """
        return self._waiting

    def queue(self, data: bytes | memoryview) -> None:
        """Queue bytes for the client (for subclasses); they must not change later."""
        if data:
            self._outbox.append(data)

    @abstractmethod
    def on_data(self, data: bytes, out: list[Frame]) -> None:
        """Parse ``data``; append each completed request to ``out``.

        Raise :class:`RemoteProtocolError` on a broken stream. Local answers (such as
        heartbeat replies) go to :meth:`queue`.
        """

    def on_response(self, response: Response) -> None:
        """Deliver one response to the client; by default queue its bytes as they are."""
        self.queue(response.data)


class BackendContext(ABC):
    """The processor's state for one backend connection, shareable by many clients.

    Subclasses implement :meth:`on_frame`, :meth:`on_data` and :meth:`pending`, and
    call ``super().__init__()``.
    """

    __slots__ = ("_error", "_outbox")

    def __init__(self) -> None:
        self._error: ProtocolError | None = None
        self._outbox: list[bytes | memoryview] = []

    def send_frame(self, frame: Frame, origin: object) -> None:
        """Send a client's request on this connection.

        The bytes to write (possibly rewritten) are queued; collect them with
        :meth:`data_to_send`.

        Args:
            frame: A frame a frontend context of the same processor produced.
            origin: Anything that identifies the client to the proxy; it comes back in
                the :class:`Response` and in :meth:`pending`.

        Raises:
            LocalProtocolError: The connection is broken, or the frame is not one this
                protocol can send.
        """
        if self._error is not None:
            raise LocalProtocolError(f"backend connection is broken: {self._error.message}")
        self.on_frame(frame, origin)

    def receive_data(self, data: bytes) -> list[BackendEvent]:
        """Feed bytes read from the backend.

        Returns:
            Completed responses (each naming its client) and notices, in order.

        Raises:
            ProtocolError: The stream is broken (it stays broken); responses completed
                before the error are in its ``events`` and should still be delivered.
        """
        _raise_if_broken(self._error)
        out: list[BackendEvent] = []
        try:
            self.on_data(data, out)
        except ProtocolError as exc:
            self._error = exc
            exc.events = tuple(out)
            raise
        return out

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes queued for the backend."""
        out = b"".join(self._outbox)
        self._outbox.clear()
        return out

    @property
    def outstanding(self) -> int:
        """How many requests sent here still wait for a response."""
        return len(self.pending())

    def queue(self, data: bytes | memoryview) -> None:
        """Queue bytes for the backend (for subclasses); they must not change later."""
        if data:
            self._outbox.append(data)

    @abstractmethod
    def on_frame(self, frame: Frame, origin: object) -> None:
        """Remember whom ``frame`` is for, and :meth:`queue` its (rewritten) bytes."""

    @abstractmethod
    def on_data(self, data: bytes, out: list[BackendEvent]) -> None:
        """Parse ``data``; append each completed response (and notice) to ``out``."""

    @abstractmethod
    def pending(self) -> list[PendingRequest]:
        """The requests sent here that still wait for a response, oldest first."""


def _raise_if_broken(error: ProtocolError | None) -> None:
    if error is not None:
        # A fresh exception of the same class (without calling a subclass's __init__,
        # whose signature we do not know), so tracebacks do not pile up on one object.
        again = ProtocolError.__new__(type(error))
        ProtocolError.__init__(again, error.message)
        raise again


# -- in-order building blocks ----------------------------------------------------------


class InOrderFrontend(FrontendContext):
    """A frontend for protocols answered in request order, one response per request.

    Each request gets the next sequence number as its ``stream_id`` and may go to any
    backend; responses are held back until every earlier one has been delivered, so
    the client sees them in the order it asked. Subclasses implement
    :meth:`next_message` and may override :meth:`make_frame`.
    """

    __slots__ = ("_buffer", "_held", "_next_id", "_next_out")

    def __init__(self) -> None:
        super().__init__()
        self._buffer = ReceiveBuffer()
        self._next_id = 0  # stream id of the next request
        self._next_out = 0  # stream id of the next response the client gets
        self._held: dict[int, bytes] = {}

    @abstractmethod
    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        """Take one complete request from ``buffer``; ``None`` if it has not all come."""

    def make_frame(self, message: bytes, stream_id: int) -> Frame:
        """Build the frame for one request (override to set a hint)."""
        return Frame(message, stream_id=stream_id)

    def on_data(self, data: bytes, out: list[Frame]) -> None:
        self._buffer.feed(data)
        while (message := self.next_message(self._buffer)) is not None:
            out.append(self.make_frame(message, self._next_id))
            self._next_id += 1

    def on_response(self, response: Response) -> None:
        sid = response.stream_id
        if not isinstance(sid, int) or not self._next_out <= sid < self._next_id:
            raise LocalProtocolError(f"no request with stream id {sid} is waiting")
        if sid in self._held:
            raise LocalProtocolError(f"a second response for stream id {sid}")
        self._held[sid] = response.data
        while self._next_out in self._held:
            self.queue(self._held.pop(self._next_out))
            self._next_out += 1


class InOrderBackend(BackendContext):
    """A backend for protocols answered in request order: a FIFO of whom to answer.

    Subclasses implement :meth:`next_message`. A frame with ``expects_response=False``
    is sent without a place in the FIFO.
    """

    __slots__ = ("_buffer", "_fifo")

    def __init__(self) -> None:
        super().__init__()
        self._buffer = ReceiveBuffer()
        self._fifo: deque[PendingRequest] = deque()

    @abstractmethod
    def next_message(self, buffer: ReceiveBuffer) -> bytes | None:
        """Take one complete response from ``buffer``; ``None`` if it has not all come."""

    def on_frame(self, frame: Frame, origin: object) -> None:
        if frame.expects_response:
            self._fifo.append(PendingRequest(origin, frame.stream_id))
        self.queue(frame.data)

    def on_data(self, data: bytes, out: list[BackendEvent]) -> None:
        self._buffer.feed(data)
        while (message := self.next_message(self._buffer)) is not None:
            if not self._fifo:
                raise RemoteProtocolError("a response came with no request outstanding")
            request = self._fifo.popleft()
            out.append(Response(request.origin, request.stream_id, message))

    def pending(self) -> list[PendingRequest]:
        return list(self._fifo)

    @property
    def outstanding(self) -> int:
        return len(self._fifo)


# -- processors and the registry -------------------------------------------------------


class Processor(ABC):
    """A protocol, configured: creates the per-connection contexts.

    A subclass whose ``__init__`` takes a :class:`Limits` (as this one does) is itself
    a :data:`ProcessorFactory` and can be registered directly.

    Attributes:
        limits: The limits its contexts enforce.
    """

    __slots__ = ("limits",)

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits()

    @abstractmethod
    def new_frontend(self, info: ConnectionInfo) -> FrontendContext:
        """Create the context for a newly accepted client connection."""

    @abstractmethod
    def new_backend(self, info: ConnectionInfo) -> BackendContext:
        """Create the context for a newly opened backend connection."""


ProcessorFactory: TypeAlias = Callable[[Limits], Processor]
"""What is registered under a name: ``factory(limits) -> Processor``."""

_registry: dict[str, ProcessorFactory] = {}


def register_processor(name: str, factory: ProcessorFactory) -> None:
    """Make a processor available under ``name`` (the tcp-lb ``protocol`` value).

    Args:
        name: Lower case, ``[a-z0-9][a-z0-9/._-]*``, at most 64 characters.
        factory: Called with the :class:`Limits` whenever a processor is needed; a
            :class:`Processor` subclass will do.

    Raises:
        ValueError: The name is malformed, reserved, built in or already registered.
        TypeError: ``factory`` is not callable.
    """
    _check_name(name)
    if name in RESERVED_NAMES or name in _BUILTIN or name in _registry:
        raise ValueError(f"processor name {name!r} is already taken")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} is not callable")
    _registry[name] = factory


def unregister_processor(name: str) -> None:
    """Remove a processor registered with :func:`register_processor`.

    Raises:
        ValueError: ``name`` is built in.
        ProcessorNotFound: Nothing is registered under ``name``.
    """
    if name in _BUILTIN or name in RESERVED_NAMES:
        raise ValueError(f"processor {name!r} is built in")
    if _registry.pop(name, None) is None:
        raise ProcessorNotFound(f"no processor named {name!r}")


def get_processor(name: str, limits: Limits | None = None) -> Processor:
    """Create the processor registered under ``name``.

    Looks in the built-ins, then the registry, then the installed packages'
    ``vproxy.processors`` entry points (a found one is registered for later calls).

    Args:
        name: The processor's name.
        limits: Limits for it; the defaults when ``None``.

    Returns:
        A new processor.

    Raises:
        ProcessorNotFound: No processor has that name, or its plugin failed to load.
        TypeError: The factory returned something that is not a :class:`Processor`.
    """
    factory = _find_factory(name)
    processor = factory(limits if limits is not None else Limits())
    if not isinstance(processor, Processor):
        raise TypeError(f"factory for {name!r} returned {type(processor).__name__}")
    return processor


def registered_names() -> tuple[str, ...]:
    """Every name :func:`get_processor` accepts (built-in, registered, plugins), sorted."""
    names = set(_BUILTIN) | set(_registry)
    names.update(ep.name for ep in _entry_points() if _NAME.fullmatch(ep.name))
    return tuple(sorted(names - RESERVED_NAMES))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"processor name {name!r} must match [a-z0-9][a-z0-9/._-]* (at most 64 characters)"
        )


def _find_factory(name: str) -> ProcessorFactory:
    if name in _BUILTIN:
        module_name, _, attr = _BUILTIN[name].partition(":")
        factory: ProcessorFactory = getattr(import_module(module_name), attr)
        return factory
    found = _registry.get(name)
    if found is not None:
        return found
    if isinstance(name, str) and _NAME.fullmatch(name) and name not in RESERVED_NAMES:
        for ep in _entry_points():
            if ep.name == name:
                try:
                    loaded = ep.load()
                except Exception as exc:  # a broken plugin: report it, do not crash
                    raise ProcessorNotFound(
                        f"processor {name!r} from {ep.value} failed to load: {exc}"
                    ) from exc
                if not callable(loaded):
                    raise ProcessorNotFound(f"processor {name!r} from {ep.value} is not callable")
                _registry.setdefault(name, loaded)
                return _registry[name]
    raise ProcessorNotFound(f"no processor named {name!r}")


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)
