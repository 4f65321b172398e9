"""The frame mode of a tcp-lb: ``dubbo``, ``framed-int32`` and user-registered processors.

Owns: driving a sans-IO processor (:mod:`vproxy.processor.base`) over real
connections, as ``docs/processors.md`` describes: a frontend context per client
connection; backend connections pooled per (event loop, server) and shared by every
client of that loop; each frame sent where the upstream points (the frame's hint as
the hint), responses handed back to the client they name; backpressure both ways;
idle timeouts for clients and pooled backend connections; and what happens when a
backend connection is lost, drains, breaks the protocol, or cannot be had at all.

Must not: parse any protocol (the processors do), choose servers by itself (the
upstream does, through :func:`vproxy.app.l7.base.choose_server`), or touch a
connection from a thread other than its event loop's.

How the pieces fit:

* :class:`FrameMode` holds one processor (created once) and one :class:`_Pool` per
  event loop. A pool maps each server to the backend connection new frames go to;
  a draining connection leaves the map but stays open until its requests are
  answered.
* A backend connection accepts frames while it connects: they wait in its queue and
  are sent when it is up. If the connect fails, the queued frames are sent again to
  another server (``choose_server`` with the failed ones as tried); when none is
  left, the client is closed and ``lb.proxy.failed_no_backend`` counts it.
* A client has at most ``max_pipelined`` requests on backends; frames parsed beyond
  that wait (parked) in order and the client is not read until responses come back.
  It is also not read while its own output is over the high-water mark, or while the
  backend connection of its latest frame is; a client whose output grows past one
  maximal frame over the mark (it does not read) is closed.
* A backend connection lost or broken closes the clients still waiting on it (their
  protocols have no way to say "retry"); responses completed before a protocol error
  are delivered first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from vproxy.app.l7.base import L7Session, choose_server, open_connection, tls_info
from vproxy.component.server_group import Server
from vproxy.net.event_loop import EventLoop
from vproxy.processor.base import (
    BackendContext,
    ConnectionInfo,
    Draining,
    Frame,
    FrontendContext,
    Limits,
    Processor,
    ProtocolError,
    Response,
    get_processor,
)

if TYPE_CHECKING:
    from vproxy.app.tcp_lb import TcpLB

__all__ = ["FrameMode"]

_log = logging.getLogger("vproxy.app")

_Touched = dict["_Backend", None]
"""Backend connections written to during one step, flushed once at its end (ordered)."""

OUTBOUND_SLACK: Final = 64 * 1024
"""Bytes allowed beyond one maximal frame over a client's high-water mark."""


class FrameMode:
    """The tcp-lb mode for a processor name (``dubbo``, ``framed-int32``, custom).

    Attributes:
        name: The ``protocol`` value (the processor's name).
        alpn: Nothing: these protocols have no ALPN id.
        processor: The processor every connection of this mode uses.
    """

    __slots__ = ("_pools", "alpn", "name", "processor")

    def __init__(self, name: str) -> None:
        """Create the mode and its processor.

        Raises:
            ProcessorNotFound: No processor has that name.
        """
        self.name = name
        self.alpn: tuple[str, ...] = ()
        self.processor = get_processor(name, Limits())
        self._pools: dict[EventLoop, _Pool] = {}

    def __repr__(self) -> str:
        return f"FrameMode({self.name!r})"

    def new_frontend(self, lb: TcpLB, el: EventLoop, session: L7Session) -> asyncio.Protocol:
        """The protocol for one accepted client connection (called in ``el``'s thread)."""
        pool = self._pools.get(el)
        if pool is None:
            pool = self._pools.setdefault(el, _Pool(self.processor, el))
        return _Client(lb, pool, session)

    def close(self) -> None:
        """Stop using the pooled backend connections (thread-safe; each on its loop).

        Idle ones close now, the others once their requests are answered.
        """
        for el, pool in list(self._pools.items()):
            try:
                el.call_soon(pool.close_all)
            except Exception:  # the loop is gone, and its connections with it
                _log.debug("%s: loop %s gone before its pool closed", self, el)

    def backend_connections(self) -> list[_Backend]:
        """Open or connecting backend connections of every loop (a snapshot, for tests
        and inspection)."""
        return [b for pool in list(self._pools.values()) for b in list(pool.live)]


class _Pool:
    """The backend connections of one mode on one event loop."""

    __slots__ = ("by_server", "el", "live", "processor", "tasks")

    def __init__(self, processor: Processor, el: EventLoop) -> None:
        self.processor = processor
        self.el = el
        self.by_server: dict[Server, _Backend] = {}  # where new frames for a server go
        self.live: set[_Backend] = set()  # every connection not closed yet, draining too
        self.tasks: set[asyncio.Task[None]] = set()  # connects in flight

    def backend_for(self, lb: TcpLB, server: Server) -> _Backend:
        """The shared connection to ``server``, opened now if there is none usable.

        Raises:
            Exception: Whatever the processor's ``new_backend`` raised (a bug in it).
        """
        be = self.by_server.get(server)
        if be is not None:
            return be
        ctx = self.processor.new_backend(ConnectionInfo(remote=(server.host, server.port)))
        be = _Backend(self, lb, server, ctx)
        self.by_server[server] = be
        self.live.add(be)
        task = self.el.loop.create_task(be.connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return be

    def forget(self, be: _Backend) -> None:
        """``be`` takes no new frames (draining or gone)."""
        if self.by_server.get(be.server) is be:
            del self.by_server[be.server]

    def gone(self, be: _Backend) -> None:
        """``be`` is closed."""
        self.forget(be)
        self.live.discard(be)

    def close_all(self) -> None:
        """Drain every connection: no new frames, closed once answered."""
        for be in list(self.live):
            be.drain("closing")


class _Idle:
    """An idle timer: closes its owner when no byte moved for a whole period."""

    __slots__ = ("_handle", "_loop", "_mark", "_owner", "_period")

    def __init__(self, owner: _Client | _Backend, timeout_ms: int) -> None:
        self._owner = owner
        self._period = timeout_ms / 1000
        self._loop = asyncio.get_running_loop()
        self._mark = -1
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(self._period, self._check)

    def _check(self) -> None:
        self._handle = None
        mark = self._owner.bytes_moved()
        if mark == self._mark:
            self._owner.idle_out()
            return
        self._mark = mark
        self._handle = self._loop.call_later(self._period, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _Client(asyncio.Protocol):
    """One client connection: its frontend context, parked frames and backpressure."""

    __slots__ = (
        "blocked_on",
        "closed",
        "current",
        "eof",
        "fe",
        "idle",
        "inflight",
        "lb",
        "max_outbound",
        "max_pipelined",
        "parked",
        "pool",
        "reading_paused",
        "session",
        "source",
        "transport",
        "used",
        "writing_paused",
    )

    def __init__(self, lb: TcpLB, pool: _Pool, session: L7Session) -> None:
        self.lb = lb
        self.pool = pool
        self.session = session
        self.fe: FrontendContext | None = None
        self.transport: asyncio.Transport | None = None
        self.source: str | None = str(session.client[0]) if session.client else None
        self.current: _Backend | None = None  # where the latest frame went
        self.used: set[_Backend] = set()  # every backend connection given a frame
        self.blocked_on: _Backend | None = None  # over its high-water mark: wait for it
        self.parked: deque[Frame] = deque()
        self.inflight = 0  # frames on backends that expect a response
        self.max_pipelined = max(1, lb.l7_limits.max_pipelined)
        max_frame = pool.processor.limits.max_frame_size
        self.max_outbound = lb.out_buffer_size + max_frame + OUTBOUND_SLACK
        self.reading_paused = False
        self.writing_paused = False
        self.eof = False
        self.closed = False
        self.idle: _Idle | None = None

    def __repr__(self) -> str:
        return f"_Client({self.session.id}, {self.session.client})"

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.session.front.transport = transport
        sni, _ = tls_info(transport)
        info = ConnectionInfo(
            remote=_addr(transport.get_extra_info("peername")),
            local=_addr(transport.get_extra_info("sockname")),
            server_name=sni,
        )
        try:
            self.fe = self.pool.processor.new_frontend(info)
        except Exception:
            _log.exception("%s: processor %s failed on a new client", self.lb.name, self.lb.mode)
            self.closed = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=self.lb.out_buffer_size)
        self.idle = _Idle(self, self.lb.timeout)

    def data_received(self, data: bytes) -> None:
        fe = self.fe
        if self.closed or fe is None:
            return
        self.session.front.bytes_in += len(data)
        error: ProtocolError | None = None
        try:
            frames = fe.receive_data(data)
        except ProtocolError as exc:
            frames = [f for f in exc.events if isinstance(f, Frame)]
            error = exc
        except Exception:
            _log.exception("%s: processor failed on client data", self.lb.name)
            self.abort()
            return
        if frames:
            self.take(frames)
        self.write_out()
        if error is not None:
            _log.debug("%s: client %s: %s", self.lb.name, self.session.client, error.message)
            if not self.closed and error.wire:
                self._write(error.wire)
            self.close()
            return
        self.update_reading()

    def eof_received(self) -> bool:
        self.eof = True
        # Keep the connection for the answers still due; close once they are out.
        return not self.done_after_eof()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        self.parked.clear()
        self.current = self.blocked_on = None
        used, self.used = self.used, set()
        for be in used:
            if be.draining:
                be.close_if_unwanted()
        self.session.finish()

    # -- frames out -----------------------------------------------------------------------

    def take(self, frames: list[Frame]) -> None:
        """Send (or park) the frames just parsed, in order; flush each backend once."""
        touched: _Touched = {}
        parked = self.parked
        limit = self.max_pipelined
        for frame in frames:
            if self.closed:
                break
            if parked or (frame.expects_response and self.inflight >= limit):
                parked.append(frame)
            else:
                self.send(frame, touched)
        _flush(touched)

    def send_parked(self, touched: _Touched) -> None:
        parked = self.parked
        limit = self.max_pipelined
        while parked and not self.closed:
            if parked[0].expects_response and self.inflight >= limit:
                return
            self.send(parked.popleft(), touched)

    def send(self, frame: Frame, touched: _Touched) -> None:
        """One frame to its backend connection (the upstream's choice, or the current
        one when the frame must follow the previous)."""
        self.session.requests += 1
        if frame.expects_response:
            self.inflight += 1
        current = self.current
        if not frame.new_backend and current is not None:
            if current.closed:
                self.close()
                return
            current.send(frame, self, [], touched)
        else:
            self.dispatch(frame, [], touched)

    def dispatch(self, frame: Frame, tried: list[Server], touched: _Touched) -> None:
        """Send ``frame`` to the server the upstream picks, avoiding ``tried``."""
        server = choose_server(self.lb, self.source, frame.hint, tried)
        if server is None:
            self.lb.proxy.failed_no_backend += 1
            _log.debug(
                "%s: no backend for a frame of %s (hint %r, %d tried)",
                self.lb.name,
                self.session.client,
                frame.hint,
                len(tried),
            )
            self.close()
            return
        try:
            be = self.pool.backend_for(self.lb, server)
        except Exception:
            _log.exception("%s: processor failed on a new backend connection", self.lb.name)
            self.abort()
            return
        self.current = be
        self.session.server = server
        be.send(frame, self, tried, touched)

    def resend(
        self, frame: Frame, failed: _Backend, tried: list[Server], touched: _Touched
    ) -> None:
        """A frame queued on a connection that never came up: send it elsewhere."""
        current = self.current
        if not frame.new_backend and current is not None and current is not failed:
            if current.closed:
                self.close()
                return
            current.send(frame, self, [], touched)
        else:
            self.dispatch(frame, tried, touched)

    # -- responses in ---------------------------------------------------------------------

    def deliver(self, response: Response) -> bool:
        """Hand a response to the frontend context; ``False`` if the client is closed."""
        fe = self.fe
        if self.closed or fe is None:
            return False
        try:
            fe.receive_response(response)
        except ProtocolError as exc:  # a processor bug: this client cannot go on
            _log.warning("%s: response refused for %s: %s", self.lb.name, self, exc.message)
            self.close()
            return False
        self.inflight -= 1
        self.session.back.bytes_in += len(response.data)
        return True

    def responses_delivered(self) -> None:
        """After a backend read: write out, send parked frames, maybe read again."""
        if self.closed:
            return
        self.write_out()
        if self.parked:
            touched: _Touched = {}
            self.send_parked(touched)
            _flush(touched)
        if self.eof and self.done_after_eof():
            self.close()
            return
        self.update_reading()

    def write_out(self) -> None:
        fe = self.fe
        if fe is None or self.closed:
            return
        data = fe.data_to_send()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            return
        t.write(data)
        self.session.front.bytes_out += len(data)
        if t.get_write_buffer_size() > self.max_outbound:
            _log.debug("%s: %s does not read its responses: closing", self.lb.name, self)
            self.abort()

    # -- flow control and closing ---------------------------------------------------------

    def update_reading(self) -> None:
        """Read the client only while it may send more: see the module docstring."""
        t = self.transport
        fe = self.fe
        if t is None or fe is None or self.closed:
            return
        blocked = self.current
        if blocked is not None and not blocked.writing_paused:
            blocked = None
        if blocked is not None:
            blocked.blocked.add(self)
        self.blocked_on = blocked
        pause = self.writing_paused or blocked is not None or fe.waiting >= self.max_pipelined
        if pause != self.reading_paused:
            self.reading_paused = pause
            if pause:
                t.pause_reading()
            else:
                t.resume_reading()

    def done_after_eof(self) -> bool:
        fe = self.fe
        return fe is None or (fe.waiting == 0 and not self.parked)

    def bytes_moved(self) -> int:
        front = self.session.front
        return front.bytes_in + front.bytes_out

    def idle_out(self) -> None:
        _log.debug("%s: %s idle for %d ms: closing", self.lb.name, self, self.lb.timeout)
        self.abort()

    def close(self) -> None:
        """Close after what is already written (connection_lost finishes the session)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close now, dropping unsent bytes."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Backend(asyncio.Protocol):
    """One backend connection, shared by the clients of one event loop."""

    __slots__ = (
        "_loop",
        "blocked",
        "bytes_in",
        "bytes_out",
        "closed",
        "ctx",
        "draining",
        "idle",
        "lb",
        "pool",
        "queued",
        "server",
        "transport",
        "writing_paused",
    )

    def __init__(self, pool: _Pool, lb: TcpLB, server: Server, ctx: BackendContext) -> None:
        self.pool = pool
        self._loop = pool.el.loop  # the control plane aborts server sessions on it
        self.lb = lb
        self.server = server
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        # frames accepted while connecting: (frame, client, servers tried for it)
        self.queued: list[tuple[Frame, _Client, list[Server]]] = []
        self.blocked: set[_Client] = set()  # clients not read while we are over the mark
        self.draining = False
        self.closed = False
        self.writing_paused = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.idle: _Idle | None = None

    def __repr__(self) -> str:
        return f"_Backend({self.server.address_text}, outstanding={self.ctx.outstanding})"

    async def connect(self) -> None:
        """Open the connection; on failure send what was queued elsewhere."""
        try:
            await open_connection(self.pool.el.loop, self.server, lambda: self)
        except OSError as exc:
            _log.debug("%s: connect to %s failed: %r", self.lb.name, self.server, exc)
            self._connect_failed()

    def _connect_failed(self) -> None:
        self.closed = True
        self.pool.gone(self)
        queued, self.queued = self.queued, []
        touched: _Touched = {}
        for frame, client, tried in queued:
            if not client.closed:
                client.resend(frame, self, [*tried, self.server], touched)
        _flush(touched)

    def send(self, frame: Frame, client: _Client, tried: list[Server], touched: _Touched) -> None:
        """Send ``client``'s frame here (queued while connecting)."""
        if self.transport is None:
            self.queued.append((frame, client, tried))
            return
        try:
            self.ctx.send_frame(frame, client)
        except ProtocolError as exc:
            _log.warning("%s: frame refused on %s: %s", self.lb.name, self, exc.message)
            client.close()
            return
        client.session.back.bytes_out += len(frame.data)
        client.used.add(self)
        touched[self] = None

    def flush(self) -> None:
        """Write what the backend context has queued."""
        data = self.ctx.data_to_send()
        t = self.transport
        if data and t is not None and not self.closed:
            t.write(data)
            self.bytes_out += len(data)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.server.session_opened(self)
        transport.set_write_buffer_limits(high=self.lb.out_buffer_size)
        self.idle = _Idle(self, self.lb.timeout)
        queued, self.queued = self.queued, []
        touched: _Touched = {}
        for frame, client, tried in queued:
            if not client.closed:
                self.send(frame, client, tried, touched)
        self.flush()
        if self.draining and self.ctx.outstanding == 0:
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_in += len(data)
        error: ProtocolError | None = None
        try:
            events = self.ctx.receive_data(data)
        except ProtocolError as exc:
            events = [e for e in exc.events if isinstance(e, Response | Draining)]
            error = exc
        except Exception:
            _log.exception("%s: processor failed on data from %s", self.lb.name, self.server)
            self.abort()
            return
        served: dict[_Client, None] = {}
        for event in events:
            if isinstance(event, Response):
                client = event.origin
                if isinstance(client, _Client) and client.deliver(event):
                    served[client] = None
            else:
                self.drain(event.reason, now=False)
        self.flush()  # local answers (heartbeats) back to the backend
        for client in served:
            client.responses_delivered()
        if error is not None:
            _log.warning("%s: %s broke the protocol: %s", self.lb.name, self.server, error.message)
            self.abort()
        elif self.draining and self.ctx.outstanding == 0:
            self.close()

    def drain(self, reason: str, now: bool = True) -> None:
        """Send no new frames here; close once nothing is outstanding (``now``: check
        that at once, else the caller does)."""
        _log.info("%s: %s drains: %s", self.lb.name, self.server, reason)
        self.draining = True
        self.pool.forget(self)
        if now:
            self.close_if_unwanted()

    def close_if_unwanted(self) -> None:
        """Close a draining connection whose answers no open client waits for."""
        if self.closed or self.transport is None:
            return
        for request in self.ctx.pending():
            client = request.origin
            if isinstance(client, _Client) and not client.closed:
                return
        self.close()

    def eof_received(self) -> bool:
        return False  # a backend that stops sending is gone: close, fail its waiters

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        blocked, self.blocked = self.blocked, set()
        for client in blocked:
            if client.blocked_on is self:
                client.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        self.pool.gone(self)
        self.server.session_closed(self, self.bytes_in, self.bytes_out)
        waiting = {p.origin for p in self.ctx.pending()}
        if waiting:
            _log.debug(
                "%s: %s lost with %d client(s) waiting", self.lb.name, self.server, len(waiting)
            )
        for client in waiting:
            if isinstance(client, _Client):
                client.close()
        for client in self.blocked:
            client.update_reading()
        self.blocked.clear()

    # -- closing --------------------------------------------------------------------------

    def bytes_moved(self) -> int:
        return self.bytes_in + self.bytes_out

    def idle_out(self) -> None:
        _log.debug("%s: backend connection %s idle: closing", self.lb.name, self)
        self.close()

    def close(self) -> None:
        """Close after what is written (connection_lost fails whoever still waits)."""
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now."""
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


def _flush(touched: _Touched) -> None:
    for be in touched:
        be.flush()


def _addr(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None
