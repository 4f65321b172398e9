"""Connections and the two-way relay between them (SPEC §1 "connection", "Proxy").

Owns: :class:`Connection`, one non-blocking socket of a session with the bytes read
from it, and :class:`Session`, the pair (frontend, backend) with its life cycle:
connecting the backend (with a timeout), half-close passed through, both-sides-done
close, error propagation and the idle timeout.

The relay works on the sockets themselves (``add_reader``/``add_writer``), not on
asyncio transports: a readable socket is read into a per-thread scratch buffer and
the bytes are sent to the peer at once, so in the common case nothing is buffered
in Python at all. Directions that carry bulk data switch to ``os.splice`` through a
pipe (see :mod:`vproxy.net.splice`), which moves the bytes without copying them into
the process. ``docs/performance.md`` has the measurements behind these choices.

Backpressure is explicit: each direction holds at most one *window* of bytes the
peer has not taken yet (the rest of one read, or the content of its pipe). While it
holds any, reading that side stops and the peer is watched for writability; once
the peer took everything, reading resumes. The window is the tcp-lb's
``in-buffer-size`` (client → backend) or ``out-buffer-size`` (backend → client),
raised to :data:`MIN_WINDOW` so that bulk transfers do not pay one system call per
few kilobytes. A session therefore holds at most two windows, however fast one side
sends and slowly the other reads.

Must not: choose backends or parse protocols; it moves bytes.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vproxy.net import splice as _splice

if TYPE_CHECKING:
    from vproxy.net.event_loop import EventLoop

__all__ = ["MIN_WINDOW", "Connection", "Session"]

_log = logging.getLogger("vproxy.net")

_session_ids = itertools.count(1)

#: Smallest per-direction window (bytes): one read, or one pipe.
MIN_WINDOW = 256 * 1024
#: A direction moves to splice after this many full-window reads in a row.
SPLICE_AFTER_FULL_READS = 1

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_SOCK_STREAM_NB = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_IPPROTO_TCP = socket.IPPROTO_TCP
_TCP_NODELAY = socket.TCP_NODELAY
_SOL_SOCKET = socket.SOL_SOCKET
_SO_ERROR = socket.SO_ERROR
_SHUT_WR = socket.SHUT_WR
_EINPROGRESS = errno.EINPROGRESS
_RETRY = (BlockingIOError, InterruptedError)


class _Scratch(threading.local):
    """One read buffer per loop thread: bytes are sent on before the next read."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(MIN_WINDOW))

    def at_least(self, size: int) -> memoryview:
        if len(self.view) < size:
            self.view = memoryview(bytearray(size))
        return self.view


_scratch = _Scratch()


class Connection:
    """One side of a session: a non-blocking socket and the bytes read from it.

    ``bytes_in`` counts bytes read from this socket; ``backlog`` (copy mode) or
    ``piped`` (splice mode) is what was read here and the peer has not taken yet.
    ``eof`` is set when this side sent its FIN, ``shut`` when we passed a FIN on to
    it, ``closed`` once its socket is closed.
    """

    __slots__ = (
        "_full_reads",
        "_view",
        "backlog",
        "bytes_in",
        "closed",
        "eof",
        "fd",
        "peer",
        "pipe",
        "piped",
        "reading",
        "session",
        "shut",
        "sock",
        "window",
        "writing",
    )

    def __init__(self, session: Session, window: int, sock: _socket.socket | None = None) -> None:
        self.session = session
        self.window = window
        self.sock = sock
        self.fd = sock.fileno() if sock is not None else -1
        self.peer: Connection | None = None
        self.bytes_in = 0
        self.eof = False
        self.shut = False
        self.closed = False
        self.reading = False
        self.writing = False
        self.backlog: memoryview | None = None
        self.pipe: _splice.Pipe | None = None
        self.piped = 0
        self._full_reads = 0
        self._view: memoryview | None = None

    def __repr__(self) -> str:
        return f"Connection(fd={self.fd}, bytes_in={self.bytes_in})"

    @property
    def bytes_out(self) -> int:
        """Bytes written toward this side's socket (what the peer read)."""
        return self.peer.bytes_in if self.peer is not None else 0

    @property
    def spliced(self) -> bool:
        """True once bytes from this side go through a pipe (zero-copy)."""
        return self.pipe is not None

    # -- readiness ----------------------------------------------------------------
    def _on_readable(self) -> None:
        if self.pipe is not None:
            self._splice_in()
            return
        view = self._view
        assert view is not None
        try:
            n = self.sock.recv_into(view)  # type: ignore[union-attr]
        except _RETRY:
            return
        except OSError as exc:
            self.session._fail(exc)
            return
        if n == 0:
            self._on_eof()
            return
        self.bytes_in += n
        peer = self.peer
        try:
            sent = peer.sock.send(view[:n])  # type: ignore[union-attr]
        except _RETRY:
            sent = 0
        except OSError as exc:
            self.session._fail(exc)
            return
        if sent != n:
            self.backlog = memoryview(view[sent:n].tobytes())
            self._stop_reading()
            peer._start_writing()  # type: ignore[union-attr]
        elif n == len(view):
            self._full_reads += 1
            if self._full_reads >= SPLICE_AFTER_FULL_READS and _splice.SPLICE_AVAILABLE:
                self.pipe = _splice.new_pipe(self.window)
        else:
            self._full_reads = 0

    def _splice_in(self) -> None:
        pipe = self.pipe
        assert pipe is not None
        try:
            n = _splice.splice(self.fd, pipe.w, pipe.size, flags=_splice.SPLICE_FLAGS)
        except _RETRY:
            return
        except OSError as exc:
            self.session._fail(exc)
            return
        if n == 0:
            self._on_eof()
            return
        self.bytes_in += n
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
            self._stop_reading()
            peer._start_writing()

    def _on_writable(self) -> None:
        """This socket can take more of what the peer read."""
        src = self.peer
        assert src is not None
        if src.pipe is not None and src.piped:
            try:
                sent = _splice.splice(src.pipe.r, self.fd, src.piped, flags=_splice.SPLICE_FLAGS)
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
        self._stop_writing()
        self.session._drained(src)

    def _on_eof(self) -> None:
        self.eof = True
        self._stop_reading()
        self.session._on_eof(self)

    # -- registration -------------------------------------------------------------
    def _start_reading(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.session._loop.add_reader(self.fd, self._on_readable)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.session._loop.remove_reader(self.fd)

    def _start_writing(self) -> None:
        if not self.writing and not self.closed:
            self.writing = True
            self.session._loop.add_writer(self.fd, self._on_writable)

    def _stop_writing(self) -> None:
        if self.writing:
            self.writing = False
            self.session._loop.remove_writer(self.fd)

    @property
    def _holding(self) -> bool:
        """Bytes read from this side wait for the peer."""
        return self.backlog is not None or self.piped > 0

    def _shut_write(self) -> None:
        """Pass a FIN on: no more bytes will be written to this side."""
        self.shut = True
        if self.sock is not None and not self.closed:
            self.sock.shutdown(_SHUT_WR)

    def _close(self) -> None:
        """Unregister and close the socket now (dropping what waits for it)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._stop_reading()
            self._stop_writing()
        except RuntimeError:  # the loop is closed already: nothing is registered
            self.reading = self.writing = False
        if self.sock is not None:
            self.sock.close()
        if self.pipe is not None:
            self.pipe.close()
        self.backlog = None
        self.piped = 0


class Session:
    """A frontend and a backend connection relaying to each other.

    Create it in the loop's thread with the accepted socket, call :meth:`connect`
    (again after a failure, to try another server), then :meth:`link` once
    connected. ``on_close(session)`` runs once, in the loop thread, when both sockets
    are closed.
    """

    __slots__ = (
        "__weakref__",
        "_connect_cb",
        "_connect_timer",
        "_connecting",
        "_idle_handle",
        "_idle_mark",
        "_loop",
        "back",
        "client",
        "closed",
        "closing",
        "el",
        "front",
        "id",
        "linked",
        "on_close",
        "server",
        "timeout",
    )

    def __init__(
        self,
        el: EventLoop,
        sock: _socket.socket | None,
        client: tuple[Any, ...],
        in_buffer_size: int,
        out_buffer_size: int,
        timeout_ms: int,
        on_close: Callable[[Session], None],
    ) -> None:
        self.id = next(_session_ids)
        self.el = el
        self._loop = el.loop
        self.client = client
        # Bytes from the client wait for the backend: their window is the "in" buffer.
        self.front = Connection(self, max(in_buffer_size, MIN_WINDOW), sock)
        self.back = Connection(self, max(out_buffer_size, MIN_WINDOW))
        self.front.peer = self.back
        self.back.peer = self.front
        self.server: Any = None
        self.timeout = timeout_ms
        self.on_close = on_close
        self.closed = False
        self.closing = False
        self.linked = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_mark = -1
        self._connecting: _socket.socket | None = None
        self._connect_timer: asyncio.TimerHandle | None = None
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

    # -- connecting ---------------------------------------------------------------
    def connect(
        self, host: str, port: int, timeout: float, on_done: Callable[[OSError | None], None]
    ) -> None:
        """Connect the backend side to ``host:port`` (an IP address).

        ``on_done(None)`` runs in the loop once connected; ``on_done(error)`` when
        the connect failed or took longer than ``timeout`` seconds (then a later call
        may try another server). Nothing is read from either side before :meth:`link`.
        """
        if self.closed or self.closing:
            on_done(ConnectionAbortedError(errno.ECONNABORTED, "session closed"))
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
        loop = self._loop
        loop.add_writer(sock.fileno(), self._connect_ready)
        self._connect_timer = loop.call_later(timeout, self._connect_timed_out)

    def _connect_ready(self) -> None:
        sock = self._end_connect()
        if sock is None:
            return
        err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        cb = self._connect_cb
        self._connect_cb = None
        if err:
            sock.close()
            if cb is not None:
                cb(OSError(err, os.strerror(err)))
            return
        back = self.back
        back.sock = sock
        back.fd = sock.fileno()
        if cb is not None:
            cb(None)

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        sock = self._end_connect()
        if sock is None:
            return
        sock.close()
        cb = self._connect_cb
        self._connect_cb = None
        if cb is not None:
            cb(TimeoutError(errno.ETIMEDOUT, "connect timed out"))

    def _end_connect(self) -> _socket.socket | None:
        sock = self._connecting
        if sock is None:
            return None
        self._connecting = None
        try:
            self._loop.remove_writer(sock.fileno())
        except RuntimeError:
            pass
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        return sock

    # -- relaying -----------------------------------------------------------------
    def link(self) -> None:
        """Both sockets exist: start relaying and the idle timer."""
        front, back = self.front, self.back
        if self.closed or self.closing or front.sock is None or back.sock is None:
            return
        self.linked = True
        scratch = _scratch
        front._view = scratch.at_least(front.window)[: front.window]
        back._view = scratch.at_least(back.window)[: back.window]
        front._start_reading()
        back._start_reading()
        if self.timeout > 0:
            self._idle_handle = self._loop.call_later(self.timeout / 1000, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_handle = None
        if self.closed:
            return
        mark = self.front.bytes_in + self.back.bytes_in
        if mark == self._idle_mark:
            _log.debug("session %s idle for %d ms: closing", self.id, self.timeout)
            self.abort()
            return
        self._idle_mark = mark
        self._idle_handle = self._loop.call_later(self.timeout / 1000, self._check_idle)

    def _on_eof(self, conn: Connection) -> None:
        """``conn`` sent its FIN; nothing it sent is waiting (we were reading it)."""
        peer = conn.peer
        assert peer is not None
        if peer.eof:
            self.close()  # both directions ended and were flushed
            return
        try:
            peer._shut_write()
        except OSError as exc:
            self._fail(exc)

    def _drained(self, src: Connection) -> None:
        """The peer of ``src`` took everything ``src`` had read."""
        if self.closing:
            peer = src.peer
            assert peer is not None
            peer._close()
            self._finish_if_closed()
        else:
            src._start_reading()

    def _fail(self, exc: OSError) -> None:
        _log.debug("session %s: %s", self.id, exc)
        self.abort()

    def close(self) -> None:
        """Close both sides after flushing what is waiting for them."""
        if self.closed:
            return
        self.closing = True
        front, back = self.front, self.back
        front._stop_reading()
        back._stop_reading()
        # A side closes now unless its peer's bytes are still on their way to it.
        if not back._holding:
            front._close()
        if not front._holding:
            back._close()
        self._abandon_connect()
        self._finish_if_closed()

    def abort(self) -> None:
        """Close both sides now, dropping what is waiting."""
        if self.closed:
            return
        self.closing = True
        self.front._close()
        self.back._close()
        self._abandon_connect()
        self._finish()

    def _abandon_connect(self) -> None:
        sock = self._end_connect()
        if sock is not None:
            sock.close()
        self._connect_cb = None

    def _finish_if_closed(self) -> None:
        front, back = self.front, self.back
        if (front.closed or front.sock is None) and (back.closed or back.sock is None):
            self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        try:
            self.on_close(self)
        except Exception:
            _log.exception("session close hook failed")
