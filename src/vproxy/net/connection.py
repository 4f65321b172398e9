"""Connections and the two-way relay between them (SPEC §1 "connection", "Proxy").

Owns: :class:`Connection`, an asyncio protocol that counts bytes and forwards what it
reads straight to its peer's transport, and :class:`Session`, the pair (frontend,
backend) with its life cycle: half-close passed through, both-sides-done close, error
propagation and the idle timeout.

Backpressure is explicit (uvicorn ``flow_control``, aiohttp ``BaseProtocol``): each
transport's write buffer has a high-water mark (the tcp-lb's ``in-buffer-size`` toward
the backend, ``out-buffer-size`` toward the client); when a transport goes above it the
loop calls ``pause_writing`` and we stop *reading the peer*; below the low-water mark
we resume. A session therefore holds at most about ``in + out`` buffered bytes plus one
read chunk per direction, however fast one side sends and slowly the other reads.

Must not: choose backends or parse protocols; it moves bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from vproxy.net.event_loop import EventLoop

__all__ = ["Connection", "Session"]

_log = logging.getLogger("vproxy.net")

_session_ids = itertools.count(1)


class Connection(asyncio.Protocol):
    """One side of a session: reads from its transport, writes into the peer's.

    ``writable`` is True while bytes may be written to this side: from
    :meth:`Session.link` until this side is half-closed, closed or lost. Bytes read
    before the session is linked wait in ``pending``; bytes for a side that is no
    longer writable (it closed under us) are dropped, as the kernel would.
    """

    __slots__ = (
        "bytes_in",
        "eof",
        "high_water",
        "lost",
        "peer",
        "pending",
        "session",
        "transport",
        "writable",
    )

    def __init__(self, session: Session, high_water: int) -> None:
        self.session = session
        self.high_water = high_water
        self.transport: asyncio.Transport | None = None
        self.peer: Connection | None = None
        self.bytes_in = 0
        self.eof = False
        self.lost = False
        self.writable = False
        self.pending: list[bytes] = []

    def itself(self) -> Connection:
        """A protocol factory that returns this connection (for create_connection)."""
        return self

    @property
    def bytes_out(self) -> int:
        """Bytes written toward this side's socket (what the peer read)."""
        return self.peer.bytes_in if self.peer is not None else 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but behave as one.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.high_water, low=self.high_water // 2)
        if not self.session.linked:
            transport.pause_reading()  # read nothing until both ends exist

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        peer = self.peer
        if peer is not None and peer.writable:
            peer.transport.write(data)  # type: ignore[union-attr]
        elif not self.session.linked:
            # Some loops start reading right after connection_made even when it
            # paused: keep the bytes for link() and stop reading.
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.session._on_eof(self)
        return True  # keep the transport open: the other direction may go on

    def pause_writing(self) -> None:
        # Our output is full: stop reading from the side that fills it.
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.writable = False
        self.session._on_lost(self, exc)

    def _shut_write(self) -> None:
        """Pass a FIN on (after what is buffered); no more writes to this side."""
        t = self.transport
        self.writable = False
        if t is not None and not self.lost:
            t.write_eof()

    def _close(self, abort: bool) -> None:
        t = self.transport
        self.writable = False
        if t is not None and not self.lost:
            if abort:
                t.abort()
            else:
                t.close()


class Session:
    """A frontend and a backend connection relaying to each other.

    Create it, connect the backend with :attr:`back` as its protocol, wrap the
    accepted socket with :attr:`front` as its protocol, then call :meth:`link`.
    ``on_close(session)`` runs once, in the loop thread, when both transports are
    gone.
    """

    __slots__ = (
        "__weakref__",
        "_idle_handle",
        "_idle_mark",
        "_loop",
        "back",
        "client",
        "closed",
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
        # Data from the client is written to the backend: its buffer is the "in" one.
        self.front = Connection(self, out_buffer_size)
        self.back = Connection(self, in_buffer_size)
        self.front.peer = self.back
        self.back.peer = self.front
        self.server: Any = None
        self.timeout = timeout_ms
        self.on_close = on_close
        self.closed = False
        self.linked = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_mark = -1

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

    def reset_backend(self) -> Connection:
        """A fresh backend side (before a connect attempt; the last one failed)."""
        self.back = Connection(self, self.back.high_water)
        self.back.peer = self.front
        self.front.peer = self.back
        return self.back

    def link(self) -> None:
        """Both transports exist: start relaying and the idle timer."""
        front, back = self.front, self.back
        self.linked = True
        for c in (front, back):
            c.writable = c.transport is not None and not c.lost
        for c in (back, front):
            peer = c.peer
            assert peer is not None
            if c.pending:
                if peer.writable:
                    peer.transport.write(b"".join(c.pending))  # type: ignore[union-attr]
                c.pending.clear()
            if c.eof:  # a FIN that came before both ends existed
                self._on_eof(c)
        for c in (front, back):
            if c.transport is not None and not c.lost:
                c.transport.resume_reading()
        if self.timeout > 0:
            self._idle_handle = self._loop.call_later(self.timeout / 1000, self._check_idle)

    def _check_idle(self) -> None:
        mark = self.front.bytes_in + self.back.bytes_in
        if mark == self._idle_mark:
            _log.debug("session %s idle for %d ms: closing", self.id, self.timeout)
            self.abort()
            return
        self._idle_mark = mark
        self._idle_handle = self._loop.call_later(self.timeout / 1000, self._check_idle)

    def _on_eof(self, conn: Connection) -> None:
        if not self.linked:
            return  # link() passes it on
        peer = conn.peer
        assert peer is not None
        if conn.eof and peer.eof:
            self.close()
        elif peer.transport is not None and peer.transport.can_write_eof():
            peer._shut_write()
        else:
            self.close()

    def _on_lost(self, conn: Connection, exc: Exception | None) -> None:
        peer = conn.peer
        assert peer is not None
        # A clean close flushes what is buffered toward the peer; a broken side
        # passes the reset on.
        peer._close(abort=exc is not None)
        if peer.lost or peer.transport is None:
            self._finish()

    def close(self) -> None:
        """Close both sides after flushing what is buffered."""
        self.front._close(abort=False)
        self.back._close(abort=False)
        self._finish_if_unlinked()

    def abort(self) -> None:
        """Close both sides now, dropping buffered data."""
        self.front._close(abort=True)
        self.back._close(abort=True)
        self._finish_if_unlinked()

    def _finish_if_unlinked(self) -> None:
        # A side that never got a transport will never report connection_lost.
        front, back = self.front, self.back
        if front.transport is None or back.transport is None:
            front_done = front.transport is None or front.lost
            back_done = back.transport is None or back.lost
            if front_done and back_done:
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
