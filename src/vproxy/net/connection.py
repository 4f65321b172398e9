"""Connections and the two-way relay between them (SPEC §1 "connection", "Proxy").

Owns: :class:`Connection`, one side of a session with the bytes read from it, and
:class:`Session`, the pair (frontend, backend) with its life cycle: connecting the
backend (with a timeout), half-close passed through, both-sides-done close, error
propagation and the idle timeout (shorter once one direction has ended: a peer that
half-closed and went away must not hold two descriptors for the whole idle timeout).

A session relays in one of two modes (``docs/performance.md`` has the measurements):

* **socket mode** (``Session(..., sock=accepted)``, used by the tcp-lb): the relay
  works on the non-blocking sockets, watched by the loop's
  :class:`~vproxy.net.event_loop.FdWatcher` (one epoll set per loop). A readable
  socket is read into a per-thread scratch buffer and the bytes are sent to the peer
  at once, so in the common case nothing stays in Python. A direction that carries
  bulk data (a read of a quarter window or more) switches to ``os.splice`` via a pipe
  (:mod:`vproxy.net.splice`): the bytes no longer enter the process. Setting up and
  tearing down a session needs no task, future or transport.
* **transport mode** (no ``sock``; the caller makes asyncio transports with
  :attr:`Connection.itself` as protocol, e.g. after a socks5 handshake): each
  :class:`Connection` is the protocol of its transport and writes what it reads
  straight into the peer's transport.

Backpressure is explicit in both. Socket mode: a direction holds at most one window
of bytes its destination has not taken (the rest of one read, or what is in its
pipe); while it holds any it stops reading its source and watches the destination
for writability. The window is the buffer size toward the destination (the tcp-lb's
``in-buffer-size`` toward the backend, ``out-buffer-size`` toward the client) raised
to :data:`MIN_WINDOW`, so that bulk transfers do not pay a system call per few KiB.
Transport mode: each transport's write buffer has that buffer size as its high-water
mark; above it ``pause_writing`` stops reading the peer, below half of it reading
resumes (plus at most one 256 KiB read chunk per direction).

Must not: choose backends or parse protocols; it moves bytes.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import io
import itertools
import logging
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from vproxy.net import splice as _splice
from vproxy.net.event_loop import READABLE, WRITABLE, FdWatcher

if TYPE_CHECKING:
    from vproxy.net.event_loop import CoarseTimers, EventLoop

__all__ = [
    "HALF_CLOSED_TIMEOUT_MS",
    "MAX_CUTS",
    "MIN_WINDOW",
    "Connection",
    "Session",
    "Window",
    "next_session_id",
]

_log = logging.getLogger("vproxy.net")

_session_ids: Final = itertools.count(1)


def next_session_id() -> int:
    """A process-wide unique id for a new session (L4 or L7)."""
    return next(_session_ids)


#: Idle limit (ms) of a session once one direction ended, unless given its own; never
#: longer than the session's idle timeout.
HALF_CLOSED_TIMEOUT_MS: Final = 60_000
#: Smallest per-direction window in socket mode (bytes): one read, or one pipe.
MIN_WINDOW: Final = 256 * 1024
#: A read of at least window / BULK_READ_FRACTION bytes switches a direction to splice:
#: the data came in faster than one chunk per round, small messages never get there.
BULK_READ_FRACTION: Final = 4
#: A spliced direction that fills its whole pipe in one splice grows the pipe to this
#: (bytes, if the kernel allows; a larger window keeps its size). The most a bulk
#: direction holds.
BULK_PIPE: Final = 1024 * 1024
#: Reads after which a socket is handed to the loop's own watch (FdWatcher.promote).
PROMOTE_AFTER_READS: Final = 64

_AF_INET: Final = socket.AF_INET
_AF_INET6: Final = socket.AF_INET6
_SOCK_STREAM_NB: Final = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_IPPROTO_TCP: Final = socket.IPPROTO_TCP
_TCP_NODELAY: Final = socket.TCP_NODELAY
_SOL_SOCKET: Final = socket.SOL_SOCKET
_SO_ERROR: Final = socket.SO_ERROR
_SHUT_WR: Final = socket.SHUT_WR
# SO_LINGER on with 0 s: close() sends a reset and drops what is unsent (a broken side's
# peer is reset, so that a stream cut short does not pass for a complete one).
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
_EINPROGRESS: Final = errno.EINPROGRESS
_write: Final = os.write
_RETRY: Final = (BlockingIOError, InterruptedError)
_READABLE: Final = READABLE
_WRITABLE: Final = WRITABLE
_ERRORS: Final = (select.EPOLLERR | select.EPOLLHUP) if hasattr(select, "EPOLLERR") else 0
_READ_EVENTS: Final = _READABLE | _ERRORS
# Watched with reading: epoll reports the peer's FIN (EPOLLRDHUP) with the bytes
# before it, so a read that took them all knows the next one would return 0.
_RDHUP: Final[int] = getattr(select, "EPOLLRDHUP", 0)
_FIN_ONLY: Final[int] = _RDHUP | (select.EPOLLERR if _RDHUP else 0)
# Written with the last bytes before a FIN we pass on: the kernel holds them until
# the shutdown (or close) right after, and they leave with the FIN in one segment
# (a request/response on a new connection: ~1 TCP segment fewer per session).
_MSG_MORE: Final[int] = getattr(socket, "MSG_MORE", 0)
_WRITE_EVENTS: Final = _WRITABLE | _ERRORS


def _c_relay() -> Callable[..., int] | None:
    """The read-and-write of one relay step in C (``vproxy.net._relay``), when it was
    built and not turned off with ``VPROXY_C_RELAY=0``; else ``recv_into`` and
    ``os.write`` do it."""
    if os.environ.get("VPROXY_C_RELAY", "1") == "0":
        return None
    try:
        from vproxy.net._relay import relay
    except ImportError:
        return None
    return relay


_relay: Final = _c_relay()

#: Most lengths a window remembers its slices for (``Window``).
MAX_CUTS: Final = 64

Window = tuple[memoryview, dict[int, memoryview]]
"""A read window and its slices ``[:n]`` by ``n``: the relay writes ``view[:n]`` after
each read, and making that slice (a memoryview object, a buffer export, a slice
object) costs ~700 instructions more than finding it in a dict; the messages of a
protocol come in few lengths. At most :data:`MAX_CUTS` lengths are kept."""


def _window(windows: dict[int, Window], size: int) -> Window:
    """A read window of ``size`` bytes from a loop's shared ones (FdWatcher.windows)."""
    window = windows.get(size)
    if window is None:
        window = windows[size] = (memoryview(bytearray(size)), {})
    return window


def _cut(window: Window, n: int) -> memoryview:
    """``window``'s first ``n`` bytes, remembered (bounded)."""
    view, cuts = window
    part = cuts.get(n)
    if part is None:
        part = view[:n]
        if len(cuts) < MAX_CUTS:
            cuts[n] = part
    return part


_NO_WINDOW: Final[Window] = (memoryview(b""), {})


def _not_linked(buf: memoryview) -> int:
    raise OSError(errno.ENOTCONN, "not linked")


class _SocketView(asyncio.Transport):
    """What code written against transports may still ask a socket-mode side.

    ``get_extra_info`` (``peername``, ``sockname``, ``socket``) and ``is_closing``
    work; the I/O methods of :class:`asyncio.Transport` are not available.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._conn.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._conn.closed


class Connection(asyncio.Protocol):
    """One side of a session: its socket (or transport) and the bytes read from it.

    ``bytes_in`` counts bytes read from this side; ``eof`` is set when this side sent
    its FIN. ``high_water`` is the buffer size toward this side.

    Socket mode: ``backlog`` (copied bytes) or ``piped`` (bytes in ``pipe``) is what
    was read here and the peer has not taken yet; ``spliced`` is set once bytes from
    this side went through a pipe; ``shut`` is set once a FIN was passed on to this
    side, ``closed`` once its socket is closed.

    Transport mode: ``writable`` is True while bytes may be written to this side:
    from :meth:`Session.link` until this side is half-closed, closed or lost. Bytes
    read before the session is linked wait in ``pending``; bytes for a side that is
    no longer writable (it closed under us) are dropped, as the kernel would.
    """

    __slots__ = (
        "_bulk_read",
        "_mask",
        "_peer_fd",
        "_reads_left",
        "_recv_into",
        "_transport",
        "_window",
        "backlog",
        "bytes_in",
        "closed",
        "eof",
        "fd",
        "high_water",
        "lost",
        "peer",
        "pending",
        "pipe",
        "piped",
        "reading",
        "session",
        "shut",
        "sock",
        "spliced",
        "writable",
        "writing",
    )

    def __init__(
        self, session: Session, high_water: int, sock: _socket.socket | None = None
    ) -> None:
        self.session = session
        self.high_water = high_water
        self.peer: Connection | None = None
        self.bytes_in = 0
        self.eof = False
        # transport mode
        self._transport: asyncio.Transport | None = None
        self.lost = False
        self.writable = False
        self.pending: list[bytes] = []
        # socket mode
        self.sock = sock
        self.fd = sock.fileno() if sock is not None else -1
        self.shut = False
        self.closed = False
        self.reading = False
        self.writing = False
        self._mask = 0  # what the watcher watches for now
        self.backlog: memoryview | None = None
        self.pipe: _splice.Pipe | None = None
        self.piped = 0
        self.spliced = False  # set once bytes from this side went through a pipe
        # Set by Session.link(): the read window, the read method and the peer's fd
        # that the copy path uses for every chunk.
        self._window: Window = _NO_WINDOW
        # (a socket's recv_into; FileIO.readinto once promoted, which says None
        # instead of raising BlockingIOError)
        self._recv_into: Callable[[memoryview], int | None] = _not_linked
        self._peer_fd = -1
        self._bulk_read = 1 << 62  # a read this large switches to splice
        # Reads until the socket counts as long-lived (see FdWatcher.promote); -1: never.
        self._reads_left = -1

    def __repr__(self) -> str:
        return f"Connection(fd={self.fd}, bytes_in={self.bytes_in})"

    def itself(self) -> Connection:
        """A protocol factory that returns this connection (for create_connection)."""
        return self

    @property
    def transport(self) -> asyncio.Transport | None:
        """The asyncio transport (transport mode), or a read-only view of the socket."""
        if self._transport is not None:
            return self._transport
        if self.sock is not None:
            return _SocketView(self)
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peername``, ``sockname`` or ``socket`` of this side, in either mode."""
        if self._transport is not None:
            return self._transport.get_extra_info(name, default)
        sock = self.sock
        if sock is None or self.closed:
            return default
        try:
            if name == "peername":
                return sock.getpeername()
            if name == "sockname":
                return sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return sock
        return default

    @property
    def bytes_out(self) -> int:
        """Bytes written toward this side (what the peer read, minus what still waits)."""
        peer = self.peer
        if peer is None:
            return 0
        waiting = peer.piped + (len(peer.backlog) if peer.backlog is not None else 0)
        return peer.bytes_in - waiting

    # == socket mode ==================================================================
    # _on_readable runs once per chunk relayed: keep it short.
    def _on_readable(self, events: int = 0) -> None:
        view, cuts = self._window
        relay = _relay
        # the source's FIN is in (and no error): the bytes read now are its last
        fin = _RDHUP != 0 and events & _FIN_ONLY == _RDHUP
        if relay is not None and self._peer_fd >= 0:
            # the read and the write in one call (vproxy.net._relay)
            try:
                if fin:
                    n = relay(self.fd, self._peer_fd, view, _MSG_MORE)
                else:
                    n = relay(self.fd, self._peer_fd, view)
            except OSError as exc:
                self.session._fail(exc)
                return
            if n > 0:
                sent = n
            elif n == 0:
                self._on_eof()
                return
            elif n == -1:  # nothing to read after all
                return
            else:  # a short write
                n = -n - 2
                sent = n >> 32
                n &= 0xFFFFFFFF
            self.bytes_in += n
            self._reads_left -= 1
            if not self._reads_left:
                self._promote()
        else:
            try:
                got = self._recv_into(view)
            except _RETRY:
                return
            except OSError as exc:
                self.session._fail(exc)
                return
            if not got:
                if got is None:  # (FileIO.readinto: nothing to read after all)
                    return
                self._on_eof()
                return
            n = got
            self.bytes_in += n
            self._reads_left -= 1
            if not self._reads_left:
                self._promote()
            part = cuts.get(n)  # view[:n], remembered (_cut, inlined)
            if part is None:
                part = view[:n]
                if len(cuts) < MAX_CUTS:
                    cuts[n] = part
            try:
                if fin and self.peer is not None and self.peer.sock is not None:
                    sent = self.peer.sock.send(part, _MSG_MORE)
                else:
                    sent = _write(self._peer_fd, part)  # os.write: cheaper than socket.send
            except _RETRY:
                sent = 0
            except OSError as exc:
                self.session._fail(exc)
                return
        if sent != n:
            self.backlog = memoryview(view[sent:n].tobytes())
            self._hold()
        elif n >= self._bulk_read:
            self._bulk()
        elif fin and n < len(view):
            # The FIN came after these bytes (and no error: a reset is met by the
            # next read) and this read took all there was: end the direction now
            # instead of reading 0 in another round.
            self._on_eof()

    def _promote(self) -> None:
        """A long-lived socket: let the loop watch it itself (cheaper per event), and
        read it with ``FileIO.readinto``: a one-argument call where ``recv_into``
        parses a tuple and keywords (-10% per read; the ``fstat`` the FileIO costs
        once would not pay off on a short session)."""
        if self._mask and not self.closed:
            self.session._watcher.promote(self.fd, self._mask, self._handler())
        if not self.closed and _relay is None:
            self._recv_into = io.FileIO(self.fd, "r", closefd=False).readinto
        peer = self.peer
        if peer is not None and peer._reads_left > 0:
            peer._reads_left = 1  # its next read promotes it too

    def _handler(self) -> Callable[[int], object]:
        if self._mask == _READABLE:
            return self._on_readable if self.pipe is None else self._splice_in
        return self._on_event

    def _hold(self) -> None:
        """The peer did not take everything: wait for it, read nothing meanwhile."""
        self.reading = False
        self._watch()
        peer = self.peer
        assert peer is not None
        peer.writing = True
        peer._watch()

    def _bulk(self) -> None:
        """A large read: this direction carries bulk data, splice it from now on."""
        if not _splice.SPLICE_AVAILABLE or self.pipe is not None:
            return
        pipe = _splice.new_pipe(len(self._window[0]))
        if pipe is None:
            return  # no descriptors left for a pipe: go on copying
        self.pipe = pipe
        self.spliced = True
        if self._mask == _READABLE:
            self.session._watcher.set_handler(self.fd, self._splice_in)

    def _splice_in(self, events: int = 0) -> None:
        pipe = self.pipe
        assert pipe is not None
        try:
            n = _splice.splice(self.fd, pipe.w, pipe.size, flags=_splice.SPLICE_FLAGS)
        except _RETRY:
            return
        except OSError as exc:
            self.session._fail(exc)
            return
        if not n:
            self._on_eof()
            return
        self.bytes_in += n
        if n == pipe.size and not pipe.grown:
            # A whole pipe in one splice: a fast stream. A larger pipe moves it with
            # fewer wake-ups and system calls (iperf3 +10%, -30% CPU).
            pipe.grow(BULK_PIPE)
        peer = self.peer
        assert peer is not None
        try:
            sent = _splice.splice(pipe.r, peer.fd, n, flags=_splice.SPLICE_FLAGS)
        except _RETRY:
            sent = 0
        except OSError as exc:
            self.session._fail(exc)
            return
        if sent != n:
            self.piped = n - sent
            self._hold()

    def _on_event(self, events: int) -> None:
        """Readiness while this side waits for more than reading."""
        if events & _READ_EVENTS and self.reading:
            if self.pipe is None:
                self._on_readable()
            else:
                self._splice_in()
        if events & _WRITE_EVENTS and self.writing and not self.closed:
            self._on_writable()

    def _on_writable(self) -> None:
        """This socket can take more of what the peer read."""
        src = self.peer
        assert src is not None
        if src.piped:
            pipe = src.pipe
            assert pipe is not None
            try:
                sent = _splice.splice(pipe.r, self.fd, src.piped, flags=_splice.SPLICE_FLAGS)
            except _RETRY:
                return
            except OSError as exc:
                self.session._fail(exc)
                return
            src.piped -= sent
            if src.piped:
                return
        elif src.backlog is not None:
            data = src.backlog
            try:
                sent = self.sock.send(data)  # type: ignore[union-attr]
            except _RETRY:
                return
            except OSError as exc:
                self.session._fail(exc)
                return
            if sent != len(data):
                src.backlog = data[sent:]
                return
            src.backlog = None
        self.writing = False
        self._watch()
        self.session._drained(src)

    def _on_eof(self) -> None:
        self.eof = True
        peer = self.peer
        if (
            peer is not None
            and peer.eof
            and peer.backlog is None
            and not peer.piped
            and not self.session.closing
        ):
            # The other direction ended and was flushed: the session closes this
            # socket right away, which takes it out of the epoll set (no EPOLL_CTL_DEL).
            self.reading = False
        else:
            self._stop_reading()
        self.session._on_sock_eof(self)

    def _watch(self) -> None:
        """Tell the loop's watcher what this socket waits for now."""
        mask = (_READABLE if self.reading else 0) | (_WRITABLE if self.writing else 0)
        old = self._mask
        if mask == old or self.closed:
            return
        self._mask = mask
        watcher = self.session._watcher
        if not mask:
            watcher.remove(self.fd)
            return
        handler = self._handler()
        events = mask | _RDHUP if mask & _READABLE else mask
        if old:
            watcher.modify(self.fd, events, handler)
        else:
            watcher.add(self.fd, events, handler)

    def _start_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self._watch()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._watch()

    @property
    def _holding(self) -> bool:
        """Bytes read from this side still wait for the peer."""
        return self.backlog is not None or self.piped > 0

    def _close_sock(self) -> None:
        """Stop watching and close the socket now.

        What this side read and the peer has not taken yet stays (the peer may still
        be flushing it); :meth:`_release` drops it.
        """
        if self.closed:
            return
        self.closed = True
        self.reading = self.writing = False
        if self._mask:
            self._mask = 0
            # The socket is never duplicated: closing it leaves the epoll set.
            self.session._watcher.remove_closing(self.fd)
        if self.sock is not None:
            self.sock.close()

    def _release(self) -> None:
        """Drop what this side read and the peer has not taken (and its pipe)."""
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None
        self.backlog = None
        self.piped = 0

    # == transport mode (asyncio.Protocol) ==============================================
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but behave as one.
        t = cast(asyncio.Transport, transport)
        self._transport = t
        t.set_write_buffer_limits(high=self.high_water, low=self.high_water // 2)
        if not self.session.linked:
            t.pause_reading()  # read nothing until both ends exist

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if peer is not None and peer.writable:
            peer._transport.write(data)  # type: ignore[union-attr]
        elif not self.session.linked:
            # Some loops start reading right after connection_made even when it
            # paused: keep the bytes for link() and stop reading.
            self.pending.append(data)
            if self._transport is not None:
                self._transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.session._on_eof(self)
        return True  # keep the transport open: the other direction may go on

    def pause_writing(self) -> None:
        # Our output is full: stop reading from the side that fills it.
        peer = self.peer
        if peer is not None and peer._transport is not None and not peer.lost:
            peer._transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer._transport is not None and not peer.lost:
            peer._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable = False
        self.session._on_lost(self, exc)

    def _shut_write(self) -> None:
        """Pass a FIN on (after what is buffered); no more writes to this side."""
        self.writable = False
        self.shut = True
        t = self._transport
        if t is not None:
            if not self.lost:
                t.write_eof()
        elif self.sock is not None and not self.closed:
            self.sock.shutdown(_SHUT_WR)

    def _reset_on_close(self) -> None:
        """Make this side's close a reset (``SO_LINGER`` 0), in either mode."""
        sock: Any = self.sock
        if sock is None and self._transport is not None and not self.lost:
            sock = self._transport.get_extra_info("socket")
        if sock is None or self.closed:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # already gone: nothing to reset

    def _close(self, abort: bool) -> None:
        t = self._transport
        self.writable = False
        if t is not None and not self.lost:
            if abort:
                t.abort()
            else:
                t.close()


class Session:
    """A frontend and a backend connection relaying to each other.

    Socket mode: create it in the loop's thread with the accepted socket
    (``sock=``), call :meth:`connect` (again after a failure, to try another
    server), then :meth:`link` once connected.

    Transport mode: create it, connect the backend with :attr:`back` as its protocol
    (:meth:`reset_backend` before each attempt), wrap the client's transport with
    :attr:`front` as its protocol, then call :meth:`link`.

    ``on_close(session)`` runs once, in the loop thread, when both sides are gone.
    """

    __slots__ = (
        "__weakref__",
        "_connect_cb",
        "_connect_timer",
        "_connecting",
        "_idle_handle",
        "_idle_mark",
        "_loop",
        "_timers",
        "_watcher",
        "back",
        "client",
        "closed",
        "closing",
        "el",
        "front",
        "half_closed_timeout",
        "id",
        "linked",
        "on_close",
        "server",
        "socket_mode",
        "timeout",
    )

    def __init__(
        self,
        el: EventLoop,
        client: tuple[Any, ...],
        in_buffer_size: int,
        out_buffer_size: int,
        timeout_ms: int,
        on_close: Callable[[Session], None],
        *,
        sock: _socket.socket | None = None,
        half_closed_timeout_ms: int | None = None,
    ) -> None:
        self.id = next(_session_ids)
        self.el = el
        self._loop = el.loop
        self.client = client
        # Data from the client is written to the backend: its buffer is the "in" one.
        self.front = Connection(self, out_buffer_size, sock)
        self.back = Connection(self, in_buffer_size)
        self.front.peer = self.back
        self.back.peer = self.front
        self.socket_mode = sock is not None
        # Socket mode only (a transport-mode session never touches it).
        self._watcher: FdWatcher = el.watcher if sock is not None else _NO_WATCHER
        self.server: Any = None
        self.timeout = timeout_ms
        self.half_closed_timeout = (
            (timeout_ms if timeout_ms < HALF_CLOSED_TIMEOUT_MS else HALF_CLOSED_TIMEOUT_MS)
            if half_closed_timeout_ms is None
            else half_closed_timeout_ms
        )
        self.on_close = on_close
        self.closed = False
        self.closing = False
        self.linked = False
        self._timers: CoarseTimers = el.timers
        self._idle_handle = -1  # key in _timers of the idle check, -1: none
        self._idle_mark = -1
        self._connecting: _socket.socket | None = None
        self._connect_timer = -1  # key in _timers of the connect deadline, -1: none
        self._connect_cb: Callable[[OSError | None], None] | None = None

    def __repr__(self) -> str:
        return f"Session({self.id}, client={self.client}, server={self.server})"

    @property
    def bytes_from_client(self) -> int:
        """Bytes read from the client."""
        return self.front.bytes_in

    @property
    def bytes_from_server(self) -> int:
        """Bytes read from the backend."""
        return self.back.bytes_in

    # -- connecting (socket mode) -----------------------------------------------------
    def connect(
        self,
        host: str,
        port: int,
        timeout: float,
        on_done: Callable[[OSError | None], None],
        *,
        client_first: bool = False,
    ) -> None:
        """Connect the backend side to ``host:port`` (an IP address), socket mode.

        ``on_done(None)`` runs once connected (possibly before this returns);
        ``on_done(error)`` when the connect failed or took longer than ``timeout``
        seconds (a later call may then try another server). ``on_done`` is not
        called once the session is closed.

        ``client_first``: what the client already sent is read now and written to
        the backend as the connect's first test (see :meth:`_send_first`); without
        it nothing is read from either side before :meth:`link`.
        """
        if self.closed or self.closing:
            return
        try:
            sock = _socket.socket(_AF_INET6 if ":" in host else _AF_INET, _SOCK_STREAM_NB)
        except OSError as exc:
            on_done(exc)
            return
        try:
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
            err = sock.connect_ex((host, port))
        except OSError as exc:
            sock.close()
            on_done(exc)
            return
        if err != 0 and err != _EINPROGRESS:
            sock.close()
            on_done(OSError(err, os.strerror(err)))
            return
        self._connecting = sock
        self._connect_cb = on_done
        if client_first:
            try:
                sent = self._send_first(sock)
            except OSError as exc:  # the connect failed (refused, unreachable)
                self._connecting = None
                self._connect_cb = None
                sock.close()
                on_done(exc)
                return
            if sent > 0:
                self._connected(sock)
                return
            if sent < 0:
                return  # reading the client failed: the session is gone
        self._watcher.add(sock.fileno(), _WRITABLE, self._connect_ready)
        self._connect_timer = self._timers.add(timeout, self)

    def _send_first(self, sock: _socket.socket) -> int:
        """Write what the client sent so far to the backend still connecting.

        1 when the backend took some of it: it is connected. On loopback and to
        a near backend the handshake is often over when ``connect()`` returns (the
        kernel runs it in that very system call), so one read and one write here,
        which the relay makes anyway, save watching the connect and a round of the
        loop for it and for the client's first bytes. Bytes not written yet stay
        in ``front.backlog``, for :meth:`link` or the next server tried. 0 with
        nothing to send (the client has sent nothing yet: it may wait for the
        server to speak first) or while the connect is in progress; -1 when reading
        the client failed (the session is aborted).

        Raises:
            OSError: the connect failed (the write reports it).
        """
        front = self.front
        data = front.backlog
        if data is None:
            fs = front.sock
            if fs is None:
                return 0
            size = self.back.high_water
            window = _window(self._watcher.windows, size if size > MIN_WINDOW else MIN_WINDOW)
            try:
                n = fs.recv_into(window[0])
            except _RETRY:
                return 0  # nothing yet
            except OSError as exc:
                self._fail(exc)
                return -1
            if not n:
                return 0  # the client's FIN: the relay reads it again
            front.bytes_in += n
            data = _cut(window, n)
        try:
            sent = _write(sock.fileno(), data)
        except _RETRY:
            sent = 0
        except OSError:
            if front.backlog is None:
                front.backlog = memoryview(data.tobytes())
            raise
        if sent == len(data):
            front.backlog = None
        elif data is front.backlog:
            front.backlog = data[sent:]
        else:
            front.backlog = memoryview(data[sent:].tobytes())
        return 1 if sent > 0 else 0

    def _connect_ready(self, events: int) -> None:
        sock = self._connecting
        if sock is None:
            # Connected, but link() has not been called yet: stop watching.
            back = self.back
            back.writing = False
            back._watch()
            return
        # epoll reports a failed connect with EPOLLERR: without it, the connect
        # succeeded and asking SO_ERROR is a system call for nothing. The loop's
        # own watch (the fallback) gives no event bits: ask there.
        if events & _ERRORS or not self._watcher.epoll:
            err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        else:
            err = 0
        cb = self._connect_cb
        if err:
            self._end_connect()
            sock.close()
            if cb is not None:
                cb(OSError(err, os.strerror(err)))
            return
        back = self.back
        # The connect watch stays registered, now as the backend's, until link()
        # turns it into the reader: one change instead of a removal and an addition.
        back.writing = True
        back._mask = _WRITABLE
        if self._connect_timer >= 0:
            self._timers.cancel(self._connect_timer, self)
            self._connect_timer = -1
        self._connected(sock)

    def _connected(self, sock: _socket.socket) -> None:
        back = self.back
        back.sock = sock
        back.fd = sock.fileno()
        cb = self._connect_cb
        self._connecting = None
        self._connect_cb = None
        if cb is not None:
            cb(None)

    def on_deadline(self, key: int) -> None:
        """A deadline of the loop's timers passed: the connect's or the idle check's."""
        if key == self._connect_timer:
            self._connect_timed_out()
        if key == self._idle_handle:
            self._check_idle()

    def _connect_timed_out(self) -> None:
        self._connect_timer = -1
        sock = self._connecting
        if sock is None:
            return
        cb = self._connect_cb
        self._end_connect()
        sock.close()
        if cb is not None:
            cb(TimeoutError(errno.ETIMEDOUT, "connect timed out"))

    def _end_connect(self) -> None:
        sock = self._connecting
        self._connecting = None
        self._connect_cb = None
        if sock is not None:
            self._watcher.remove(sock.fileno())
        if self._connect_timer >= 0:
            self._timers.cancel(self._connect_timer, self)
            self._connect_timer = -1

    # -- relaying ---------------------------------------------------------------------
    def reset_backend(self) -> Connection:
        """A fresh backend side (transport mode, before a connect attempt)."""
        self.back = Connection(self, self.back.high_water)
        self.back.peer = self.front
        self.front.peer = self.back
        return self.back

    def link(self, early: bytes = b"") -> None:
        """Both sides exist: start relaying and the idle timer.

        ``early`` (socket mode): bytes the client sent before the session was linked
        (after a socks5 CONNECT, say); they go to the backend first.
        """
        if self.closed or self.closing or self.linked:
            return
        if self.socket_mode:
            self._link_sockets(early)
        else:
            self._link_transports()
        if self.timeout > 0:
            self._idle_handle = self._timers.add(self.timeout / 1000, self)

    def _link_sockets(self, early: bytes) -> None:
        front, back = self.front, self.back
        fs, bs = front.sock, back.sock
        if fs is None or bs is None:
            raise RuntimeError("link() before both sockets exist")
        self.linked = True
        # A direction's window is the buffer toward its destination.
        windows = self._watcher.windows
        size = back.high_water  # (max() costs more than the rest of these lines)
        front._window = _window(windows, size if size > MIN_WINDOW else MIN_WINDOW)
        size = front.high_water
        back._window = _window(windows, size if size > MIN_WINDOW else MIN_WINDOW)
        front._recv_into, front._peer_fd = fs.recv_into, back.fd
        back._recv_into, back._peer_fd = bs.recv_into, front.fd
        if _splice.SPLICE_AVAILABLE:
            front._bulk_read = len(front._window[0]) // BULK_READ_FRACTION
            back._bulk_read = len(back._window[0]) // BULK_READ_FRACTION
        if self._watcher.epoll:
            front._reads_left = back._reads_left = PROMOTE_AFTER_READS
        if early:
            front.bytes_in += len(early)
            try:
                sent = _write(back.fd, early)
            except _RETRY:
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent != len(early):  # the backend's buffer is full: wait for it
                front.backlog = memoryview(early)[sent:]
        if front.backlog is not None:
            front._watch()  # (stop a watch that a handshake left on)
        elif front._mask == _READABLE and not front.reading:
            # Still watched from a handshake that read it: only the handler changes.
            front.reading = True
            self._watcher.set_handler(front.fd, front._handler())
        else:
            front._start_reading()
        back.reading = True
        # The connect watch becomes the reader (and the writer while early bytes wait).
        back.writing = front.backlog is not None
        back._watch()

    def _link_transports(self) -> None:
        front, back = self.front, self.back
        self.linked = True
        for c in (front, back):
            c.writable = c._transport is not None and not c.lost
        for c in (back, front):
            peer = c.peer
            assert peer is not None
            if c.pending:
                if peer.writable:
                    peer._transport.write(b"".join(c.pending))  # type: ignore[union-attr]
                c.pending.clear()
            if c.eof:  # a FIN that came before both ends existed
                self._on_eof(c)
        for c in (front, back):
            if c._transport is not None and not c.lost:
                c._transport.resume_reading()

    def _check_idle(self) -> None:
        self._idle_handle = -1
        if self.closed:
            return
        mark = self.front.bytes_in + self.back.bytes_in
        half = self.front.eof or self.back.eof
        period = self.half_closed_timeout if half else self.timeout
        if mark == self._idle_mark:
            _log.debug("session %s idle for %d ms: closing", self.id, period)
            self.abort()
            return
        self._idle_mark = mark
        self._idle_handle = self._timers.add(period / 1000, self)

    def _half_closed(self) -> None:
        """A FIN was passed on: from now the session may stay idle half_closed_timeout."""
        if self._idle_handle < 0 or self.half_closed_timeout >= self.timeout:
            return
        self._timers.cancel(self._idle_handle, self)
        self._idle_mark = self.front.bytes_in + self.back.bytes_in
        self._idle_handle = self._timers.add(self.half_closed_timeout / 1000, self)

    # socket mode
    def _on_sock_eof(self, conn: Connection) -> None:
        """``conn`` sent its FIN; nothing it sent waits (we were reading it)."""
        peer = conn.peer
        assert peer is not None
        if peer.eof:
            self.close()  # both directions ended and were flushed
            return
        try:
            peer._shut_write()
        except OSError as exc:
            self._fail(exc)
            return
        self._half_closed()

    def _drained(self, src: Connection) -> None:
        """The peer of ``src`` took everything ``src`` had read."""
        if self.closing:
            peer = src.peer
            assert peer is not None
            peer._close_sock()  # it was kept open for this flush
            self._finish_if_closed()
        else:
            src._start_reading()

    def _fail(self, exc: OSError) -> None:
        """A side broke (a reset, a broken pipe, ...): reset both, so that the other
        end does not take the cut for a clean end, and neither lingers."""
        _log.debug("session %s: %s", self.id, exc)
        self.front._reset_on_close()
        self.back._reset_on_close()
        self.abort()

    # transport mode
    def _on_eof(self, conn: Connection) -> None:
        if not self.linked:
            return  # link() passes it on
        peer = conn.peer
        assert peer is not None
        if conn.eof and peer.eof:
            self.close()
        elif peer._transport is not None and peer._transport.can_write_eof():
            peer._shut_write()
            self._half_closed()
        else:
            self.close()

    def _on_lost(self, conn: Connection, exc: Exception | None) -> None:
        peer = conn.peer
        assert peer is not None
        # A clean close flushes what is buffered toward the peer; a broken side
        # passes the reset on.
        if exc is not None:
            peer._reset_on_close()
        peer._close(abort=exc is not None)
        if peer.lost or peer._transport is None:
            self._finish()

    # -- closing ----------------------------------------------------------------------
    def close(self) -> None:
        """Close both sides after flushing what is waiting for them."""
        if self.closed:
            return
        if not self.socket_mode:
            self.front._close(abort=False)
            self.back._close(abort=False)
            self._finish_if_unlinked()
            return
        self.closing = True
        front, back = self.front, self.back
        front._stop_reading()
        back._stop_reading()
        # A side closes now unless bytes from its peer are still on their way to it.
        if back.backlog is None and not back.piped:  # (not back._holding, inlined)
            front._close_sock()
        if front.backlog is None and not front.piped:
            back._close_sock()
        self._abandon_connect()
        self._finish_if_closed()

    def abort(self) -> None:
        """Close both sides now, dropping what is waiting."""
        if self.closed:
            return
        if not self.socket_mode:
            self.front._close(abort=True)
            self.back._close(abort=True)
            self._finish_if_unlinked()
            return
        self.closing = True
        self.front._close_sock()
        self.back._close_sock()
        self._abandon_connect()
        self._finish()  # (releases what was still held)

    def _abandon_connect(self) -> None:
        sock = self._connecting
        if sock is not None:
            self._end_connect()
            sock.close()

    def _finish_if_closed(self) -> None:
        front, back = self.front, self.back
        if (front.closed or front.sock is None) and (back.closed or back.sock is None):
            self._finish()

    def _finish_if_unlinked(self) -> None:
        # A side that never got a transport will never report connection_lost.
        front, back = self.front, self.back
        if front._transport is None or back._transport is None:
            front_done = front._transport is None or front.lost
            back_done = back._transport is None or back.lost
            if front_done and back_done:
                self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        if self.socket_mode:
            self.front._release()
            self.back._release()
        if self._idle_handle >= 0:
            self._timers.cancel(self._idle_handle, self)
            self._idle_handle = -1
        try:
            self.on_close(self)
        except Exception:
            _log.exception("session close hook failed")
        if self.socket_mode:
            # Break the session's reference cycles (session <-> connections, and
            # the two peers): it is then freed by reference counting when its
            # last holder lets go, and never makes the cyclic GC run (which was
            # ~5% of the instructions of a Connection: close session).
            front, back = self.front, self.back
            front.peer = back.peer = None
            front.session = back.session = _NO_SESSION


class _NoWatcher(FdWatcher):
    """A transport-mode session's watcher: never used (it has no socket to watch), and
    a FdWatcher with no attribute set, not None, which compiled code would refuse."""

    __slots__ = ()

    def __init__(self) -> None:
        pass


_NO_WATCHER: Final[FdWatcher] = _NoWatcher()


class _NoSession(Session):
    """What a finished socket-mode session's connections point to instead of it: a
    Session with no attribute set (None would not be a Session, which compiled code
    checks)."""

    __slots__ = ()

    def __init__(self) -> None:
        pass


_NO_SESSION: Final[Session] = _NoSession()
